"""concurrency, retries and task timeouts

Three definition fields of DESIGN §8: a table's ``max_concurrent_runs`` (how many of its runs may be
dispatching or running at once) and ``retries`` (``{"max_attempts", "backoff_seconds"}``: automatic
retries of a failed run), and a task's ``timeout_seconds`` (a task running longer is stopped and its
run fails).

Tables defined before this revision get what their definition files say while the fields are not
written there: ``max_concurrent_runs`` NULL (no limit), ``retries`` NULL (a failed run stays failed),
and every task ``timeout_seconds`` 86400 (one day, the default). A plan after the upgrade shows no
change. ``retries`` is SQL NULL when absent, never the JSON text ``null``.

``table_tasks.timeout_seconds`` keeps its server default (86400) on both databases, as 0005's columns
keep theirs: SQLite cannot drop a default without rebuilding the table, so the models declare it too
and both databases have one schema.

Downgrade drops the three columns (and with them whatever the definitions said there).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: The default of a task's ``timeout_seconds`` (controller.core.specs.DEFAULT_TASK_TIMEOUT_SECONDS, as
#: it was when this revision was written: a migration never changes with the code).
DEFAULT_TASK_TIMEOUT_SECONDS = 86400


def upgrade() -> None:
    # Plain ADD COLUMN on both databases (no batch: a batch on SQLite would rebuild the table).
    op.add_column("tables", sa.Column("max_concurrent_runs", sa.Integer(), nullable=True))
    op.add_column(
        "tables",
        sa.Column(
            "retries",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
    )
    op.add_column(
        "table_tasks",
        sa.Column(
            "timeout_seconds",
            sa.Integer(),
            nullable=False,
            server_default=sa.text(str(DEFAULT_TASK_TIMEOUT_SECONDS)),
        ),
    )


def downgrade() -> None:
    op.drop_column("table_tasks", "timeout_seconds")
    op.drop_column("tables", "retries")
    op.drop_column("tables", "max_concurrent_runs")
