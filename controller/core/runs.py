"""Runs: their states, the one table of allowed transitions, and the function that makes one. Pure.

``awaiting_approval → scheduled → (queued →) dispatching → running → succeeded | failed``, plus
``rejected`` and ``cancelled``, and a failed run retried as a new attempt (by hand, or by itself with
the table's ``retries``). A run waits ``queued`` while its table's ``max_concurrent_runs`` are busy, or
when its target refused it for its own limit (DESIGN §8). At most one run per (table, key) is
open (the database enforces it).

Like an aggregate of a domain model, :func:`transition` decides and records: it checks the change
against :data:`TRANSITIONS` and returns the columns to set with the :class:`RunEvent` it makes. It
writes nothing; a store persists the change with compare-and-set on the state it was decided from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from controller.core.keys import Key

AWAITING_APPROVAL = "awaiting_approval"
SCHEDULED = "scheduled"
QUEUED = "queued"
DISPATCHING = "dispatching"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
REJECTED = "rejected"
CANCELLED = "cancelled"

OPEN_STATES = (AWAITING_APPROVAL, SCHEDULED, QUEUED, DISPATCHING, RUNNING)
#: Open runs a new trigger can still change (push the fire time, add triggers).
PUSHABLE_STATES = (AWAITING_APPROVAL, SCHEDULED)
#: Open runs whose tasks have not started: a new trigger is recorded and changes nothing else (a
#: queued run is due; it starts with whatever its upstreams hold then).
WAITING_STATES = (QUEUED,)
CANCELLABLE_STATES = (AWAITING_APPROVAL, SCHEDULED, QUEUED)
#: Runs whose tasks were started (or are being started): a completion may settle them.
IN_PROGRESS_STATES = (DISPATCHING, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, REJECTED, CANCELLED)
ALL_STATES = (*OPEN_STATES, *FINAL_STATES)
#: States of an approval: pending until someone decides, or cancelled with its run.
APPROVAL_STATES = ("pending", "approved", "rejected", "cancelled")

#: Every allowed change of state; ``None`` is a run not yet created.
TRANSITIONS: Mapping[str | None, frozenset[str]] = MappingProxyType(
    {
        None: frozenset({AWAITING_APPROVAL, SCHEDULED, QUEUED}),  # by a gate, by hand, by a backfill
        AWAITING_APPROVAL: frozenset({SCHEDULED, REJECTED, CANCELLED}),  # approved, rejected, cancelled
        SCHEDULED: frozenset({DISPATCHING, QUEUED, CANCELLED}),  # claimed by a fire (or queued); cancelled
        QUEUED: frozenset({DISPATCHING, CANCELLED}),  # a slot freed; cancelled (or its table deleted)
        # Started (or finished meanwhile), failed; queued again when the target's own limit refused it.
        DISPATCHING: frozenset({RUNNING, SUCCEEDED, FAILED, QUEUED}),
        RUNNING: frozenset({SUCCEEDED, FAILED}),
        # Retried: a new attempt, awaiting approval when the table requires it now and the run was
        # never approved.
        FAILED: frozenset({SCHEDULED, AWAITING_APPROVAL}),
        SUCCEEDED: frozenset(),
        REJECTED: frozenset(),
        CANCELLED: frozenset(),
    }
)


@dataclass(frozen=True, slots=True)
class Run:
    """A run as stored: one row of ``runs``."""

    id: int
    table_id: int
    partition_key: str
    partitions: Key
    status: str
    attempt: int
    manual: bool
    rerun_requested: bool
    reason: str | None
    error: str | None
    first_trigger_at: datetime
    last_trigger_at: datetime
    fire_at: datetime | None
    scheduled_fire_at: datetime | None
    schedule_name: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


#: The columns of :class:`Run`, in order (what a store reads of a run).
RUN_FIELDS = tuple(Run.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class RunEvent:
    """A run state change, published after commit (EventBridge detail-type "Run State Change")."""

    run_id: int
    table: str
    partitions: Key
    old_state: str | None
    new_state: str
    approval_id: int | None = None
    reason: str | None = None
    at: datetime | None = None
    #: Who made the change: the caller of the write (a producer, an approver, an operator, a task
    #: reporting); None when Flux Control did (a schedule's fire, the sweep, an AWS state change).
    actor: str | None = None

    def detail(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "table": self.table,
            "partitions": self.partitions,
            "old_state": self.old_state,
            "new_state": self.new_state,
            "approval_id": self.approval_id,
            "reason": self.reason,
            "at": self.at.isoformat() if self.at else None,
            "actor": self.actor,
        }

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any]) -> RunEvent:
        """The event an outbox row's detail holds (the inverse of :meth:`detail`)."""
        at = detail.get("at")
        return cls(
            run_id=detail["run_id"],
            table=detail["table"],
            partitions=detail["partitions"],
            old_state=detail.get("old_state"),
            new_state=detail["new_state"],
            approval_id=detail.get("approval_id"),
            reason=detail.get("reason"),
            at=datetime.fromisoformat(at) if at else None,
            actor=detail.get("actor"),
        )


