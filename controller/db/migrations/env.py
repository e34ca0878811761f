"""Alembic environment: migrations run on a connection handed over by ``controller.db.migrate``."""

from __future__ import annotations

from alembic import context

import controller.db.definition_models
import controller.db.run_models  # noqa: F401  (registers the runtime tables)
from controller.db.base import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
