"""Engines and sessions for SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_DATABASE_URL = "sqlite:///flux-control.db"
READ_ONLY_OPTION = "flux_read_only"
#: How long a SQLite writer waits for another one before failing (seconds).
SQLITE_BUSY_TIMEOUT = 30


def database_url(explicit: str | None = None) -> str:
    """``explicit``, else ``FLUX_DATABASE_URL``, else the embedded SQLite default."""
    return explicit or os.environ.get("FLUX_DATABASE_URL") or DEFAULT_DATABASE_URL


def safe_url(url: str | URL) -> str:
    """The URL with its password masked: the only form that may appear in output or logs."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the settings Flux Control relies on for ``url``'s backend."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
    # LIFO: the connection used last serves the next request, so its server process's caches are
    # warm (FIFO alternated between connections), and surplus connections idle until recycled.
    kwargs.setdefault("pool_use_lifo", True)
    return create_engine(parsed, pool_pre_ping=True, **kwargs)


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False}
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        if url.database and url.database != ":memory:":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: two writers queue on the busy timeout instead of
        # one failing with "database is locked" when it upgrades a read lock mid-transaction.
        # Readers (see `read_only`) begin deferred and, in WAL mode, never wait for a writer.
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def read_only(engine: Engine) -> Engine:
    """The same engine for transactions that only read (on SQLite they take no write lock)."""
    return engine.execution_options(**{READ_ONLY_OPTION: True})
