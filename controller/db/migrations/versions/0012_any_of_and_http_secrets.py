"""any_of groups and http task secrets

DESIGN §2 and §4 (issue 20): a dependency may be a group of alternative upstreams (``any_of``), and an
``http`` task may name a Secrets Manager secret for its ``Authorization`` header (``auth_secret``).

- ``table_dependencies.any_of_position``: null for a plain dependency; for a member of a group, the position
  of its group in the table's ``dependencies`` list (members of one group share it). Each member keeps
  its own row (its upstream, ``partition_map`` and the group's ``is_required``), so the runtime's and
  the console's lookups by upstream see every member as an edge.
- ``table_tasks.auth_secret``: the secret's name or ARN, never its value.

Existing rows are plain dependencies and tasks without a secret: both columns start null. Downgrade
drops them (a database holding groups would lose which rows were alternatives: downgrade only one that
has none).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("table_dependencies") as batch:
        batch.add_column(sa.Column("any_of_position", sa.Integer(), nullable=True))
    with op.batch_alter_table("table_tasks") as batch:
        batch.add_column(sa.Column("auth_secret", sa.String(2048), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("table_tasks") as batch:
        batch.drop_column("auth_secret")
    with op.batch_alter_table("table_dependencies") as batch:
        batch.drop_column("any_of_position")
