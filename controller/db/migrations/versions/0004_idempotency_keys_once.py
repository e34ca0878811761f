"""idempotency keys used once, whatever the table

An ``idempotency_key`` names one registration item (DESIGN §5: a key reused for a different item is a
409). The unique index ``uq_executions_idempotency`` was on (table_id, idempotency_key): the same key
could be registered again for another table, and two concurrent registrations of one key for two
tables could both commit. It is now on the key alone, partial (``IS NOT NULL``: most executions carry
no key), so the database refuses the second of any two executions with one key.

Rows written before may hold one key on several tables. They are not refused (the upgrade would
block every deploy until someone edited history by hand): the oldest execution of each such key (the
lowest id) keeps it, the newer ones lose it (NULL), and a warning names each key with the executions
concerned. Nothing else depends on a stored key than replays, and no replay is lost that could
register twice: a repeat of a newer registration still finds the key, on the oldest execution, and
is answered with a 409 naming it instead of a second execution.

Downgrade restores the per-table index; keys cleared by the upgrade stay cleared.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

logger = logging.getLogger("flux_control.migrations")

INDEX = "uq_executions_idempotency"
_KEYED = sa.text("idempotency_key IS NOT NULL")
#: Keys named one by one in the warning; more are counted.
_NAMED = 20

#: Each key held by more than one execution: the oldest execution keeps it. One pass over the keyed
#: rows (no correlated lookup: the old index leads with table_id, so it cannot serve a key alone).
_SHARED = """
SELECT idempotency_key, MIN(id) AS kept, COUNT(*) AS uses
FROM executions WHERE idempotency_key IS NOT NULL
GROUP BY idempotency_key HAVING COUNT(*) > 1
ORDER BY MIN(id)
"""
_CLEAR_NEWER = f"""
UPDATE executions SET idempotency_key = NULL
WHERE id IN (
    SELECT e.id FROM executions e JOIN ({_SHARED}) shared ON shared.idempotency_key = e.idempotency_key
    WHERE e.id <> shared.kept
)
"""


def upgrade() -> None:
    connection = op.get_bind()
    shared = connection.execute(sa.text(_SHARED)).all()
    if shared:
        cleared = sum(uses - 1 for _, _, uses in shared)
        named = "; ".join(f"{key!r} kept by execution {kept}" for key, kept, _ in shared[:_NAMED])
        more = f"; and {len(shared) - _NAMED} more keys" if len(shared) > _NAMED else ""
        logger.warning(
            "%d idempotency keys were used by executions of several tables; an idempotency key now names "
            "one registration, so each stays with its oldest execution and is cleared from the %d newer "
            "ones (a repeat of those registrations is answered 409): %s%s",
            len(shared),
            cleared,
            named,
            more,
        )
        connection.execute(sa.text(_CLEAR_NEWER))
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index(INDEX)
        batch_op.create_index(
            INDEX, ["idempotency_key"], unique=True, sqlite_where=_KEYED, postgresql_where=_KEYED
        )


def downgrade() -> None:
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index(INDEX, sqlite_where=_KEYED, postgresql_where=_KEYED)
        batch_op.create_index(INDEX, ["table_id", "idempotency_key"], unique=True)
