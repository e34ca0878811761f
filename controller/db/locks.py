"""One apply at a time: a PostgreSQL advisory lock, or SQLite's write lock, with a timeout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from controller.db.engine import SQLITE_BUSY_TIMEOUT

# Namespaced by schema so that two deployments sharing one PostgreSQL database do not block each other.
ADVISORY_KEY = "hashtext(current_schema() || '/flux-control/apply')"


class LockTimeout(Exception):
    """Another apply held the lock for longer than the timeout."""


@contextmanager
def sqlite_lock_wait(connection: Connection, seconds: float) -> Iterator[None]:
    """On SQLite, make the next BEGIN IMMEDIATE wait ``seconds`` for the write lock (no-op elsewhere)."""
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT * 1000}")


def acquire_apply_lock(connection: Connection, seconds: float) -> None:
    """Take the apply lock for the rest of the connection's transaction, waiting up to ``seconds``.

    On SQLite the transaction's ``BEGIN IMMEDIATE`` already holds the database's single write lock.
    """
    if connection.dialect.name != "postgresql":
        return
    connection.execute(text(f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'"))
    connection.execute(text(f"SELECT pg_advisory_xact_lock({ADVISORY_KEY})"))
    connection.execute(text("SET LOCAL lock_timeout = 0"))


def is_lock_timeout(exc: OperationalError) -> bool:
    """True for "lock not available" (PostgreSQL 55P03) and "database is locked" (SQLite)."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code == "55P03" or "database is locked" in str(exc.orig)
