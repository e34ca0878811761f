"""queued runs and task checks

DESIGN §8: a run waits ``queued`` while its table's ``max_concurrent_runs`` are busy (or its target
refused it for its own limit). A queued run is open: the partial unique index ``uq_runs_open_key`` (at
most one open run per table and key) is rebuilt with the new state in its predicate.

Started tasks get ``check_at`` (when the sweep next asks AWS how the task is: its completion event
may have been lost) and ``deadline_at`` (when it is stopped for running too long), with an index on
(status, check_at) for the sweep's bounded search. Tasks started before this revision get
``check_at`` = their start, so that the first sweep asks about them, and no deadline (they were started
before timeouts existed).

Downgrade: queued runs cannot be expressed before this revision; they are put back ``scheduled``
(due now: the sweep fires them), then the index and the columns are dropped.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import controller.db.base

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BEFORE = "status IN ('awaiting_approval', 'scheduled', 'dispatching', 'running')"
AFTER = "status IN ('awaiting_approval', 'scheduled', 'queued', 'dispatching', 'running')"


def _open_key_index(predicate: str) -> None:
    op.create_index(
        "uq_runs_open_key",
        "runs",
        ["table_id", "partition_key"],
        unique=True,
        sqlite_where=sa.text(predicate),
        postgresql_where=sa.text(predicate),
    )


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default) and index changes: no table is rebuilt on SQLite.
    op.add_column(
        "task_dispatches", sa.Column("check_at", controller.db.base.UTCDateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "task_dispatches",
        sa.Column("deadline_at", controller.db.base.UTCDateTime(timezone=True), nullable=True),
    )
    # Due at once (their start time is past), in the column type's own format on both databases.
    op.execute("UPDATE task_dispatches SET check_at = started_at WHERE status = 'started'")
    op.create_index(
        "ix_task_dispatches_status_check_at", "task_dispatches", ["status", "check_at"], unique=False
    )
    op.drop_index("uq_runs_open_key", table_name="runs")
    _open_key_index(AFTER)


def downgrade() -> None:
    op.execute("UPDATE runs SET status = 'scheduled' WHERE status = 'queued'")
    op.drop_index("uq_runs_open_key", table_name="runs")
    _open_key_index(BEFORE)
    op.drop_index("ix_task_dispatches_status_check_at", table_name="task_dispatches")
    op.drop_column("task_dispatches", "deadline_at")
    op.drop_column("task_dispatches", "check_at")
