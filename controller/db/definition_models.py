"""Definition models: tables as reconciled from Git, and the record of every reconcile.

Deleted tables are marked (``deleted_at``), never dropped, so their executions and runs survive.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from controller.core.specs import DEFAULT_TASK_TIMEOUT_SECONDS
from controller.db.base import Base, Id, Json, UTCDateTime, utcnow

#: A JSON document or SQL NULL: Python ``None`` is stored as NULL, not as the JSON text ``null``.
NullableJson = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class ReconcileRevision(Base):
    """One apply that changed something: which Git revision, who, when, and what it did."""

    __tablename__ = "reconcile_revisions"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    revision: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(256))
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    desired_digest: Mapped[str] = mapped_column(String(80))
    summary: Mapped[dict[str, Any]] = mapped_column(Json)


class TableRow(Base):
    """A table definition. ``name`` is unique for ever: re-creating a deleted table revives its row."""

    __tablename__ = "tables"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str | None] = mapped_column(String(128))
    requires_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    approvers: Mapped[list[str]] = mapped_column(Json, default=list)
    # Added by migration 0005, which gave existing rows [] through this server default (kept: see there).
    producers: Mapped[list[str]] = mapped_column(Json, default=list, server_default=text("'[]'"))
    operators: Mapped[list[str]] = mapped_column(Json, default=list, server_default=text("'[]'"))
    debounce_seconds: Mapped[int] = mapped_column(Integer)
    max_wait_seconds: Mapped[int | None] = mapped_column(Integer)
    # Added by migration 0007 (DESIGN §8); NULL: no limit, no automatic retries.
    max_concurrent_runs: Mapped[int | None] = mapped_column(Integer)
    #: ``{"max_attempts": N, "backoff_seconds": S}``, or SQL NULL (never JSON ``null``).
    retries: Mapped[dict[str, int] | None] = mapped_column(NullableJson)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revision_id: Mapped[int | None] = mapped_column(ForeignKey("reconcile_revisions.id"))


class PartitionRow(Base):
    __tablename__ = "table_partitions"
    __table_args__ = (UniqueConstraint("table_id", "name"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("tables.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(16))
    is_required: Mapped[bool] = mapped_column(Boolean)


class DependencyRow(Base):
    """An edge downstream (``table_id``) → upstream. Indexed by upstream: the runtime's lookup."""

    __tablename__ = "table_dependencies"
    __table_args__ = (UniqueConstraint("table_id", "upstream_table_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("tables.id", ondelete="CASCADE"))
    upstream_table_id: Mapped[int] = mapped_column(ForeignKey("tables.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    is_required: Mapped[bool] = mapped_column(Boolean)
    partition_map: Mapped[dict[str, str]] = mapped_column(Json, default=dict)
    #: An ``any_of`` member: the position of its group in the table's dependencies (null: plain).
    any_of_position: Mapped[int | None] = mapped_column(Integer)


class TaskRow(Base):
    __tablename__ = "table_tasks"
    __table_args__ = (UniqueConstraint("table_id", "alias"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    table_id: Mapped[int] = mapped_column(ForeignKey("tables.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    alias: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(2048))
    params: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    # Added by migration 0007, which gave existing rows the default through this server default (kept,
    # as 0005's are: SQLite cannot drop it without rebuilding the table).
    timeout_seconds: Mapped[int] = mapped_column(
        Integer,
        default=DEFAULT_TASK_TIMEOUT_SECONDS,
        server_default=text(str(DEFAULT_TASK_TIMEOUT_SECONDS)),
    )
    #: ``http`` tasks: the Secrets Manager secret (name or ARN) of the Authorization header.
    auth_secret: Mapped[str | None] = mapped_column(String(2048))


class AuditEntry(Base):
    """Append-only trail: every definition change (and, at run time, every run transition)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "table_name", "at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    table_name: Mapped[str | None] = mapped_column(String(128))
    revision_id: Mapped[int | None] = mapped_column(ForeignKey("reconcile_revisions.id"))
    detail: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
