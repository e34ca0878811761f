"""Retries (DESIGN §8): a failed run comes back as its next attempt, by hand (an operator) or by
itself when its table has ``retries``, after a backoff doubling from ``backoff_seconds`` (capped at
one hour), until ``max_attempts``. Either way the definitions as they are now decide whether it must
be approved first: a run that was approved keeps its approval; one of a table that requires approval
now and that never had it awaits a person.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit, ScheduleRequest, schedule_name
from controller.core.records import APPROVAL_APPROVED
from controller.core.runs import AWAITING_APPROVAL, FAILED, OPEN_STATES, SCHEDULED, Run, RunEvent
from controller.services.ports import Transaction
from controller.services.transitions import move

#: Failures a retry must not repeat by itself: whether the tasks started is unknown (a person checks).
_NOT_RETRIED = ("dispatch was interrupted",)


def reopen(
    tx: Transaction,
    catalog: Catalog,
    run: Run,
    table: str,
    now: datetime,
    after: AfterCommit,
    *,
    fire_at: datetime | None = None,
    reason: str | None = None,
    actor: str | None = None,
) -> Run:
    """Move the failed ``run`` to its next attempt: scheduled at ``fire_at`` (None: now, fired after
    commit), or awaiting approval (see the module docstring). The caller checked that no other run of
    its key is open."""
    spec = catalog.table(table)
    if spec is not None and spec.requires_approval and not approved(tx, run.id):
        [approval_id] = tx.request_approvals([run.id], now).values()
        waiting = move(
            tx, after, run, AWAITING_APPROVAL, now, table, reason=reason, approval_id=approval_id, actor=actor
        )
        return waiting or run
    retried = move(tx, after, run, SCHEDULED, now, table, reason=reason, fire_at=fire_at, actor=actor) or run
    if fire_at is None or fire_at <= now:
        after.fire_now.append(run.id)
    else:
        name = retried.schedule_name or schedule_name(run.id, table)
        after.schedule.append(ScheduleRequest(name, run.id, fire_at))
    return retried


def approved(tx: Transaction, run_id: int) -> bool:
    """Whether the run's newest approval was granted (a retried run keeps the approval it had)."""
    newest = tx.newest_approvals([run_id]).get(run_id)
    approval = tx.lock_approval(newest) if newest is not None else None
    return approval is not None and approval.status == APPROVAL_APPROVED


def retry_failed(
    tx: Transaction, catalog: Catalog, events: Iterable[RunEvent], now: datetime, after: AfterCommit
) -> None:
    """Bring back, as their next attempt, the runs these events failed whose table has ``retries``
    left for them (the unit of work that failed them does it, so no failure is missed)."""
    for event in events:
        if event.new_state != FAILED:
            continue
        spec = catalog.table(event.table)
        if spec is None or spec.retries is None:
            continue
        run = tx.lock_run(event.run_id)
        if run is None or run.status != FAILED or run.attempt >= spec.retries.max_attempts:
            continue
        if (run.error or "").startswith(_NOT_RETRIED):
            continue
        other = tx.run_of_key(run.table_id, run.partition_key, OPEN_STATES)
        if other is not None:  # a newer run of the key is open: it covers this one
            continue
        fire_at = now + timedelta(seconds=spec.retries.delay_after(run.attempt))
        attempts = f"attempt {run.attempt + 1} of {spec.retries.max_attempts}"
        reason = f"automatic retry: {attempts} at {fire_at.isoformat()}"
        reopen(tx, catalog, run, event.table, now, after, fire_at=fire_at, reason=reason)
