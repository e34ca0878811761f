"""Operator actions on runs: a manual run (backfill, re-run), cancel an open run, retry a failed one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.db.runtime_models import ApprovalRow, RunRow
from controller.db.runtime_store import changed, lock_gates
from controller.keys import InvalidPartition, key_text, make_key
from controller.runs import (
    CANCELLABLE_STATES,
    CANCELLED,
    DISPATCHING,
    FAILED,
    OPEN_STATES,
    RUNNING,
    SCHEDULED,
)
from controller.runtime.context import Effects, Runtime
from controller.runtime.dispatch import set_status
from controller.runtime.effects import perform
from controller.runtime.errors import Conflict, NotFound, Unprocessable
from controller.runtime.opening import Wanted, newest_approvals, open_or_push, refreshed, summary_of
from controller.runtime.ports import RunEvent, schedule_name


def manual_run(
    runtime: Runtime, table_name: str, partitions: dict[str, Any], reason: str | None
) -> dict[str, Any]:
    """Open the run of (table, key) now: no gate, no debounce; approval still applies."""

    def work(session: Session, effects: Effects) -> dict[str, Any]:
        graph = runtime.graphs.get(session)
        spec = graph.table(table_name)
        if spec is None:
            raise NotFound(f"unknown table {table_name!r}")
        try:
            key = make_key(spec, partitions)
        except InvalidPartition as exc:
            raise (NotFound if exc.status == 404 else Unprocessable)(
                str(exc), {"partition": exc.partition}
            ) from None
        table_id = graph.ids[table_name]
        lock_gates(session, [table_id])
        busy = session.execute(
            select(RunRow.id, RunRow.status).where(
                RunRow.table_id == table_id,
                RunRow.partition_key == key_text(key),
                RunRow.status.in_((DISPATCHING, RUNNING)),
            )
        ).first()
        if busy is not None:
            raise Conflict(
                f"run {busy.id} of {table_name} for this key is already {busy.status}", {"run_id": busy.id}
            )
        [run] = open_or_push(
            session, graph, [Wanted(table_name, key)], runtime.clock(), effects, manual=True, reason=reason
        )
        return run

    return refreshed(runtime.engine, perform(runtime, work))


def cancel_run(runtime: Runtime, run_id: int, reason: str | None) -> dict[str, Any]:
    """Cancel a run awaiting approval or scheduled; its schedule is deleted after commit."""

    def work(session: Session, effects: Effects) -> dict[str, Any]:
        graph = runtime.graphs.get(session)
        run = _locked(session, run_id)
        table = graph.names.get(run.table_id, str(run.table_id))
        if run.status not in CANCELLABLE_STATES:
            raise Conflict(
                f"run {run_id} is {run.status}; only runs {' or '.join(CANCELLABLE_STATES)} can be cancelled"
            )
        now = runtime.clock()
        set_status(session, run, CANCELLED, now, effects, table, reason=reason or "cancelled")
        session.execute(
            update(ApprovalRow)
            .where(ApprovalRow.run_id == run_id, ApprovalRow.status == "pending")
            .values(status="cancelled", decided_at=now)
        )
        effects.unschedule.append(run.schedule_name or schedule_name(run.id, table))
        session.refresh(run)
        return summary_of(run, table, newest_approvals(session, [run_id]).get(run_id))

    return perform(runtime, work)


def retry_run(runtime: Runtime, run_id: int, reason: str | None) -> dict[str, Any]:
    """Re-open a failed run as a new attempt that fires now."""

    def work(session: Session, effects: Effects) -> dict[str, Any]:
        graph = runtime.graphs.get(session)
        run = _locked(session, run_id)
        table = graph.names.get(run.table_id)
        if table is None:
            raise Conflict(f"run {run_id} belongs to a deleted table")
        if run.status != FAILED:
            raise Conflict(f"run {run_id} is {run.status}; only failed runs can be retried")
        lock_gates(session, [run.table_id])
        other = session.execute(
            select(RunRow.id).where(
                RunRow.table_id == run.table_id,
                RunRow.partition_key == run.partition_key,
                RunRow.status.in_(OPEN_STATES),
            )
        ).scalar()
        if other is not None:
            raise Conflict(f"run {other} is already open for this table and key", {"run_id": other})
        now = runtime.clock()
        reopened = update(RunRow).where(RunRow.id == run_id, RunRow.status == FAILED)
        values = {"status": SCHEDULED, "attempt": run.attempt + 1, "fire_at": now, "error": None}
        changed(session, reopened.values(**values, finished_at=None, reason=reason, updated_at=now))
        effects.events.append(
            RunEvent(run_id, table, run.partitions, FAILED, SCHEDULED, reason=reason, at=now)
        )
        effects.fire_now.append(run_id)
        session.refresh(run)
        return summary_of(run, table, newest_approvals(session, [run_id]).get(run_id))

    return refreshed(runtime.engine, perform(runtime, work))


def _locked(session: Session, run_id: int) -> RunRow:
    run = session.get(RunRow, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"unknown run {run_id}")
    return run
