"""Concurrency of a table's runs (DESIGN §8): ``max_concurrent_runs`` slots and a queue, oldest first.

A due run takes a slot when it is claimed, under the table's slot lock: it starts if a slot is free
and no queued run of the table is before it, else it waits ``queued``. A run that leaves
``dispatching``/``running`` frees its slot: the same unit of work fires the next queued runs
(:func:`fire_next`, after commit), and the sweep does it for whatever that missed. Each fire claims
again under the lock, so nothing here needs to be exact but the claim.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit
from controller.core.runs import IN_PROGRESS_STATES, QUEUED, SCHEDULED, Run, RunEvent
from controller.core.specs import TableSpec
from controller.services.ports import Transaction
from controller.services.transitions import move


def take_slot(
    tx: Transaction, spec: TableSpec, run: Run, table: str, now: datetime, after: AfterCommit
) -> str | None:
    """None when ``run`` (scheduled or queued) may start now; else why it waits (it is queued)."""
    limit = spec.max_concurrent_runs
    if limit is None:
        return None
    busy = tx.busy_runs(run.table_id, lock=True)
    queued = tx.queued_runs(run.table_id, limit)
    free = limit - len(busy)
    ahead = queued.index(run.id) if run.id in queued else len(queued)
    if ahead < free:
        return None
    message = waiting_reason(limit, busy, ahead)
    if run.status == SCHEDULED:
        move(tx, after, run, QUEUED, now, table, reason=message)
    # Free slots with older runs queued: those go first (each is claimed again, under the lock).
    _fire(after, (i for i in queued[: max(free, 0)] if i != run.id))
    return message


def waiting_reason(limit: int, busy: list[int], ahead: int) -> str:
    """``queued: 2 of 2 slots busy (runs 14, 15)``, and how many queued runs are before it."""
    message = f"queued: {len(busy)} of {limit} slots busy"
    if busy:
        message += f" (runs {', '.join(str(i) for i in busy)})"
    if ahead:
        message += f"; {ahead} queued before it"
    return message


def freed_tables(events: Iterable[RunEvent]) -> set[str]:
    """The tables of runs these events took out of ``dispatching``/``running``: a slot freed. Not
    a run queued again for its target's own limit: the target is full, the next run would meet it."""
    return {
        e.table
        for e in events
        if e.old_state in IN_PROGRESS_STATES and e.new_state not in (*IN_PROGRESS_STATES, QUEUED)
    }


def fire_next(tx: Transaction, catalog: Catalog, tables: Iterable[str], after: AfterCommit) -> None:
    """Fire (after commit) the oldest queued runs of these tables, as many as slots are free. A table
    without a limit has runs queued only by its target's own limit: the sweep retries those."""
    for name in sorted(tables):
        spec = catalog.table(name)
        table_id = catalog.ids.get(name)
        if spec is None or table_id is None or spec.max_concurrent_runs is None:
            continue
        fire_queued(tx, table_id, spec.max_concurrent_runs, after)


def free_slots(tx: Transaction, table_id: int, limit: int) -> int:
    """How many more runs of the table may start now (unlocked: each fire's claim counts again under
    the table's slot lock, so a count off by a concurrent claim only fires one run too many or few)."""
    return max(limit - len(tx.busy_runs(table_id, lock=False)), 0)


def fire_queued(
    tx: Transaction, table_id: int, limit: int | None, after: AfterCommit, *, unlimited: int = 0
) -> int:
    """Fire (after commit) the table's oldest queued runs its free slots allow; ``unlimited`` of them
    when it has no limit. How many were asked for."""
    free = unlimited if limit is None else free_slots(tx, table_id, limit)
    chosen = tx.queued_runs(table_id, free) if free > 0 else []
    _fire(after, chosen)
    return len(chosen)


def _fire(after: AfterCommit, run_ids: Iterable[int]) -> None:
    for run_id in run_ids:
        if run_id not in after.fire_now:
            after.fire_now.append(run_id)
