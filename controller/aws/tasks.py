"""Starting a run's tasks: Glue, Step Functions, SQS, Lambda, EventBridge and HTTP (DESIGN §4, Dispatch).

Each task receives its token (:attr:`~controller.core.effects.TaskRequest.token`, random per task and
attempt): the Glue argument ``--flux_token``, ``flux.token`` in the Step Functions input and in the
SQS, Lambda, EventBridge and HTTP messages (:func:`payload`; HTTP tasks also get it as their
``Idempotency-Key`` header: :mod:`controller.aws.http_tasks`). It is the task's secret to report with
(DESIGN §7): never logged, never in an error message, never in a name or id AWS answers with (those
are stored and shown by GET /runs).

A task is started once per run attempt, even when AWS fails in a way that leaves open whether it
acted (a read timeout, a 5xx answer) and the call is repeated. Where AWS deduplicates, the start's
deterministic :attr:`~controller.core.effects.TaskRequest.dispatch_id` (run, attempt, task) is used:

- Step Functions: the execution name is derived from it; a repeat answers with the same execution
  (same name and input) or ``ExecutionAlreadyExists``, which is taken as started.
- SQS FIFO queues: it is the deduplication id. SQS standard queues deliver at least once anyway.
- Glue: ``StartJobRun`` has no idempotency token, so botocore does not repeat it after a failure that
  may have started the job (see :mod:`controller.aws.clients`); instead the job's recent runs are
  searched for one carrying this start's ``--flux_token``, and only if there is none is the job started
  again.
- Lambda (asynchronous ``Invoke``): Lambda queues an event at least once and may deliver it more than
  once whatever the caller does, so the function has to recognise a repeat itself (``flux.token`` seen
  before: do nothing); botocore's retries only add to that. A repeated completion report
  (``POST /register_execution`` with the run id) is refused with a 409.
- EventBridge (``PutEvents`` on the bus ``target`` names, source ``flux-control.task``, detail-type
  ``Table Task Requested``, :func:`payload` as the detail): EventBridge delivers at least once, and
  botocore repeats a ``PutEvents`` that timed out or got a 5xx answer, which may have been delivered
  already: a rule's consumer may see the same request twice and recognises the repeat by its
  ``flux.token``. A rejected entry (``FailedEntryCount`` > 0) is a failed start with the entry's
  ``ErrorCode`` and ``ErrorMessage``; the external id is the ``EventId``. Consumers report completion
  as SQS and Lambda consumers do.
- HTTP: one POST, never repeated (:mod:`controller.aws.http_tasks`).

A target refusing for its own concurrency limit (Glue ``ConcurrentRunsExceededException``, Step
Functions ``ExecutionLimitExceeded``, Lambda ``TooManyRequestsException`` once botocore's retries are
spent, EventBridge ``ThrottlingException`` for the call or an entry: :data:`LIMITED`; an HTTP 429) is
a :class:`~controller.core.effects.TaskStartError` marked ``limited``: its run is queued, not failed
(DESIGN §8). Asking AWS about a started task and stopping it (the sweep's
lost completions and timeouts) is :mod:`controller.aws.task_monitoring`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from controller.aws import http_tasks
from controller.aws.clients import client as default_client
from controller.aws.clients import maybe_applied
from controller.aws.task_monitoring import TaskMonitor
from controller.core.effects import TaskRequest, TaskStartError, TaskStatus

ClientFactory = Callable[[str], Any]
logger = logging.getLogger("flux_control.aws")

EXECUTION_NAME_LIMIT = 80
_NOT_IN_EXECUTION_NAME = re.compile(r"[^A-Za-z0-9_-]")

#: The Glue argument that carries the start's token, to find a run started by a failed call.
GLUE_TOKEN_ARGUMENT = "--flux_token"
#: ``StartJobRun`` calls per start: the first, and one more after each failure that started nothing.
GLUE_START_CALLS = 3
#: Seconds to wait before looking for the job run a failed call may have started (visibility).
GLUE_LOOKUP_DELAY = 1.0
#: Pages of 200 of the job's runs (newest first) searched for the token.
GLUE_LOOKUP_PAGES = 3
#: Per task type, the AWS error codes of the target's own concurrency limit (DESIGN §8).
LIMITED: dict[str, frozenset[str]] = {
    "glue": frozenset({"ConcurrentRunsExceededException"}),
    "step_function": frozenset({"ExecutionLimitExceeded"}),
    "lambda": frozenset({"TooManyRequestsException"}),
    # PutEvents' requests per second are an account's quota: the run waits for the next slot.
    "eventbridge": frozenset({"ThrottlingException"}),
}
#: What an eventbridge task's event says it is (rules match on them).
TASK_EVENT_SOURCE = "flux-control.task"
TASK_EVENT_DETAIL_TYPE = "Table Task Requested"


def glue_arguments(request: TaskRequest) -> dict[str, str]:
    """Glue job arguments: ``--<partition>``, ``--flux_run_id``, ``--flux_token``, then the params, which
    win on a clash."""
    arguments = {f"--{name}": str(value) for name, value in request.partitions.items()}
    arguments["--flux_run_id"] = str(request.run_id)
    arguments[GLUE_TOKEN_ARGUMENT] = request.token
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
    """The message for Step Functions, SQS, Lambda, EventBridge and HTTP: the params plus ``flux``, to
    report completion with."""
    return {
        **request.params,
        "flux": {
            "run_id": request.run_id,
            "attempt": request.attempt,
            "table": request.table,
            "alias": request.alias,
            "partitions": request.partitions,
            "token": request.token,
        },
    }


def execution_name(dispatch_id: str) -> str:
    """A Step Functions execution name from a start's ``dispatch_id`` (never from its token: the name is
    part of the execution ARN, stored and shown): only ``[A-Za-z0-9_-]``, at most 80 characters.

    An id that has to be cut keeps a hash of the whole id, so two long ids stay distinct.
    """
    name = _NOT_IN_EXECUTION_NAME.sub("_", dispatch_id)
    if len(name) <= EXECUTION_NAME_LIMIT:
        return name
    digest = hashlib.sha256(dispatch_id.encode()).hexdigest()[:8]
    return f"{name[: EXECUTION_NAME_LIMIT - len(digest) - 1]}-{digest}"


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN of execution ``name`` of a state machine (a version or alias qualifier is dropped)."""
    parts = state_machine_arn.split(":")
    if len(parts) < 7 or parts[5] != "stateMachine":
        return f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
    return ":".join([*parts[:5], "execution", parts[6], name])


