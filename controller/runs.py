"""Run states and timing. Pure.

``awaiting_approval → scheduled → dispatching → running → succeeded | failed``, plus ``rejected``
and ``cancelled``. At most one run per (table, key) is open (the database enforces it).
"""

from __future__ import annotations

from datetime import datetime, timedelta

AWAITING_APPROVAL = "awaiting_approval"
SCHEDULED = "scheduled"
DISPATCHING = "dispatching"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
REJECTED = "rejected"
CANCELLED = "cancelled"

OPEN_STATES = (AWAITING_APPROVAL, SCHEDULED, DISPATCHING, RUNNING)
#: Open runs a new trigger can still change (push the fire time, add triggers).
PUSHABLE_STATES = (AWAITING_APPROVAL, SCHEDULED)
CANCELLABLE_STATES = (AWAITING_APPROVAL, SCHEDULED)
FINAL_STATES = (SUCCEEDED, FAILED, REJECTED, CANCELLED)
ALL_STATES = (*OPEN_STATES, *FINAL_STATES)
#: States of an approval: pending until someone decides, or cancelled with its run.
APPROVAL_STATES = ("pending", "approved", "rejected", "cancelled")

#: A fire that arrives this much before the run's fire time still counts (clock skew, delivery).
EARLY_FIRE_TOLERANCE = timedelta(seconds=60)


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
    """Whether a scheduled run may fire now (a little early is fine; the schedule may be ahead)."""
    return fire_at is not None and fire_at <= now + EARLY_FIRE_TOLERANCE
