"""The sweep (a rate schedule): repairs what an interrupted or failed AWS call left behind.

- scheduled runs whose schedule was never written (or is behind a push) get it written;
- overdue scheduled runs (their schedule is missing or did not fire) are fired;
- run events that could not be published are published;
- runs stuck in ``dispatching`` (the Lambda died mid-dispatch) fail, to be retried by a person:
  whether their tasks started is unknown, and starting them twice is worse than asking.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from controller.db.runtime_models import RunEventRow, RunRow
from controller.runs import DISPATCHING, FAILED, SCHEDULED
from controller.runtime.context import Effects, Runtime
from controller.runtime.dispatch import fire, set_status
from controller.runtime.effects import perform, sync_schedules
from controller.runtime.ports import RunEvent, ScheduleRequest, schedule_name

logger = logging.getLogger("flux_control.runtime")

OVERDUE_GRACE = timedelta(minutes=2)
STUCK_DISPATCH = timedelta(minutes=15)
BATCH = 500


def sweep(runtime: Runtime) -> dict[str, int]:
    """One pass of every repair; returns how many of each it did."""
    now = runtime.clock()
    with Session(runtime.engine) as session:
        graph = runtime.graphs.get(session)
        unsynced = session.execute(
            select(RunRow.id, RunRow.table_id, RunRow.fire_at)
            .where(
                RunRow.status == SCHEDULED,
                RunRow.fire_at > now + OVERDUE_GRACE,
                or_(RunRow.scheduled_fire_at.is_(None), RunRow.scheduled_fire_at != RunRow.fire_at),
            )
            .limit(BATCH)
        ).all()
        overdue = (
            session.execute(
                select(RunRow.id)
                .where(RunRow.status == SCHEDULED, RunRow.fire_at <= now - OVERDUE_GRACE)
                .limit(BATCH)
            )
            .scalars()
            .all()
        )
    requests = [
        ScheduleRequest(schedule_name(i, graph.names.get(t, str(t))), i, f)
        for i, t, f in unsynced
        if f is not None
    ]
    synced = sync_schedules(runtime, requests)
    fired = sum(1 for run_id in overdue if fire(runtime, run_id) != "unknown")
    published = _publish_outbox(runtime)
    stuck = perform(runtime, lambda s, e: _fail_stuck(s, runtime, e))
    counts = {
        "schedules_written": len(synced),
        "overdue_fired": fired,
        "events_published": published,
        "stuck_failed": stuck,
    }
    logger.info("sweep done", extra=counts)
    return counts


def _publish_outbox(runtime: Runtime) -> int:
    with Session(runtime.engine) as session:
        rows = session.execute(
            select(RunEventRow.id, RunEventRow.detail)
            .where(
                RunEventRow.published_at.is_(None),
                RunEventRow.created_at <= runtime.clock() - timedelta(seconds=30),
            )
            .order_by(RunEventRow.id)
            .limit(BATCH)
        ).all()
    if not rows:
        return 0
    events = [_event(detail) for _, detail in rows]
    try:
        runtime.events.publish(events)
    except Exception:
        # The rest of the sweep (stuck runs) must still happen; the events wait for the next sweep.
        logger.exception(
            "could not publish the outbox; the next sweep will retry", extra={"events": len(rows)}
        )
        return 0
    with Session(runtime.engine) as session, session.begin():
        ids = [i for i, _ in rows]
        session.execute(
            update(RunEventRow).where(RunEventRow.id.in_(ids)).values(published_at=runtime.clock())
        )
    return len(rows)


def _event(detail: dict[str, Any]) -> RunEvent:
    at = detail.get("at")
    return RunEvent(
        run_id=detail["run_id"],
        table=detail["table"],
        partitions=detail["partitions"],
        old_state=detail.get("old_state"),
        new_state=detail["new_state"],
        approval_id=detail.get("approval_id"),
        reason=detail.get("reason"),
        at=datetime.fromisoformat(at) if at else None,
    )


def _fail_stuck(session: Session, runtime: Runtime, effects: Effects) -> int:
    graph = runtime.graphs.get(session)
    now = runtime.clock()
    stuck = (
        session.execute(
            select(RunRow)
            .where(RunRow.status == DISPATCHING, RunRow.updated_at <= now - STUCK_DISPATCH)
            .limit(BATCH)
        )
        .scalars()
        .all()
    )
    reason = "dispatch was interrupted; whether its tasks started is unknown: check them, then retry the run"
    return sum(
        set_status(
            session,
            run,
            FAILED,
            now,
            effects,
            graph.names.get(run.table_id, str(run.table_id)),
            reason=reason,
        )
        for run in stuck
    )
