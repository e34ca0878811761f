"""schedules that outlive their run

A run keeps ``scheduled_fire_at`` (the fire time its EventBridge schedule was written with) until the
schedule is gone: a fire that claims the run clears it (the schedule fired and deleted itself); a
run that left ``scheduled`` otherwise (cancelled, or its schedule written after it moved on) keeps it
until the sweep has deleted the schedule. A partial index finds those few rows among all runs.

Runs that ended before this revision, whose fire time has passed, have no schedule left (it fired
and deleted itself, the fire doing nothing): their mark is cleared so that the first sweeps do not
ask the scheduler to delete thousands of schedules that no longer exist.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_WRITTEN = sa.text("scheduled_fire_at IS NOT NULL")


def upgrade() -> None:
    op.execute(
        "UPDATE runs SET scheduled_fire_at = NULL"
        " WHERE status <> 'scheduled' AND scheduled_fire_at IS NOT NULL AND fire_at <= CURRENT_TIMESTAMP"
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_runs_schedule_written", ["id"], unique=False, sqlite_where=_WRITTEN, postgresql_where=_WRITTEN
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_schedule_written", sqlite_where=_WRITTEN, postgresql_where=_WRITTEN)
