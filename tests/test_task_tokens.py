"""Task tokens (DESIGN §7: a task completes or fails its run with the ``flux.token`` it was started
with, current attempt only). A token is random per task and attempt, drawn when the dispatch records
the task and stored with it; what each task receives carries it; ``check_token`` compares it with the
stored tokens of the run's current attempt. Nobody can derive it, nothing logs or shows it.

Through ``lambda_handler`` on SQLite and PostgreSQL, with moto: the tokens are read from what the
tasks received (Glue arguments, the Step Functions input, the SQS message, the Lambda payload).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from alembic import command
from botocore.stub import Stubber
from sqlalchemy import Engine, inspect, text

from controller.aws import clients, tasks
from controller.aws.tasks import AwsTaskStarter
from controller.core.effects import TaskRequest, TaskStartError
from controller.db.migrate import alembic_config, upgrade
from controller.files.validation import validate_directory
from tests.conftest import WriteDefs
from tests.factories import table_doc
from tests.runtime_support import (
    ACCOUNT,
    REGION,
    Lambda,
    create_lambda_function,
    glue_event,
    partitions,
    running_lambda,
    stored_token,
)

MONTH = [{"name": "ano_mes", "type": "int"}]
QUEUE = "token-tasks"
QUEUE_URL = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{QUEUE}"
FUNCTION = "token-consumer"
STATE_MACHINE = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:token-flow"
#: Who starts, fails and retries runs; the tasks report as someone listed nowhere (their token alone).
OPERATOR, STRANGER = "otto", "sam"
ALIASES = ("load", "flow", "notify", "consume")
TABLES = [
    table_doc(
        "tb_every",
        partitions=MONTH,
        operators=[OPERATOR],
        producers=["pia"],
        tasks=[
            {"alias": "load", "type": "glue", "target": "job-token"},
            {"alias": "flow", "type": "step_function", "target": STATE_MACHINE},
            {"alias": "notify", "type": "sqs", "target": QUEUE_URL},
            {"alias": "consume", "type": "lambda", "target": FUNCTION},
        ],
    ),
    table_doc(
        "tb_queued",
        partitions=MONTH,
        operators=[OPERATOR],
        producers=["pia"],
        tasks=[{"alias": "notify", "type": "sqs", "target": QUEUE_URL}],
    ),
    table_doc(
        "tb_glued",
        partitions=MONTH,
        operators=[OPERATOR],
        producers=["pia"],
        tasks=[{"alias": "load", "type": "glue", "target": "job-glued"}],
    ),
]
#: What ``secrets.token_urlsafe(32)`` gives.
RANDOM_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        boto3.client("sqs", region_name=REGION).create_queue(QueueName=QUEUE)
        create_lambda_function(monkeypatch, FUNCTION)
        # Several runs of the job at once (moto allows one by default, as Glue does).
        glue = boto3.client("glue", region_name=REGION)
        glue.delete_job(JobName="job-token")
        glue.create_job(
            Name="job-token",
            Role=f"arn:aws:iam::{ACCOUNT}:role/glue",
            Command={"Name": "glueetl", "ScriptLocation": "s3://scripts/job.py"},
            ExecutionProperty={"MaxConcurrentRuns": 10},
        )
        yield handler


@pytest.fixture
def invoked(flux: Lambda) -> list[dict[str, Any]]:
    """The payload of every Lambda task invoked (moto runs no function code without Docker): caught
    on the client the task starter uses."""
    payloads: list[dict[str, Any]] = []

    def catch(params: dict[str, Any], **_: Any) -> None:
        payloads.append(json.loads(params["Payload"]))

    clients.client("lambda").meta.events.register("provide-client-params.lambda.Invoke", catch)
    return payloads


def start(flux: Lambda, table: str, month: int) -> dict[str, Any]:
    body = {"table_name": table, "partitions": partitions(ano_mes=month)}
    run: dict[str, Any] = flux.ok("POST", "/runs", body, user=OPERATOR)["run"]
    assert run["status"] == "running", run
    return run


def received(invoked: list[dict[str, Any]]) -> dict[tuple[int, int, str], str]:
    """(run id, attempt, alias) → the token each task received, from what AWS holds for it."""
    found: dict[tuple[int, int, str], str] = {}
    for job_run in boto3.client("glue", region_name=REGION).get_job_runs(JobName="job-token")["JobRuns"]:
        arguments = job_run["Arguments"]
        # Glue has no attempt argument; a job run's attempt is the run's task it was started for.
        found[(int(arguments["--flux_run_id"]), 0, "load")] = arguments["--flux_token"]
    sfn = boto3.client("stepfunctions", region_name=REGION)
    inputs = [
        json.loads(sfn.describe_execution(executionArn=e["executionArn"])["input"])
        for e in sfn.list_executions(stateMachineArn=STATE_MACHINE)["executions"]
    ]
    sqs = boto3.client("sqs", region_name=REGION)
    messages = sqs.receive_message(QueueUrl=QUEUE_URL, MaxNumberOfMessages=10, VisibilityTimeout=0)
    bodies = [json.loads(m["Body"]) for m in messages.get("Messages", [])]
    for sent in [*inputs, *bodies, *invoked]:
        flux_section = sent["flux"]
        found[(flux_section["run_id"], flux_section["attempt"], flux_section["alias"])] = flux_section[
            "token"
        ]
    return found


def report(
    flux: Lambda, table: str, month: int, run_id: int, token: str | None, user: str = STRANGER
) -> tuple[int, dict[str, Any]]:
    """``POST /register_execution`` completing ``run_id``, as the task's consumer does."""
    item: dict[str, Any] = {"table_name": table, "partitions": partitions(ano_mes=month), "run_id": run_id}
    if token is not None:
        item["token"] = token
    return flux.call("POST", "/register_execution", {"data": [item]}, user=user)


