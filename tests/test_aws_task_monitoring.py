"""Run monitoring on AWS (DESIGN §8): a target's own concurrency limit refusing a start, asking AWS how a
started task is (lost completions) and stopping it (timeouts).

Against moto where it plays the part: Glue job runs through moto's state manager (STARTING, RUNNING,
SUCCEEDED) and its ``MaxConcurrentRuns``; Step Functions executions running, stopped (ABORTED), and
succeeded or failed when moto executes the state machine; unknown runs and executions. botocore's
Stubber for what moto cannot produce: a Glue run FAILED or TIMEOUT, ``BatchStopJobRun`` (moto has none),
``ExecutionLimitExceeded``, Lambda's ``TooManyRequestsException``.
"""

from __future__ import annotations

import json
import time
import types
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse, HeadersDict
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws
from moto.core.config import DefaultConfig
from moto.moto_api import state_manager

from controller.aws import tasks
from controller.aws.clients import client
from controller.aws.task_monitoring import TIMEOUT_CAUSE
from controller.aws.tasks import AwsTaskStarter, execution_arn
from controller.core.effects import TaskRequest, TaskStartError, TaskStatus

ACCOUNT = "123456789012"
REGION = "us-east-1"
JOB = "job-enrich"
TOKEN = "Zq3x-secret-of-run-42-attempt-1-enrich_0123456"
OTHER_TOKEN = "Pw9y-secret-of-run-43-attempt-1-enrich_6543210"
DEFAULT_MOTO: DefaultConfig = {"lambda": {"use_docker": False}}
#: moto runs the state machine's definition: executions end SUCCEEDED or FAILED as the definition says.
EXECUTING_MOTO: DefaultConfig = {
    "lambda": {"use_docker": False},
    "stepfunctions": {"execute_state_machine": True},
}
RUNNING_STATE = TaskStatus(finished=False)


@pytest.fixture
def moto_config() -> DefaultConfig:
    """moto's configuration; ``@pytest.mark.parametrize("moto_config", [...])`` overrides it."""
    return DEFAULT_MOTO


@pytest.fixture(autouse=True)
def aws(monkeypatch: pytest.MonkeyPatch, moto_config: DefaultConfig) -> Iterator[None]:
    """Fake credentials, no local endpoint, a fresh client cache, moto for every AWS call; moto's Glue
    job runs back to their default (SUCCEEDED as soon as they are looked at) afterwards."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tasks, "GLUE_LOOKUP_DELAY", 0)
    client.cache_clear()
    try:
        with mock_aws(config=moto_config):
            yield
    finally:
        state_manager.unset_transition("glue::job_run")
        client.cache_clear()


def task(type_: str, target: str, *, run_id: int = 42, token: str = TOKEN) -> TaskRequest:
    return TaskRequest(
        run_id, 1, "tb_op_enriquecido", "enrich", type_, target, {"dt": "2026-11-29"}, token=token
    )


def glue_job(max_concurrent_runs: int = 1) -> None:
    boto3.client("glue").create_job(
        Name=JOB,
        Role=f"arn:aws:iam::{ACCOUNT}:role/glue",
        Command={"Name": "glueetl", "ScriptLocation": "s3://b/j.py"},
        ExecutionProperty={"MaxConcurrentRuns": max_concurrent_runs},
    )


def glue_runs_stay_running() -> None:
    """moto's job runs go STARTING → RUNNING → SUCCEEDED, one step per two GetJobRun(s) of them."""
    state_manager.set_transition(model_name="glue::job_run", transition={"progression": "manual", "times": 2})


def state_machine(states: dict[str, Any], name: str = "sm") -> str:
    definition = json.dumps({"StartAt": next(iter(states)), "States": states})
    created = boto3.client("stepfunctions").create_state_machine(
        name=name, definition=definition, roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn"
    )
    return str(created["stateMachineArn"])