class IllegalTransition(ValueError):
    """A change :data:`TRANSITIONS` does not allow: a bug in the caller, never a user's error."""


@dataclass(frozen=True, slots=True)
class RunChange:
    """A decided change of a run: the columns to set, provided the run is still ``expected``."""

    run_id: int
    expected: str
    values: Mapping[str, Any]
    event: RunEvent

    def applied_to(self, run: Run) -> Run:
        """``run`` as it is once the change is written."""
        return replace(run, **self.values)


def transition(
    run: Run,
    to: str,
    now: datetime,
    table: str,
    *,
    reason: str | None = None,
    approval_id: int | None = None,
    fire_at: datetime | None = None,
    actor: str | None = None,
) -> RunChange:
    """Decide moving ``run`` to state ``to``: the columns to set and the event to publish.

    A final state sets ``finished_at``; ``reason`` goes to ``error`` for a failure and to ``reason``
    otherwise. Approving (``awaiting_approval → scheduled``) needs ``fire_at``; retrying (``failed →
    scheduled``) starts the next attempt at ``fire_at`` (default now: by hand; an automatic retry waits
    its backoff), clearing the error and the end; the failed attempt's error stays in its event. A
    fire's claim (``scheduled → dispatching``) forgets the schedule: it fired and deleted itself. Any
    other way out of ``scheduled`` keeps ``scheduled_fire_at``, so that the sweep finds the schedule
    and deletes it. Going ``queued`` keeps the run's reason: why it waits is the event's.
    """
    if to not in TRANSITIONS[run.status]:
        raise IllegalTransition(f"run {run.id} cannot go from {run.status} to {to}")
    values: dict[str, Any] = {"status": to, "updated_at": now}
    if to in FINAL_STATES:
        values["finished_at"] = now
    if run.status == SCHEDULED and to == DISPATCHING:
        values["scheduled_fire_at"] = None
    if run.status == FAILED:  # a retry: the next attempt (fires now, unless it awaits approval)
        fire = (fire_at or now) if to == SCHEDULED else None
        # The next attempt starts with whatever its upstreams hold then: a trigger that arrived
        # during the failed one is served by it.
        values.update(
            attempt=run.attempt + 1,
            fire_at=fire,
            error=None,
            finished_at=None,
            reason=reason,
            rerun_requested=False,
        )
    elif run.status == AWAITING_APPROVAL and to == SCHEDULED:
        # Approved: the reason is the approver's comment, for the event; the run keeps its own.
        if fire_at is None:
            raise IllegalTransition(f"approving run {run.id} needs its fire time")
        values["fire_at"] = fire_at
    elif to == QUEUED:
        pass  # why it waits is the event's reason; the run keeps its own
    elif reason is not None:
        values["error" if to == FAILED else "reason"] = reason
    event = RunEvent(run.id, table, run.partitions, run.status, to, approval_id, reason, now, actor)
    return RunChange(run.id, run.status, MappingProxyType(values), event)


def opened(
    run: Run,
    table: str,
    now: datetime,
    *,
    approval_id: int | None = None,
    reason: str | None = None,
    actor: str | None = None,
) -> RunEvent:
    """The event of a run just created (checked against :data:`TRANSITIONS` like any change)."""
    if run.status not in TRANSITIONS[None]:
        raise IllegalTransition(f"run {run.id} cannot be created {run.status}")
    return RunEvent(run.id, table, run.partitions, None, run.status, approval_id, reason, now, actor)


def opening_state(requires_approval: bool) -> str:
    """The state a new run starts in."""
    return AWAITING_APPROVAL if requires_approval else SCHEDULED


def fire_time(
    first_trigger: datetime, last_trigger: datetime, debounce_seconds: int, max_wait_seconds: int | None
) -> datetime:
    """Trailing-edge debounce: last trigger + debounce, never later than first trigger + max wait."""
    due = last_trigger + timedelta(seconds=debounce_seconds)
    if max_wait_seconds is not None:
        due = min(due, first_trigger + timedelta(seconds=max_wait_seconds))
    return due


def approved_fire_time(now: datetime, last_trigger: datetime, debounce_seconds: int) -> datetime:
    """An approved run fires at max(now, last trigger + debounce)."""
    return max(now, last_trigger + timedelta(seconds=debounce_seconds))


def due(fire_at: datetime | None, now: datetime) -> bool:
    """Whether a scheduled run may fire now: never before its fire time, or a stale schedule (written
    before a push) would undo the push. Schedules are written for the minute after the fire time
    (:func:`controller.aws.scheduler.at_expression`), so an on-time fire is never early."""
    return fire_at is not None and fire_at <= now