def fail(flux: Lambda, run_id: int, token: str | None, user: str = STRANGER) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"reason": "the task broke"} | ({"token": token} if token is not None else {})
    return flux.call("POST", f"/runs/{run_id}/fail", body, user=user)


def status_of(flux: Lambda, run_id: int) -> str:
    return str(flux.ok("GET", f"/runs/{run_id}")["run"]["status"])


# --- random, stored, received --------------------------------------------------------------------------


def test_every_task_of_every_attempt_receives_a_random_token_of_its_own(
    flux: Lambda, invoked: list[dict[str, Any]]
) -> None:
    first, second = start(flux, "tb_every", 202401), start(flux, "tb_every", 202402)

    tokens = received(invoked)
    for run in (first, second):
        for alias in ALIASES:
            attempt = 0 if alias == "load" else 1
            token = tokens[(run["id"], attempt, alias)]
            assert token == stored_token(flux, run["id"], alias)  # what the dispatch recorded
            assert RANDOM_TOKEN.fullmatch(token), token
            assert token != f"flux-{run['id']}-1-{alias}"  # not derivable from the run any more
    assert len(set(tokens.values())) == 2 * len(ALIASES)  # each task of each run: a token of its own

    # A retry is a new attempt: new tokens, none of the first attempt's.
    assert fail(flux, first["id"], None, user=OPERATOR)[0] == 200
    flux.ok("POST", f"/runs/{first['id']}/retry", {"reason": "again"}, user=OPERATOR)
    retried = {alias: stored_token(flux, first["id"], alias, attempt=2) for alias in ALIASES}
    assert all(token is not None and RANDOM_TOKEN.fullmatch(token) for token in retried.values())
    assert not set(retried.values()) & set(tokens.values())
    again = received(invoked)
    assert {alias: again[(first["id"], 2, alias)] for alias in ALIASES[1:]} == {
        alias: retried[alias] for alias in ALIASES[1:]
    }


# --- the right token completes, any other is refused ----------------------------------------------------


