"""What the runtime needs from the outside world, as small interfaces (AWS in production, fakes in tests).

Requests are plain values built by the runtime; adapters only translate them into API calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from controller.keys import Key

SCHEDULE_NAME_LIMIT = 64


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    """A one-time schedule that fires run ``run_id`` at ``fire_at`` (aware, UTC)."""

    name: str
    run_id: int
    fire_at: datetime


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task of a run to start. ``params`` are already rendered. ``token`` is unique per run,
    attempt and task, and deterministic: adapters use it where AWS offers idempotency."""

    run_id: int
    attempt: int
    table: str
    alias: str
    type: str
    target: str
    partitions: Key
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return task_token(self.run_id, self.attempt, self.alias)


def task_token(run_id: int, attempt: int, alias: str) -> str:
    """The token task ``alias`` of run ``run_id``'s attempt ``attempt`` is started with (``flux.token``)."""
    return f"flux-{run_id}-{attempt}-{alias}"


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
        }


class TaskStartError(Exception):
    """A task could not be started; the message is the AWS error, shown to users as is."""


class Scheduler(Protocol):
    def put(self, request: ScheduleRequest) -> None:
        """Create the schedule, or update it if it exists (idempotent)."""
        ...

    def delete(self, name: str) -> None:
        """Delete the schedule; a schedule that does not exist is not an error."""
        ...


class TaskStarter(Protocol):
    def start(self, request: TaskRequest) -> str:
        """Start the task; return its external id (JobRunId, executionArn, MessageId, request id).

        Raises :class:`TaskStartError` when AWS refuses.
        """
        ...


class EventPublisher(Protocol):
    def publish(self, events: Sequence[RunEvent]) -> None:
        """Publish events (in batches as the service allows); raises if any entry failed."""
        ...


def schedule_name(run_id: int, table: str) -> str:
    """Deterministic, unique per run, at most 64 characters of [0-9A-Za-z_.-]."""
    prefix = f"flux-run-{run_id}-"
    return (prefix + table)[:SCHEDULE_NAME_LIMIT]
