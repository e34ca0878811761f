"""The ``eventbridge`` and ``http`` task targets (issue 20, DESIGN §4 Dispatch and Completion).

Through ``lambda_handler`` on SQLite and PostgreSQL, with moto for EventBridge (a rule sends the task
events to an SQS queue, to read them back) and Secrets Manager, and a real HTTP endpoint on 127.0.0.1
(:mod:`tests.http_endpoint`) for the http tasks. Both kinds complete as SQS and Lambda tasks do: the
consumer reports with the run id and the token it received.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from botocore.stub import Stubber
from sqlalchemy import Engine

from controller import __version__
from controller.aws import clients
from controller.aws.tasks import TASK_EVENT_DETAIL_TYPE, TASK_EVENT_SOURCE, AwsTaskStarter
from controller.core.effects import TaskRequest, TaskStartError
from tests.factories import table_doc
from tests.http_endpoint import Answer, Endpoint, running_endpoint
from tests.runtime_support import ACCOUNT, REGION, Lambda, partitions, running_lambda, stored_token

MONTH = [{"name": "ano_mes", "type": "int"}]
OPERATOR, CONSUMER = "otto", "a-consumer-listed-nowhere"
BUS = "flux-tasks"
BUS_ARN = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{BUS}"
SECRET_NAME = "flux/http/hook"
SECRET_VALUE = "Bearer s3cr3t-Never-Logged-0123456789"
PARAMS = {"mes": "{{ partitions.ano_mes }}", "mode": "full"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Endpoint]:
    with running_endpoint() as running:
        yield running


@pytest.fixture
def hook(endpoint: Endpoint) -> Endpoint:
    """The endpoint, answering 202 with nothing recorded yet."""
    endpoint.reset()
    return endpoint


def tables(endpoint: Endpoint) -> list[dict[str, Any]]:
    def table(name: str, task: dict[str, Any]) -> dict[str, Any]:
        return table_doc(name, partitions=MONTH, operators=[OPERATOR], tasks=[{"params": PARAMS, **task}])

    return [
        table("tb_announced", {"alias": "announce", "type": "eventbridge", "target": BUS}),
        table("tb_announced_by_arn", {"alias": "announce", "type": "eventbridge", "target": BUS_ARN}),
        table("tb_posted", {"alias": "post", "type": "http", "target": endpoint.url("/hook?src=flux")}),
        table(
            "tb_posted_with_secret",
            {"alias": "post", "type": "http", "target": endpoint.url(), "auth_secret": SECRET_NAME},
        ),
    ]


@pytest.fixture
def flux(engine: Engine, hook: Endpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    for name in ("FLUX_HTTP_ALLOWED_HOSTS", "FLUX_HTTP_CONNECT_TIMEOUT", "FLUX_HTTP_READ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_LAMBDA_RUNTIME_API", raising=False)
    with running_lambda(engine, tables(hook), monkeypatch) as handler:
        parameters.clear_caches()  # type: ignore[no-untyped-call]  # a secret read by another test
        boto3.client("events", region_name=REGION).create_event_bus(Name=BUS)
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=SECRET_NAME, SecretString=SECRET_VALUE
        )
        yield handler
    parameters.clear_caches()  # type: ignore[no-untyped-call]


@pytest.fixture
def task_events(flux: Lambda) -> Any:
    """What a rule matching the task events delivers: an SQS queue to read them from."""
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="task-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = boto3.client("events", region_name=REGION)
    pattern = {"source": [TASK_EVENT_SOURCE], "detail-type": [TASK_EVENT_DETAIL_TYPE]}
    events.put_rule(Name="tasks", EventBusName=BUS, EventPattern=json.dumps(pattern))
    events.put_targets(Rule="tasks", EventBusName=BUS, Targets=[{"Id": "queue", "Arn": arn}])

    def read() -> list[dict[str, Any]]:
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
        return [json.loads(m["Body"]) for m in answer.get("Messages", [])]

    return read


def start(flux: Lambda, table: str, month: int = 202401) -> dict[str, Any]:
    """A manual run, dispatched at once; its detail as GET /runs/{id} shows it."""
    body = {"table_name": table, "partitions": partitions(ano_mes=month), "reason": "test"}
    run = flux.ok("POST", "/runs", body, user=OPERATOR)["run"]
    detail: dict[str, Any] = flux.ok("GET", f"/runs/{run['id']}")["run"]
    return detail


def report(flux: Lambda, table: str, run_id: int, token: str | None) -> tuple[int, dict[str, Any]]:
    item = {"table_name": table, "partitions": partitions(ano_mes=202401), "run_id": run_id, "token": token}
    return flux.call("POST", "/register_execution", {"data": [item]}, user=CONSUMER)


def flux_section(run: dict[str, Any], table: str, alias: str, token: str | None) -> dict[str, Any]:
    return {
        "run_id": run["id"],
        "attempt": 1,
        "table": table,
        "alias": alias,
        "partitions": {"ano_mes": 202401},
        "token": token,
    }


# --- eventbridge ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["tb_announced", "tb_announced_by_arn"])
def test_an_eventbridge_task_puts_its_event_and_the_consumer_completes_the_run_with_its_token(
    flux: Lambda, task_events: Any, table: str
) -> None:
    run = start(flux, table)
    assert run["status"] == "running", run
    token = stored_token(flux, run["id"], "announce")

    [event] = task_events()
    assert (event["source"], event["detail-type"]) == (TASK_EVENT_SOURCE, TASK_EVENT_DETAIL_TYPE)
    assert event["detail"] == {
        "mes": "202401",
        "mode": "full",
        "flux": flux_section(run, table, "announce", token),
    }
    [task] = run["tasks"]
    assert (task["type"], task["status"], task["external_id"]) == ("eventbridge", "started", event["id"])

    assert report(flux, table, run["id"], "not-the-token")[0] == 403
    status, answer = report(flux, table, run["id"], token)
    assert status == 200, answer
    assert flux.ok("GET", f"/runs/{run['id']}")["run"]["status"] == "succeeded"
    [execution] = flux.ok("GET", "/executions", query={"table": table})["executions"]
    assert execution["run_id"] == run["id"]
    assert report(flux, table, run["id"], token)[0] == 409  # a repeated delivery's second report


def test_an_eventbridge_task_on_a_bus_that_does_not_exist_fails_its_run_with_the_aws_error(
    flux: Lambda,
) -> None:
    boto3.client("events", region_name=REGION).delete_event_bus(Name=BUS)
    run = start(flux, "tb_announced")
    assert run["status"] == "failed"
    assert "eventbridge flux-tasks: ResourceNotFoundException" in run["error"], run["error"]


def _put_events_answering(response: dict[str, Any] | None = None, error: str | None = None) -> Any:
    events = boto3.client("events", region_name=REGION)
    stub = Stubber(events)
    if error is not None:
        stub.add_client_error("put_events", error, "Rate exceeded", http_status_code=400)
    else:
        stub.add_response("put_events", response)
    stub.activate()
    return events


def _request(type_: str, target: str, **fields: Any) -> TaskRequest:
    return TaskRequest(
        7, 1, "tb", "go", type_, target, {"ano_mes": 1}, {"a": 1}, token="tok-Abc123-not-shown", **fields
    )


@pytest.mark.parametrize(
    ("code", "limited"),
    [("InternalFailure", False), ("ThrottlingException", True)],
    ids=["failed", "throttled"],
)
def test_a_rejected_entry_is_a_failed_start_with_its_code_throttling_queues_the_run(
    code: str, limited: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    rejected = {"FailedEntryCount": 1, "Entries": [{"ErrorCode": code, "ErrorMessage": "try later"}]}
    events = _put_events_answering(rejected)
    with pytest.raises(TaskStartError) as caught:
        AwsTaskStarter(lambda service: events).start(_request("eventbridge", BUS))
    assert str(caught.value) == f"eventbridge {BUS}: {code}: try later"
    assert caught.value.limited is limited

    # A throttled call (botocore's retries spent) queues the run too.
    events = _put_events_answering(error="ThrottlingException")
    with pytest.raises(TaskStartError) as caught:
        AwsTaskStarter(lambda service: events).start(_request("eventbridge", BUS))
    assert caught.value.limited
    assert "tok-Abc123" not in str(caught.value)


# --- http: the request and its completion ----------------------------------------------------------------


def test_an_http_task_posts_its_params_and_token_and_the_endpoint_completes_the_run(
    flux: Lambda, hook: Endpoint
) -> None:
    hook.answer = Answer(202, {"X-Request-Id": "req-\x07981 "})
    run = start(flux, "tb_posted")
    assert run["status"] == "running", run
    token = stored_token(flux, run["id"], "post")
    assert token is not None

    [request] = hook.received
    assert (request.method, request.path) == ("POST", "/hook?src=flux")
    assert json.loads(request.body) == {
        "mes": "202401",
        "mode": "full",
        "flux": flux_section(run, "tb_posted", "post", token),
    }
    assert request.headers["idempotency-key"] == token
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"flux-control/{__version__}"
    assert "authorization" not in request.headers
    [task] = run["tasks"]
    assert (task["type"], task["external_id"]) == ("http", "req-981")  # control characters dropped

    status, answer = report(flux, "tb_posted", run["id"], token)
    assert status == 200, answer
    assert flux.ok("GET", f"/runs/{run['id']}")["run"]["status"] == "succeeded"


def test_without_a_request_id_the_external_id_is_the_location_else_one_from_the_start(
    flux: Lambda, hook: Endpoint
) -> None:
    hook.answer = Answer(201, {"Location": "/jobs/77"})
    assert start(flux, "tb_posted", 202401)["tasks"][0]["external_id"] == "/jobs/77"
    hook.answer = Answer(200)
    run = start(flux, "tb_posted", 202402)
    assert run["tasks"][0]["external_id"] == f"http-200-flux-{run['id']}-1-post"  # never the token


def test_a_non_2xx_answer_fails_the_run_with_its_status_and_a_short_clean_excerpt(
    flux: Lambda, hook: Endpoint
) -> None:
    hook.answer = Answer(500, body=b"database \x1b[31mdown\x00\r\n" + b"x" * 500)
    run = start(flux, "tb_posted")
    assert run["status"] == "failed"
    prefix = f"http {hook.url('/hook?src=flux')}: 500 Internal Server Error: database [31mdown x"
    [task] = run["tasks"]
    assert task["error"].startswith(prefix), task["error"]
    quoted = task["error"].split(": 500 Internal Server Error: ", 1)[1]
    assert len(quoted) == 200 and quoted.endswith("…")
    assert prefix in run["error"]


def test_a_slow_endpoint_times_out_and_fails_the_run(
    flux: Lambda, hook: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUX_HTTP_READ_TIMEOUT", "0.2")
    hook.answer = Answer(202, delay=0.6)
    run = start(flux, "tb_posted")
    assert run["status"] == "failed"
    assert "no answer within 0.2 s (the request may have reached the endpoint)" in run["error"]
    assert len(hook.received) == 1  # sent once, never again


def test_a_redirect_is_not_followed(flux: Lambda, hook: Endpoint) -> None:
    hook.answer = Answer(307, {"Location": hook.url("/elsewhere")})
    run = start(flux, "tb_posted")
    assert run["status"] == "failed"
    assert (
        f"307 Temporary Redirect: redirects are not followed (answered a redirect to {hook.url('/elsewhere')})"
        in run["error"]
    )
    assert [r.path for r in hook.received] == ["/hook?src=flux"]


def test_a_429_is_the_endpoints_own_limit_and_queues_the_run(flux: Lambda, hook: Endpoint) -> None:
    hook.answer = Answer(429, body=b"slow down")
    run = start(flux, "tb_posted")
    assert run["status"] == "queued", run
    hook.answer = Answer(202)
    assert flux.invoke({"flux_action": "sweep"})["status"] == "swept"  # queued runs start again
    assert flux.ok("GET", f"/runs/{run['id']}")["run"]["status"] == "running"
    assert len(hook.received) == 2


def test_a_host_not_in_the_allowed_hosts_is_refused_before_anything_is_sent(
    flux: Lambda, hook: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUX_HTTP_ALLOWED_HOSTS", "api.example.com, *.internal.example.com")
    run = start(flux, "tb_posted", 202401)
    assert run["status"] == "failed"
    assert (
        "host '127.0.0.1' is not allowed (FLUX_HTTP_ALLOWED_HOSTS is 'api.example.com, *.internal.example.com')"
        in run["error"]
    )
    assert hook.received == []
    monkeypatch.setenv("FLUX_HTTP_ALLOWED_HOSTS", "api.example.com,127.0.0.1")
    assert start(flux, "tb_posted", 202402)["status"] == "running"
    assert len(hook.received) == 1


# --- http: auth_secret ----------------------------------------------------------------------------------


def test_the_auth_secret_is_the_authorization_header_and_appears_in_no_log_answer_or_error(
    flux: Lambda, hook: Endpoint, logs: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    # Everything at INFO, the function's own loggers at DEBUG. (botocore's DEBUG wire log shows every
    # answer AWS gives, the database URL's secret included: the function logs at INFO.)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="flux_control")
    caplog.set_level(logging.DEBUG, logger="flux-control")
    run = start(flux, "tb_posted_with_secret", 202401)
    assert run["status"] == "running", run
    [request] = hook.received
    assert request.headers["authorization"] == SECRET_VALUE

    # An endpoint that echoes what it was sent: the error quotes it without the secret.
    hook.answer = Answer(401, body=b"bad credentials: ", echo_header="Authorization")
    failed = start(flux, "tb_posted_with_secret", 202402)
    assert failed["status"] == "failed"
    assert failed["error"].endswith("401 Unauthorized: bad credentials: ***"), failed["error"]

    answers = json.dumps(
        [flux.ok("GET", "/runs", query={"table": "tb_posted_with_secret"}), flux.ok("GET", "/tables")]
    )
    written = logs.getvalue()
    assert "401 Unauthorized" in written  # the failure was logged, its reason with it
    records = [json.dumps(record.__dict__, default=str) for record in caplog.records]
    assert SECRET_VALUE not in answers
    assert SECRET_VALUE not in written
    assert not [record for record in records if SECRET_VALUE in record]
    assert SECRET_NAME in answers  # the secret's name is no secret


def test_a_missing_secret_fails_the_start_naming_the_secret(flux: Lambda, hook: Endpoint) -> None:
    boto3.client("secretsmanager", region_name=REGION).delete_secret(
        SecretId=SECRET_NAME, ForceDeleteWithoutRecovery=True
    )
    run = start(flux, "tb_posted_with_secret")
    assert run["status"] == "failed"
    assert f"auth_secret {SECRET_NAME}: " in run["error"], run["error"]
    assert hook.received == []


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    clients.client.cache_clear()
    yield
    clients.client.cache_clear()


# --- serve ---------------------------------------------------------------------------------------------


def test_serve_starts_and_completes_eventbridge_and_local_http_tasks_and_posts_nowhere_else(
    hook: Endpoint, tmp_path: Any
) -> None:
    """serve creates the task bus in its local AWS, posts http tasks to local hosts for real, and its
    local consumer reports both back with their tokens; an http task for another host fails its run
    (serve allows local hosts only unless FLUX_HTTP_ALLOWED_HOSTS says otherwise)."""
    from tests.factories import states
    from tests.serve_support import serving, wait_for

    def table(name: str, *tasks: dict[str, Any]) -> dict[str, Any]:
        return table_doc(name, partitions=MONTH, tasks=[{"params": PARAMS, **task} for task in tasks])

    documents = [
        table(
            "tb_both",
            {"alias": "announce", "type": "eventbridge", "target": "serve-tasks"},
            {"alias": "post", "type": "http", "target": hook.url("/serve")},
        ),
        table("tb_remote", {"alias": "post", "type": "http", "target": "https://api.example.com/hook"}),
    ]
    with serving(tmp_path, states(documents)) as server:
        assert "serve-tasks" in {b["Name"] for b in server.client("events").list_event_buses()["EventBuses"]}
        runs = {}
        for name in ("tb_both", "tb_remote"):
            body = {"table_name": name, "partitions": partitions(ano_mes=202401), "reason": "t", "user": "u"}
            runs[name] = server.ok("POST", "/runs", body)["run"]["id"]

        def settled(run_id: int) -> Any:
            run = server.ok("GET", f"/runs/{run_id}")["run"]
            return run if run["status"] in ("succeeded", "failed") else None

        both = wait_for(lambda: settled(runs["tb_both"]), 30, "tb_both to end")
        remote = wait_for(lambda: settled(runs["tb_remote"]), 30, "tb_remote to end")
    assert both["status"] == "succeeded", both
    assert sorted((t["type"], t["status"]) for t in both["tasks"]) == [
        ("eventbridge", "succeeded"),
        ("http", "succeeded"),
    ]
    [posted] = hook.received
    assert posted.path == "/serve"
    assert json.loads(posted.body)["flux"]["token"] == posted.headers["idempotency-key"]
    assert remote["status"] == "failed"
    assert (
        "host 'api.example.com' is not allowed (FLUX_HTTP_ALLOWED_HOSTS is 'localhost, 127.0.0.1, ::1')"
        in (remote["error"])
    )