def test_only_the_token_of_the_runs_current_attempt_completes_or_fails_it(
    flux: Lambda, invoked: list[dict[str, Any]]
) -> None:
    run, other = start(flux, "tb_queued", 202401), start(flux, "tb_queued", 202402)
    tokens = received(invoked)
    mine, theirs = tokens[(run["id"], 1, "notify")], tokens[(other["id"], 1, "notify")]

    guesses = [
        f"flux-{run['id']}-1-notify",  # the token as it used to be derived
        theirs,  # another run's
        mine[:-1],
        mine + "A",
        mine.upper(),
        "é" + mine[1:],
    ]
    for wrong in guesses:
        status, answer = report(flux, "tb_queued", 202401, run["id"], wrong)
        assert (status, answer["error"]["code"]) == (403, "forbidden"), wrong
        status, answer = fail(flux, run["id"], wrong)
        assert (status, answer["error"]["code"]) == (403, "forbidden"), wrong
        status, answer = report(flux, "tb_queued", 202401, run["id"], wrong, user=OPERATOR)
        assert status == 403, wrong  # a wrong token is refused even to an operator
    assert (status_of(flux, run["id"]), status_of(flux, other["id"])) == ("running", "running")
    assert flux.ok("GET", "/executions", query={"table": "tb_queued"})["executions"] == []

    # The task's own token completes its run, whoever sends it (here someone listed nowhere).
    status, answer = report(flux, "tb_queued", 202401, run["id"], mine)
    assert status == 200, answer
    assert status_of(flux, run["id"]) == "succeeded"

    # An older attempt's token is refused once the run is retried; the new one works.
    assert fail(flux, other["id"], theirs)[0] == 200
    flux.ok("POST", f"/runs/{other['id']}/retry", {"reason": "again"}, user=OPERATOR)
    new = received(invoked)[(other["id"], 2, "notify")]
    assert new != theirs and new == stored_token(flux, other["id"], "notify", attempt=2)
    assert report(flux, "tb_queued", 202402, other["id"], theirs)[0] == 403
    assert fail(flux, other["id"], theirs)[0] == 403
    assert status_of(flux, other["id"]) == "running"
    assert report(flux, "tb_queued", 202402, other["id"], new)[0] == 200
    assert status_of(flux, other["id"]) == "succeeded"


def test_a_task_recorded_before_tokens_were_stored_is_settled_by_an_operator_or_its_event(
    flux: Lambda, engine: Engine
) -> None:
    """Migration 0006 leaves the tokens of tasks recorded before it NULL: no token matches them."""
    queued, glued = start(flux, "tb_queued", 202401), start(flux, "tb_glued", 202401)
    with engine.begin() as connection:
        connection.execute(text("UPDATE task_dispatches SET token = NULL"))

    for wrong in (f"flux-{queued['id']}-1-notify", "None", "null"):
        assert report(flux, "tb_queued", 202401, queued["id"], wrong)[0] == 403
        assert fail(flux, queued["id"], wrong)[0] == 403
    assert report(flux, "tb_queued", 202401, queued["id"], None)[0] == 403  # a stranger, without one
    assert report(flux, "tb_queued", 202401, queued["id"], None, user=OPERATOR)[0] == 200
    assert status_of(flux, queued["id"]) == "succeeded"

    [job_run] = boto3.client("glue", region_name=REGION).get_job_runs(JobName="job-glued")["JobRuns"]
    assert flux.invoke(glue_event("job-glued", job_run["Id"], "SUCCEEDED")) == {"status": "run succeeded"}
    assert status_of(flux, glued["id"]) == "succeeded"


def test_the_migration_adds_the_token_column_null_for_the_tasks_recorded_before(
    flux: Lambda, engine: Engine
) -> None:
    run = start(flux, "tb_glued", 202401)
    flux.deps.store.close()  # its connections would hold the table while the schema changes
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0005")
        assert "token" not in {c["name"] for c in inspect(connection).get_columns("task_dispatches")}
    upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT run_id, alias, token FROM task_dispatches")).all()
    assert [tuple(row) for row in rows] == [(run["id"], "load", None)]


# --- never logged, never shown --------------------------------------------------------------------------


