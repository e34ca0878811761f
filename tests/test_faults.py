"""Fault injection (issue 8): every AWS call site, schedules firing twice or for a deleted table,
duplicate and out-of-order completion events, a database connection dropped mid-request.

AWS faults are injected on the runtime's own boto3 clients (:func:`controller.aws.clients.client`): the
:class:`Faults` handler takes the place of moto's ``before-send`` handler on those clients and either
answers an attempt with a fault (throttling, 5xx, a timeout, a refused connection) or passes it to moto,
possibly failing it *after* moto carried it out (AWS acted, the caller cannot tell). botocore's own
retry logic (standard mode, the attempts of ``CLIENT_SETTINGS``) decides what is retried; its backoff
delays are recorded (computed without jitter) instead of slept.

The AWS call sites run on SQLite only (the database does nothing different there); the behaviours that
rest on the database (compare-and-set, locks, transactions) run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from botocore.loaders import JSONFileLoader
from botocore.retries.standard import ExponentialBackoff
from moto.core.botocore_stubber import MockRawResponse
from moto.core.models import botocore_stubber
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from controller.aws import clients, tasks
from controller.db.run_models import ExecutionRow, RunEventRow, RunRow
from controller.reconciler import apply
from controller.services import after_commit, firing, registering, registration
from controller.services.opening import open_or_push
from tests.factories import states, table_doc
from tests.runtime_support import (
    ACCOUNT,
    REGION,
    START,
    Lambda,
    create_lambda_function,
    glue_event,
    partitions,
    running_lambda,
    schedule_of,
    schedules,
    sfn_event,
    stored_token,
)

JOB = "job-load"
STATE_MACHINE = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:flow"
QUEUE_URL = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/flux-tasks"
FIFO_URL = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/flux-tasks.fifo"
FUNCTION = "fn-consumer"
BOTH_JOB, BOTH_STATE_MACHINE = "job-both", f"{STATE_MACHINE}-both"
DAY, OTHER_DAY = "2026-11-28", "2026-11-27"

TABLES = [
    table_doc("up"),
    table_doc(
        "glued",
        debounce_seconds=600,
        dependencies=[{"dependency_name": "up"}],
        tasks=[{"alias": "load", "type": "glue", "target": JOB}],
    ),
    table_doc("stepped", tasks=[{"alias": "flow", "type": "step_function", "target": STATE_MACHINE}]),
    table_doc("queued", tasks=[{"alias": "notify", "type": "sqs", "target": QUEUE_URL}]),
    table_doc("fifo", tasks=[{"alias": "notify", "type": "sqs", "target": FIFO_URL}]),
    table_doc("invoked", tasks=[{"alias": "consume", "type": "lambda", "target": FUNCTION}]),
    table_doc(
        "both",
        tasks=[
            {"alias": "load", "type": "glue", "target": BOTH_JOB},
            {"alias": "flow", "type": "step_function", "target": BOTH_STATE_MACHINE},
        ],
    ),
]

#: The service's throttling answer: (HTTP status, error code).
THROTTLING = {
    "scheduler": (429, "ThrottlingException"),
    "glue": (400, "ThrottlingException"),
    "sfn": (400, "ThrottlingException"),
    "sqs": (400, "RequestThrottled"),
    "lambda": (429, "TooManyRequestsException"),
    "eventbridge": (400, "ThrottlingException"),
}
#: Transient faults botocore retries (for Glue StartJobRun only the first and third): 5 of them, then
#: the 6th attempt (the last) succeeds.
MIXED = ("throttle", "500", "connect_timeout", "503", "read_timeout")
#: Faults after which AWS surely did nothing: botocore retries them even for Glue StartJobRun.
NOT_APPLIED = ("throttle", "connect_timeout", "refused", "throttle", "throttle")
#: botocore's backoff bounds without jitter: 1 s doubling for throttling, 50 ms doubling otherwise.
MIXED_DELAYS = [1.0, 0.1, 0.2, 0.4, 0.8]
THROTTLE_DELAYS = [1.0, 2.0, 4.0, 8.0, 16.0]


class Faults:
    """Answers the runtime's AWS calls with planned faults, else lets moto answer; counts attempts.

    ``plan("StartJobRun", "throttle", "500")`` fails the next two attempts of that operation. Kinds:
    ``throttle`` (the service's throttling error), ``500`` / ``503`` (server errors), ``read_timeout``,
    ``connect_timeout``, ``refused`` (``EndpointConnectionError``): AWS never saw these attempts.
    ``applied_read_timeout`` / ``applied_500``: moto carries the request out, then the caller gets a
    read timeout / a 500 (AWS acted, the caller cannot know).
    """

    def __init__(self) -> None:
        self.plans: dict[str, list[str]] = {}
        self.attempts: Counter[str] = Counter()
        self.bodies: dict[str, list[bytes]] = {}
        self.hooks: dict[str, Callable[[], None]] = {}
        self._installed: set[int] = set()

    def plan(self, operation: str, *kinds: str, service: str) -> None:
        self.install(service)
        self.plans[operation] = list(kinds)

    def install(self, service: str) -> None:
        client = clients.client(service)
        if id(client) in self._installed:
            return
        client.meta.events.unregister("before-send", botocore_stubber)
        client.meta.events.register("before-send", self._before_send, unique_id="flux-test-faults")
        self._installed.add(id(client))

    def once_during(self, operation: str, hook: Callable[[], None]) -> None:
        """Call ``hook`` when the next attempt of ``operation`` is sent (e.g. a second fire)."""
        self.hooks[operation] = hook

    def _before_send(self, request: AWSPreparedRequest, event_name: str, **kwargs: Any) -> AWSResponse | None:
        _, service, operation = event_name.split(".")
        self.attempts[operation] += 1
        raw: Any = request.body
        sent = raw if isinstance(raw, bytes) else str(raw or "").encode()
        self.bodies.setdefault(operation, []).append(sent)
        hook = self.hooks.pop(operation, None)
        if hook is not None:
            hook()
        planned = self.plans.get(operation)
        kind = planned.pop(0) if planned else None
        if kind is None:
            return _moto(request, event_name)
        if kind == "read_timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        if kind == "connect_timeout":
            raise ConnectTimeoutError(endpoint_url=request.url)
        if kind == "refused":
            raise EndpointConnectionError(endpoint_url=request.url)
        if kind == "throttle":
            return _answer(request, *THROTTLING[service])
        if kind in ("500", "503"):
            return _answer(request, int(kind), "InternalFailure" if kind == "500" else "ServiceUnavailable")
        assert kind.startswith("applied_"), kind
        answered = _moto(request, event_name)
        assert answered is not None and answered.status_code < 300, answered
        if kind == "applied_read_timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        return _answer(request, 500, "InternalFailure")


def _moto(request: AWSPreparedRequest, event_name: str) -> AWSResponse | None:
    answered: AWSResponse | None = botocore_stubber(event_name=event_name, request=request)
    return answered


def _answer(request: AWSPreparedRequest, status: int, code: str) -> AWSResponse:
    body = json.dumps({"__type": code, "message": f"injected {code}", "Message": f"injected {code}"})
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "x-amzn-ErrorType": code,
        "x-amzn-RequestId": "injected-fault",
    }
    return AWSResponse(request.url, status, headers, MockRawResponse(body))


_MODELS: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _models_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore parses a service's JSON models for every new session, and each test builds half a
    dozen clients: parse each file once for the whole module (botocore treats them as read-only)."""
    original = JSONFileLoader.load_file

    def cached(self: JSONFileLoader, file_path: str) -> Any:
        if file_path not in _MODELS:
            _MODELS[file_path] = original(self, file_path)
        return _MODELS[file_path]

    monkeypatch.setattr(JSONFileLoader, "load_file", cached)


@pytest.fixture
def backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's backoff delays (their bound: jitter fixed at 1), recorded instead of slept."""
    delays: list[float] = []
    original = ExponentialBackoff.delay_amount

    def recorded(self: ExponentialBackoff, context: Any) -> float:
        jitter, self._random = self._random, lambda: 1.0
        try:
            delays.append(original(self, context))
        finally:
            self._random = jitter
        return 0

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", recorded)
    monkeypatch.setattr(tasks, "GLUE_LOOKUP_DELAY", 0)
    return delays


@pytest.fixture
def faults() -> Faults:
    return Faults()


def _engine(url: str) -> Iterator[Engine]:
    from controller.db.engine import make_engine

    created = make_engine(url)
    yield created
    created.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    yield from _engine(f"sqlite:///{tmp_path / 'flux.db'}")


@pytest.fixture
def aws(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, backoff: list[float]) -> Iterator[Lambda]:
    """The Lambda on SQLite, with moto: Glue job, state machine, queues (standard and FIFO)."""
    with running_lambda(sqlite_engine, TABLES, monkeypatch) as handler:
        sqs = boto3.client("sqs", region_name=REGION)
        sqs.create_queue(QueueName="flux-tasks")
        sqs.create_queue(QueueName="flux-tasks.fifo", Attributes={"FifoQueue": "true"})
        yield handler


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch, backoff: list[float]) -> Iterator[Lambda]:
    """The Lambda on SQLite and on PostgreSQL."""
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


