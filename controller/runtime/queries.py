"""Read-only answers for the GET routes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.definitions_store import last_revision, read_state
from controller.db.engine import read_only
from controller.db.models import TableRow
from controller.db.runtime_models import ApprovalRow, ExecutionRow, RunRow, RunTriggerRow, TaskDispatchRow
from controller.runs import ALL_STATES, APPROVAL_STATES
from controller.runtime.context import Runtime
from controller.runtime.errors import NotFound, Unprocessable
from controller.runtime.opening import newest_approvals, summary_of

MAX_LIMIT = 1000


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def list_runs(runtime: Runtime, table: str | None, status: str | None, limit: int) -> dict[str, Any]:
    _filter("table", table)
    _one_of("status", status, ALL_STATES)
    with Session(read_only(runtime.engine)) as session:
        query = select(RunRow, TableRow.name).join(TableRow, TableRow.id == RunRow.table_id)
        if table is not None:
            query = query.where(TableRow.name == table)
        if status is not None:
            query = query.where(RunRow.status == status)
        rows = session.execute(query.order_by(RunRow.id.desc()).limit(_limit(limit))).all()
        if not rows:
            _known_table(session, table)
        approvals = newest_approvals(session, [run.id for run, _ in rows])
        return {"runs": [summary_of(run, name, approvals.get(run.id)) for run, name in rows]}


def get_run(runtime: Runtime, run_id: int) -> dict[str, Any]:
    with Session(read_only(runtime.engine)) as session:
        found = session.execute(
            select(RunRow, TableRow.name)
            .join(TableRow, TableRow.id == RunRow.table_id)
            .where(RunRow.id == run_id)
        ).first()
        if found is None:
            raise NotFound(f"unknown run {run_id}")
        run, name = found
        approval = session.execute(
            select(ApprovalRow).where(ApprovalRow.run_id == run_id).order_by(ApprovalRow.id.desc())
        ).scalar()
        tasks = session.execute(
            select(TaskDispatchRow)
            .where(TaskDispatchRow.run_id == run_id)
            .order_by(TaskDispatchRow.attempt, TaskDispatchRow.id)
        ).scalars()
        triggers = session.execute(
            select(ExecutionRow, TableRow.name)
            .join(RunTriggerRow, RunTriggerRow.execution_id == ExecutionRow.id)
            .join(TableRow, TableRow.id == ExecutionRow.table_id)
            .where(RunTriggerRow.run_id == run_id)
            .order_by(ExecutionRow.id)
        ).all()
        detail = summary_of(run, name, approval.id if approval else None)
        detail.update(
            attempt=run.attempt,
            manual=run.manual,
            reason=run.reason,
            error=run.error,
            rerun_requested=run.rerun_requested,
            first_trigger_at=_iso(run.first_trigger_at),
            last_trigger_at=_iso(run.last_trigger_at),
            schedule_name=run.schedule_name,
            # Only a scheduled run needs its schedule; None once it has fired or when it never will.
            schedule_synced=run.scheduled_fire_at == run.fire_at if run.status == "scheduled" else None,
            created_at=_iso(run.created_at),
            finished_at=_iso(run.finished_at),
            approval=None
            if approval is None
            else {
                "id": approval.id,
                "status": approval.status,
                "decided_by": approval.decided_by,
                "decided_at": _iso(approval.decided_at),
                "comment": approval.comment,
            },
            tasks=[
                {
                    "alias": t.alias,
                    "type": t.type,
                    "target": t.target,
                    "attempt": t.attempt,
                    "status": t.status,
                    "external_id": t.external_id,
                    "error": t.error,
                    "started_at": _iso(t.started_at),
                    "finished_at": _iso(t.finished_at),
                }
                for t in tasks
            ],
            triggers=[
                {"execution_id": e.id, "table_name": table, "partitions": e.partitions}
                for e, table in triggers
            ],
        )
        return {"run": detail}


def list_approvals(runtime: Runtime, status: str | None, limit: int) -> dict[str, Any]:
    _one_of("status", status, APPROVAL_STATES)
    with Session(read_only(runtime.engine)) as session:
        query = (
            select(ApprovalRow, RunRow.partitions, TableRow.name)
            .join(RunRow, RunRow.id == ApprovalRow.run_id)
            .join(TableRow, TableRow.id == RunRow.table_id)
        )
        if status is not None:
            query = query.where(ApprovalRow.status == status)
        rows = session.execute(query.order_by(ApprovalRow.id.desc()).limit(_limit(limit))).all()
        return {
            "approvals": [
                {
                    "id": a.id,
                    "status": a.status,
                    "run_id": a.run_id,
                    "table_name": name,
                    "partitions": partitions,
                }
                for a, partitions, name in rows
            ]
        }


def list_executions(runtime: Runtime, table: str | None, limit: int) -> dict[str, Any]:
    _filter("table", table)
    with Session(read_only(runtime.engine)) as session:
        query = select(ExecutionRow, TableRow.name).join(TableRow, TableRow.id == ExecutionRow.table_id)
        if table is not None:
            query = query.where(TableRow.name == table)
        rows = session.execute(query.order_by(ExecutionRow.id.desc()).limit(_limit(limit))).all()
        if not rows:
            _known_table(session, table)
        return {
            "executions": [
                {
                    "id": e.id,
                    "table_name": name,
                    "partitions": e.partitions,
                    "source": e.source,
                    "registered_at": _iso(e.registered_at),
                    "run_id": e.run_id,
                }
                for e, name in rows
            ]
        }


def list_tables(runtime: Runtime, name: str | None = None) -> dict[str, Any]:
    with Session(read_only(runtime.engine)) as session:
        state = read_state(session)
        revision = last_revision(session)
    stamp = (
        None if revision is None else {"revision": revision.revision, "applied_at": _iso(revision.applied_at)}
    )
    if name is None:
        return {"tables": [state.tables[n] for n in sorted(state.tables)], "revision": stamp}
    if name not in state.tables:
        raise NotFound(f"unknown table {name!r}")
    return {"table": state.tables[name], "revision": stamp}


def _known_table(session: Session, name: str | None) -> None:
    """Refuse a filter naming a table the database never had (a deleted one still has its history)."""
    if name is not None and session.execute(select(TableRow.id).where(TableRow.name == name)).first() is None:
        raise NotFound(f"unknown table {name!r}")


def _one_of(name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise Unprocessable(f"unknown {name} {value!r} (one of: {', '.join(allowed)})")


def _filter(name: str, value: str | None) -> None:
    # No stored text holds U+0000 and PostgreSQL refuses it in a query: a client error, not a 500.
    if value is not None and "\x00" in value:
        raise Unprocessable(f"query parameter {name!r} must not contain the NUL character (U+0000)")


def _limit(limit: int) -> int:
    if limit < 1 or limit > MAX_LIMIT:
        raise Unprocessable(f"limit must be between 1 and {MAX_LIMIT}")
    return limit