def test_tokens_appear_in_no_log_and_no_answer(
    flux: Lambda,
    invoked: list[dict[str, Any]],
    logs: io.StringIO,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="flux_control")
    run = start(flux, "tb_every", 202401)
    tokens = {alias: stored_token(flux, run["id"], alias) for alias in ALIASES}
    assert received(invoked)[(run["id"], 1, "notify")] == tokens["notify"]
    # A task reports with its token (the request is logged), a refused one too, and the run is read.
    refused = report(flux, "tb_every", 202401, run["id"], f"flux-{run['id']}-1-notify")
    assert refused[0] == 403
    token = tokens["notify"]
    assert token is not None
    status, completed = report(flux, "tb_every", 202401, run["id"], token)
    assert status == 200, completed
    answers = [
        completed,
        flux.ok("GET", f"/runs/{run['id']}"),
        flux.ok("GET", "/runs", query={"table": "tb_every"}),
        flux.ok("GET", "/executions", query={"table": "tb_every"}),
    ]
    detail = answers[1]["run"]
    assert [t["alias"] for t in detail["tasks"]] == list(ALIASES)
    assert all(t["external_id"] for t in detail["tasks"])  # the execution ARN among them

    written = logs.getvalue()
    records = [json.dumps(record.__dict__, default=str) for record in caplog.records]
    lines = [json.loads(line) for line in written.splitlines()]
    assert [line["path"] for line in lines if line["message"] == "request"][:3] == [
        "/runs",
        "/register_execution",
        "/register_execution",
    ]  # the log was captured
    for alias, secret in tokens.items():
        assert secret is not None and secret not in json.dumps(answers), alias
        assert secret not in written, alias
        assert not [record for record in records if secret in record], alias


def test_a_glue_start_that_failed_ambiguously_names_no_token(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warning logged after each 5xx answer and the error the run fails with name the start by its
    dispatch id; the lookup compares the token without showing it."""
    monkeypatch.setattr(tasks, "GLUE_LOOKUP_DELAY", 0)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    secret = "Zq3xN0tD3rivable-fromTheRun_0123456789abcdef"
    request = TaskRequest(7, 2, "tb_glued", "load", "glue", "job-glued", {"ano_mes": 1}, token=secret)
    glue = boto3.client("glue", region_name=REGION)
    caplog.set_level(logging.DEBUG)
    with Stubber(glue) as stub:
        for _ in range(tasks.GLUE_START_CALLS):
            stub.add_client_error("start_job_run", "InternalServiceException", "boom", http_status_code=500)
            stub.add_response(
                "get_job_runs", {"JobRuns": [{"Id": "jr_x", "Arguments": {"--flux_token": "x"}}]}
            )
        with pytest.raises(TaskStartError) as caught:
            AwsTaskStarter(lambda service: glue).start(request)

    assert "no run of the job carries this start's --flux_token" in str(caught.value)
    assert secret not in str(caught.value)
    warnings = [r for r in caplog.records if r.getMessage().startswith("StartJobRun failed")]
    assert len(warnings) == tasks.GLUE_START_CALLS
    assert {getattr(r, "task", None) for r in warnings} == {"flux-7-2-load"}
    assert not [r for r in caplog.records if secret in json.dumps(r.__dict__, default=str)]
    assert secret not in repr(request)


@pytest.mark.parametrize(
    ("task_type", "target", "param"),
    [("glue", "job", "--flux_token"), ("glue", "job", "--flux_run_id"), ("sqs", QUEUE_URL, "flux")],
)
def test_a_param_that_would_replace_the_token_is_refused_where_it_is_written(
    task_type: str, target: str, param: str, write_defs: WriteDefs
) -> None:
    task = {"alias": "load", "type": task_type, "target": target, "params": {"day": "1", param: "x"}}
    document = json.dumps({"version": 1, "name": "a", "partitions": [], "tasks": [task]})
    result = validate_directory(write_defs({"a.yaml": document}))
    assert [(p.code, p.message) for p in result.problems] == [
        (
            "reserved-param",
            f"param {param!r} is reserved: Flux Control passes the run's id and token under '--flux_*' "
            "(Glue) and 'flux' (the payload of the other targets); rename it",
        )
    ]
    assert str(result.problems[0]).startswith("defs/a.yaml:1:")