SUCCEED = {"Done": {"Type": "Succeed"}}
FAIL = {"Broke": {"Type": "Fail", "Error": "Vendas.NoInput", "Cause": "no file for 2026-11-29"}}


def ended(starter: AwsTaskStarter, state_machine_arn: str, arn: str) -> TaskStatus | None:
    """The execution's status once moto's run of it ended (it runs on a thread of its own)."""
    deadline = time.monotonic() + 10
    while (status := starter.status("step_function", state_machine_arn, arn)) == RUNNING_STATE:
        assert time.monotonic() < deadline, f"{arn} still running"
        time.sleep(0.05)
    return status


def stubbed(service: str) -> tuple[Any, AwsTaskStarter]:
    """A real client of ``service`` (to stub) and a starter that uses it."""
    made = boto3.client(service)
    return made, AwsTaskStarter(lambda _: made)


def client_error(code: str, message: str, status: int = 400) -> dict[str, Any]:
    return {"service_error_code": code, "service_message": message, "http_status_code": status}


# --- a start refused by the target's own concurrency limit ---------------------------------------------


def test_a_glue_job_at_its_max_concurrent_runs_refuses_a_limited_start() -> None:
    glue_job(max_concurrent_runs=1)
    glue_runs_stay_running()
    starter = AwsTaskStarter()
    first = starter.start(task("glue", JOB))
    with pytest.raises(TaskStartError) as caught:
        starter.start(task("glue", JOB, run_id=43, token=OTHER_TOKEN))
    assert caught.value.limited is True
    assert (
        str(caught.value)
        == f"glue {JOB}: ConcurrentRunsExceededException: Job with name {JOB} already running"
    )
    assert OTHER_TOKEN not in str(caught.value)
    # Once the first run ended, the job starts again.
    state_manager.unset_transition("glue::job_run")
    assert starter.status("glue", JOB, first) == TaskStatus(finished=True, succeeded=True)
    assert starter.start(task("glue", JOB, run_id=43, token=OTHER_TOKEN)) != first


def test_a_glue_start_refused_for_another_reason_is_not_limited() -> None:
    with pytest.raises(TaskStartError) as caught:
        AwsTaskStarter().start(task("glue", "no-such-job"))
    assert caught.value.limited is False
    assert str(caught.value).startswith("glue no-such-job: EntityNotFoundException: ")


def test_a_glue_job_full_after_an_ambiguous_failure_may_hold_this_start() -> None:
    """A timed-out StartJobRun may have started the job, and that run may be what fills it: the job's
    runs are searched for this start's token again before the start is called limited."""
    glue, starter = stubbed("glue")
    ours = {"JobRuns": [{"Id": "jr_ours", "Arguments": {"--flux_token": TOKEN}}]}
    with Stubber(glue) as stub:
        stub.add_client_error("start_job_run", **client_error("InternalServiceException", "boom", 500))
        stub.add_response("get_job_runs", {"JobRuns": []})  # not visible yet
        stub.add_client_error(
            "start_job_run", **client_error("ConcurrentRunsExceededException", "Concurrent runs exceeded")
        )
        stub.add_response("get_job_runs", ours)
        assert starter.start(task("glue", JOB)) == "jr_ours"
        stub.assert_no_pending_responses()

    with Stubber(glue) as stub:
        stub.add_client_error("start_job_run", **client_error("InternalServiceException", "boom", 500))
        stub.add_response("get_job_runs", {"JobRuns": []})
        stub.add_client_error(
            "start_job_run", **client_error("ConcurrentRunsExceededException", "Concurrent runs exceeded")
        )
        stub.add_response(
            "get_job_runs", {"JobRuns": [{"Id": "jr_other", "Arguments": {"--flux_token": "x"}}]}
        )
        with pytest.raises(TaskStartError) as caught:
            starter.start(task("glue", JOB))
        stub.assert_no_pending_responses()
    assert caught.value.limited is True
    assert str(caught.value) == f"glue {JOB}: ConcurrentRunsExceededException: Concurrent runs exceeded"


