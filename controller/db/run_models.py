"""Run models: executions, runs and what triggered them, task dispatches, approvals, the outbox.

Invariants the database enforces (not the code, so that concurrent Lambdas cannot break them):
at most one open run per (table, key); at most one pending approval per run; one dispatch per task
of a run; an idempotency key is used once, whatever the table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from controller.core.runs import OPEN_STATES
from controller.db.base import Base, Id, Json, UTCDateTime, utcnow
from controller.db.predicates import FAILED_RERUN

#: The partial unique index of open runs lists the core's open states (a migration adding a state
#: must rebuild it).
OPEN_RUN_STATES = OPEN_STATES
_OPEN = text("status IN ({})".format(", ".join(f"'{s}'" for s in OPEN_RUN_STATES)))
_PENDING = text("status = 'pending'")
_KEYED = text("idempotency_key IS NOT NULL")
_WRITTEN = text("scheduled_fire_at IS NOT NULL")
_RERUN = text(FAILED_RERUN)
#: Room for a task's token (``secrets.token_urlsafe(32)``: 43 characters).
TOKEN_LENGTH = 64


class ExecutionRow(Base):
    """ "Table T produced partition P": registered by a job, or by a run that succeeded."""

    __tablename__ = "executions"
    __table_args__ = (
        Index(None, "table_id", "partition_key"),
        Index(None, "table_id", "registered_at"),
        # An idempotency key names one execution, whatever the table (the loser of two concurrent
        # registrations with one key fails here, and its retry finds the winner); most carry none.
        Index(
            "uq_executions_idempotency",
            "idempotency_key",
            unique=True,
            sqlite_where=_KEYED,
            postgresql_where=_KEYED,
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("tables.id"))
    partition_key: Mapped[str] = mapped_column(String(1024))
    partitions: Mapped[dict[str, Any]] = mapped_column(Json)
    source: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    registered_by: Mapped[str | None] = mapped_column(String(256))


class ExecutionValueRow(Base):
    """One partition value of an execution, indexed for gate lookups by (table, partition, value).

    Omitted optional partitions are stored with a NULL value: they agree with any value.
    """

    __tablename__ = "execution_values"
    __table_args__ = (Index(None, "table_id", "name", "value"),)

    execution_id: Mapped[int] = mapped_column(ForeignKey("executions.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("tables.id"))
    value: Mapped[str | None] = mapped_column(String(256))


class RunRow(Base):
    """One run of (table, key) through awaiting_approval → scheduled → dispatching → running → done."""

    __tablename__ = "runs"
    __table_args__ = (
        Index(
            "uq_runs_open_key",
            "table_id",
            "partition_key",
            unique=True,
            sqlite_where=_OPEN,
            postgresql_where=_OPEN,
        ),
        Index(None, "status", "fire_at"),
        Index(None, "table_id", "created_at"),
        # The sweep's search for schedules outliving their run: few rows hold a written schedule.
        Index("ix_runs_schedule_written", "id", sqlite_where=_WRITTEN, postgresql_where=_WRITTEN),
        # The sweep's search for failed runs whose key must run again (DESIGN §8): few rows.
        Index("ix_runs_failed_rerun", "id", sqlite_where=_RERUN, postgresql_where=_RERUN),
        # The newest runs of a key (explain, the console's lineage and key filter): any state.
        Index(None, "table_id", "partition_key", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("tables.id"))
    partition_key: Mapped[str] = mapped_column(String(1024))
    partitions: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    manual: Mapped[bool] = mapped_column(Boolean, default=False)
    #: A trigger arrived while the run was dispatching or running: open a new run when it ends.
    rerun_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    first_trigger_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_trigger_at: Mapped[datetime] = mapped_column(UTCDateTime)
    fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    schedule_name: Mapped[str | None] = mapped_column(String(64))
    #: The fire time the EventBridge schedule was last written with; differs from fire_at until the
    #: schedule write succeeds (the sweep retries those). Cleared when a fire claims the run (the
    #: schedule fired and deleted itself) or once the sweep deleted the schedule of a run that
    #: left ``scheduled`` otherwise (cancelled, or written after the run moved on).
    scheduled_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RunTriggerRow(Base):
    """An execution that opened or pushed a run."""

    __tablename__ = "run_triggers"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("executions.id"), primary_key=True)


class TaskDispatchRow(Base):
    """One task of a run as started in AWS, with the id AWS gave it."""

    __tablename__ = "task_dispatches"
    __table_args__ = (
        UniqueConstraint("run_id", "attempt", "alias"),
        Index(None, "external_id"),
        # The sweep's search for started tasks to ask AWS about (DESIGN §8), oldest check first.
        Index(None, "status", "check_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    alias: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    external_id: Mapped[str | None] = mapped_column(String(2048))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The secret the task was started with (``flux.token``; migration 0006: NULL before).
    token: Mapped[str | None] = mapped_column(String(TOKEN_LENGTH))
    #: When the sweep next asks AWS how the started task is (its completion event may be lost), and
    #: when it is stopped for running too long (migration 0008; NULL: never asked, never stopped).
    check_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApprovalRow(Base):
    """A human decision on a run of a table that requires approval."""

    __tablename__ = "approvals"
    __table_args__ = (
        Index(
            "uq_approvals_pending_run",
            "run_id",
            unique=True,
            sqlite_where=_PENDING,
            postgresql_where=_PENDING,
        ),
        Index(None, "status"),
        Index(None, "run_id"),  # a run's newest approval, pending or decided, in every run summary
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    status: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(256))
    comment: Mapped[str | None] = mapped_column(Text)


class RunEventRow(Base):
    """Outbox of run state changes: written with the change, published to EventBridge after commit.

    Rows whose publication failed keep ``published_at`` empty; the sweep publishes them again.
    """

    __tablename__ = "run_events"
    # The outbox's unpublished rows; a run's events in order (its console page).
    __table_args__ = (Index(None, "published_at", "id"), Index(None, "run_id", "id"))

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The unit of work that wrote it: published (and marked) together after that commit.
    batch: Mapped[str] = mapped_column(String(36), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(Json)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BackfillRow(Base):
    """A backfill (DESIGN §8): manual runs opened for many keys of a table at once."""

    __tablename__ = "backfills"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("tables.id"))
    #: How many keys it named, and how many of those already had an open run (not opened again).
    keys: Mapped[int] = mapped_column(Integer)
    already_open: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BackfillRunRow(Base):
    """A run a backfill opened."""

    __tablename__ = "backfill_runs"

    backfill_id: Mapped[int] = mapped_column(ForeignKey("backfills.id"), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