# --- helpers -----------------------------------------------------------------------------------------


def register(flux: Lambda, day: str = DAY, **extra: Any) -> dict[str, Any]:
    """Register ``up`` for ``day``: opens (or pushes) the run of ``glued``; returns that run."""
    body = flux.ok(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "up", "partitions": partitions(dt=day), **extra}]},
    )
    [run] = body["runs"]
    return dict(run)


def manual(flux: Lambda, table: str, day: str = DAY) -> dict[str, Any]:
    """A manual run: it fires (its tasks start) within the request."""
    body = flux.ok("POST", "/runs", {"table_name": table, "partitions": partitions(dt=day), "reason": "test"})
    return dict(body["run"])


def run_of(flux: Lambda, run_id: int) -> dict[str, Any]:
    return dict(flux.ok("GET", f"/runs/{run_id}")["run"])


def error_answer(flux: Lambda, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """A request that must fail: the error model, no stack trace."""
    status, answer = flux.call(method, path, body)
    assert list(answer) == ["error"], answer
    assert set(answer["error"]) == {"code", "message", "details"}
    assert "Traceback" not in json.dumps(answer)
    return status, answer["error"]


def glue_runs(job: str = JOB) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = boto3.client("glue", region_name=REGION).get_job_runs(JobName=job)["JobRuns"]
    return runs


def executions_of(state_machine: str = STATE_MACHINE) -> list[dict[str, Any]]:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    found: list[dict[str, Any]] = sfn.list_executions(stateMachineArn=state_machine)["executions"]
    return found


def messages(queue_url: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name=REGION)
    received: list[dict[str, Any]] = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get(
        "Messages", []
    )
    return received


def unpublished(engine: Engine) -> list[tuple[str, str | None, str]]:
    with Session(engine) as session:
        details = (
            session.execute(
                select(RunEventRow.detail).where(RunEventRow.published_at.is_(None)).order_by(RunEventRow.id)
            )
            .scalars()
            .all()
        )
    return [(d["table"], d["old_state"], d["new_state"]) for d in details]


def counts(engine: Engine) -> tuple[int, int]:
    """(executions, runs) in the database."""
    with Session(engine) as session:
        executions = session.execute(select(func.count()).select_from(ExecutionRow)).scalar()
        runs = session.execute(select(func.count()).select_from(RunRow)).scalar()
    return int(executions or 0), int(runs or 0)


def invoked_flux(body: bytes) -> dict[str, Any]:
    """The ``flux`` block of the payload a Lambda ``Invoke`` request carried (its raw body)."""
    return dict(json.loads(body)["flux"])


# --- transient faults are retried with backoff; beyond the budget the state stays repairable ---------
#
# Each call site gets 5 transient faults (botocore's budget: 6 attempts), which must not change the
# outcome, then 6 on a second request, which must leave a consistent state that the sweep or a retry
# repairs. The API answers 200 throughout: AWS work happens after the commit.


def test_create_schedule(aws: Lambda, faults: Faults, backoff: list[float]) -> None:
    faults.plan("CreateSchedule", *MIXED, service="scheduler")
    run = register(aws)
    assert faults.attempts["CreateSchedule"] == len(MIXED) + 1
    assert backoff == MIXED_DELAYS
    assert (run["status"], run_of(aws, run["id"])["schedule_synced"]) == ("scheduled", True)
    assert schedule_of(run["id"], "glued")["ScheduleExpression"] == "at(2026-11-29T12:10:00)"

    faults.plan("CreateSchedule", *["throttle"] * 6, service="scheduler")
    other = register(aws, OTHER_DAY)
    assert faults.attempts["CreateSchedule"] == 6 + 6
    assert backoff[len(MIXED_DELAYS) :] == THROTTLE_DELAYS  # then botocore gives up
    assert other["status"] == "scheduled"
    assert run_of(aws, other["id"])["schedule_synced"] is False
    assert sorted(schedules()) == [f"flux-run-{run['id']}-glued"]

    assert aws.invoke({"flux_action": "sweep"})["schedules_written"] == 1
    assert run_of(aws, other["id"])["schedule_synced"] is True
    assert schedule_of(other["id"], "glued")["ScheduleExpression"] == "at(2026-11-29T12:10:00)"


def test_update_schedule(aws: Lambda, faults: Faults, backoff: list[float]) -> None:
    run = register(aws)
    aws.clock.advance(120)
    faults.plan("UpdateSchedule", *MIXED, service="scheduler")
    pushed = register(aws)  # CreateSchedule: conflict, then UpdateSchedule
    assert pushed["id"] == run["id"]
    assert (faults.attempts["CreateSchedule"], faults.attempts["UpdateSchedule"]) == (1, len(MIXED) + 1)
    assert backoff == MIXED_DELAYS
    assert schedule_of(run["id"], "glued")["ScheduleExpression"] == "at(2026-11-29T12:12:00)"
    assert run_of(aws, run["id"])["schedule_synced"] is True

    aws.clock.advance(120)
    faults.plan("UpdateSchedule", *["503"] * 6, service="scheduler")
    register(aws)  # pushed to 12:14 in the database; the schedule stays at 12:12
    assert faults.attempts["UpdateSchedule"] == 6 + 6
    assert schedule_of(run["id"], "glued")["ScheduleExpression"] == "at(2026-11-29T12:12:00)"
    assert run_of(aws, run["id"])["schedule_synced"] is False
    assert aws.invoke({"flux_action": "sweep"})["schedules_written"] == 1
    assert schedule_of(run["id"], "glued")["ScheduleExpression"] == "at(2026-11-29T12:14:00)"
    # The stale time would only have fired a run that is not due.
    fire = {"flux_action": "fire", "run_id": run["id"]}
    aws.clock.now = START.replace(minute=12)
    assert aws.invoke(fire)["status"].startswith("ignored: not due")
    aws.clock.now = START.replace(minute=14)
    assert aws.invoke(fire) == {"status": "running"}
    assert len(glue_runs()) == 1


def test_delete_schedule(aws: Lambda, faults: Faults, backoff: list[float]) -> None:
    first, second = register(aws), register(aws, OTHER_DAY)
    faults.plan("DeleteSchedule", *MIXED, service="scheduler")
    assert aws.ok("POST", f"/runs/{first['id']}/cancel", {"reason": "test"})["run"]["status"] == "cancelled"
    assert faults.attempts["DeleteSchedule"] == len(MIXED) + 1
    assert backoff == MIXED_DELAYS
    assert schedules() == [f"flux-run-{second['id']}-glued"]

    faults.plan("DeleteSchedule", *["throttle"] * 6, service="scheduler")
    assert aws.ok("POST", f"/runs/{second['id']}/cancel", {"reason": "test"})["run"]["status"] == "cancelled"
    assert schedules() == [f"flux-run-{second['id']}-glued"]  # left behind, logged
    aws.clock.advance(600)
    # It fires once (then EventBridge deletes it): the run is final, so nothing happens.
    assert aws.invoke({"flux_action": "fire", "run_id": second["id"]}) == {
        "status": "ignored: run is cancelled"
    }
    assert glue_runs() == []


def test_glue_start_job_run(aws: Lambda, faults: Faults, backoff: list[float]) -> None:
    faults.plan("StartJobRun", *NOT_APPLIED, service="glue")
    run = manual(aws, "glued")
    assert faults.attempts["StartJobRun"] == len(NOT_APPLIED) + 1
    assert backoff == [1.0, 0.1, 0.2, 8.0, 16.0]
    [job_run] = glue_runs()
    assert run["status"] == "running"
    assert [(t["status"], t["external_id"]) for t in run_of(aws, run["id"])["tasks"]] == [
        ("started", job_run["Id"])
    ]

    faults.plan("StartJobRun", *["throttle"] * 6, service="glue")
    failed = manual(aws, "glued", OTHER_DAY)
    assert faults.attempts["StartJobRun"] == 6 + 6
    assert failed["status"] == "failed"
    detail = run_of(aws, failed["id"])
    assert "task load did not start: glue job-load: ThrottlingException" in detail["error"]
    assert [t["status"] for t in detail["tasks"]] == ["failed"]
    assert len(glue_runs()) == 1
    # Failed per DESIGN (nothing swallowed); a person retries it and it starts once.
    assert aws.ok("POST", f"/runs/{failed['id']}/retry", {"reason": "AWS was throttling"})
    assert run_of(aws, failed["id"])["status"] == "running"
    assert len(glue_runs()) == 2


def test_step_functions_start_execution(aws: Lambda, faults: Faults, backoff: list[float]) -> None:
    faults.plan("StartExecution", *MIXED, service="stepfunctions")
    run = manual(aws, "stepped")
    assert faults.attempts["StartExecution"] == len(MIXED) + 1
    assert backoff == MIXED_DELAYS
    [execution] = executions_of()
    assert run["status"] == "running"
    assert [t["external_id"] for t in run_of(aws, run["id"])["tasks"]] == [execution["executionArn"]]

    faults.plan("StartExecution", *["500"] * 6, service="stepfunctions")
    failed = manual(aws, "stepped", OTHER_DAY)
    assert failed["status"] == "failed"
    assert "task flow did not start: step_function" in run_of(aws, failed["id"])["error"]
    assert "InternalFailure" in run_of(aws, failed["id"])["error"]
    assert len(executions_of()) == 1
    aws.ok("POST", f"/runs/{failed['id']}/retry", {})
    assert run_of(aws, failed["id"])["status"] == "running"
    assert len(executions_of()) == 2


def test_sqs_send_message(aws: Lambda, faults: Faults, backoff: list[float]) -> None:
    faults.plan("SendMessage", *MIXED, service="sqs")
    run = manual(aws, "queued")
    assert faults.attempts["SendMessage"] == len(MIXED) + 1
    assert backoff == MIXED_DELAYS
    [message] = messages(QUEUE_URL)
    assert [t["external_id"] for t in run_of(aws, run["id"])["tasks"]] == [message["MessageId"]]
    assert run["status"] == "running"

    faults.plan("SendMessage", *["connect_timeout"] * 6, service="sqs")
    failed = manual(aws, "queued", OTHER_DAY)
    assert failed["status"] == "failed"
    assert "ConnectTimeoutError" in run_of(aws, failed["id"])["error"]


def test_lambda_invoke(
    aws: Lambda, faults: Faults, backoff: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    create_lambda_function(monkeypatch, FUNCTION)
    faults.plan("Invoke", *MIXED, service="lambda")
    run = manual(aws, "invoked")
    assert faults.attempts["Invoke"] == len(MIXED) + 1
    assert backoff == MIXED_DELAYS
    assert run["status"] == "running"

    # Throttled past botocore's retries: the target's own limit, so the run waits queued (DESIGN §8).
    faults.plan("Invoke", *["throttle"] * 6, service="lambda")
    waiting = manual(aws, "invoked", OTHER_DAY)
    assert waiting["status"] == "queued"
    [reason] = [e["reason"] for e in run_of(aws, waiting["id"])["events"] if e["new_state"] == "queued"]
    assert "TooManyRequestsException" in reason


def test_eventbridge_put_events(
    aws: Lambda, faults: Faults, backoff: list[float], sqlite_engine: Engine
) -> None:
    faults.plan("PutEvents", *MIXED, service="events")
    register(aws)
    assert faults.attempts["PutEvents"] == len(MIXED) + 1
    assert backoff == MIXED_DELAYS
    assert unpublished(sqlite_engine) == []

    faults.plan("PutEvents", *["throttle"] * 6, service="events")
    register(aws, OTHER_DAY)
    assert unpublished(sqlite_engine) == [("glued", None, "scheduled")]
    aws.clock.advance(60)
    assert aws.invoke({"flux_action": "sweep"})["events_published"] == 1
    assert unpublished(sqlite_engine) == []


# --- ambiguous failures (AWS may have acted) never start a task twice --------------------------------


def test_glue_start_that_timed_out_after_starting_the_job_is_found_not_repeated(
    aws: Lambda, faults: Faults
) -> None:
    faults.plan("StartJobRun", "applied_read_timeout", service="glue")
    run = manual(aws, "glued")
    [job_run] = glue_runs()
    assert job_run["Arguments"]["--flux_token"] == stored_token(aws, run["id"], "load")
    assert (faults.attempts["StartJobRun"], faults.attempts["GetJobRuns"]) == (1, 1)
    assert run["status"] == "running"
    assert [t["external_id"] for t in run_of(aws, run["id"])["tasks"]] == [job_run["Id"]]

    # A 500 answer after AWS started it: the same.
    faults.plan("StartJobRun", "applied_500", service="glue")
    other = manual(aws, "glued", OTHER_DAY)
    assert len(glue_runs()) == 2
    assert (faults.attempts["StartJobRun"], faults.attempts["GetJobRuns"]) == (2, 2)
    assert other["status"] == "running"


def test_glue_start_that_failed_ambiguously_without_starting_is_called_again(
    aws: Lambda, faults: Faults, backoff: list[float]
) -> None:
    # read timeout → no run carries the token → call again: 503 → none → call again (throttled
    # once, retried by botocore) → started.
    faults.plan("StartJobRun", "read_timeout", "503", "throttle", service="glue")
    run = manual(aws, "glued")
    assert (faults.attempts["StartJobRun"], faults.attempts["GetJobRuns"]) == (4, 2)
    assert backoff == [1.0]  # only the throttling was retried by botocore
    [job_run] = glue_runs()
    assert run["status"] == "running"
    assert [t["external_id"] for t in run_of(aws, run["id"])["tasks"]] == [job_run["Id"]]


def test_glue_start_that_keeps_failing_ambiguously_fails_the_run_with_what_is_known(
    aws: Lambda, faults: Faults
) -> None:
    faults.plan("StartJobRun", "503", "read_timeout", "500", service="glue")
    run = manual(aws, "glued")
    assert (faults.attempts["StartJobRun"], faults.attempts["GetJobRuns"]) == (3, 3)
    error = run_of(aws, run["id"])["error"]
    assert run["status"] == "failed"
    assert "3 calls; no run of the job carries this start's --flux_token" in error
    assert str(stored_token(aws, run["id"], "load")) not in error  # the token is the task's secret
    assert glue_runs() == []

    # When even looking fails, the run fails saying so (a person checks the job, then retries).
    faults.plan("StartJobRun", "read_timeout", service="glue")
    faults.plan("GetJobRuns", *["throttle"] * 6, service="glue")
    other = manual(aws, "glued", OTHER_DAY)
    assert other["status"] == "failed"
    error = run_of(aws, other["id"])["error"]
    assert "whether the job started is unknown" in error and "ThrottlingException" in error


def test_without_the_guard_botocore_would_start_the_glue_job_twice(aws: Lambda, faults: Faults) -> None:
    """Why StartJobRun is not retried by botocore after a timeout: the repeat starts a second run."""
    glue = boto3.client("glue", region_name=REGION)
    glue.delete_job(JobName=JOB)
    glue.create_job(
        Name=JOB,
        Role=f"arn:aws:iam::{ACCOUNT}:role/glue",
        Command={"Name": "glueetl", "ScriptLocation": "s3://scripts/job.py"},
        ExecutionProperty={"MaxConcurrentRuns": 10},
    )
    faults.plan("StartJobRun", "applied_read_timeout", service="glue")
    clients.client("glue").meta.events.unregister(
        "needs-retry.glue.StartJobRun", unique_id="flux-no-retry-when-maybe-applied-glue-StartJobRun"
    )
    manual(aws, "glued")
    assert len(glue_runs()) == 2


def test_step_functions_start_repeated_after_a_timeout_is_the_same_execution(
    aws: Lambda, faults: Faults
) -> None:
    faults.plan("StartExecution", "applied_read_timeout", "applied_500", service="stepfunctions")
    run = manual(aws, "stepped")
    assert faults.attempts["StartExecution"] == 3  # botocore repeated it twice
    [execution] = executions_of()
    assert execution["name"] == f"flux-{run['id']}-1-flow"
    assert run["status"] == "running"
    assert [t["external_id"] for t in run_of(aws, run["id"])["tasks"]] == [execution["executionArn"]]


def test_sqs_fifo_send_repeated_after_a_timeout_is_deduplicated(aws: Lambda, faults: Faults) -> None:
    faults.plan("SendMessage", "applied_read_timeout", service="sqs")
    run = manual(aws, "fifo")
    assert faults.attempts["SendMessage"] == 2
    [message] = messages(FIFO_URL)
    assert json.loads(message["Body"])["flux"]["token"] == stored_token(aws, run["id"], "notify")
    assert run["status"] == "running"


def test_lambda_invoke_repeated_after_a_timeout_carries_the_same_token_and_reports_once(
    aws: Lambda, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Async Invoke has no idempotency token and Lambda delivers events at least once anyway: botocore
    repeats it, the function sees the token twice, and only the first completion report counts."""
    create_lambda_function(monkeypatch, FUNCTION)
    faults.plan("Invoke", "applied_read_timeout", service="lambda")
    run = manual(aws, "invoked")
    assert faults.attempts["Invoke"] == 2
    first, second = (invoked_flux(body) for body in faults.bodies["Invoke"])
    assert first == second and first["token"] == stored_token(aws, run["id"], "consume")
    done = {"table_name": "invoked", "partitions": partitions(dt=DAY), "run_id": run["id"]}
    aws.ok("POST", "/register_execution", {"data": [done]})
    status, error = error_answer(aws, "POST", "/register_execution", {"data": [done]})
    assert (status, error["code"]) == (409, "conflict")
    assert run_of(aws, run["id"])["status"] == "succeeded"


def test_create_schedule_repeated_after_a_timeout_updates_the_same_schedule(
    aws: Lambda, faults: Faults
) -> None:
    faults.plan("CreateSchedule", "applied_read_timeout", service="scheduler")
    run = register(aws)  # the repeat gets ConflictException, then UpdateSchedule
    assert (faults.attempts["CreateSchedule"], faults.attempts["UpdateSchedule"]) == (2, 1)
    assert schedules() == [f"flux-run-{run['id']}-glued"]
    assert run_of(aws, run["id"])["schedule_synced"] is True


# --- a schedule firing twice, or for a run whose table a reconcile removed --------------------------


def test_a_schedule_firing_twice_dispatches_once(flux: Lambda, faults: Faults) -> None:
    run = register(flux)
    fire = json.loads(schedule_of(run["id"], "glued")["Target"]["Input"])
    flux.clock.advance(600)
    # The second delivery arrives while the first is starting the Glue job.
    during: list[dict[str, Any]] = []
    faults.install("glue")
    faults.once_during("StartJobRun", lambda: during.append(flux.invoke(fire)))
    assert flux.invoke(fire) == {"status": "running"}
    assert during == [{"status": "ignored: run is dispatching"}]
    assert flux.invoke(fire) == {"status": "ignored: run is running"}
    flux.clock.advance(300)
    assert flux.invoke({"flux_action": "sweep"})["overdue_fired"] == 0
    assert faults.attempts["StartJobRun"] == 1
    assert len(glue_runs()) == 1


def test_a_fire_for_a_table_removed_by_a_reconcile_cancels_the_run_and_starts_nothing(
    flux: Lambda, faults: Faults, engine: Engine
) -> None:
    fired, swept = register(flux), register(flux, OTHER_DAY)
    remaining = [d for d in TABLES if d["name"] != "glued"]
    assert apply(
        engine, desired=states(remaining), allow_delete=True, revision="r2", actor="t", now=START
    ).applied
    faults.install("glue")
    flux.clock.advance(600)
    # Its schedule fires (twice); the other's is missing and the sweep fires it as overdue.
    fire = {"flux_action": "fire", "run_id": fired["id"]}
    assert flux.invoke(fire) == {"status": "cancelled: table deleted"}
    assert flux.invoke(fire) == {"status": "ignored: run is cancelled"}
    flux.clock.advance(180)
    assert flux.invoke({"flux_action": "sweep"})["overdue_fired"] == 1
    for run in (fired, swept):
        detail = run_of(flux, run["id"])
        assert (detail["status"], detail["reason"], detail["tasks"]) == (
            "cancelled",
            "the table was deleted by a reconcile",
            [],
        )
    assert faults.attempts["StartJobRun"] == 0
    assert glue_runs() == []
    assert unpublished(engine) == []  # the cancellations were published


# --- duplicate and out-of-order completion events ----------------------------------------------------


def test_duplicate_and_out_of_order_completion_events_settle_each_run_once(flux: Lambda) -> None:
    glued, stepped = manual(flux, "glued"), manual(flux, "stepped")
    failing = manual(flux, "glued", OTHER_DAY)
    [job_id] = [t["external_id"] for t in run_of(flux, glued["id"])["tasks"]]
    [failing_id] = [t["external_id"] for t in run_of(flux, failing["id"])["tasks"]]
    [arn] = [t["external_id"] for t in run_of(flux, stepped["id"])["tasks"]]

    outcomes = [
        flux.invoke(glue_event(JOB, job_id, "SUCCEEDED"))["status"],
        flux.invoke(glue_event(JOB, job_id, "SUCCEEDED"))["status"],  # delivered twice
        flux.invoke(glue_event(JOB, job_id, "RUNNING"))["status"],  # late
        flux.invoke(glue_event(JOB, job_id, "FAILED"))["status"],  # after SUCCEEDED
        flux.invoke(sfn_event(arn, "SUCCEEDED"))["status"],  # before RUNNING
        flux.invoke(sfn_event(arn, "RUNNING"))["status"],
        flux.invoke(sfn_event(arn, "ABORTED"))["status"],
        flux.invoke(glue_event(JOB, failing_id, "FAILED"))["status"],
        flux.invoke(glue_event(JOB, failing_id, "SUCCEEDED"))["status"],  # after FAILED
        flux.invoke(glue_event(JOB, failing_id, "FAILED"))["status"],
    ]
    assert outcomes == [
        "run succeeded",
        "ignored: task already succeeded",
        "ignored: RUNNING is not a final state",
        "ignored: task already succeeded",
        "run succeeded",
        "ignored: RUNNING is not a final state",
        "ignored: task already succeeded",
        "run failed",
        "ignored: task already failed",
        "ignored: task already failed",
    ]
    assert [run_of(flux, r["id"])["status"] for r in (glued, stepped, failing)] == [
        "succeeded",
        "succeeded",
        "failed",
    ]
    registered = flux.ok("GET", "/executions", query={"table": "glued"})["executions"]
    assert [(e["partitions"], e["source"], e["run_id"]) for e in registered] == [
        ({"dt": DAY}, "glue", glued["id"])
    ]
    assert len(flux.ok("GET", "/executions", query={"table": "stepped"})["executions"]) == 1


def test_completion_events_that_arrive_while_the_run_is_still_dispatching_are_not_lost(
    flux: Lambda, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's tasks start one after the other; a slow start (AWS throttling, retried) lets the tasks
    already started finish first. Their events must find them, whatever the run's state then."""
    during: list[str] = []

    def glue_finishes(state: str) -> Callable[[], None]:
        def deliver() -> None:
            [job_run] = [r for r in glue_runs(BOTH_JOB) if r["Arguments"]["--dt"] == day]
            during.append(flux.invoke(glue_event(BOTH_JOB, job_run["Id"], state))["status"])

        return deliver

    # The Glue job succeeds while the Step Functions start is being retried.
    day = DAY
    faults.plan("StartExecution", "throttle", "throttle", service="stepfunctions")
    faults.once_during("StartExecution", glue_finishes("SUCCEEDED"))
    run = manual(flux, "both", day)
    assert during == ["task succeeded; the run waits for its other tasks"]
    detail = run_of(flux, run["id"])
    assert (detail["status"], [t["status"] for t in detail["tasks"]]) == ("running", ["succeeded", "started"])
    arn = detail["tasks"][1]["external_id"]
    assert flux.invoke(sfn_event(arn, "SUCCEEDED")) == {"status": "run succeeded"}

    # The Glue job fails meanwhile: the run fails, and stays failed when the dispatch ends; the
    # execution that started after the failure is stopped (DESIGN §8: the run's slot is free).
    day = OTHER_DAY
    faults.once_during("StartExecution", glue_finishes("FAILED"))
    failed = manual(flux, "both", day)
    assert during[1] == "run failed"
    assert failed["status"] == "failed"
    flow_task = run_of(flux, failed["id"])["tasks"][1]
    assert (flow_task["status"], flow_task["error"]) == (
        "failed",
        "stopped: its run ended while it was starting",
    )
    sfn = boto3.client("stepfunctions", region_name=REGION)
    assert sfn.describe_execution(executionArn=flow_task["external_id"])["status"] == "ABORTED"
    assert flux.invoke(sfn_event(flow_task["external_id"], "ABORTED")) == {
        "status": "ignored: task already failed"
    }

    # Both tasks finish before the dispatch ends (each right after its start is recorded).
    original = firing.record_start

    def recorded_then_finished(deps: Any, session: Any, request: Any, external_id: str) -> None:
        original(deps, session, request, external_id)
        finished = glue_event(BOTH_JOB, external_id, "SUCCEEDED")
        if request.type == "step_function":
            finished = sfn_event(external_id, "SUCCEEDED")
        during.append(flux.invoke(finished)["status"])

    monkeypatch.setattr(firing, "record_start", recorded_then_finished)
    quick = manual(flux, "both", "2026-11-26")
    assert during[2:] == ["task succeeded; the run waits for its other tasks"] * 2
    assert (quick["status"], run_of(flux, quick["id"])["status"]) == ("succeeded", "succeeded")
    registered = flux.ok("GET", "/executions", query={"table": "both"})["executions"]
    assert sorted((e["partitions"]["dt"], e["source"]) for e in registered) == [
        ("2026-11-26", "step_function"),
        (DAY, "step_function"),
    ]


# --- a database connection dropped mid-request ------------------------------------------------------


class ConnectionDropper:
    """Drops the database connection of the transaction that reaches a point: PostgreSQL terminates its
    backend (the next statement fails as a real disconnect); SQLite cannot lose a connection, so the
    same error is raised as SQLAlchemy reports a disconnect."""

    def __init__(self, engine: Engine, request: pytest.FixtureRequest) -> None:
        self.engine = engine
        self.admin: Engine | None = (
            request.getfixturevalue("postgres_admin") if engine.dialect.name == "postgresql" else None
        )
        self.drops = 0

    def drop(self, connection: Any) -> None:
        """Drop ``connection``: a transaction's (its ``.connection``), or one a store listener heard."""
        self.drops += 1
        if self.admin is None:
            raise OperationalError(
                "INSERT INTO runs …",
                {},
                sqlite3.OperationalError("disk I/O error"),
                connection_invalidated=True,
            )
        pid = connection.info.backend_pid  # the PostgreSQL store's psycopg connection
        with self.admin.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar()


@pytest.fixture
def dropper(engine: Engine, request: pytest.FixtureRequest) -> ConnectionDropper:
    return ConnectionDropper(engine, request)


def drop_before_opening_runs(
    monkeypatch: pytest.MonkeyPatch, dropper: ConnectionDropper, times: int
) -> list[int]:
    """The next ``times`` transactions of a registration lose their connection after inserting the
    executions, before the runs are written. Returns a list that grows by one per transaction run."""
    original = open_or_push
    runs: list[int] = []

    def dropping(tx: Any, *args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        if dropper.drops < times:
            dropper.drop(tx.connection)
        return original(tx, *args, **kwargs)

    monkeypatch.setattr(registering, "open_or_push", dropping)
    return runs


def test_a_connection_dropped_before_commit_is_retried_and_registers_once(
    flux: Lambda, engine: Engine, dropper: ConnectionDropper, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = drop_before_opening_runs(monkeypatch, dropper, times=1)
    run = register(flux)
    assert (dropper.drops, len(work)) == (1, 2)
    assert counts(engine) == (1, 1)
    assert schedules() == [f"flux-run-{run['id']}-glued"]
    assert unpublished(engine) == []


def test_a_connection_lost_on_every_try_writes_nothing_and_answers_503(
    flux: Lambda, engine: Engine, dropper: ConnectionDropper, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"data": [{"table_name": "up", "partitions": partitions(dt=DAY)}]}
    work = drop_before_opening_runs(monkeypatch, dropper, times=3)
    status, error = error_answer(flux, "POST", "/register_execution", body)
    assert (status, error["code"]) == (503, "unavailable")
    assert "nothing was written" in error["message"]
    assert len(work) == 3  # the first try and MAX_RECONNECTS more
    assert counts(engine) == (0, 0)
    assert unpublished(engine) == []
    assert schedules() == []
    # The caller repeats the request: registered once.
    run = register(flux)
    assert counts(engine) == (1, 1)
    assert schedules() == [f"flux-run-{run['id']}-glued"]


def test_a_connection_lost_while_committing_is_not_retried_and_the_repeat_is_idempotent(
    flux: Lambda, engine: Engine, dropper: ConnectionDropper
) -> None:
    commits = 0
    marked: set[int] = set()

    def on_commit(statement: str, connection: Any) -> None:
        nonlocal commits
        if statement != "COMMIT":
            return
        commits += 1
        if dropper.drops == 0 and id(connection) in marked:
            dropper.drop(connection)

    flux.deps.store.listeners.append(on_commit)
    original = registering.register_in

    def marking(tx: Any, *args: Any, **kwargs: Any) -> Any:
        marked.add(id(tx.connection))
        return original(tx, *args, **kwargs)

    body = {"data": [{"table_name": "up", "partitions": partitions(dt=DAY), "idempotency_key": "k-1"}]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registration, "register_in", marking)
        status, error = error_answer(flux, "POST", "/register_execution", body)
    flux.deps.store.listeners.remove(on_commit)
    assert (status, error["code"]) == (503, "unavailable")
    assert "may or may not have been written" in error["message"]
    assert dropper.drops == 1
    # Here the COMMIT never reached the database; either way the repeat with the key is safe.
    first = flux.ok("POST", "/register_execution", body)
    again = flux.ok("POST", "/register_execution", body)
    assert again == first
    assert counts(engine) == (1, 1)


def test_a_connection_lost_after_commit_keeps_the_answer_and_the_sweep_repairs(
    flux: Lambda, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lost(*_: Any) -> None:
        raise OperationalError(
            "UPDATE runs …", {}, sqlite3.OperationalError("disk I/O error"), connection_invalidated=True
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(after_commit, "record_done", lost)
        run = register(flux)  # committed, schedule written, event published: only the bookkeeping failed
    assert run["status"] == "scheduled"
    assert counts(engine) == (1, 1)
    assert run_of(flux, run["id"])["schedule_synced"] is False
    flux.clock.advance(60)
    swept = flux.invoke({"flux_action": "sweep"})
    assert (swept["schedules_written"], swept["events_published"]) == (
        1,
        1,
    )  # again: idempotent, at least once
    assert run_of(flux, run["id"])["schedule_synced"] is True
    assert unpublished(engine) == []
