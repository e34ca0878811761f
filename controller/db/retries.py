"""The retry policy both stores apply to a unit of work: how many tries, what a lost connection means
to the caller, and the pause between tries. (Which errors are retried is each driver's to tell.)

Also the one translation of the SQLAlchemy adapters (the reads, the catalog loader, the SQLite store)
from a connection-level failure to :class:`Unavailable` (a 503): :func:`connect` and
:func:`connected`. A database that refuses connections (stopped, unreachable, ``ALLOW_CONNECTIONS
false``, a SQLite file that cannot be opened) or a connection lost mid-request is an outage the caller
waits out; any other error (a statement's, a bug) is left as it is. The PostgreSQL store tells its
psycopg errors apart itself (``PostgresqlSession._is_lost``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from controller.core.errors import Unavailable

logger = logging.getLogger("flux_control.runtime")

#: Tries of a unit of work in all.
MAX_ATTEMPTS = 8
#: Tries of a unit of work whose connection was lost before COMMIT (then nothing was written and
#: running it again is safe), after the first one.
MAX_RECONNECTS = 2


def unavailable(committing: bool, cause: BaseException | None = None) -> Unavailable:
    """The answer to a database that cannot be reached or a lost connection: unknown outcome while
    committing, else nothing written. ``cause`` (the driver's error) is logged for operators by its
    class and SQLSTATE only: a driver's message may name the host, and the URL must never be logged."""
    if cause is not None:
        driver_error = cause.orig if isinstance(cause, DBAPIError) else cause
        logger.warning(
            "the database is unavailable",
            extra={
                "error": type(driver_error).__name__,
                "sqlstate": getattr(driver_error, "sqlstate", None),
                "committing": committing,
            },
        )
    if committing:
        return Unavailable(
            "the database connection was lost while committing: the change may or may not have been "
            "written. Repeating the request is safe for registrations that carry an idempotency_key; "
            "otherwise check first (GET /executions, GET /runs)."
        )
    return Unavailable(
        "the database could not be reached or the connection was lost; nothing was written. "
        "Repeat the request."
    )


def busy(cause: BaseException) -> Unavailable:
    """The answer to a unit of work that kept meeting others (serialization conflicts, deadlocks,
    a SQLite lock not granted within the busy timeout) until its tries ran out: rolled back, nothing
    written. A 503 like an outage: the caller (or the sweep, next time) repeats it later."""
    driver_error = cause.orig if isinstance(cause, DBAPIError) else cause
    logger.warning(
        "the database is too busy",
        extra={"error": type(driver_error).__name__, "sqlstate": getattr(driver_error, "sqlstate", None)},
    )
    return Unavailable(
        "the database is too busy (locks or conflicts); nothing was written. Repeat the request."
    )


def pause_before_retry(attempt: int, sqlstate: str | None, reason: str) -> None:
    """Log the retry, then wait a jittered, growing while (so that racing writers do not meet again)."""
    logger.info(
        "retrying the transaction", extra={"attempt": attempt, "sqlstate": sqlstate, "reason": reason}
    )
    time.sleep(min(0.5, 0.01 * 2**attempt) * random.random())  # jitter, not crypto


# --- SQLAlchemy: connection-level failures are Unavailable -----------------------------------------


def connect(engine: Engine) -> Connection:
    """A new connection of ``engine``; :class:`Unavailable` when the database refuses it.

    Only the DBAPI's OperationalError and InterfaceError count as refused: failing to open a
    connection is all they can mean here (SQLAlchemy's pool pings a pooled connection at checkout and
    replaces a dead one, so this also covers backends terminated between requests when no new one may
    be opened). A ProgrammingError (a malformed connection string) is a deployment bug and stays one.
    """
    try:
        return engine.connect()
    except (OperationalError, InterfaceError) as exc:
        raise unavailable(committing=False, cause=exc) from exc


@contextmanager
def connected(engine: Engine) -> Iterator[Connection]:
    """A connection of ``engine`` for reads, closed afterwards: refused (see :func:`connect`) or lost
    while in use (SQLAlchemy marks the error ``connection_invalidated``: the backend terminated, the
    server gone), :class:`Unavailable`. Not retried: a read that lost its connection mid-way answers
    503 and the caller repeats it (the next checkout opens a new connection)."""
    connection = connect(engine)
    try:
        with connection:
            yield connection
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise unavailable(committing=False, cause=exc) from exc
        raise
