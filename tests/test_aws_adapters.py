"""AWS adapters against moto's backends (and botocore's Stubber where moto cannot show the call)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.stub import Stubber
from moto import mock_aws

from controller.aws.clients import client
from controller.aws.events import EventBridgePublisher, PublishError
from controller.aws.scheduler import EventBridgeScheduler, at_expression
from controller.aws.settings import AwsSettings, MissingSetting
from controller.aws.tasks import AwsTaskStarter, execution_arn
from controller.core.effects import ScheduleRequest, TaskRequest, TaskStartError
from controller.core.keys import Key
from controller.core.runs import RunEvent
from controller.local.aws import ensure_schedule_group

ACCOUNT = "123456789012"
SETTINGS = AwsSettings(
    schedule_group="flux-test",
    function_arn=f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:flux-control",
    scheduler_role_arn=f"arn:aws:iam::{ACCOUNT}:role/flux-scheduler",
    event_bus="flux-bus",
)
FIRE_AT = datetime(2026, 11, 29, 12, 5, 30, tzinfo=UTC)
KEY: Key = {"dt": "2026-11-29", "region": "sa"}
#: The task's token (random in a dispatch: ``secrets.token_urlsafe(32)``).
TOKEN = "Zq3x-secret-of-run-42-attempt-1-enrich_0123456"
#: What a task receives besides its params, to report completion.
FLUX = {
    "run_id": 42,
    "attempt": 1,
    "table": "tb_op_enriquecido",
    "alias": "enrich",
    "partitions": KEY,
    "token": TOKEN,
}


@pytest.fixture(autouse=True)
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials, no local endpoint, a fresh client cache, and moto for every AWS call."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    client.cache_clear()
    with mock_aws(config={"lambda": {"use_docker": False}}):
        yield
    client.cache_clear()


def task(type_: str, target: str, **params: Any) -> TaskRequest:
    """Run 42, attempt 1, of tb_op_enriquecido for dt=2026-11-29, region=sa."""
    return TaskRequest(42, 1, "tb_op_enriquecido", "enrich", type_, target, KEY, params, token=TOKEN)


# --- clients and settings -----------------------------------------------------------------------------


def test_clients_are_cached_per_service_with_retries_and_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "sa-east-1")
    sqs = client("sqs")
    assert client("sqs") is sqs and client("glue") is not sqs
    assert sqs.meta.region_name == "sa-east-1"
    # botocore counts max_attempts=5 as retries: six attempts in all.
    assert sqs.meta.config.retries == {"mode": "standard", "total_max_attempts": 6}
    assert (sqs.meta.config.connect_timeout, sqs.meta.config.read_timeout) == (
        5,
        10,
    )  # under the 28 s timeout
    client.cache_clear()
    assert client("sqs") is not sqs


def test_settings_from_env_defaults_and_missing_arns_fail_only_when_scheduling() -> None:
    settings = AwsSettings.from_env({"FLUX_FUNCTION_ARN": "", "FLUX_SCHEDULE_GROUP": ""})
    assert settings == AwsSettings("flux-control", "", "", "default")
    scheduler = EventBridgeScheduler(settings)  # constructing it needs no ARN
    with pytest.raises(MissingSetting, match="FLUX_FUNCTION_ARN and FLUX_SCHEDULER_ROLE_ARN not set"):
        scheduler.put(ScheduleRequest("flux-run-1-t", 1, FIRE_AT))
    names = ("FLUX_SCHEDULE_GROUP", "FLUX_FUNCTION_ARN", "FLUX_SCHEDULER_ROLE_ARN", "FLUX_EVENT_BUS")
    assert AwsSettings.from_env(dict(zip(names, "gfrb", strict=True))) == AwsSettings("g", "f", "r", "b")


# --- scheduler ------------------------------------------------------------------------------------------


@pytest.fixture
def scheduler() -> EventBridgeScheduler:
    scheduler = EventBridgeScheduler(SETTINGS)
    ensure_schedule_group(scheduler.client, SETTINGS.schedule_group)
    return scheduler


@pytest.mark.parametrize(
    "fire_at",
    [FIRE_AT, datetime(2026, 11, 29, 17, 35, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))],
    ids=["utc", "utc+05:30"],
)
def test_put_creates_a_one_time_utc_schedule_that_fires_the_run(
    scheduler: EventBridgeScheduler, fire_at: datetime
) -> None:
    scheduler.put(ScheduleRequest("flux-run-42-tb_op", 42, fire_at))
    got = boto3.client("scheduler").get_schedule(Name="flux-run-42-tb_op", GroupName="flux-test")
    # The scheduler's precision is a minute: the schedule is for the whole minute after the fire time.
    assert got["ScheduleExpression"] == "at(2026-11-29T12:06:00)"
    assert got["ScheduleExpressionTimezone"] == "UTC"
    assert got["ActionAfterCompletion"] == "DELETE"
    assert got["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert got["State"] == "ENABLED"
    assert got["Target"]["Arn"] == SETTINGS.function_arn
    assert got["Target"]["RoleArn"] == SETTINGS.scheduler_role_arn
    assert json.loads(got["Target"]["Input"]) == {"flux_action": "fire", "run_id": 42}
    assert got["Target"]["RetryPolicy"] == {"MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 86400}


@pytest.mark.parametrize(
    ("fire_at", "expression"),
    [
        (datetime(2026, 11, 29, 12, 5, 0, tzinfo=UTC), "at(2026-11-29T12:05:00)"),
        (datetime(2026, 11, 29, 12, 5, 0, 1, tzinfo=UTC), "at(2026-11-29T12:06:00)"),
        (datetime(2026, 11, 29, 12, 5, 59, tzinfo=UTC), "at(2026-11-29T12:06:00)"),
        (datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC), "at(2027-01-01T00:00:00)"),
    ],
    ids=["whole-minute", "a-microsecond-after", "a-second-before-the-next", "new-year"],
)
def test_a_schedule_is_written_for_the_first_whole_minute_at_or_after_the_fire_time(
    fire_at: datetime, expression: str
) -> None:
    # The scheduler invokes anywhere in the minute of its expression: rounded down, a run would fire
    # up to 59 seconds before its fire time, and an early fire dispatches nothing.
    assert at_expression(fire_at) == expression


def test_the_schedule_precision_is_a_setting_for_serves_stand_in_which_fires_at_the_second() -> None:
    moment = datetime(2026, 11, 29, 12, 5, 30, 500, tzinfo=UTC)
    precise = AwsSettings.from_env({"FLUX_SCHEDULE_PRECISION_SECONDS": "1"})
    assert at_expression(moment, precise.schedule_precision_seconds) == "at(2026-11-29T12:05:31)"
    assert AwsSettings.from_env({}).schedule_precision_seconds == 60
    for wrong in ("0", "61", "1.5", "soon"):
        with pytest.raises(MissingSetting, match="FLUX_SCHEDULE_PRECISION_SECONDS must be a whole number"):
            AwsSettings.from_env({"FLUX_SCHEDULE_PRECISION_SECONDS": wrong})


def test_put_again_moves_the_fire_time_and_ensure_group_keeps_schedules(
    scheduler: EventBridgeScheduler,
) -> None:
    scheduler.put(ScheduleRequest("flux-run-42-tb_op", 42, FIRE_AT))
    scheduler.put(ScheduleRequest("flux-run-42-tb_op", 42, FIRE_AT + timedelta(minutes=2)))
    assert ensure_schedule_group(scheduler.client, SETTINGS.schedule_group) is False
    api = boto3.client("scheduler")
    assert [s["Name"] for s in api.list_schedules(GroupName="flux-test")["Schedules"]] == [
        "flux-run-42-tb_op"
    ]
    got = api.get_schedule(Name="flux-run-42-tb_op", GroupName="flux-test")
    assert got["ScheduleExpression"] == "at(2026-11-29T12:08:00)"
    assert json.loads(got["Target"]["Input"]) == {"flux_action": "fire", "run_id": 42}


def test_delete_removes_the_schedule_a_missing_one_is_fine_other_errors_raise(
    scheduler: EventBridgeScheduler,
) -> None:
    scheduler.put(ScheduleRequest("flux-run-42-tb_op", 42, FIRE_AT))
    scheduler.delete("flux-run-42-tb_op")
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        boto3.client("scheduler").get_schedule(Name="flux-run-42-tb_op", GroupName="flux-test")
    scheduler.delete("flux-run-42-tb_op")
    api = boto3.client("scheduler")
    with Stubber(api) as stub, pytest.raises(ClientError, match="AccessDeniedException"):
        stub.add_client_error("delete_schedule", "AccessDeniedException", "not allowed")
        EventBridgeScheduler(SETTINGS, api).delete("flux-run-42-tb_op")


def test_naive_fire_time_is_refused_and_nothing_is_scheduled(scheduler: EventBridgeScheduler) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        scheduler.put(ScheduleRequest("flux-run-42-tb_op", 42, datetime(2026, 11, 29, 12, 5, 30)))
    assert boto3.client("scheduler").list_schedules(GroupName="flux-test")["Schedules"] == []


# --- tasks ----------------------------------------------------------------------------------------------


def test_glue_job_run_gets_string_arguments_with_params_over_partitions() -> None:
    glue = boto3.client("glue")
    command = {"Name": "glueetl", "ScriptLocation": "s3://b/j.py"}
    glue.create_job(Name="job-enrich", Role=f"arn:aws:iam::{ACCOUNT}:role/glue", Command=command)
    request = task("glue", "job-enrich", **{"--region": "br", "--full": True, "--cfg": {"a": [1]}, "--n": 3})
    run_id = AwsTaskStarter().start(request)
    arguments = glue.get_job_run(JobName="job-enrich", RunId=run_id)["JobRun"]["Arguments"]
    expected = {"--dt": "2026-11-29", "--region": "br", "--flux_run_id": "42", "--full": "true", "--n": "3"}
    expected["--flux_token"] = TOKEN
    assert arguments == {**expected, "--cfg": '{"a": [1]}'}


def test_missing_glue_job_is_a_task_start_error_with_the_aws_code() -> None:
    with pytest.raises(TaskStartError) as caught:
        AwsTaskStarter().start(task("glue", "no-such-job"))
    assert str(caught.value).startswith("glue no-such-job: EntityNotFoundException: ")
    assert isinstance(caught.value.__cause__, ClientError)


@pytest.fixture
def state_machine() -> str:
    definition = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})
    role = f"arn:aws:iam::{ACCOUNT}:role/sfn"
    created = boto3.client("stepfunctions").create_state_machine(
        name="sm", definition=definition, roleArn=role
    )
    return str(created["stateMachineArn"])


def test_step_function_execution_has_a_deterministic_name_and_the_run_in_its_input(
    state_machine: str,
) -> None:
    starter, request = AwsTaskStarter(), task("step_function", state_machine, mode="full")
    arn = starter.start(request)
    described = boto3.client("stepfunctions").describe_execution(executionArn=arn)
    assert described["name"] == "flux-42-1-enrich"
    assert json.loads(described["input"]) == {"mode": "full", "flux": FLUX}
    assert starter.start(request) == arn
    # Once the first execution is no longer running, AWS answers ExecutionAlreadyExists.
    boto3.client("stepfunctions").stop_execution(executionArn=arn)
    assert starter.start(request) == arn
    # The name comes from the dispatch id, not from the token: the ARN is stored and shown.
    assert arn == f"arn:aws:states:us-east-1:{ACCOUNT}:execution:sm:flux-42-1-enrich"


def test_long_dispatch_ids_give_distinct_valid_execution_names(state_machine: str) -> None:
    sfn, names = boto3.client("stepfunctions"), set()
    for alias in ("a" * 63 + "x", "a" * 63 + "y"):
        request = TaskRequest(10**12, 3, "t", alias, "step_function", state_machine, {}, token=TOKEN)
        names.add(sfn.describe_execution(executionArn=AwsTaskStarter().start(request))["name"])
    assert len(names) == 2 and all(len(name) == 80 for name in names)
    assert execution_arn(f"{state_machine}:prod", "n") == f"arn:aws:states:us-east-1:{ACCOUNT}:execution:sm:n"


def test_sqs_standard_queue_gets_the_payload() -> None:
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    message_id = AwsTaskStarter().start(task("sqs", url, kind="rebuild"))
    (message,) = sqs.receive_message(QueueUrl=url, MessageSystemAttributeNames=["All"])["Messages"]
    assert message["MessageId"] == message_id
    assert json.loads(message["Body"]) == {"kind": "rebuild", "flux": FLUX}
    assert "MessageGroupId" not in message["Attributes"]


def test_sqs_fifo_queue_groups_by_table_and_deduplicates_by_the_dispatch_id() -> None:
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="jobs.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    starter, request = AwsTaskStarter(), task("sqs", url)
    message_id = starter.start(request)
    starter.start(request)
    received = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageSystemAttributeNames=["All"]
    )["Messages"]
    assert [m["MessageId"] for m in received] == [message_id]
    assert received[0]["Attributes"]["MessageGroupId"] == "tb_op_enriquecido"
    assert received[0]["Attributes"]["MessageDeduplicationId"] == "flux-42-1-enrich"
    assert json.loads(received[0]["Body"]) == {"flux": FLUX}


def test_sqs_throttling_is_a_task_start_error_with_the_aws_message() -> None:
    sqs = boto3.client("sqs")
    with Stubber(sqs) as stub:
        stub.add_client_error("send_message", "ThrottlingException", "Rate exceeded", http_status_code=400)
        with pytest.raises(TaskStartError) as caught:
            AwsTaskStarter(lambda service: sqs).start(task("sqs", "https://sqs.example/q"))
    assert str(caught.value) == "sqs https://sqs.example/q: ThrottlingException: Rate exceeded"


def test_lambda_is_invoked_asynchronously_with_the_payload() -> None:
    lam = boto3.client("lambda")
    body = json.dumps({"full": False, "flux": FLUX}).encode()
    answer = {
        "StatusCode": 202,
        "ResponseMetadata": {"RequestId": "req-1", "HTTPStatusCode": 202, "HTTPHeaders": {}},
    }
    with Stubber(lam) as stub:
        stub.add_response(
            "invoke", answer, {"FunctionName": "fn", "InvocationType": "Event", "Payload": body}
        )
        assert AwsTaskStarter(lambda service: lam).start(task("lambda", "fn", full=False)) == "req-1"


def test_lambda_against_moto_returns_the_invoke_request_id() -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("h.py", "def h(event, context):\n    return event\n")
    role = boto3.client("iam").create_role(RoleName="fn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lam = client("lambda")
    code = {"ZipFile": archive.getvalue()}
    lam.create_function(FunctionName="consumer", Runtime="python3.11", Role=role, Handler="h.h", Code=code)
    answers: list[dict[str, Any]] = []
    lam.meta.events.register("after-call.lambda.Invoke", lambda parsed, **_: answers.append(parsed))
    request_id = AwsTaskStarter().start(task("lambda", "consumer"))
    assert [a["StatusCode"] for a in answers] == [202]
    assert request_id and request_id == answers[0]["ResponseMetadata"]["RequestId"]


@pytest.mark.parametrize(
    "bus", ["tasks", f"arn:aws:events:us-east-1:{ACCOUNT}:event-bus/tasks"], ids=["name", "arn"]
)
def test_eventbridge_task_puts_one_event_with_the_payload_on_the_bus_it_names(bus: str) -> None:
    events = boto3.client("events")
    entry = {
        "Source": "flux-control.task",
        "DetailType": "Table Task Requested",
        "Detail": json.dumps({"full": False, "flux": FLUX}),
        "EventBusName": bus,
    }
    answer = {"FailedEntryCount": 0, "Entries": [{"EventId": "evt-1"}]}
    with Stubber(events) as stub:
        stub.add_response("put_events", answer, {"Entries": [entry]})
        assert AwsTaskStarter(lambda service: events).start(task("eventbridge", bus, full=False)) == "evt-1"


def test_eventbridge_task_against_moto_returns_the_event_id() -> None:
    boto3.client("events").create_event_bus(Name="tasks")
    answers: list[dict[str, Any]] = []
    events = client("events")
    events.meta.events.register("after-call.events.PutEvents", lambda parsed, **_: answers.append(parsed))
    event_id = AwsTaskStarter().start(task("eventbridge", "tasks"))
    assert event_id and [a["Entries"][0]["EventId"] for a in answers] == [event_id]


def test_an_entry_without_an_event_id_is_a_failed_start_even_without_a_failed_count() -> None:
    events = boto3.client("events")
    with Stubber(events) as stub:
        stub.add_response("put_events", {"Entries": [{}]})
        with pytest.raises(TaskStartError) as caught:
            AwsTaskStarter(lambda service: events).start(task("eventbridge", "tasks"))
    assert str(caught.value) == "eventbridge tasks: Unknown: the entry was not accepted"
    assert TOKEN not in str(caught.value)


class _Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def invoke(self, **_: Any) -> dict[str, Any]:
        raise self.error


def test_connection_errors_become_task_start_errors_and_other_errors_propagate() -> None:
    unreachable = _Failing(EndpointConnectionError(endpoint_url="http://lambda.local"))
    with pytest.raises(TaskStartError) as caught:
        AwsTaskStarter(lambda service: unreachable).start(task("lambda", "f"))
    assert (
        str(caught.value)
        == 'lambda f: EndpointConnectionError: Could not connect to the endpoint URL: "http://lambda.local"'
    )
    with pytest.raises(KeyError):
        AwsTaskStarter(lambda service: _Failing(KeyError("bug"))).start(task("lambda", "f"))
    with pytest.raises(TaskStartError, match=r"^emr cluster-1: unsupported task type$"):
        AwsTaskStarter().start(task("emr", "cluster-1"))


# --- events ---------------------------------------------------------------------------------------------


def _events(count: int) -> list[RunEvent]:
    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    return [
        RunEvent(i, "tb", {"dt": "2026-11-29"}, "scheduled", "dispatching", reason="fire", at=at)
        for i in range(count)
    ]


def test_publish_sends_batches_of_ten_entries() -> None:
    events_client = boto3.client("events")
    events_client.create_event_bus(Name="flux-bus")
    calls: list[list[dict[str, str]]] = []

    class Recording:
        def put_events(self, Entries: list[dict[str, str]]) -> dict[str, Any]:
            calls.append(Entries)
            return dict(events_client.put_events(Entries=Entries))

    events = _events(23)
    EventBridgePublisher(SETTINGS, Recording()).publish(events)
    assert [len(entries) for entries in calls] == [10, 10, 3]
    entries = [entry for batch in calls for entry in batch]
    assert {(e["Source"], e["DetailType"], e["EventBusName"]) for e in entries} == {
        ("flux-control", "Run State Change", "flux-bus")
    }
    assert [json.loads(e["Detail"]) for e in entries] == [event.detail() for event in events]
    assert json.loads(entries[0]["Detail"])["at"] == "2026-11-29T12:00:00+00:00"


def test_with_the_console_url_set_each_event_links_to_its_runs_page() -> None:
    settings = replace(SETTINGS, console_url="https://flux.example.com/prod/console")
    [entry] = [EventBridgePublisher(settings, boto3.client("events")).entry(e) for e in _events(1)]
    detail = json.loads(entry["Detail"])
    assert detail["console_url"] == "https://flux.example.com/prod/console/runs/0"
    assert "console_url" not in json.loads(EventBridgePublisher(SETTINGS).entry(_events(1)[0])["Detail"])
    environ = {"FLUX_CONSOLE_URL": " https://flux.example.com/prod/console/ "}
    assert AwsSettings.from_env(environ).console_url == "https://flux.example.com/prod/console"


def test_publish_of_nothing_makes_no_call_and_failed_entries_raise() -> None:
    events_client = boto3.client("events")
    publisher = EventBridgePublisher(SETTINGS, events_client)
    with Stubber(events_client) as stub:
        publisher.publish([])  # an unexpected call would raise UnStubbedResponseError
        stub.add_response(
            "put_events",
            {
                "FailedEntryCount": 1,
                "Entries": [{"EventId": "e0"}, {"ErrorCode": "InternalFailure", "ErrorMessage": "try again"}],
            },
            {"Entries": [publisher.entry(event) for event in _events(2)]},
        )
        with pytest.raises(
            PublishError, match=r"rejected 1 event\(s\): run 1: InternalFailure: try again"
        ) as caught:
            publisher.publish(_events(2))
        stub.assert_no_pending_responses()
    assert caught.value.failures == [(1, "InternalFailure", "try again")]
