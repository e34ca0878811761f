"""Approvals: a human approves or rejects a run of a table that requires it.

Deciding is a compare-and-set on the pending approval, so two people deciding at once get one
success and one 409, never two decisions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from controller.core.effects import AfterCommit, ScheduleRequest, schedule_name
from controller.core.errors import Conflict, Forbidden, NotFound
from controller.core.records import APPROVAL_PENDING
from controller.core.runs import AWAITING_APPROVAL, REJECTED, SCHEDULED, approved_fire_time
from controller.services.answers import run_summary
from controller.services.dependencies import Dependencies
from controller.services.firing import perform, refreshed
from controller.services.ports import Transaction
from controller.services.transitions import move

_IAM_USER = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:user/(?:[^/]+/)*([^/]+)$")


def is_approver(identity: str, approvers: Iterable[str]) -> bool:
    """An approver is named exactly, or by the user name of an IAM user ARN (never a role session)."""
    allowed = set(approvers)
    iam_user = _IAM_USER.match(identity)
    return identity in allowed or (iam_user is not None and iam_user.group(1) in allowed)


def decide(
    deps: Dependencies, approval_id: int, identity: str | None, approve: bool, comment: str | None
) -> dict[str, Any]:
    """Approve (the run is scheduled) or reject (the run ends) a pending approval."""

    def work(tx: Transaction, after: AfterCommit) -> dict[str, Any]:
        return _decide(tx, deps, approval_id, identity, approve, comment, after)

    result = perform(deps, work)
    return {**result, "run": refreshed(deps, result["run"])}


def _decide(
    tx: Transaction,
    deps: Dependencies,
    approval_id: int,
    identity: str | None,
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
    if identity is None:
        raise Forbidden("no caller identity: approvals need an authenticated caller")
    if spec is not None and spec.approvers and not is_approver(identity, spec.approvers):
        raise Forbidden(
            f"{identity} may not decide runs of {spec.name} (approvers: {', '.join(spec.approvers)})"
        )
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
        decided = move(tx, after, run, REJECTED, now, name, reason=comment or f"rejected by {identity}")
    else:
        fire_at = now if run.manual else approved_fire_time(now, run.last_trigger_at, spec.debounce_seconds)
        decided = move(
            tx, after, run, SCHEDULED, now, name, reason=comment, approval_id=approval_id, fire_at=fire_at
        )
        if fire_at <= now:
            after.fire_now.append(run.id)
        else:
            after.schedule.append(ScheduleRequest(schedule_name(run.id, name), run.id, fire_at))
    run = decided or run
    summary = run_summary(run.id, name, run.partitions, run.status, run.fire_at, approval_id)
    return {"approval": {"id": approval_id, "status": status}, "run": summary}
