"""Opening and pushing runs for open gates: the one place runs are created.

All statements are bulk: the number of statements does not grow with the number of runs opened.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit, ScheduleRequest, schedule_name
from controller.core.keys import Key, key_text
from controller.core.records import NewRun, Trigger
from controller.core.runs import (
    AWAITING_APPROVAL,
    PUSHABLE_STATES,
    SCHEDULED,
    WAITING_STATES,
    Run,
    fire_time,
    opened,
    opening_state,
)
from controller.core.specs import TableSpec
from controller.services.answers import run_summary
from controller.services.ports import Pair, Transaction


@dataclass(slots=True)
class Wanted:
    """A run to open or push: table, key and the executions that triggered it."""

    table: str
    key: Key
    triggers: list[int] = field(default_factory=list)


def open_or_push(
    tx: Transaction,
    catalog: Catalog,
    wanted: list[Wanted],
    now: datetime,
    after: AfterCommit,
    *,
    manual: bool = False,
    reason: str | None = None,
    actor: str | None = None,
) -> list[dict[str, Any]]:
    """Create the run of each (table, key), or push the open one; returns the runs as API dicts.
    ``actor``: who opened them (the registering producer, the operator of a manual run)."""
    merged = _merged(catalog, wanted)
    existing = tx.lock_open_runs(merged)
    new_runs: list[NewRun] = []
    changes: dict[Pair, dict[str, Any]] = {}
    for pair, item in merged.items():
        spec = catalog.graph.tables[item.table]
        found = existing.get(pair)
        if found is None:
            new_runs.append(_new_run(pair, item, spec, now, manual))
        else:
            changes[pair] = _push(found[0], spec, now, manual)
    triggers = [
        Trigger(existing[pair][0].id if pair in existing else None, pair[0], pair[1], execution_id)
        for pair, item in merged.items()
        for execution_id in item.triggers
    ]
    inserted = tx.insert_runs(new_runs, triggers, now, manual=manual, reason=reason)
    for same_columns in _grouped_by_columns(changes.values()):
        tx.push_runs(same_columns)
    # Rows read locked are now what was read, with these changes.
    runs: dict[Pair, Run] = {}
    for pair in merged:
        if pair in inserted:
            runs[pair] = inserted[pair]
        elif pair in existing:
            change = {k: v for k, v in changes.get(pair, {}).items() if k != "id"}
            runs[pair] = _with(existing[pair][0], change)
    approvals = _request_approvals(
        tx, [r.id for p, r in inserted.items() if r.status == AWAITING_APPROVAL], now
    )
    result = []
    for pair, run in runs.items():
        table = merged[pair].table
        approval = approvals.get(run.id, existing[pair][1] if pair in existing else None)
        if pair in inserted:
            approval_id = approvals.get(run.id)
            after.events.append(opened(run, table, now, approval_id=approval_id, reason=reason, actor=actor))
        if run.status == SCHEDULED and run.fire_at is not None:
            if run.fire_at <= now:
                after.fire_now.append(run.id)
            else:
                after.schedule.append(ScheduleRequest(schedule_name(run.id, table), run.id, run.fire_at))
        result.append(run_summary(run.id, table, run.partitions, run.status, run.fire_at, approval))
    return result


def _merged(catalog: Catalog, wanted: list[Wanted]) -> dict[Pair, Wanted]:
    """One entry per (table, key), in the order first wanted, with the triggers of all."""
    merged: dict[Pair, Wanted] = {}
    for item in wanted:
        pair = (catalog.ids[item.table], key_text(item.key))
        if pair in merged:
            merged[pair].triggers.extend(t for t in item.triggers if t not in merged[pair].triggers)
        else:
            merged[pair] = Wanted(item.table, item.key, list(item.triggers))
    return merged


def _push(run: Run, spec: TableSpec, now: datetime, manual: bool) -> dict[str, Any]:
    """The columns a new trigger changes on an open run (not its state)."""
    if run.status in WAITING_STATES:  # queued: not started, it will see the new data; keeps its place
        return {"id": run.id, "last_trigger_at": now, "updated_at": now}
    if run.status not in PUSHABLE_STATES:  # dispatching or running: run again once it is over
        return {"id": run.id, "rerun_requested": True, "updated_at": now}
    fire_at = run.fire_at
    if run.status == SCHEDULED:
        fire_at = (
            now
            if manual
            else fire_time(run.first_trigger_at, now, spec.debounce_seconds, spec.max_wait_seconds)
        )
    return {"id": run.id, "last_trigger_at": now, "fire_at": fire_at, "updated_at": now}


def _with(run: Run, change: dict[str, Any]) -> Run:
    return replace(run, **change) if change else run


def _new_run(pair: Pair, item: Wanted, spec: TableSpec, now: datetime, manual: bool) -> NewRun:
    fire_at = None
    if not spec.requires_approval:
        fire_at = now if manual else fire_time(now, now, spec.debounce_seconds, spec.max_wait_seconds)
    return NewRun(pair[0], pair[1], item.key, opening_state(spec.requires_approval), fire_at)


def _grouped_by_columns(changes: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Changes grouped by the columns they set: one statement per group."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in changes:
        groups.setdefault(tuple(change), []).append(change)
    return list(groups.values())


def _request_approvals(tx: Transaction, run_ids: list[int], now: datetime) -> dict[int, int]:
    return tx.request_approvals(run_ids, now) if run_ids else {}
