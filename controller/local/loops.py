"""Local stand-ins for what AWS and task consumers do on their own: fire due schedules, finish
started tasks, sweep.

Each loop is a daemon thread that wakes up every ``interval`` seconds until ``stop`` is set. They
call the handler exactly as AWS or a consumer would: a schedule with its own input; EventBridge
events with the shape Glue and Step Functions send; and, for SQS, Lambda, EventBridge and HTTP
tasks, the completion report a consumer sends (``POST /register_execution`` with the run id and the
task's token).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from controller.core.effects import dispatch_id
from controller.db.definition_models import TableRow
from controller.db.run_models import RunRow, TaskDispatchRow
from controller.local.http import to_event

logger = logging.getLogger("flux_control.local")
Invoke = Callable[[dict[str, Any]], Any]
#: Who the local consumers report as (serve trusts the body's user).
CONSUMER = "flux-local-consumer"


def _at(expression: str) -> datetime:
    """The time of an ``at(YYYY-MM-DDTHH:MM:SS)`` expression, in UTC."""
    return datetime.fromisoformat(expression.removeprefix("at(").removesuffix(")")).replace(tzinfo=UTC)


def fire_due_schedules(scheduler: Any, group: str, invoke: Invoke, now: datetime) -> int:
    """Invoke the target of every due schedule with its input, then delete it (ActionAfterCompletion)."""
    fired = 0
    for summary in scheduler.list_schedules(GroupName=group).get("Schedules", []):
        schedule = scheduler.get_schedule(Name=summary["Name"], GroupName=group)
        if _at(schedule["ScheduleExpression"]) > now:
            continue
        invoke(json.loads(schedule["Target"]["Input"]))
        scheduler.delete_schedule(Name=summary["Name"], GroupName=group)
        fired += 1
    return fired


def finish_started_tasks(engine: Engine, invoke: Invoke, delay: float, now: datetime) -> int:
    """Deliver SUCCEEDED state changes for Glue and Step Functions tasks started ``delay`` seconds ago."""
    with Session(engine) as session:
        started = session.execute(
            select(TaskDispatchRow.type, TaskDispatchRow.target, TaskDispatchRow.external_id).where(
                TaskDispatchRow.status == "started",
                TaskDispatchRow.type.in_(("glue", "step_function")),
                TaskDispatchRow.started_at <= now - timedelta(seconds=delay),
            )
        ).all()
    for kind, target, external_id in started:
        if external_id is not None:
            invoke(_state_change(kind, target, external_id))
    return len(started)


def _state_change(kind: str, target: str, external_id: str) -> dict[str, Any]:
    if kind == "glue":
        detail = {
            "jobName": target,
            "jobRunId": external_id,
            "state": "SUCCEEDED",
            "message": "succeeded locally",
        }
        return {"source": "aws.glue", "detail-type": "Glue Job State Change", "detail": detail}
    detail = {"executionArn": external_id, "stateMachineArn": target, "status": "SUCCEEDED"}
    return {"source": "aws.states", "detail-type": "Step Functions Execution Status Change", "detail": detail}


def every(interval: float, stop: threading.Event, name: str, work: Callable[[], Any]) -> threading.Thread:
    """Run ``work`` every ``interval`` seconds in a daemon thread until ``stop``; errors are logged."""

    def loop() -> None:
        while not stop.wait(interval):
            try:
                work()
            except Exception:
                logger.exception("local %s loop failed; it will try again", name)

    thread = threading.Thread(target=loop, name=f"flux-local-{name}", daemon=True)
    thread.start()
    return thread


def consume_queues(sqs: Any, queues: list[str], invoke: Invoke, delay: float, now: datetime) -> int:
    """Act as the consumer of each task queue: ``delay`` seconds after a message was sent, report its
    run complete with the message's ``flux.token``, then delete it. Returns the messages reported.

    A message not yet due is left for a later tick (it becomes visible again after a second).
    """
    reported = 0
    for queue in queues:
        answer = sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=1, AttributeNames=["SentTimestamp"]
        )
        for message in answer.get("Messages", []):
            sent = datetime.fromtimestamp(int(message["Attributes"]["SentTimestamp"]) / 1000, UTC)
            if sent > now - timedelta(seconds=delay):
                continue
            flux = json.loads(message["Body"]).get("flux") or {}
            if _report(
                invoke,
                flux.get("table"),
                flux.get("partitions"),
                flux.get("run_id"),
                flux.get("token"),
                "sqs",
            ):
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
                reported += 1
    return reported


#: The tasks whose consumer ``serve`` plays by reading the started tasks (see :func:`receive_invocations`).
REPORTED_FROM_STARTS = ("lambda", "eventbridge", "http")


def receive_invocations(engine: Engine, invoke: Invoke, delay: float, now: datetime, done: set[str]) -> int:
    """Act as the consumer of each Lambda, EventBridge and HTTP task: ``delay`` seconds after it
    started, report its run complete with the token it carried. moto runs no function code without
    Docker and no rule's target reads the task events, and an HTTP endpoint (a local one: serve posts
    for real) may not report back at all, so the starts are read from the runs' started tasks, with
    the token each was started with (a report after the endpoint's own is a 409, taken as done);
    ``done`` holds the starts already reported (their dispatch ids)."""
    with Session(engine) as session:
        started = session.execute(
            select(
                TaskDispatchRow.run_id,
                TaskDispatchRow.attempt,
                TaskDispatchRow.alias,
                TaskDispatchRow.type,
                TaskDispatchRow.token,
                RunRow.partitions,
                TableRow.name,
            )
            .join(RunRow, RunRow.id == TaskDispatchRow.run_id)
            .join(TableRow, TableRow.id == RunRow.table_id)
            .where(
                TaskDispatchRow.status == "started",
                TaskDispatchRow.type.in_(REPORTED_FROM_STARTS),
                TaskDispatchRow.started_at <= now - timedelta(seconds=delay),
            )
        ).all()
    reported = 0
    for run_id, attempt, alias, kind, token, partitions, table in started:
        start = dispatch_id(run_id, attempt, alias)
        if start not in done and _report(invoke, table, partitions, run_id, token, kind):
            done.add(start)
            reported += 1
    return reported


def _report(invoke: Invoke, table: Any, partitions: Any, run_id: Any, token: Any, source: str) -> bool:
    """``POST /register_execution`` for a finished task; False when it should be tried again."""
    if not (isinstance(table, str) and isinstance(partitions, dict) and isinstance(run_id, int)):
        logger.warning("a task message without its flux section was dropped", extra={"run_id": run_id})
        return True
    item = {
        "table_name": table,
        "partitions": [{"partition_name": k, "value": v} for k, v in partitions.items()],
        "source": source,
        "run_id": run_id,
        "token": token,
    }
    body = json.dumps({"data": [item], "user": CONSUMER}).encode()
    response = invoke(
        to_event("POST", "/register_execution", {"content-type": "application/json"}, body, "127.0.0.1")
    )
    status = int(response.get("statusCode", 500))
    if status == 409:  # another task of the run reported first, or the run ended meanwhile
        return True
    if status >= 400:
        logger.warning(
            "a local task completion was refused",
            extra={"run_id": run_id, "status": status, "answer": response.get("body")},
        )
    return status < 500
