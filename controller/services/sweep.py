"""The sweep (a rate schedule): repairs what an interrupted or failed AWS call left behind.

- scheduled runs whose schedule was never written (or is behind a push) get it written;
- overdue scheduled runs (their schedule is missing or did not fire) are fired;
- run events that could not be published are published;
- runs stuck in ``dispatching`` (the Lambda died mid-dispatch) fail, to be retried by a person:
  whether their tasks started is unknown, and starting them twice is worse than asking.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from controller.core.effects import AfterCommit, ScheduleRequest, schedule_name
from controller.core.runs import FAILED
from controller.services.after_commit import put_schedules, record_done
from controller.services.dependencies import Dependencies
from controller.services.firing import fire, perform
from controller.services.ports import Transaction
from controller.services.transitions import move

logger = logging.getLogger("flux_control.runtime")

OVERDUE_GRACE = timedelta(minutes=2)
STUCK_DISPATCH = timedelta(minutes=15)
#: Events this recent may still be published by the request that wrote them.
OUTBOX_GRACE = timedelta(seconds=30)
BATCH = 500
STUCK_REASON = (
    "dispatch was interrupted; whether its tasks started is unknown: check them, then retry the run"
)


def sweep(deps: Dependencies) -> dict[str, int]:
    """One pass of every repair; returns how many of each it did."""
    now = deps.clock()
    with deps.store.session() as session:
        unsynced = session.unsynced_runs(now + OVERDUE_GRACE, BATCH)
        overdue = session.overdue_runs(now - OVERDUE_GRACE, BATCH)
        synced: list[ScheduleRequest] = []
        if unsynced:
            catalog, _ = session.transact(lambda tx, _after: deps.catalog(tx))
            requests = [
                ScheduleRequest(schedule_name(i, catalog.names.get(t, str(t))), i, f) for i, t, f in unsynced
            ]
            synced = put_schedules(deps, requests)
            record_done(deps, session, synced, None)
    fired = sum(1 for run_id in overdue if fire(deps, run_id) != "unknown")
    published = _publish_outbox(deps)
    stuck = perform(deps, lambda tx, after: _fail_stuck(tx, deps, after))
    counts = {
        "schedules_written": len(synced),
        "overdue_fired": fired,
        "events_published": published,
        "stuck_failed": stuck,
    }
    logger.info("sweep done", extra=counts)
    return counts


def _publish_outbox(deps: Dependencies) -> int:
    with deps.store.session() as session:
        rows = session.unpublished_events(deps.clock() - OUTBOX_GRACE, BATCH)
        if not rows:
            return 0
        try:
            deps.events.publish([event for _, event in rows])
        except Exception:
            # The rest of the sweep (stuck runs) must still happen; the events wait for the next sweep.
            logger.exception(
                "could not publish the outbox; the next sweep will retry", extra={"events": len(rows)}
            )
            return 0
        session.mark_published([i for i, _ in rows], deps.clock())
    return len(rows)


def _fail_stuck(tx: Transaction, deps: Dependencies, after: AfterCommit) -> int:
    catalog = deps.catalog(tx)
    now = deps.clock()
    stuck = tx.stuck_dispatching(now - STUCK_DISPATCH, BATCH)
    failed = [
        move(
            tx,
            after,
            run,
            FAILED,
            now,
            catalog.names.get(run.table_id, str(run.table_id)),
            reason=STUCK_REASON,
        )
        for run in stuck
    ]
    return sum(1 for run in failed if run is not None)
