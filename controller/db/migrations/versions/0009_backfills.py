"""backfills

DESIGN §8: ``POST /backfills`` opens manual runs for many keys of a table at once. A backfill is one
row of ``backfills`` (its table, how many keys it named and how many of them already had an open run,
its reason and who asked), and ``backfill_runs`` lists the runs it opened, so that
``GET /backfills/{id}`` counts them per state. New tables only: nothing existing changes.

Downgrade drops both tables (the runs they opened stay, as manual runs).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import controller.db.base

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "backfills",
        sa.Column("id", _ID, nullable=False),
        sa.Column("table_id", _ID, nullable=False),
        sa.Column("keys", sa.Integer(), nullable=False),
        sa.Column("already_open", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.String(length=256), nullable=True),
        sa.Column("created_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["table_id"], ["tables.id"], name=op.f("fk_backfills_table_id_tables")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfills")),
    )
    op.create_table(
        "backfill_runs",
        sa.Column("backfill_id", _ID, nullable=False),
        sa.Column("run_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["backfill_id"], ["backfills.id"], name=op.f("fk_backfill_runs_backfill_id_backfills")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_backfill_runs_run_id_runs")),
        sa.PrimaryKeyConstraint("backfill_id", "run_id", name=op.f("pk_backfill_runs")),
    )


def downgrade() -> None:
    op.drop_table("backfill_runs")
    op.drop_table("backfills")