def test_a_state_machine_at_its_execution_limit_refuses_a_limited_start() -> None:
    arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:sm"
    sfn, starter = stubbed("stepfunctions")
    with Stubber(sfn) as stub:
        stub.add_client_error(
            "start_execution", **client_error("ExecutionLimitExceeded", "Execution limit exceeded")
        )
        with pytest.raises(TaskStartError) as caught:
            starter.start(task("step_function", arn))
    assert caught.value.limited is True
    assert str(caught.value) == f"step_function {arn}: ExecutionLimitExceeded: Execution limit exceeded"
    assert TOKEN not in str(caught.value)


def test_a_throttled_lambda_is_limited_once_botocores_retries_are_spent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TooManyRequestsException is throttling to botocore: retried (six attempts in all, the client's
    setting), then the start is refused as limited."""
    sleeps: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=sleeps.append))
    attempts: list[str] = []

    def throttled(request: Any, **_: Any) -> AWSResponse:
        attempts.append(request.url)
        body = {
            "Type": "User",
            "message": "Rate Exceeded.",
            "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
        }
        headers = HeadersDict(
            {"x-amzn-ErrorType": "TooManyRequestsException", "Content-Type": "application/json"}
        )
        raw = types.SimpleNamespace(stream=lambda **_: iter([json.dumps(body).encode()]))
        return AWSResponse(request.url, 429, headers, raw)

    client("lambda").meta.events.register_first("before-send.lambda.Invoke", throttled)
    with pytest.raises(TaskStartError) as caught:
        AwsTaskStarter().start(task("lambda", "fn-consumer"))
    assert len(attempts) == 6 and len(sleeps) == 5
    assert caught.value.limited is True
    assert str(caught.value) == "lambda fn-consumer: TooManyRequestsException: Rate Exceeded."


def test_other_refusals_are_not_the_targets_limit() -> None:
    lam, starter = stubbed("lambda")
    with Stubber(lam) as stub:
        stub.add_client_error("invoke", **client_error("ServiceException", "Lambda is unavailable", 500))
        with pytest.raises(TaskStartError) as caught:
            starter.start(task("lambda", "fn"))
    assert caught.value.limited is False
    sqs, starter = stubbed("sqs")
    with Stubber(sqs) as stub:
        # The Lambda's limit code from another service is nobody's concurrency limit.
        stub.add_client_error("send_message", **client_error("TooManyRequestsException", "slow down"))
        with pytest.raises(TaskStartError) as caught:
            starter.start(task("sqs", "https://sqs.example/q"))
    assert caught.value.limited is False


# --- status: Glue -------------------------------------------------------------------------------------


def test_a_glue_run_is_running_until_it_succeeds() -> None:
    glue_job()
    glue_runs_stay_running()
    starter = AwsTaskStarter()
    run_id = starter.start(task("glue", JOB))
    # moto's run: STARTING, RUNNING, RUNNING, SUCCEEDED.
    seen = [starter.status("glue", JOB, run_id) for _ in range(4)]
    assert seen == [RUNNING_STATE, RUNNING_STATE, RUNNING_STATE, TaskStatus(finished=True, succeeded=True)]


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (
            {"JobRunState": "FAILED", "ErrorMessage": "ZeroDivisionError: division by zero"},
            "ZeroDivisionError: division by zero",
        ),
        ({"JobRunState": "TIMEOUT"}, "TIMEOUT"),
        ({"JobRunState": "STOPPED"}, "STOPPED"),
        (
            {"JobRunState": "ERROR", "ErrorMessage": "Insufficient Lake Formation permission"},
            "Insufficient Lake Formation permission",
        ),
        ({"JobRunState": "EXPIRED"}, "EXPIRED"),
    ],
)
def test_a_glue_run_that_ended_badly_failed_with_its_error_or_its_state(
    run: dict[str, str], expected: str
) -> None:
    glue, starter = stubbed("glue")
    with Stubber(glue) as stub:
        stub.add_response("get_job_run", {"JobRun": {"Id": "jr_1", **run}}, {"JobName": JOB, "RunId": "jr_1"})
        assert starter.status("glue", JOB, "jr_1") == TaskStatus(
            finished=True, succeeded=False, message=expected
        )


@pytest.mark.parametrize("state", ["STARTING", "RUNNING", "STOPPING", "WAITING"])
def test_a_glue_run_not_ended_is_not_finished(state: str) -> None:
    glue, starter = stubbed("glue")
    with Stubber(glue) as stub:
        stub.add_response("get_job_run", {"JobRun": {"Id": "jr_1", "JobRunState": state}})
        assert starter.status("glue", JOB, "jr_1") == RUNNING_STATE


def test_a_glue_run_aws_does_not_know_has_ended_unsuccessfully() -> None:
    glue_job()
    starter = AwsTaskStarter()
    status = starter.status("glue", JOB, "jr_nope")
    assert status == TaskStatus(
        finished=True,
        succeeded=False,
        message=f"glue {JOB}: AWS does not know jr_nope: EntityNotFoundException: Job run jr_nope not found.",
    )
    deleted = starter.status("glue", "deleted-job", "jr_1")
    assert deleted is not None and deleted.finished and not deleted.succeeded
    assert (
        deleted.message
        == "glue deleted-job: AWS does not know jr_1: EntityNotFoundException: Job deleted-job not found."
    )


def test_other_glue_errors_propagate_to_the_sweep() -> None:
    glue, starter = stubbed("glue")
    with Stubber(glue) as stub:
        stub.add_client_error("get_job_run", **client_error("AccessDeniedException", "not authorized"))
        with pytest.raises(ClientError, match="AccessDeniedException"):
            starter.status("glue", JOB, "jr_1")


# --- status: Step Functions ---------------------------------------------------------------------------


def test_a_running_execution_is_not_finished_and_a_stopped_one_failed() -> None:
    starter = AwsTaskStarter()
    arn = starter.start(task("step_function", state_machine(SUCCEED)))
    assert starter.status("step_function", "sm", arn) == RUNNING_STATE  # moto does not run it
    boto3.client("stepfunctions").stop_execution(executionArn=arn)
    assert starter.status("step_function", "sm", arn) == TaskStatus(
        finished=True, succeeded=False, message="ABORTED"
    )


@pytest.mark.parametrize("moto_config", [EXECUTING_MOTO])
def test_an_execution_that_ended_succeeded_or_failed_with_its_error_and_cause() -> None:
    starter, ok, broke = AwsTaskStarter(), state_machine(SUCCEED, "ok"), state_machine(FAIL, "broke")
    succeeded, failed = starter.start(task("step_function", ok)), starter.start(task("step_function", broke))
    assert ended(starter, ok, succeeded) == TaskStatus(finished=True, succeeded=True)
    assert ended(starter, broke, failed) == TaskStatus(
        finished=True, succeeded=False, message="Vendas.NoInput: no file for 2026-11-29"
    )


@pytest.mark.parametrize(
    ("execution", "expected"),
    [
        ({"status": "TIMED_OUT", "error": "States.Timeout"}, TaskStatus(True, False, "States.Timeout")),
        ({"status": "ABORTED", "cause": "stopped by hand"}, TaskStatus(True, False, "stopped by hand")),
        ({"status": "FAILED"}, TaskStatus(True, False, "FAILED")),
        ({"status": "PENDING_REDRIVE"}, RUNNING_STATE),
    ],
)
def test_each_execution_status(execution: dict[str, str], expected: TaskStatus) -> None:
    arn = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:sm:flux-42-1-enrich"
    sfn, starter = stubbed("stepfunctions")
    answer = {
        "executionArn": arn,
        "stateMachineArn": f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:sm",
        "startDate": "2026-11-29T00:00:00Z",
        **execution,
    }
    with Stubber(sfn) as stub:
        stub.add_response("describe_execution", answer, {"executionArn": arn})
        assert starter.status("step_function", "sm", arn) == expected


def test_an_execution_aws_does_not_know_has_ended_unsuccessfully() -> None:
    sm = state_machine(SUCCEED)
    starter, missing = AwsTaskStarter(), execution_arn(sm, "never-started")
    assert starter.status("step_function", sm, missing) == TaskStatus(
        finished=True,
        succeeded=False,
        message=f"step_function {sm}: AWS does not know {missing}: ExecutionDoesNotExist: Execution Does Not Exist: '{missing}'",
    )
    invalid = starter.status("step_function", sm, "not-an-arn")
    assert invalid is not None and invalid.finished and not invalid.succeeded
    assert invalid.message is not None and "AWS does not know not-an-arn: InvalidArn" in invalid.message


def test_other_step_functions_errors_propagate_to_the_sweep() -> None:
    sfn, starter = stubbed("stepfunctions")
    with Stubber(sfn) as stub:
        stub.add_client_error("describe_execution", **client_error("KmsAccessDeniedException", "no key"))
        with pytest.raises(ClientError, match="KmsAccessDeniedException"):
            starter.status("step_function", "sm", "arn:aws:states:us-east-1:1:execution:sm:x")


# --- stop -----------------------------------------------------------------------------------------------


def test_stopping_an_execution_aborts_it_with_the_timeout_error_and_again_is_no_error() -> None:
    starter, sm = AwsTaskStarter(), state_machine(SUCCEED)
    arn = starter.start(task("step_function", sm))
    assert starter.stop("step_function", sm, arn) is True
    assert boto3.client("stepfunctions").describe_execution(executionArn=arn)["status"] == "ABORTED"
    assert starter.stop("step_function", sm, arn) is True  # already ended
    assert starter.stop("step_function", sm, execution_arn(sm, "never-started")) is True
    # What AWS is asked (moto drops the error and cause; AWS shows them on the execution).
    sfn, stubbed_starter = stubbed("stepfunctions")
    with Stubber(sfn) as stub:
        expected = {"executionArn": arn, "error": "FluxControl.Timeout", "cause": TIMEOUT_CAUSE}
        stub.add_response("stop_execution", {"stopDate": "2026-11-29T00:00:00Z"}, expected)
        assert stubbed_starter.stop("step_function", sm, arn) is True
        stub.assert_no_pending_responses()


def test_stopping_an_execution_that_ended_is_done_whatever_aws_answers() -> None:
    arn = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:sm:flux-42-1-enrich"
    sm = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:sm"
    described = {"executionArn": arn, "stateMachineArn": sm, "startDate": "2026-11-29T00:00:00Z"}
    sfn, starter = stubbed("stepfunctions")
    with Stubber(sfn) as stub:
        stub.add_client_error(
            "stop_execution", **client_error("ValidationException", "execution is not running")
        )
        stub.add_response("describe_execution", {**described, "status": "SUCCEEDED"}, {"executionArn": arn})
        assert starter.stop("step_function", sm, arn) is True
        stub.assert_no_pending_responses()
    # Refused while it still runs: the refusal propagates, even when describing it fails too.
    with Stubber(sfn) as stub:
        stub.add_client_error("stop_execution", **client_error("AccessDeniedException", "not authorized"))
        stub.add_response("describe_execution", {**described, "status": "RUNNING"})
        with pytest.raises(ClientError, match="AccessDeniedException"):
            starter.stop("step_function", sm, arn)
        stub.add_client_error("stop_execution", **client_error("AccessDeniedException", "not authorized"))
        stub.add_client_error("describe_execution", **client_error("KmsThrottlingException", "slow"))
        with pytest.raises(ClientError, match="AccessDeniedException"):
            starter.stop("step_function", sm, arn)
        stub.assert_no_pending_responses()


def test_stopping_a_glue_run_asks_glue_to_stop_that_run() -> None:
    glue, starter = stubbed("glue")
    with Stubber(glue) as stub:
        answer = {"SuccessfulSubmissions": [{"JobName": JOB, "JobRunId": "jr_1"}], "Errors": []}
        stub.add_response("batch_stop_job_run", answer, {"JobName": JOB, "JobRunIds": ["jr_1"]})
        assert starter.stop("glue", JOB, "jr_1") is True
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("state", ["SUCCEEDED", "FAILED", "STOPPED", "TIMEOUT", "STOPPING"])
def test_a_glue_run_that_ended_or_is_stopping_is_stopped_whatever_glue_lists(state: str) -> None:
    glue, starter = stubbed("glue")
    error = {
        "ErrorCode": "InvalidInputException",
        "ErrorMessage": "Job Run cannot be stopped in current state.",
    }
    with Stubber(glue) as stub:
        stub.add_response(
            "batch_stop_job_run",
            {
                "SuccessfulSubmissions": [],
                "Errors": [{"JobName": JOB, "JobRunId": "jr_1", "ErrorDetail": error}],
            },
        )
        stub.add_response(
            "get_job_run", {"JobRun": {"Id": "jr_1", "JobRunState": state}}, {"JobName": JOB, "RunId": "jr_1"}
        )
        assert starter.stop("glue", JOB, "jr_1") is True
        stub.assert_no_pending_responses()


def test_a_glue_run_glue_would_not_stop_while_it_runs_is_an_error() -> None:
    glue, starter = stubbed("glue")
    error = {"ErrorCode": "InvalidInputException", "ErrorMessage": "Glue is busy"}
    with Stubber(glue) as stub:
        stub.add_response(
            "batch_stop_job_run",
            {
                "SuccessfulSubmissions": [],
                "Errors": [{"JobName": JOB, "JobRunId": "jr_1", "ErrorDetail": error}],
            },
        )
        stub.add_response("get_job_run", {"JobRun": {"Id": "jr_1", "JobRunState": "RUNNING"}})
        with pytest.raises(ClientError) as caught:
            starter.stop("glue", JOB, "jr_1")
    assert caught.value.response["Error"] == {"Code": "InvalidInputException", "Message": "Glue is busy"}
    assert caught.value.operation_name == "BatchStopJobRun"


def test_a_glue_stop_refused_propagates_and_an_unknown_job_or_run_is_done() -> None:
    glue, starter = stubbed("glue")
    with Stubber(glue) as stub:
        stub.add_client_error("batch_stop_job_run", **client_error("AccessDeniedException", "not authorized"))
        with pytest.raises(ClientError, match="AccessDeniedException"):
            starter.stop("glue", JOB, "jr_1")
        stub.add_client_error(
            "batch_stop_job_run", **client_error("EntityNotFoundException", "Job not found")
        )
        assert starter.stop("glue", JOB, "jr_1") is True
        missing = {"ErrorCode": "EntityNotFoundException", "ErrorMessage": "Job run not found"}
        stub.add_response(
            "batch_stop_job_run",
            {"Errors": [{"JobName": JOB, "JobRunId": "jr_1", "ErrorDetail": missing}]},
        )
        stub.add_client_error(
            "get_job_run", **client_error("EntityNotFoundException", "Job run jr_1 not found.")
        )
        assert starter.stop("glue", JOB, "jr_1") is True
        stub.assert_no_pending_responses()


# --- SQS and Lambda tasks -------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["sqs", "lambda", "eventbridge", "http"])
def test_aws_is_neither_asked_about_nor_told_to_stop_sqs_and_lambda_tasks(type_: str) -> None:
    def no_client(service: str) -> Any:
        raise AssertionError(f"no {service} call for a {type_} task")

    starter = AwsTaskStarter(no_client)
    assert starter.status(type_, "target", "id-1") is None
    assert starter.stop(type_, "target", "id-1") is False
