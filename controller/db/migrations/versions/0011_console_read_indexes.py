"""console read indexes

DESIGN §9: the console's pages must not slow down with the history. A run's page reads its events
(``run_events`` by ``run_id``, in order) and a table's page the newest runs of one key of each table
of its lineage (``runs`` by table and key, newest first); both scanned every row. Two indexes serve
them: ``ix_run_events_run_id_id`` and ``ix_runs_table_id_partition_key_id``.

Downgrade drops them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_run_events_run_id_id", "run_events", ["run_id", "id"], unique=False)
    op.create_index(
        "ix_runs_table_id_partition_key_id", "runs", ["table_id", "partition_key", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_runs_table_id_partition_key_id", table_name="runs")
    op.drop_index("ix_run_events_run_id_id", table_name="run_events")
