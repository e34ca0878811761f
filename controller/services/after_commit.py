"""After commit: write schedules, delete schedules, publish events, stop the tasks of failed runs,
and record what was done. Failures are recorded, not hidden.

A schedule that could not be written leaves its run "unsynced" (``scheduled_fire_at`` differs from
``fire_at``); events that could not be published stay in the outbox. The sweep retries both.
(Firing the runs due now is :func:`controller.services.firing.perform`'s last step.)
"""

from __future__ import annotations

import logging

from controller.core.effects import AfterCommit, ScheduleRequest, TaskStop
from controller.services.dependencies import Dependencies
from controller.services.ports import StoreSession

logger = logging.getLogger("flux_control.runtime")


def carry_out(deps: Dependencies, after: AfterCommit, session: StoreSession) -> None:
    """Carry out what a committed transaction asked for, then record it on ``session``."""
    synced = put_schedules(deps, after.schedule)
    for name in after.unschedule:
        try:
            deps.scheduler.delete(name)
        except Exception:
            # The run is already final in the database, so a late fire is a no-op; log for operators.
            logger.exception("could not delete schedule", extra={"schedule": name})
    published = bool(after.events) and _publish(deps, after)
    stop_tasks(deps, after.stop)
    try:
        record_done(deps, session, synced, after.batch if published else None)
    except Exception:
        # The change itself is committed, so the request succeeded: failing it now would have the
        # caller repeat it. Unrecorded, the schedules are written again (idempotent) and the events
        # published again (at least once) by the sweep.
        logger.exception(
            "could not record written schedules and published events; the sweep will repeat them"
        )


def record_done(
    deps: Dependencies, session: StoreSession, synced: list[ScheduleRequest], batch: str | None
) -> None:
    """Record the schedules written and the outbox ``batch`` published (nothing to do: no statement)."""
    if synced or batch is not None:
        session.record_done(synced, batch, deps.clock())


def put_schedules(deps: Dependencies, requests: list[ScheduleRequest]) -> list[ScheduleRequest]:
    """Write each schedule; returns those written (a failure is logged and left to the sweep)."""
    synced: list[ScheduleRequest] = []
    for request in requests:
        try:
            deps.scheduler.put(request)
        except Exception:
            logger.exception(
                "could not write schedule; the sweep will retry", extra={"run_id": request.run_id}
            )
            continue
        synced.append(request)
    return synced


def stop_tasks(deps: Dependencies, stops: list[TaskStop]) -> None:
    """Stop the tasks of runs that failed. A task that cannot be stopped runs on (logged): its run
    is failed and its completion, when it comes, changes nothing."""
    for stop in stops:
        try:
            stopped = deps.tasks.stop(stop.type, stop.target, stop.external_id)
        except Exception:
            logger.exception(
                "could not stop the task of a failed run; it runs on",
                extra={"run_id": stop.run_id, "task": stop.alias},
            )
            continue
        if not stopped:
            logger.info(
                "the task of a failed run cannot be stopped; it runs on",
                extra={"run_id": stop.run_id, "task": stop.alias, "type": stop.type},
            )


def _publish(deps: Dependencies, after: AfterCommit) -> bool:
    """Publish the transaction's run events; False (logged) when they stay in the outbox."""
    try:
        deps.events.publish(after.events)
    except Exception:
        logger.exception("could not publish run events; the sweep will retry", extra={"batch": after.batch})
        return False
    return True