def _error_code(error: BaseException) -> str | None:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "Unknown"))
    return None


def _aws_error(request: TaskRequest, error: ClientError | BotoCoreError) -> TaskStartError:
    """``<type> <target>: <AWS code>: <AWS message>``; ``limited`` for the target's own limit."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code, message = details.get("Code", "Unknown"), details.get("Message", str(error))
    else:
        code, message = type(error).__name__, str(error)
    limited = code in LIMITED.get(request.type, frozenset())
    return TaskStartError(f"{request.type} {request.target}: {code}: {message}", limited=limited)


class AwsTaskStarter:
    """The runtime's :class:`~controller.services.ports.TaskStarter`: one AWS call per task.

    AWS refusals (``ClientError``, ``BotoCoreError``) become :class:`TaskStartError` with the AWS code
    and message verbatim (``limited`` for the target's own concurrency limit); anything else
    propagates. :meth:`status` and :meth:`stop` are :class:`~controller.aws.task_monitoring.TaskMonitor`'s.
    """

    def __init__(self, client_factory: ClientFactory | None = None) -> None:
        self._client = client_factory or default_client
        self._monitor = TaskMonitor(self._client)
        self._starters: dict[str, Callable[[TaskRequest], str]] = {
            "glue": self._start_glue,
            "step_function": self._start_step_function,
            "sqs": self._start_sqs,
            "lambda": self._start_lambda,
            "eventbridge": self._start_eventbridge,
            "http": self._start_http,
        }

    def start(self, request: TaskRequest) -> str:
        """Start the task; return its external id (JobRunId, executionArn, MessageId, request id,
        EventId, or what the HTTP endpoint answered: :mod:`controller.aws.http_tasks`)."""
        starter = self._starters.get(request.type)
        if starter is None:
            # Definitions are validated, so this means a definition newer than this code: fail the run.
            raise TaskStartError(f"{request.type} {request.target}: unsupported task type")
        try:
            return starter(request)
        except (ClientError, BotoCoreError) as error:
            raise _aws_error(request, error) from error

    def status(self, type: str, target: str, external_id: str) -> TaskStatus | None:
        """What AWS says of a started task (Glue ``GetJobRun``, Step Functions ``DescribeExecution``);
        None for SQS, Lambda, EventBridge and HTTP tasks. AWS errors propagate."""
        return self._monitor.status(type, target, external_id)

    def stop(self, type: str, target: str, external_id: str) -> bool:
        """Stop a started task (Glue ``BatchStopJobRun``, Step Functions ``StopExecution``); False for
        SQS, Lambda, EventBridge and HTTP tasks. A task that already ended, or that AWS does not know,
        is no error."""
        return self._monitor.stop(type, target, external_id)

    def _start_glue(self, request: TaskRequest) -> str:
        """``StartJobRun``; after a failure that may have started the job, the run carrying this start's
        token if there is one, else another call (at most :data:`GLUE_START_CALLS` in all). A job at its
        concurrency limit after such a failure is looked at again: the failed call may have filled it."""
        glue = self._client("glue")
        arguments = glue_arguments(request)
        token = arguments[GLUE_TOKEN_ARGUMENT]
        for call in range(1, GLUE_START_CALLS + 1):
            try:
                response = glue.start_job_run(JobName=request.target, Arguments=arguments)
                return str(response["JobRunId"])
            except (ClientError, BotoCoreError) as error:
                if call > 1 and _error_code(error) in LIMITED["glue"]:
                    # The job is at its limit, maybe because the failed call before started it.
                    found = self._glue_run_carrying(glue, request, token, error)
                    if found is not None:
                        return found
                if not maybe_applied(error):
                    raise
                logger.warning(
                    "StartJobRun failed and may have started the job; looking for its run",
                    extra={
                        "job": request.target,
                        "task": request.dispatch_id,
                        "call": call,
                        "error": str(error),
                    },
                )
                found = self._glue_run_carrying(glue, request, token, error)
                if found is not None:
                    return found
                if call == GLUE_START_CALLS:
                    raise TaskStartError(
                        f"{_aws_error(request, error)} ({call} calls; no run of the job carries "
                        f"this start's {GLUE_TOKEN_ARGUMENT})"
                    ) from error
        raise AssertionError("unreachable")

    def _glue_run_carrying(
        self, glue: Any, request: TaskRequest, token: str, error: ClientError | BotoCoreError
    ) -> str | None:
        """The id of the job's run whose ``--flux_token`` is ``token``, among its newest runs (the token
        is compared, never logged: it is the task's secret)."""
        time.sleep(GLUE_LOOKUP_DELAY)
        pages = glue.get_paginator("get_job_runs").paginate(
            JobName=request.target, PaginationConfig={"MaxItems": 200 * GLUE_LOOKUP_PAGES, "PageSize": 200}
        )
        try:
            for page in pages:
                for run in page.get("JobRuns", []):
                    if (run.get("Arguments") or {}).get(GLUE_TOKEN_ARGUMENT) == token:
                        return str(run["Id"])
        except (ClientError, BotoCoreError) as lookup:
            # Neither whether it started nor its id is known: the run fails and a person checks.
            cause = _aws_error(request, error)
            raise TaskStartError(
                f"{cause}; whether the job started is unknown: looking for its run "
                f"(by its argument {GLUE_TOKEN_ARGUMENT}) failed: {_aws_error(request, lookup)}"
            ) from lookup
        return None

    def _start_step_function(self, request: TaskRequest) -> str:
        name = execution_name(request.dispatch_id)
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
            params["MessageDeduplicationId"] = request.dispatch_id
        response = self._client("sqs").send_message(**params)
        return str(response["MessageId"])

    def _start_lambda(self, request: TaskRequest) -> str:
        response = self._client("lambda").invoke(
            FunctionName=request.target,
            InvocationType="Event",
            Payload=json.dumps(payload(request)).encode(),
        )
        return str(response["ResponseMetadata"]["RequestId"])

    def _start_eventbridge(self, request: TaskRequest) -> str:
        entry = {
            "Source": TASK_EVENT_SOURCE,
            "DetailType": TASK_EVENT_DETAIL_TYPE,
            "Detail": json.dumps(payload(request)),
            # A name or an ARN: PutEvents takes either.
            "EventBusName": request.target,
        }
        response = self._client("events").put_events(Entries=[entry])
        [result] = response.get("Entries") or [{}]
        if response.get("FailedEntryCount") or not result.get("EventId"):
            code = str(result.get("ErrorCode") or "Unknown")
            message = str(result.get("ErrorMessage") or "the entry was not accepted")
            limited = code in LIMITED["eventbridge"]
            raise TaskStartError(f"{request.type} {request.target}: {code}: {message}", limited=limited)
        return str(result["EventId"])

    def _start_http(self, request: TaskRequest) -> str:
        # The settings are read at each start: cheap, and a changed environment takes effect at once.
        try:
            settings = http_tasks.HttpSettings.from_env()
        except ValueError as error:
            raise TaskStartError(f"{request.type} {request.target}: {error}") from None
        return http_tasks.post(request, payload(request), settings)
