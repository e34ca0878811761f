"""reruns of failed runs

DESIGN §8: a trigger that arrives while a run is in progress sets its ``rerun_requested``; when the
run fails and does not come back by itself (no ``retries`` left), its key runs again as a new run.
That happens just after the failure commits, and the sweep finds failed runs still holding the
request through the partial index ``ix_runs_failed_rerun`` (few rows: a request is cleared once
served), so the sweep's cost does not grow with the history.

Failed runs from before this revision keep their request unserved: it is cleared, so that the first
sweep does not open runs for triggers that arrived long ago.

Downgrade drops the index.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PREDICATE = "status = 'failed' AND rerun_requested"  # frozen: the index as this revision made it


def upgrade() -> None:
    op.execute(f"UPDATE runs SET rerun_requested = {_false()} WHERE {PREDICATE}")
    op.create_index(
        "ix_runs_failed_rerun",
        "runs",
        ["id"],
        unique=False,
        sqlite_where=sa.text(PREDICATE),
        postgresql_where=sa.text(PREDICATE),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_failed_rerun", table_name="runs")


def _false() -> str:
    """The literal false of the dialect (SQLite stores booleans as 0 and 1)."""
    return "0" if op.get_bind().dialect.name == "sqlite" else "false"
