"""Units of work and firing runs.

:func:`perform` runs one unit of work in a transaction, then what it asked for after commit:
schedules written and deleted, events published, tasks of failed runs stopped, the runs it made due
now fired, and the keys of failed runs that must run again opened. :func:`fire`
fires a run in three units of work (claim, each task's start, settle: see
:mod:`controller.services.dispatch`), starting its tasks in AWS between them, never inside one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from controller.core.effects import AfterCommit, Rerun, TaskRequest, TaskStartError
from controller.core.runs import FAILED
from controller.services import dispatch, retrying, slots
from controller.services.after_commit import carry_out
from controller.services.dependencies import Dependencies
from controller.services.ports import StoreSession, Transaction

T = TypeVar("T")
logger = logging.getLogger("flux_control.runtime")


def perform(deps: Dependencies, work: Callable[[Transaction, AfterCommit], T]) -> T:
    """Run ``work`` in one transaction, then carry out what it asked for; returns what ``work`` returned.

    One connection serves both the transaction and the record of what AWS did after it: a second
    checkout would cost another server process whose caches are cold.
    """

    def unit(tx: Transaction, after: AfterCommit) -> T:
        result = work(tx, after)
        follow_up(deps, tx, after)
        return result

    with deps.store.session() as session:
        result, after = session.transact(unit)
        carry_out(deps, after, session)
    for run_id in after.fire_now:
        fire_after_commit(deps, run_id)
    for request in after.rerun:
        rerun_after_commit(deps, request)
    return result


def follow_up(deps: Dependencies, tx: Transaction, after: AfterCommit) -> None:
    """What the run changes of a unit of work call for, in its transaction (DESIGN §8): failed runs
    with retries left come back as their next attempt (without, a trigger that arrived meanwhile
    opens a new run of the key); freed slots fire the next queued runs. No statement when no run
    failed or left ``dispatching``/``running``."""
    failed = [event for event in after.events if event.new_state == FAILED]
    freed = slots.freed_tables(after.events)
    if not failed and not freed:
        return
    # The work read the definitions in this transaction (a fire, a completion): they are cached.
    catalog = deps.catalogs.cached() or deps.catalog(tx)
    now = deps.clock()
    if failed:
        retrying.after_failures(tx, catalog, failed, now, after)
    if freed:
        slots.fire_next(tx, catalog, freed, after)


def fire_after_commit(deps: Dependencies, run_id: int) -> None:
    """Fire a run a committed change made due now. Whatever goes wrong is logged and left to the
    sweep (which fires overdue runs and settles interrupted dispatches): the change committed, so its
    caller must hear that it did, or it would repeat it."""
    try:
        fire(deps, run_id)
    except Exception:
        logger.exception(
            "the immediate fire failed after commit; the sweep will repair it", extra={"run_id": run_id}
        )


def rerun_after_commit(deps: Dependencies, request: Rerun) -> None:
    """Serve a failed run's rerun request its failure committed; whatever goes wrong is logged and
    left to the sweep, which serves the requests still held (the failure itself committed)."""
    try:
        rerun(deps, request)
    except Exception:
        logger.exception(
            "the rerun of a failed run's key failed after commit; the sweep will repair it",
            extra={"run_id": request.run_id},
        )


def rerun(deps: Dependencies, request: Rerun) -> bool:
    """Serve one rerun request in a unit of work of its own (:func:`retrying.rerun`)."""
    return perform(deps, lambda tx, after: retrying.rerun(tx, deps.catalog(tx), request, deps.clock(), after))


def fire(deps: Dependencies, run_id: int) -> str:
    """Fire run ``run_id`` (a schedule, the sweep, or an immediate run); returns what happened."""
    outcome, requests = perform(
        deps,
        lambda tx, after: dispatch.claim(tx, deps.catalog(tx), run_id, deps.clock(), after, deps.new_token),
    )
    if not requests:
        return outcome
    errors: dict[str, str] = {}
    limited: set[str] = set()
    with deps.store.session() as session:
        for request in requests:
            try:
                external_id = deps.tasks.start(request)
            except TaskStartError as exc:
                errors[request.alias] = str(exc)
                if exc.limited:
                    limited.add(request.alias)
                logger.error(
                    "task failed to start",
                    extra={
                        "run_id": run_id,
                        "task": request.alias,
                        "error": str(exc),
                        "limited": exc.limited,
                    },
                )
                continue
            record_start(deps, session, request, external_id)
    return perform(
        deps,
        lambda tx, after: dispatch.finish(
            tx, deps.catalog(tx), requests, errors, deps.clock(), after, frozenset(limited)
        ),
    )


def record_start(deps: Dependencies, session: StoreSession, request: TaskRequest, external_id: str) -> None:
    """Commit a started task's external id at once, for its completion event to find, with when the
    sweep first asks AWS about it and when it times out (DESIGN §8)."""
    now = deps.clock()
    deadline = now + timedelta(seconds=request.timeout_seconds)
    check = min(now + timedelta(seconds=deps.poll_after_seconds), deadline)
    session.transact(
        lambda tx, _: tx.task_started(
            request.run_id, request.attempt, request.alias, external_id, now, check, deadline
        )
    )


def refreshed(deps: Dependencies, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with the run's status and fire time as they are now (after an immediate fire), or
    as the committed change left it when they cannot be read (logged: the change did commit)."""
    try:
        with deps.store.session() as session:
            state = session.run_state(summary["id"])
    except Exception:
        logger.exception("could not read the run again after commit", extra={"run_id": summary["id"]})
        return summary
    if state is None:
        return summary
    status, fire_at = state
    return {**summary, "status": status, "fire_at": fire_at.isoformat() if fire_at else None}
