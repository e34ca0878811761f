"""Schema migrations (Alembic), run programmatically so that no alembic.ini is needed."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

_SCRIPTS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config


@cache  # the scripts ship with the package: read (and compiled) once, not on every status check
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the package ships at least one migration"
    return head


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands against the migrations this package ships."""

    current: str | None
    head: str
    has_tables: bool

    @property
    def empty(self) -> bool:
        return self.current is None and not self.has_tables

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def schema_status(connection: Connection) -> SchemaStatus:
    current = MigrationContext.configure(connection).get_current_revision()
    has_tables = bool(inspect(connection).get_table_names())
    return SchemaStatus(current, head_revision(), has_tables)


def upgrade(engine: Engine, revision: str = "head") -> SchemaStatus:
    """Migrate to ``revision`` in one transaction; returns the status after."""
    with engine.begin() as connection:
        return upgrade_in(connection, revision)


def upgrade_in(connection: Connection, revision: str = "head") -> SchemaStatus:
    """Migrate inside the caller's transaction (Alembic does not commit an external transaction)."""
    command.upgrade(alembic_config(connection), revision)
    return schema_status(connection)
