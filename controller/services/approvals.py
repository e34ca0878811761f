"""Approvals: a human approves or rejects a run of a table that requires it.

Deciding is a compare-and-set on the pending approval, so two people deciding at once get one
success and one 409, never two decisions.
"""

from __future__ import annotations

from typing import Any

from controller.core.access import Caller, may
from controller.core.effects import AfterCommit, ScheduleRequest, schedule_name
from controller.core.errors import Conflict, Forbidden, NotFound
from controller.core.records import APPROVAL_PENDING
from controller.core.runs import AWAITING_APPROVAL, REJECTED, SCHEDULED, approved_fire_time
from controller.services.answers import run_summary
from controller.services.dependencies import Dependencies
from controller.services.firing import perform, refreshed
from controller.services.ports import Transaction
from controller.services.transitions import move


def decide(
    deps: Dependencies, approval_id: int, caller: Caller | None, approve: bool, comment: str | None
) -> dict[str, Any]:
    """Approve (the run is scheduled) or reject (the run ends) a pending approval, as ``caller``: one
    of the table's approvers (any identified caller if it lists none: DESIGN §7)."""

    def work(tx: Transaction, after: AfterCommit) -> dict[str, Any]:
        return _decide(tx, deps, approval_id, caller, approve, comment, after)

    result = perform(deps, work)
    return {**result, "run": refreshed(deps, result["run"])}


def _decide(
    tx: Transaction,
    deps: Dependencies,
    approval_id: int,
    caller: Caller | None,
    approve: bool,
    comment: str | None,
    after: AfterCommit,
) -> dict[str, Any]:
    catalog = deps.catalog(tx)
    approval = tx.lock_approval(approval_id)
    if approval is None:
        raise NotFound(f"unknown approval {approval_id}")
    run = tx.lock_run(approval.run_id)
    assert run is not None
    table = catalog.names.get(run.table_id)
    spec = catalog.table(table) if table else None
    if caller is None:
        raise Forbidden("no caller identity: approvals need an authenticated caller")
    if spec is not None:
        allowed = may(
            "decide", caller, table=spec.name, approvers=spec.approvers, own_account=deps.own_account
        )
        if not allowed.allowed:
            raise Forbidden(allowed.message, dict(allowed.details or {}))
    identity = caller.name
    if approval.status != APPROVAL_PENDING:
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        raise Conflict(
            f"approval {approval_id} was already {approval.status}{by}", {"status": approval.status}
        )
    now = deps.clock()
    status = "approved" if approve else "rejected"
    if not tx.decide_approval(approval_id, status, identity, now, comment):
        raise Conflict(f"approval {approval_id} was decided meanwhile")
    name = table or str(run.table_id)
    if spec is None or run.status != AWAITING_APPROVAL:
        raise Conflict(f"run {run.id} is {run.status}; it cannot be {status}")
    if not approve:
        reason = comment or f"rejected by {identity}"
        decided = move(tx, after, run, REJECTED, now, name, reason=reason, actor=identity)
    else:
        fire_at = now if run.manual else approved_fire_time(now, run.last_trigger_at, spec.debounce_seconds)
        decided = move(
            tx,
            after,
            run,
            SCHEDULED,
            now,
            name,
            reason=comment,
            approval_id=approval_id,
            fire_at=fire_at,
            actor=identity,
        )
        if fire_at <= now:
            after.fire_now.append(run.id)
        else:
            after.schedule.append(ScheduleRequest(schedule_name(run.id, name), run.id, fire_at))
    run = decided or run
    summary = run_summary(run.id, name, run.partitions, run.status, run.fire_at, approval_id)
    return {"approval": {"id": approval_id, "status": status}, "run": summary}
