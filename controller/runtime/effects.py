"""After commit: write schedules, fire due runs, publish events. Failures are recorded, not hidden.

A schedule that could not be written leaves its run "unsynced" (``scheduled_fire_at`` differs from
``fire_at``); events that could not be published stay in the outbox. The sweep retries both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from controller.db.run_store import record_done
from controller.runtime.context import Effects, Runtime
from controller.runtime.ports import ScheduleRequest

T = TypeVar("T")
logger = logging.getLogger("flux_control.runtime")


def perform(runtime: Runtime, work: Callable[[Session, Effects], T]) -> T:
    """Run ``work`` in one transaction, then carry out its effects; returns what ``work`` returned.

    One connection serves both the transaction and the record of what AWS did after it: a second
    checkout cost a ping and, with a pool, another server process whose caches were cold.
    """
    with runtime.engine.connect() as connection:
        result, effects = runtime.transact(work, connection)
        carry_out(runtime, effects, connection)
    return result


def carry_out(runtime: Runtime, effects: Effects, connection: Connection | None = None) -> None:
    """Carry out ``effects`` of a committed transaction, then record what was done (in one statement on
    PostgreSQL, one transaction on SQLite; on ``connection`` when given)."""
    synced = _put_schedules(runtime, effects.schedule)
    for name in effects.unschedule:
        try:
            runtime.scheduler.delete(name)
        except Exception:
            # The run is already final in the database, so a late fire is a no-op; log for operators.
            logger.exception("could not delete schedule", extra={"schedule": name})
    published = bool(effects.events) and _publish(runtime, effects)
    try:
        _record_done(runtime, synced, effects.batch if published else None, connection)
    except Exception:
        # The change itself is committed, so the request succeeded: failing it now would have the
        # caller repeat it. Unrecorded, the schedules are written again (idempotent) and the events
        # published again (at least once) by the sweep.
        logger.exception(
            "could not record written schedules and published events; the sweep will repeat them"
        )
    if effects.fire_now:
        from controller.runtime.dispatch import fire  # dispatch depends on this module

        for run_id in effects.fire_now:
            fire(runtime, run_id)


def sync_schedules(runtime: Runtime, requests: list[ScheduleRequest]) -> list[int]:
    """Write schedules; mark the runs whose schedule now matches their fire time. Returns their ids."""
    synced = _put_schedules(runtime, requests)
    _record_done(runtime, synced, None)
    return [r.run_id for r in synced]


def _put_schedules(runtime: Runtime, requests: list[ScheduleRequest]) -> list[ScheduleRequest]:
    """Write each schedule; returns those written (a failure is logged and left to the sweep)."""
    synced: list[ScheduleRequest] = []
    for request in requests:
        try:
            runtime.scheduler.put(request)
        except Exception:
            logger.exception(
                "could not write schedule; the sweep will retry", extra={"run_id": request.run_id}
            )
            continue
        synced.append(request)
    return synced


def _publish(runtime: Runtime, effects: Effects) -> bool:
    """Publish the transaction's run events; False (logged) when they stay in the outbox."""
    try:
        runtime.events.publish(effects.events)
    except Exception:
        logger.exception("could not publish run events; the sweep will retry", extra={"batch": effects.batch})
        return False
    return True


def _record_done(
    runtime: Runtime,
    synced: list[ScheduleRequest],
    published: str | None,
    connection: Connection | None = None,
) -> None:
    """Record the schedules written and the outbox batch ``published``, all or nothing."""
    done = [(r.run_id, r.fire_at, r.name) for r in synced]
    if not done and published is None:
        return
    if connection is not None:
        record_done(connection, done, published, runtime.clock())
        return
    with runtime.engine.connect() as own:
        record_done(own, done, published, runtime.clock())
