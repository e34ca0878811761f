"""What a unit of work asks of the outside world, as plain values: schedules to write or delete, runs
to fire at once, tasks to start, events to publish. Pure: adapters translate them into AWS calls.

Nothing here runs before the transaction that decided it has committed (:class:`AfterCommit`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.core.keys import Key
from controller.core.runs import RunEvent

SCHEDULE_NAME_LIMIT = 64


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    """A one-time schedule that fires run ``run_id`` at ``fire_at`` (aware, UTC)."""

    name: str
    run_id: int
    fire_at: datetime


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task of a run to start. ``params`` are already rendered.

    ``token`` is the task's secret for this attempt (``flux.token``): random, generated when the
    dispatch records the task and stored with it; whoever holds it may complete or fail the run
    (DESIGN §7). Never logged nor shown (left out of the repr). ``dispatch_id`` is unique per run,
    attempt and task, deterministic and no secret: adapters use it where AWS offers idempotency."""

    run_id: int
    attempt: int
    table: str
    alias: str
    type: str
    target: str
    partitions: Key
    params: dict[str, Any] = field(default_factory=dict)
    token: str = field(kw_only=True, repr=False)
    #: Stopped, and its run failed, when it runs longer (DESIGN §8).
    timeout_seconds: int = field(kw_only=True, default=86400)
    #: ``http`` tasks: the name or ARN of the Secrets Manager secret whose value is the ``Authorization``
    #: header (the name only: the value is read when the task starts, and never kept here).
    auth_secret: str | None = field(kw_only=True, default=None)

    @property
    def dispatch_id(self) -> str:
        return dispatch_id(self.run_id, self.attempt, self.alias)


class TaskStartError(Exception):
    """A task could not be started; the message is the AWS error, shown to users as is.

    ``limited``: the target refused because of its own concurrency limit (Glue
    ``ConcurrentRunsExceededException``, Step Functions ``ExecutionLimitExceeded``, Lambda
    ``TooManyRequestsException`` after botocore's retries): the run is queued, not failed (DESIGN §8).
    """

    def __init__(self, message: str, *, limited: bool = False) -> None:
        super().__init__(message)
        self.limited = limited


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """What AWS says of a started task, asked when its completion event may have been lost.

    ``finished``: it ended (``succeeded`` says how; ``message`` is AWS's error or final state);
    not finished: it is still running (or queued by AWS).
    """

    finished: bool
    succeeded: bool = False
    message: str | None = None


@dataclass(frozen=True, slots=True)
class TaskStop:
    """A started task to stop once the failure of its run has committed: the run's slot is free,
    so the task must not run on (DESIGN §8)."""

    run_id: int
    alias: str
    type: str
    target: str
    external_id: str


@dataclass(frozen=True, slots=True)
class Rerun:
    """A failed run whose key runs again: a trigger arrived while it was in progress (DESIGN §8)."""

    run_id: int
    table_id: int
    partition_key: str


def dispatch_id(run_id: int, attempt: int, alias: str) -> str:
    """The id of task ``alias``'s start in run ``run_id``'s attempt ``attempt``: deterministic, for
    idempotency (a Step Functions execution name, an SQS FIFO deduplication id). Anyone can compute
    it: it proves nothing (the task's :attr:`TaskRequest.token` does)."""
    return f"flux-{run_id}-{attempt}-{alias}"


def schedule_name(run_id: int, table: str) -> str:
    """Deterministic, unique per run, at most 64 characters of [0-9A-Za-z_.-]."""
    prefix = f"flux-run-{run_id}-"
    return (prefix + table)[:SCHEDULE_NAME_LIMIT]


@dataclass
class AfterCommit:
    """What to do in AWS once the transaction has committed (never before). ``events`` are also
    written to the outbox under ``batch`` in that transaction, so none is lost if publishing fails."""

    batch: str = field(default_factory=lambda: str(uuid.uuid4()))
    schedule: list[ScheduleRequest] = field(default_factory=list)
    unschedule: list[str] = field(default_factory=list)
    fire_now: list[int] = field(default_factory=list)
    events: list[RunEvent] = field(default_factory=list)
    #: Tasks of failed runs still running in AWS (stopped where AWS can stop them).
    stop: list[TaskStop] = field(default_factory=list)
    #: Failed runs whose key runs again (a trigger arrived while they were in progress), each in a
    #: unit of work of its own that takes the key's gate lock first, as a registration does.
    rerun: list[Rerun] = field(default_factory=list)
