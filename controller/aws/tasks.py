"""Starting a run's tasks on AWS: Glue, Step Functions, SQS and Lambda (DESIGN §4, Dispatch)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from controller.aws.clients import client as default_client
from controller.runtime.ports import TaskRequest, TaskStartError

ClientFactory = Callable[[str], Any]

EXECUTION_NAME_LIMIT = 80
_NOT_IN_EXECUTION_NAME = re.compile(r"[^A-Za-z0-9_-]")


def glue_arguments(request: TaskRequest) -> dict[str, str]:
    """Glue job arguments: ``--<partition>``, ``--flux_run_id``, then the params, which win on a clash."""
    arguments = {f"--{name}": str(value) for name, value in request.partitions.items()}
    arguments["--flux_run_id"] = str(request.run_id)
    arguments.update({str(name): argument_value(value) for name, value in request.params.items()})
    return arguments


def argument_value(value: Any) -> str:
    """A param as a Glue argument string: booleans as ``true``/``false``, containers and null as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def payload(request: TaskRequest) -> dict[str, Any]:
    """The message for Step Functions, SQS and Lambda: the params plus ``flux``, to report completion."""
    return {
        **request.params,
        "flux": {
            "run_id": request.run_id,
            "attempt": request.attempt,
            "table": request.table,
            "alias": request.alias,
            "partitions": request.partitions,
        },
    }


def execution_name(token: str) -> str:
    """A Step Functions execution name from ``token``: only ``[A-Za-z0-9_-]``, at most 80 characters.

    A token that has to be cut keeps a hash of the whole token, so two long tokens stay distinct.
    """
    name = _NOT_IN_EXECUTION_NAME.sub("_", token)
    if len(name) <= EXECUTION_NAME_LIMIT:
        return name
    digest = hashlib.sha256(token.encode()).hexdigest()[:8]
    return f"{name[: EXECUTION_NAME_LIMIT - len(digest) - 1]}-{digest}"


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN of execution ``name`` of a state machine (a version or alias qualifier is dropped)."""
    parts = state_machine_arn.split(":")
    if len(parts) < 7 or parts[5] != "stateMachine":
        return f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
    return ":".join([*parts[:5], "execution", parts[6], name])


def _aws_error(request: TaskRequest, error: ClientError | BotoCoreError) -> TaskStartError:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code, message = details.get("Code", "Unknown"), details.get("Message", str(error))
    else:
        code, message = type(error).__name__, str(error)
    return TaskStartError(f"{request.type} {request.target}: {code}: {message}")


class AwsTaskStarter:
    """The runtime's :class:`~controller.runtime.ports.TaskStarter`: one AWS call per task.

    AWS refusals (``ClientError``, ``BotoCoreError``) become :class:`TaskStartError` with the AWS code
    and message verbatim; anything else propagates.
    """

    def __init__(self, client_factory: ClientFactory | None = None) -> None:
        self._client = client_factory or default_client
        self._starters: dict[str, Callable[[TaskRequest], str]] = {
            "glue": self._start_glue,
            "step_function": self._start_step_function,
            "sqs": self._start_sqs,
            "lambda": self._start_lambda,
        }

    def start(self, request: TaskRequest) -> str:
        """Start the task; return its external id (JobRunId, executionArn, MessageId or request id)."""
        starter = self._starters.get(request.type)
        if starter is None:
            # Definitions are validated, so this means a definition newer than this code: fail the run.
            raise TaskStartError(f"{request.type} {request.target}: unsupported task type")
        try:
            return starter(request)
        except (ClientError, BotoCoreError) as error:
            raise _aws_error(request, error) from error

    def _start_glue(self, request: TaskRequest) -> str:
        response = self._client("glue").start_job_run(
            JobName=request.target, Arguments=glue_arguments(request)
        )
        return str(response["JobRunId"])

    def _start_step_function(self, request: TaskRequest) -> str:
        name = execution_name(request.token)
        try:
            response = self._client("stepfunctions").start_execution(
                stateMachineArn=request.target, name=name, input=json.dumps(payload(request))
            )
        except ClientError as error:
            # Names are unique per state machine for 90 days: this run's attempt was started before.
            if error.response.get("Error", {}).get("Code") == "ExecutionAlreadyExists":
                return execution_arn(request.target, name)
            raise
        return str(response["executionArn"])

    def _start_sqs(self, request: TaskRequest) -> str:
        params: dict[str, Any] = {"QueueUrl": request.target, "MessageBody": json.dumps(payload(request))}
        if request.target.endswith(".fifo"):
            params["MessageGroupId"] = request.table
            params["MessageDeduplicationId"] = request.token
        response = self._client("sqs").send_message(**params)
        return str(response["MessageId"])

    def _start_lambda(self, request: TaskRequest) -> str:
        response = self._client("lambda").invoke(
            FunctionName=request.target,
            InvocationType="Event",
            Payload=json.dumps(payload(request)).encode(),
        )
        return str(response["ResponseMetadata"]["RequestId"])
