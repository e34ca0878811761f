"""Opening and pushing runs for open gates: the one place runs are created.

All statements are bulk: the number of statements does not grow with the number of runs opened.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from controller.db.graph_store import RuntimeGraph
from controller.db.run_store import NewRun, Trigger, insert_runs, open_runs_for_update, update_runs
from controller.db.runtime_models import ApprovalRow, RunRow
from controller.db.runtime_store import insert_ignoring_duplicates
from controller.keys import Key, key_text
from controller.runs import AWAITING_APPROVAL, PUSHABLE_STATES, SCHEDULED, fire_time
from controller.runtime.context import Effects
from controller.runtime.ports import RunEvent, ScheduleRequest, schedule_name
from controller.specs import TableSpec


@dataclass(slots=True)
class Wanted:
    """A run to open or push: table, key and the executions that triggered it."""

    table: str
    key: Key
    triggers: list[int] = field(default_factory=list)


def open_or_push(
    session: Session,
    graph: RuntimeGraph,
    wanted: list[Wanted],
    now: datetime,
    effects: Effects,
    *,
    manual: bool = False,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    """Create the run of each (table, key), or push the open one; returns the runs as API dicts."""
    merged: dict[tuple[int, str], Wanted] = {}
    for item in wanted:
        pair = (graph.ids[item.table], key_text(item.key))
        if pair in merged:
            merged[pair].triggers.extend(t for t in item.triggers if t not in merged[pair].triggers)
        else:
            merged[pair] = Wanted(item.table, item.key, list(item.triggers))
    existing = open_runs_for_update(session, merged)
    new_runs: list[NewRun] = []
    changes: dict[tuple[int, str], dict[str, Any]] = {}
    for pair, item in merged.items():
        spec = graph.graph.tables[item.table]
        run = existing.get(pair)
        if run is None:
            new_runs.append(_new_run(pair, item, spec, now, manual))
        elif run["status"] in PUSHABLE_STATES:
            fire_at = run["fire_at"]
            if run["status"] == SCHEDULED:
                fire_at = (
                    now
                    if manual
                    else fire_time(run["first_trigger_at"], now, spec.debounce_seconds, spec.max_wait_seconds)
                )
            changes[pair] = {"id": run["id"], "last_trigger_at": now, "fire_at": fire_at, "updated_at": now}
        else:  # dispatching or running: run again once it is over
            changes[pair] = {"id": run["id"], "rerun_requested": True, "updated_at": now}
    triggers = [
        Trigger(existing[pair]["id"] if pair in existing else None, pair[0], pair[1], execution_id)
        for pair, item in merged.items()
        for execution_id in item.triggers
    ]
    inserted = insert_runs(session, new_runs, triggers, now, manual=manual, reason=reason)
    for same_columns in _grouped_by_columns(changes.values()):
        update_runs(session, same_columns)
    # Rows read FOR UPDATE are locked: they are now what was read, with these changes.
    runs = {
        pair: inserted[pair] if pair in inserted else {**existing[pair], **changes.get(pair, {})}
        for pair in merged
        if pair in inserted or pair in existing
    }
    created = {pair for pair in merged if pair not in existing}
    approvals = _request_approvals(
        session, [runs[p]["id"] for p in created if runs[p]["status"] == AWAITING_APPROVAL], now
    )
    result = []
    for pair, run in runs.items():
        table = merged[pair].table
        if pair in created:
            effects.events.append(
                RunEvent(
                    run["id"],
                    table,
                    run["partitions"],
                    None,
                    run["status"],
                    approvals.get(run["id"]),
                    reason,
                    now,
                )
            )
        if run["status"] == SCHEDULED and run["fire_at"] is not None:
            if run["fire_at"] <= now:
                effects.fire_now.append(run["id"])
            else:
                effects.schedule.append(
                    ScheduleRequest(schedule_name(run["id"], table), run["id"], run["fire_at"])
                )
        result.append(run_summary(run, table, approvals.get(run["id"], run.get("approval_id"))))
    return result


def _new_run(pair: tuple[int, str], item: Wanted, spec: TableSpec, now: datetime, manual: bool) -> NewRun:
    approval = spec.requires_approval
    fire_at = None
    if not approval:
        fire_at = now if manual else fire_time(now, now, spec.debounce_seconds, spec.max_wait_seconds)
    return NewRun(pair[0], pair[1], item.key, AWAITING_APPROVAL if approval else SCHEDULED, fire_at)


def _grouped_by_columns(changes: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Changes grouped by the columns they set: one executemany per group."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in changes:
        groups.setdefault(tuple(change), []).append(change)
    return list(groups.values())


def _request_approvals(session: Session, run_ids: list[int], now: datetime) -> dict[int, int]:
    if not run_ids:
        return {}
    rows = [{"run_id": run_id, "status": "pending", "requested_at": now} for run_id in run_ids]
    insert_ignoring_duplicates(session, ApprovalRow, rows)
    return newest_approvals(session, run_ids)


def newest_approvals(session: Session, run_ids: list[int]) -> dict[int, int]:
    """The newest approval of each run that has one, pending or decided (run id → approval id)."""
    if not run_ids:
        return {}
    query = (
        select(ApprovalRow.run_id, func.max(ApprovalRow.id))
        .where(ApprovalRow.run_id.in_(run_ids))
        .group_by(ApprovalRow.run_id)
    )
    return {int(run_id): int(approval_id) for run_id, approval_id in session.execute(query)}


def run_summary(run: Any, table: str, approval_id: int | None) -> dict[str, Any]:
    """The short form of a run that every answer carries, with its newest approval (pending or
    decided; None when it never needed one)."""
    fire_at = run["fire_at"]
    return {
        "id": run["id"],
        "table_name": table,
        "partitions": run["partitions"],
        "status": run["status"],
        "fire_at": fire_at.isoformat() if fire_at else None,
        "approval_id": approval_id,
    }


def summary_of(run: RunRow, table: str, approval_id: int | None) -> dict[str, Any]:
    """:func:`run_summary` of a loaded run row."""
    fields = {"id": run.id, "partitions": run.partitions, "status": run.status, "fire_at": run.fire_at}
    return run_summary(fields, table, approval_id)


def refreshed(engine: Engine, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with the run's status and fire time as they are now (after an immediate fire)."""
    with Session(engine) as session:
        row = session.execute(select(RunRow.status, RunRow.fire_at).where(RunRow.id == summary["id"])).first()
    if row is None:
        return summary
    return {**summary, "status": row.status, "fire_at": row.fire_at.isoformat() if row.fire_at else None}
