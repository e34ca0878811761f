"""Local stand-ins for what AWS does on its own: fire due schedules, finish started tasks, sweep.

Each loop is a daemon thread that wakes up every ``interval`` seconds until ``stop`` is set. They
call the handler exactly as AWS would: a schedule with its own input, EventBridge events with the
shape Glue and Step Functions send.
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

from controller.db.runtime_models import TaskDispatchRow

logger = logging.getLogger("flux_control.local")
Invoke = Callable[[dict[str, Any]], Any]


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
