"""task tokens

A task reports completion or failure with its token (``flux.token``, DESIGN §7). The token was
derived from the run, the attempt and the task's alias, so anyone could compute it; it is now random
(``secrets.token_urlsafe(32)``), drawn when the dispatch records the task and stored with it in the
new column ``task_dispatches.token``, which ``check_token`` compares with (constant time).

Rows written before this revision get NULL: no token matches those tasks, so a task started before
the upgrade can no longer report with the token it was given; its run is settled by the task's AWS
state change (Glue, Step Functions) or by an operator of its table (``POST /register_execution`` with
the run id and no token, ``POST /runs/{id}/fail``). Retrying such a run starts it with new tokens.

Downgrade drops the column and the tokens with it: the code of revision 0005 derives tokens again,
so tasks started after the upgrade can no longer report with theirs (an operator settles them).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both databases (nullable, no default: nothing is rewritten).
    op.add_column("task_dispatches", sa.Column("token", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("task_dispatches", "token")
