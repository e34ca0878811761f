"""Approvals: a human approves or rejects a run of a table that requires it.

Deciding is a compare-and-set on the pending approval, so two people deciding at once get one
success and one 409, never two decisions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from controller.db.runtime_models import ApprovalRow, RunRow
from controller.db.runtime_store import changed
from controller.runs import AWAITING_APPROVAL, REJECTED, SCHEDULED, approved_fire_time
from controller.runtime.context import Effects, Runtime
from controller.runtime.dispatch import set_status
from controller.runtime.effects import perform
from controller.runtime.errors import Conflict, Forbidden, NotFound
from controller.runtime.opening import refreshed, summary_of
from controller.runtime.ports import RunEvent, ScheduleRequest, schedule_name

_IAM_USER = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:user/(?:[^/]+/)*([^/]+)$")


def is_approver(identity: str, approvers: Iterable[str]) -> bool:
    """An approver is named exactly, or by the user name of an IAM user ARN (never a role session)."""
    allowed = set(approvers)
    iam_user = _IAM_USER.match(identity)
    return identity in allowed or (iam_user is not None and iam_user.group(1) in allowed)


def decide(
    runtime: Runtime, approval_id: int, identity: str | None, approve: bool, comment: str | None
) -> dict[str, Any]:
    """Approve (the run is scheduled) or reject (the run ends) a pending approval."""

    def work(session: Session, effects: Effects) -> dict[str, Any]:
        return _decide(session, runtime, approval_id, identity, approve, comment, effects)

    result = perform(runtime, work)
    return {**result, "run": refreshed(runtime.engine, result["run"])}


def _decide(
    session: Session,
    runtime: Runtime,
    approval_id: int,
    identity: str | None,
    approve: bool,
    comment: str | None,
    effects: Effects,
) -> dict[str, Any]:
    graph = runtime.graphs.get(session)
    approval = session.get(ApprovalRow, approval_id, with_for_update=True)
    if approval is None:
        raise NotFound(f"unknown approval {approval_id}")
    run = session.get(RunRow, approval.run_id, with_for_update=True)
    assert run is not None
    table = graph.names.get(run.table_id)
    spec = graph.table(table) if table else None
    if identity is None:
        raise Forbidden("no caller identity: approvals need an authenticated caller")
    if spec is not None and spec.approvers and not is_approver(identity, spec.approvers):
        raise Forbidden(
            f"{identity} may not decide runs of {spec.name} (approvers: {', '.join(spec.approvers)})"
        )
    if approval.status != "pending":
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        raise Conflict(
            f"approval {approval_id} was already {approval.status}{by}", {"status": approval.status}
        )
    now = runtime.clock()
    status = "approved" if approve else "rejected"
    decision = update(ApprovalRow).where(ApprovalRow.id == approval_id, ApprovalRow.status == "pending")
    if (
        changed(session, decision.values(status=status, decided_by=identity, decided_at=now, comment=comment))
        != 1
    ):
        raise Conflict(f"approval {approval_id} was decided meanwhile")
    name = table or str(run.table_id)
    if spec is None or run.status != AWAITING_APPROVAL:
        raise Conflict(f"run {run.id} is {run.status}; it cannot be {status}")
    if not approve:
        set_status(session, run, REJECTED, now, effects, name, reason=comment or f"rejected by {identity}")
    else:
        fire_at = now if run.manual else approved_fire_time(now, run.last_trigger_at, spec.debounce_seconds)
        moved = update(RunRow).where(RunRow.id == run.id, RunRow.status == AWAITING_APPROVAL)
        changed(session, moved.values(status=SCHEDULED, fire_at=fire_at, updated_at=now))
        effects.events.append(
            RunEvent(run.id, name, run.partitions, AWAITING_APPROVAL, SCHEDULED, approval_id, comment, now)
        )
        if fire_at <= now:
            effects.fire_now.append(run.id)
        else:
            effects.schedule.append(ScheduleRequest(schedule_name(run.id, name), run.id, fire_at))
    session.refresh(run)
    return {"approval": {"id": approval_id, "status": status}, "run": summary_of(run, name, approval_id)}
