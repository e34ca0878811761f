"""Backfills (DESIGN §8): manual runs for many keys of a table at once, as one operator action.

Every key of the request (:func:`controller.core.backfills.backfill_keys`, at most 1,000) gets a
manual run unless one is open for it already (reported, not opened twice). The runs open ``queued``:
due now, they start oldest first as the table's ``max_concurrent_runs`` allow (a table without a
limit starts them all, the first few at once and the rest by the sweep, so that the request answers
quickly); a table that requires approval opens them ``awaiting_approval`` instead, one approval each.
"""

from __future__ import annotations

from typing import Any

from controller.core.access import Caller, actor_of
from controller.core.backfills import backfill_keys
from controller.core.effects import AfterCommit
from controller.core.errors import NotFound, Unprocessable
from controller.core.keys import InvalidPartition, key_text
from controller.core.records import NewRun
from controller.core.runs import AWAITING_APPROVAL, QUEUED, opened
from controller.services import slots
from controller.services.answers import iso, run_summary
from controller.services.authorization import require
from controller.services.dependencies import Dependencies
from controller.services.firing import perform
from controller.services.ports import Transaction

#: Runs of a table without a limit that the request itself starts; the sweep starts the others.
START_AT_ONCE = 10


def backfill(
    deps: Dependencies,
    table_name: str,
    partitions: dict[str, Any],
    reason: str | None,
    caller: Caller | None,
) -> dict[str, Any]:
    """Open the backfill's runs; ``{"backfill": {"id", "table_name", "keys", "runs", "already_open"}}``."""

    def work(tx: Transaction, after: AfterCommit) -> dict[str, Any]:
        catalog = deps.catalog(tx)
        spec = catalog.table(table_name)
        if spec is None:
            raise NotFound(f"unknown table {table_name!r}")
        require("operate", caller, catalog, table_name, deps.own_account)
        try:
            keys = backfill_keys(spec, partitions)
        except InvalidPartition as exc:
            details = {"partition": exc.partition} if exc.partition else {}
            raise (NotFound if exc.status == 404 else Unprocessable)(str(exc), details) from None
        table_id = catalog.ids[table_name]
        now = deps.clock()
        actor = actor_of(caller)
        tx.lock_gates([table_id])
        pairs = {(table_id, key_text(key)): key for key in keys}
        open_runs = tx.lock_open_runs(pairs)
        state = AWAITING_APPROVAL if spec.requires_approval else QUEUED
        new = [
            NewRun(table_id, text, key, state, now)
            for (_, text), key in pairs.items()
            if (table_id, text) not in open_runs
        ]
        inserted = tx.insert_runs(new, [], now, manual=True, reason=reason)
        created = [inserted[pair] for pair in pairs if pair in inserted]
        approvals = tx.request_approvals([r.id for r in created], now) if state == AWAITING_APPROVAL else {}
        for run in created:
            after.events.append(
                opened(run, table_name, now, approval_id=approvals.get(run.id), reason=reason, actor=actor)
            )
        backfill_id = tx.insert_backfill(
            table_id, len(keys), len(open_runs), reason, actor, now, [r.id for r in created]
        )
        if state == QUEUED:
            # The runs just created are the table's newest queued ones: the oldest queued go first.
            slots.fire_queued(tx, table_id, spec.max_concurrent_runs, after, unlimited=START_AT_ONCE)
        return {
            "backfill": {
                "id": backfill_id,
                "table_name": table_name,
                "keys": len(keys),
                "runs": [
                    run_summary(r.id, table_name, r.partitions, r.status, r.fire_at, approvals.get(r.id))
                    for r in created
                ],
                "already_open": [
                    run_summary(run.id, table_name, run.partitions, run.status, run.fire_at, approval)
                    for pair, (run, approval) in open_runs.items()
                ],
            }
        }

    return perform(deps, work)


def get_backfill(deps: Dependencies, backfill_id: int) -> dict[str, Any]:
    """``GET /backfills/{id}``: the backfill and its runs counted per state."""
    found = deps.reads.backfill(backfill_id)
    if found is None:
        raise NotFound(f"unknown backfill {backfill_id}")
    record, table, counts = found
    return {
        "backfill": {
            "id": record.id,
            "table_name": table,
            "keys": record.keys,
            "already_open": record.already_open,
            "reason": record.reason,
            "requested_by": record.requested_by,
            "created_at": iso(record.created_at),
            "runs": dict(sorted(counts.items())),
            "total_runs": sum(counts.values()),
        }
    }
