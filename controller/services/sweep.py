"""The sweep (a rate schedule): repairs what an interrupted or failed AWS call left behind.

- scheduled runs whose schedule was never written (or is behind a push) get it written;
- overdue scheduled runs (their schedule is missing or did not fire) are fired;
- schedules that outlive their run (cancelled, or written after the run moved on) are deleted;
- run events that could not be published are published;
- queued runs are fired when slots are free (DESIGN §8);
- failed runs whose key must run again (a trigger arrived while they were in progress) get their
  new run, when the unit of work after their failure did not open it;
- started tasks past their check time are asked about, and stopped past their deadline
  (:mod:`controller.services.monitoring`);
- runs stuck in ``dispatching`` (the Lambda died mid-dispatch) are settled from what is stored: every
  task's start recorded → ``running`` (or done); a task whose start is not recorded → ``failed``, to be
  retried by a person: whether it started is unknown, and starting it twice is worse than asking.

Each run is repaired in its own transaction (DESIGN §8): one that cannot be is cancelled or failed with
the reason and its event, and the sweep goes on with the others. A database outage is not such a run:
it stops the sweep (the scheduler runs it again), with nothing given up.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial

from controller.core.effects import AfterCommit, ScheduleRequest, schedule_name
from controller.core.errors import Unavailable
from controller.core.runs import CANCELLED, DISPATCHING, FAILED, SCHEDULED
from controller.services import dispatch, monitoring, slots
from controller.services.after_commit import put_schedules, record_done
from controller.services.dependencies import Dependencies
from controller.services.firing import fire, perform, rerun
from controller.services.ports import Transaction
from controller.services.transitions import move, table_of

logger = logging.getLogger("flux_control.runtime")

OVERDUE_GRACE = timedelta(minutes=2)
STUCK_DISPATCH = timedelta(minutes=15)
#: Events this recent may still be published by the request that wrote them.
OUTBOX_GRACE = timedelta(seconds=30)
BATCH = 500
GAVE_UP = "the sweep could not fire it: "


def sweep(deps: Dependencies) -> dict[str, int]:
    """One pass of every repair; returns how many of each it did."""
    now = deps.clock()
    written = _write_unsynced(deps, now)
    fired, given_up = _fire_overdue(deps, now)
    deleted = _delete_leftover_schedules(deps)
    published = _publish_outbox(deps)
    settled, stuck = _settle_stuck(deps, now)
    queued = _start_queued(deps)
    reruns = _serve_reruns(deps)
    checked = monitoring.check_tasks(deps, now)
    counts = {
        "schedules_written": written,
        "overdue_fired": fired,
        "overdue_given_up": given_up,
        "schedules_deleted": deleted,
        "events_published": published,
        "stuck_settled": settled,
        "stuck_failed": stuck,
        "queued_fired": queued,
        "reruns_served": reruns,
        "tasks_settled": checked["settled"],
        "tasks_timed_out": checked["timed_out"],
        "tasks_still_running": checked["running"],
        "tasks_unreachable": checked["unreachable"],
    }
    logger.info("sweep done", extra=counts)
    return counts


def _write_unsynced(deps: Dependencies, now: datetime) -> int:
    with deps.store.session() as session:
        unsynced = session.unsynced_runs(now + OVERDUE_GRACE, BATCH)
        if not unsynced:
            return 0
        catalog, _ = session.transact(lambda tx, _after: deps.catalog(tx))
        requests = [
            ScheduleRequest(schedule_name(i, catalog.names.get(t, str(t))), i, f) for i, t, f in unsynced
        ]
        synced = put_schedules(deps, requests)
        record_done(deps, session, synced, None)
    return len(synced)


def _fire_overdue(deps: Dependencies, now: datetime) -> tuple[int, int]:
    """Fire each overdue run on its own; one whose fire raises is cancelled with the reason."""
    with deps.store.session() as session:
        overdue = session.overdue_runs(now - OVERDUE_GRACE, BATCH)
    outcomes = [_fire_one(deps, run_id) for run_id in overdue]
    return sum(o == "fired" for o in outcomes), sum(o == "given up" for o in outcomes)


def _fire_one(deps: Dependencies, run_id: int) -> str:
    try:
        return "fired" if fire(deps, run_id) != "unknown" else "unknown"
    except Unavailable:
        raise  # the database, not the run: nothing is given up, the next sweep tries again
    except Exception as exc:
        logger.exception("the sweep could not fire a run; it is cancelled", extra={"run_id": run_id})
        error = str(exc) or type(exc).__name__
    cancelled = perform(deps, lambda tx, after: _give_up(tx, deps, run_id, error, after))
    return "given up" if cancelled else "moved on"


def _give_up(tx: Transaction, deps: Dependencies, run_id: int, error: str, after: AfterCommit) -> bool:
    """Cancel a scheduled run the sweep cannot fire (a dispatching one is the stuck pass's)."""
    run = tx.lock_run(run_id)
    if run is None or run.status != SCHEDULED:
        return False
    table = table_of(tx, deps.catalog(tx), run)
    return move(tx, after, run, CANCELLED, deps.clock(), table, reason=GAVE_UP + error) is not None


def _delete_leftover_schedules(deps: Dependencies) -> int:
    """Delete the schedules of runs that left ``scheduled`` without a fire consuming them."""
    with deps.store.session() as session:
        leftovers = session.leftover_schedules(BATCH)
        deleted: list[tuple[int, datetime]] = []
        for run_id, name, written in leftovers:
            try:
                deps.scheduler.delete(name)  # idempotent: a schedule already gone is not an error
            except Exception:
                logger.exception(
                    "could not delete a leftover schedule; the next sweep will retry",
                    extra={"schedule": name},
                )
                continue
            deleted.append((run_id, written))
        session.forget_schedules(deleted)
    return len(deleted)


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


def _start_queued(deps: Dependencies) -> int:
    """Fire the queued runs that free slots allow (a fire after commit that was lost, or runs queued
    by their target's own limit, which nothing else retries), oldest first, table by table."""
    with deps.store.session() as session:
        tables = session.queued_tables(BATCH)
    return sum(perform(deps, partial(_queue_head, deps=deps, table_id=table_id)) for table_id in tables)


def _serve_reruns(deps: Dependencies) -> int:
    """Serve the rerun requests of failed runs that the unit of work after their failure did not
    (the Lambda ended first, or it failed: logged). One indexed statement when there is none."""
    with deps.store.session() as session:
        requests = session.failed_reruns(BATCH)
    served = 0
    for request in requests:
        try:
            served += rerun(deps, request)
        except Unavailable:
            raise  # the database: the next sweep tries again, nothing lost
        except Exception:
            logger.exception("could not serve a rerun request", extra={"run_id": request.run_id})
    return served


def _queue_head(tx: Transaction, after: AfterCommit, *, deps: Dependencies, table_id: int) -> int:
    """Ask to fire (after commit) the queued runs of a table its free slots allow, oldest first. A
    table without a limit has runs queued only by its target's own limit: each tries the target again
    (one still refused is queued again; set ``max_concurrent_runs`` to the target's limit to avoid it)."""
    catalog = deps.catalog(tx)
    spec = catalog.table(catalog.names.get(table_id, ""))
    limit = spec.max_concurrent_runs if spec is not None else None
    return slots.fire_queued(tx, table_id, limit, after, unlimited=BATCH)


def _settle_stuck(deps: Dependencies, now: datetime) -> tuple[int, int]:
    """Settle each run stuck in ``dispatching`` on its own, from what is stored of its tasks."""
    before = now - STUCK_DISPATCH
    stuck = perform(deps, lambda tx, _after: [run.id for run in tx.stuck_dispatching(before, BATCH)])
    outcomes = [_settle_stuck_one(deps, run_id, before) for run_id in stuck]
    return outcomes.count("settled"), outcomes.count("failed")


def _settle_stuck_one(deps: Dependencies, run_id: int, before: datetime) -> str:
    try:
        return perform(deps, lambda tx, after: _settle_one(tx, deps, run_id, before, after))
    except Unavailable:
        raise
    except Exception as exc:
        logger.exception("the sweep could not settle a stuck run; it fails", extra={"run_id": run_id})
        error = str(exc) or type(exc).__name__
    return perform(deps, lambda tx, after: _fail_stuck(tx, deps, run_id, error, after))


def _settle_one(
    tx: Transaction, deps: Dependencies, run_id: int, before: datetime, after: AfterCommit
) -> str:
    run = tx.lock_run(run_id)
    if run is None or run.status != DISPATCHING or run.updated_at > before:
        return "moved on"
    catalog = deps.catalog(tx)
    return dispatch.settle_interrupted(tx, catalog, run, deps.clock(), after)


def _fail_stuck(tx: Transaction, deps: Dependencies, run_id: int, error: str, after: AfterCommit) -> str:
    run = tx.lock_run(run_id)
    if run is None or run.status != DISPATCHING:
        return "moved on"
    table = table_of(tx, deps.catalog(tx), run)
    move(tx, after, run, FAILED, deps.clock(), table, reason=f"the sweep could not settle it: {error}")
    return "failed"
