"""producers and operators of a table

Two lists beside ``approvers`` (DESIGN §7): who may register executions of the table, and who may run,
backfill, cancel and retry its runs. Both are JSON lists like ``approvers``. Tables defined before
this revision get empty lists (any identified caller, operators falling back to the approvers), which
is what their definition files say until the fields are written there: a plan after the upgrade shows
no change.

The columns keep their server default (``[]``) on both databases: SQLite cannot drop a default
without rebuilding ``tables``, which the partitions, dependencies and tasks reference (with
``ON DELETE CASCADE``), so the models declare it too and both databases have one schema.

Downgrade drops the two columns (and with them whatever the definitions said there).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = ("producers", "operators")


def upgrade() -> None:
    for name in COLUMNS:
        # Plain ADD COLUMN on both databases (no batch: a batch on SQLite would rebuild the table).
        op.add_column(
            "tables",
            sa.Column(
                name,
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=False,
                server_default=sa.text("'[]'"),
            ),
        )


def downgrade() -> None:
    for name in reversed(COLUMNS):
        op.drop_column("tables", name)
