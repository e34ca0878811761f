"""The records the services write and read through a store, other than runs: executions to insert,
runs to create and what triggered them, task dispatches, approvals. Plain values, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.core.keys import Key
from controller.core.runs import Run, RunEvent
from controller.core.specs import TableSpec

#: States of a task dispatch: recorded before the start, started with its external id, then ended.
TASK_PENDING, TASK_STARTED, TASK_SUCCEEDED, TASK_FAILED = "pending", "started", "succeeded", "failed"
#: Tasks not yet ended.
TASK_UNFINISHED = (TASK_PENDING, TASK_STARTED)
#: States of an approval (see also :data:`controller.core.runs.APPROVAL_STATES`).
APPROVAL_PENDING, APPROVAL_APPROVED, APPROVAL_REJECTED, APPROVAL_CANCELLED = (
    "pending",
    "approved",
    "rejected",
    "cancelled",
)


@dataclass(frozen=True, slots=True)
class NewExecution:
    """An execution to insert, with its partition values (name, value as text or None when omitted)."""

    table_id: int
    partition_key: str
    partitions: Key
    source: str
    run_id: int | None
    idempotency_key: str | None
    values: list[tuple[str, str | None]]


def partition_values(table: TableSpec, key: Key) -> list[tuple[str, str | None]]:
    """One value per partition of the table: as text, or None when omitted (agrees with any value)."""
    return [(p.name, None if key.get(p.name) is None else str(key[p.name])) for p in table.partitions]


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to create (attempt 1, first and last triggered now)."""

    table_id: int
    partition_key: str
    partitions: Key
    status: str
    fire_at: datetime | None


@dataclass(frozen=True, slots=True)
class Trigger:
    """An execution that opened or pushed a run: an existing run by id, a new one by table and key."""

    run_id: int | None
    table_id: int
    partition_key: str
    execution_id: int


@dataclass(frozen=True, slots=True)
class StoredExecution:
    """An execution found by its idempotency key."""

    id: int
    table_id: int
    idempotency_key: str
    partitions: Key


@dataclass(frozen=True, slots=True)
class Task:
    """One task of a run as dispatched (``task_dispatches``): pending, started, succeeded or failed.

    ``token``: the secret the task was started with (``flux.token``); None for a task recorded before
    tokens were stored (migration 0006), and as the GET routes read tasks (they never show it)."""

    id: int
    run_id: int
    attempt: int
    alias: str
    type: str
    target: str
    status: str
    external_id: str | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task dispatch to record before the task starts, with the token it is started with (None:
    only an operator or its AWS state change can settle it)."""

    alias: str
    type: str
    target: str
    request: dict[str, Any]
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Approval:
    """A human decision on a run: pending until decided, or cancelled with its run."""

    id: int
    run_id: int
    status: str
    requested_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    comment: str | None


# The shapes of the read port's answers (GET routes), shared by its implementations.
#: (id, table name, partitions, source, registered_at, run id, registered_by) of an execution.
ExecutionEntry = tuple[int, str, Key, str, datetime, int | None, str | None]
#: A run with its table name, newest approval, tasks (every attempt), triggering executions
#: (execution id, table name, partitions) and its state changes, oldest first (the timeline).
RunDetail = tuple[Run, str, Approval | None, list[Task], list[tuple[int, str, Key]], list[RunEvent]]


@dataclass(frozen=True, slots=True)
class Backfill:
    """A backfill as stored: how many keys it named, how many of them had an open run already (not
    opened again), and who asked why."""

    id: int
    table_id: int
    keys: int
    already_open: int
    reason: str | None
    requested_by: str | None
    created_at: datetime


#: (the backfill, its table's name, its runs' count per state) of ``GET /backfills/{id}``.
BackfillDetail = tuple[Backfill, str, dict[str, int]]
