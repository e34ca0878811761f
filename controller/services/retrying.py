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
from controller.core.effects import AfterCommit, Rerun, ScheduleRequest, schedule_name
from controller.core.records import APPROVAL_APPROVED
from controller.core.runs import AWAITING_APPROVAL, FAILED, OPEN_STATES, SCHEDULED, Run, RunEvent
from controller.core.specs import TableSpec
from controller.services.opening import Wanted, open_or_push
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


def after_failures(
    tx: Transaction, catalog: Catalog, events: Iterable[RunEvent], now: datetime, after: AfterCommit
) -> None:
    """What the runs these events failed call for, in the unit of work that failed them (so none is
    missed): the next attempt when their table has ``retries`` left for them; else, when a trigger
    arrived while they were in progress, a rerun of their key (:func:`rerun`, after commit). No
    statement for a failure that calls for neither."""
    for event in events:
        if event.new_state != FAILED:
            continue
        run = tx.lock_run(event.run_id)
        if run is None or run.status != FAILED:
            continue
        spec = catalog.table(event.table)
        retry = _retry_time(spec, run, now)
        if retry is None:
            if run.rerun_requested:
                after.rerun.append(Rerun(run.id, run.table_id, run.partition_key))
            continue
        if tx.run_of_key(run.table_id, run.partition_key, OPEN_STATES) is not None:
            continue  # a newer run of the key is open: it covers this one
        assert spec is not None and spec.retries is not None
        attempts = f"attempt {run.attempt + 1} of {spec.retries.max_attempts}"
        reason = f"automatic retry: {attempts} at {retry.isoformat()}"
        reopen(tx, catalog, run, event.table, now, after, fire_at=retry, reason=reason)


def rerun(tx: Transaction, catalog: Catalog, request: Rerun, now: datetime, after: AfterCommit) -> bool:
    """Serve the rerun request of a failed run: a new run of its key (subject to
    approval and debounce, like a gate's), unless one is open already; the request is cleared
    either way. False when there was nothing to serve (served already, or its table is gone).

    Not in the unit of work of the failure: that one holds the failed run's row, which a
    registration opening the same key waits for while holding the key's gate lock; this one takes
    the gate lock first, as a registration does, so the two serialise.
    """
    tx.lock_gates([], [(request.table_id, request.partition_key)])
    run = tx.lock_run(request.run_id)
    if run is None or run.status != FAILED or not run.rerun_requested:
        return False
    tx.push_runs([{"id": run.id, "rerun_requested": False, "updated_at": now}])
    table = catalog.names.get(run.table_id)
    if table is None:
        return False
    if tx.run_of_key(run.table_id, run.partition_key, OPEN_STATES) is None:
        reason = f"a trigger arrived while run {run.id} was in progress; it failed"
        open_or_push(tx, catalog, [Wanted(table, run.partitions)], now, after, reason=reason)
    return True


def _retry_time(spec: TableSpec | None, run: Run, now: datetime) -> datetime | None:
    """When the failed ``run`` comes back by itself (its table's ``retries``), or None if it stays."""
    if spec is None or spec.retries is None or run.attempt >= spec.retries.max_attempts:
        return None
    if (run.error or "").startswith(_NOT_RETRIED):
        return None
    return now + timedelta(seconds=spec.retries.delay_after(run.attempt))
