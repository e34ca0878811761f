"""Operator actions on runs: a manual run (backfill, re-run), cancel an open run, retry a failed one."""

from __future__ import annotations

from typing import Any

from controller.core.access import Caller, actor_of
from controller.core.effects import AfterCommit, schedule_name
from controller.core.errors import Conflict, NotFound, Unprocessable
from controller.core.keys import InvalidPartition, key_text, make_key
from controller.core.runs import (
    CANCELLABLE_STATES,
    CANCELLED,
    FAILED,
    IN_PROGRESS_STATES,
    OPEN_STATES,
    Run,
)
from controller.services.answers import run_summary
from controller.services.authorization import require
from controller.services.dependencies import Dependencies
from controller.services.firing import perform, refreshed
from controller.services.opening import Wanted, open_or_push
from controller.services.ports import Transaction
from controller.services.retrying import reopen
from controller.services.transitions import move, table_of


def manual_run(
    deps: Dependencies,
    table_name: str,
    partitions: dict[str, Any],
    reason: str | None,
    caller: Caller | None = None,
) -> dict[str, Any]:
    """Open the run of (table, key) now: no gate, no debounce; approval still applies. ``caller``: an
    operator of the table (DESIGN §7), recorded on the run's events."""

    def work(tx: Transaction, after: AfterCommit) -> dict[str, Any]:
        catalog = deps.catalog(tx)
        spec = catalog.table(table_name)
        if spec is None:
            raise NotFound(f"unknown table {table_name!r}")
        require("operate", caller, catalog, table_name, deps.own_account)
        try:
            key = make_key(spec, partitions)
        except InvalidPartition as exc:
            raise (NotFound if exc.status == 404 else Unprocessable)(
                str(exc), {"partition": exc.partition}
            ) from None
        table_id = catalog.ids[table_name]
        tx.lock_gates([table_id])
        busy = tx.run_of_key(table_id, key_text(key), IN_PROGRESS_STATES)
        if busy is not None:
            raise Conflict(
                f"run {busy.id} of {table_name} for this key is already {busy.status}", {"run_id": busy.id}
            )
        [run] = open_or_push(
            tx,
            catalog,
            [Wanted(table_name, key)],
            deps.clock(),
            after,
            manual=True,
            reason=reason,
            actor=actor_of(caller),
        )
        return run

    return refreshed(deps, perform(deps, work))


def cancel_run(
    deps: Dependencies, run_id: int, reason: str | None, caller: Caller | None = None
) -> dict[str, Any]:
    """Cancel a run awaiting approval or scheduled, as an operator of its table (DESIGN §7); its
    schedule is deleted after commit."""

    def work(tx: Transaction, after: AfterCommit) -> dict[str, Any]:
        catalog = deps.catalog(tx)
        run = _locked(tx, run_id)
        table = table_of(tx, catalog, run)
        require("operate", caller, catalog, table, deps.own_account)
        actor = actor_of(caller)
        if run.status not in CANCELLABLE_STATES:
            raise Conflict(
                f"run {run_id} is {run.status}; only runs {' or '.join(CANCELLABLE_STATES)} can be cancelled"
            )
        now = deps.clock()
        cancelled = (
            move(tx, after, run, CANCELLED, now, table, reason=reason or "cancelled", actor=actor) or run
        )
        tx.cancel_pending_approvals(run_id, now)
        after.unschedule.append(run.schedule_name or schedule_name(run.id, table))
        return _summary(tx, cancelled, table)

    return perform(deps, work)


def retry_run(
    deps: Dependencies, run_id: int, reason: str | None, caller: Caller | None = None
) -> dict[str, Any]:
    """Re-open a failed run as a new attempt, as an operator of its table (DESIGN §7): it fires now,
    or awaits approval when its table requires approval now and the run was never approved (the
    definitions as they are now decide, not as they were when the run opened)."""

    def work(tx: Transaction, after: AfterCommit) -> dict[str, Any]:
        catalog = deps.catalog(tx)
        run = _locked(tx, run_id)
        table = catalog.names.get(run.table_id)
        if table is None:
            raise Conflict(f"run {run_id} belongs to a deleted table")
        require("operate", caller, catalog, table, deps.own_account)
        actor = actor_of(caller)
        if run.status != FAILED:
            raise Conflict(f"run {run_id} is {run.status}; only failed runs can be retried")
        tx.lock_gates([run.table_id])
        other = tx.run_of_key(run.table_id, run.partition_key, OPEN_STATES)
        if other is not None:
            raise Conflict(f"run {other.id} is already open for this table and key", {"run_id": other.id})
        retried = reopen(tx, catalog, run, table, deps.clock(), after, reason=reason, actor=actor)
        return _summary(tx, retried, table)

    return refreshed(deps, perform(deps, work))


def _summary(tx: Transaction, run: Run, table: str) -> dict[str, Any]:
    approval = tx.newest_approvals([run.id]).get(run.id)
    return run_summary(run.id, table, run.partitions, run.status, run.fire_at, approval)


def _locked(tx: Transaction, run_id: int) -> Run:
    run = tx.lock_run(run_id)
    if run is None:
        raise NotFound(f"unknown run {run_id}")
    return run
