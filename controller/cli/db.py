"""``flux-control db``: the database schema."""

from __future__ import annotations

import click

from controller.cli.common import database_option, friendly_errors, open_engine
from controller.db.engine import safe_url
from controller.db.migrate import upgrade


@click.group("db")
def db_group() -> None:
    """Manage the database schema (Alembic migrations)."""


@db_group.command("upgrade")
@database_option
@click.option("--revision", default="head", show_default=True, help="Migrate to this revision.")
@friendly_errors
def upgrade_command(database_url: str, revision: str) -> None:
    """Migrate the database schema (creates it on an empty database).

    \b
    Examples:
      flux-control db upgrade
      FLUX_DATABASE_URL=postgresql+psycopg://user@host/db flux-control db upgrade
    """
    engine = open_engine(database_url)
    status = upgrade(engine, revision)
    click.echo(
        f"Database {safe_url(engine.url)} is at schema revision {status.current} (head: {status.head})."
    )
