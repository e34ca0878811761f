"""Asking AWS how a started task is, and stopping it (DESIGN §8: lost completions, timeouts).

The sweep asks about the Glue and Step Functions tasks whose completion event may have been lost
(Glue ``GetJobRun``, Step Functions ``DescribeExecution``) and stops those running past their
``timeout_seconds`` (Glue ``BatchStopJobRun``, Step Functions ``StopExecution``). SQS, Lambda,
EventBridge and HTTP tasks report their own completion: AWS can neither be asked about them nor stop
them.

AWS errors propagate (``ClientError``, ``BotoCoreError``): the sweep logs them and asks again at its
next pass. Two answers are not errors: a task AWS does not know (its job, state machine or run was
deleted, or the stored id is not one) has ended, unsuccessfully, and stopping a task that has already
ended is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from controller.core.effects import TaskStatus

ClientFactory = Callable[[str], Any]

#: Glue ``JobRunState``: the run ended, well or not. Any other state (STARTING, RUNNING, STOPPING,
#: WAITING) is not an end.
GLUE_SUCCEEDED = frozenset({"SUCCEEDED"})
GLUE_FAILED = frozenset({"FAILED", "TIMEOUT", "STOPPED", "ERROR", "EXPIRED"})
#: Step Functions execution ``status``: the execution ended. RUNNING and PENDING_REDRIVE are not ends.
SFN_SUCCEEDED = frozenset({"SUCCEEDED"})
SFN_FAILED = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})

#: Glue and Step Functions answers meaning the task is unknown to AWS.
GLUE_UNKNOWN = frozenset({"EntityNotFoundException"})
SFN_UNKNOWN = frozenset({"ExecutionDoesNotExist", "InvalidArn"})

#: The ``error`` and ``cause`` a stopped execution shows (its ``ExecutionAborted`` event, DescribeExecution).
TIMEOUT_ERROR = "FluxControl.Timeout"
TIMEOUT_CAUSE = "Stopped by Flux Control: the task ran longer than its timeout_seconds."


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def _unknown(type_: str, target: str, external_id: str, error: ClientError) -> TaskStatus:
    """The status of a task AWS does not know: ended, not succeeded, with what AWS answered."""
    message = error.response.get("Error", {}).get("Message", str(error))
    return TaskStatus(
        finished=True,
        succeeded=False,
        message=f"{type_} {target}: AWS does not know {external_id}: {_code(error)}: {message}",
    )


class TaskMonitor:
    """:meth:`status` and :meth:`stop` of :class:`~controller.aws.tasks.AwsTaskStarter`."""

    def __init__(self, client_factory: ClientFactory) -> None:
        self._client = client_factory

    def status(self, type_: str, target: str, external_id: str) -> TaskStatus | None:
        """What AWS says of the task; None for the kinds AWS cannot be asked about (SQS, Lambda)."""
        if type_ == "glue":
            return self._glue_status(target, external_id)
        if type_ == "step_function":
            return self._sfn_status(target, external_id)
        return None

    def stop(self, type_: str, target: str, external_id: str) -> bool:
        """Stop the task; True once it is stopped, asked to stop, or no longer running; False for the
        kinds that cannot be stopped (SQS, Lambda)."""
        if type_ == "glue":
            return self._stop_glue(target, external_id)
        if type_ == "step_function":
            return self._stop_sfn(external_id)
        return False

    # Glue

    def _glue_run(self, job: str, run_id: str) -> dict[str, Any]:
        """``GetJobRun``'s ``JobRun``; raises ``ClientError`` (``EntityNotFoundException`` among others)."""
        answer = self._client("glue").get_job_run(JobName=job, RunId=run_id)
        run: dict[str, Any] = answer["JobRun"]
        return run

    def _glue_status(self, job: str, run_id: str) -> TaskStatus:
        try:
            run = self._glue_run(job, run_id)
        except ClientError as error:
            if _code(error) in GLUE_UNKNOWN:
                return _unknown("glue", job, run_id, error)
            raise
        state = str(run.get("JobRunState", ""))
        if state in GLUE_SUCCEEDED:
            return TaskStatus(finished=True, succeeded=True)
        if state in GLUE_FAILED:
            return TaskStatus(finished=True, succeeded=False, message=run.get("ErrorMessage") or state)
        return TaskStatus(finished=False)

    def _stop_glue(self, job: str, run_id: str) -> bool:
        """``BatchStopJobRun`` of the one run. Glue answers a run it cannot stop among the answer's
        ``Errors`` (a run that already ended, among others): the run is then looked at, and anything but
        a run still going is done; else that error is raised, as a ``ClientError``."""
        try:
            answer = self._client("glue").batch_stop_job_run(JobName=job, JobRunIds=[run_id])
        except ClientError as error:
            if _code(error) in GLUE_UNKNOWN:
                return True
            raise
        if any(s.get("JobRunId") == run_id for s in answer.get("SuccessfulSubmissions", [])):
            return True
        listed = [e for e in answer.get("Errors", []) if e.get("JobRunId") == run_id]
        detail = listed[0].get("ErrorDetail", {}) if listed else {}
        try:
            state = str(self._glue_run(job, run_id).get("JobRunState", ""))
        except ClientError as error:
            if _code(error) in GLUE_UNKNOWN:
                return True
            raise
        if state in GLUE_SUCCEEDED | GLUE_FAILED | {"STOPPING"}:
            return True
        error_response: Any = {
            "Error": {
                "Code": detail.get("ErrorCode", "NotStopped"),
                "Message": detail.get("ErrorMessage", f"Glue did not stop job run {run_id} ({state})"),
            }
        }
        raise ClientError(error_response, "BatchStopJobRun")

    # Step Functions

    def _sfn_status(self, state_machine: str, execution_arn: str) -> TaskStatus:
        try:
            execution = self._client("stepfunctions").describe_execution(executionArn=execution_arn)
        except ClientError as error:
            if _code(error) in SFN_UNKNOWN:
                return _unknown("step_function", state_machine, execution_arn, error)
            raise
        status = str(execution.get("status", ""))
        if status in SFN_SUCCEEDED:
            return TaskStatus(finished=True, succeeded=True)
        if status in SFN_FAILED:
            why = ": ".join(str(part) for part in (execution.get("error"), execution.get("cause")) if part)
            return TaskStatus(finished=True, succeeded=False, message=why or status)
        return TaskStatus(finished=False)

    def _stop_sfn(self, execution_arn: str) -> bool:
        """``StopExecution`` with :data:`TIMEOUT_ERROR`. An execution AWS does not know is done; so is
        one that already ended, whatever AWS answers to stopping it (it is asked, to be sure)."""
        sfn = self._client("stepfunctions")
        try:
            sfn.stop_execution(executionArn=execution_arn, error=TIMEOUT_ERROR, cause=TIMEOUT_CAUSE)
        except ClientError as error:
            if _code(error) in SFN_UNKNOWN or self._sfn_ended(execution_arn):
                return True
            raise
        return True

    def _sfn_ended(self, execution_arn: str) -> bool:
        """Whether the execution ended (or is unknown); False when that cannot be found out."""
        try:
            status = self._client("stepfunctions").describe_execution(executionArn=execution_arn)["status"]
        except ClientError as error:
            return _code(error) in SFN_UNKNOWN
        return status in SFN_SUCCEEDED | SFN_FAILED
