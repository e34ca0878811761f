"""Read-only answers for the GET routes, from the read port."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from controller.core.errors import NotFound, Unprocessable
from controller.core.runs import ALL_STATES, APPROVAL_STATES, SCHEDULED
from controller.services import run_history
from controller.services.answers import iso, run_summary

if TYPE_CHECKING:
    from controller.services.dependencies import Dependencies

MAX_LIMIT = 1000


def list_runs(deps: Dependencies, table: str | None, status: str | None, limit: int) -> dict[str, Any]:
    """The newest runs, optionally of one table and in one state, newest first."""
    _filter("table", table)
    _one_of("status", status, ALL_STATES)
    rows = deps.reads.runs(table, status, _limit(limit))
    if not rows:
        _known_table(deps, table)
    return {
        "runs": [
            run_summary(run.id, name, run.partitions, run.status, run.fire_at, approval_id)
            for run, name, approval_id in rows
        ]
    }


def get_run(deps: Dependencies, run_id: int) -> dict[str, Any]:
    """One run in full: its approval, its tasks of every attempt and the executions that triggered it."""
    found = deps.reads.run_detail(run_id)
    if found is None:
        raise NotFound(f"unknown run {run_id}")
    run, name, approval, tasks, triggers, events = found
    detail = run_summary(
        run.id, name, run.partitions, run.status, run.fire_at, approval.id if approval else None
    )
    detail.update(
        attempt=run.attempt,
        manual=run.manual,
        reason=run.reason,
        error=run.error,
        rerun_requested=run.rerun_requested,
        first_trigger_at=iso(run.first_trigger_at),
        last_trigger_at=iso(run.last_trigger_at),
        schedule_name=run.schedule_name,
        # Only a scheduled run needs its schedule; None once it has fired or when it never will.
        schedule_synced=run.scheduled_fire_at == run.fire_at if run.status == SCHEDULED else None,
        created_at=iso(run.created_at),
        finished_at=iso(run.finished_at),
        approval=None
        if approval is None
        else {
            "id": approval.id,
            "status": approval.status,
            "decided_by": approval.decided_by,
            "decided_at": iso(approval.decided_at),
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
                "started_at": iso(t.started_at),
                "finished_at": iso(t.finished_at),
            }
            for t in tasks
        ],
        triggers=[
            {"execution_id": execution_id, "table_name": table, "partitions": partitions}
            for execution_id, table, partitions in triggers
        ],
        events=[
            {
                "at": iso(e.at),
                "old_state": e.old_state,
                "new_state": e.new_state,
                "actor": e.actor,
                "reason": e.reason,
            }
            for e in events
        ],
        attempts=run_history.attempts(events, tasks, run.attempt),
    )
    return {"run": detail}


def list_approvals(deps: Dependencies, status: str | None, limit: int) -> dict[str, Any]:
    """The newest approvals, optionally in one state, newest first."""
    _one_of("status", status, APPROVAL_STATES)
    return {
        "approvals": [
            {
                "id": a.id,
                "status": a.status,
                "run_id": a.run_id,
                "table_name": name,
                "partitions": partitions,
            }
            for a, name, partitions in deps.reads.approvals(status, _limit(limit))
        ]
    }


def list_executions(deps: Dependencies, table: str | None, limit: int) -> dict[str, Any]:
    """The newest executions, optionally of one table, newest first."""
    _filter("table", table)
    rows = deps.reads.executions(table, _limit(limit))
    if not rows:
        _known_table(deps, table)
    return {
        "executions": [
            {
                "id": execution_id,
                "table_name": name,
                "partitions": partitions,
                "source": source,
                "registered_at": iso(registered_at),
                "run_id": run_id,
                "registered_by": registered_by,
            }
            for execution_id, name, partitions, source, registered_at, run_id, registered_by in rows
        ]
    }


def list_tables(deps: Dependencies, name: str | None = None) -> dict[str, Any]:
    """The live definitions (sorted by name), or the one named, with the last reconcile's revision."""
    tables, revision = deps.reads.definitions()
    stamp = None if revision is None else {"revision": revision[0], "applied_at": iso(revision[1])}
    if name is None:
        return {"tables": [tables[n] for n in sorted(tables)], "revision": stamp}
    if name not in tables:
        raise NotFound(f"unknown table {name!r}")
    return {"table": tables[name], "revision": stamp}


def _known_table(deps: Dependencies, name: str | None) -> None:
    """Refuse a filter naming a table the database never had (a deleted one still has its history)."""
    if name is not None and not deps.reads.table_exists(name):
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
