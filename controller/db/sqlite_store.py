"""The runtime's store on SQLite: the services' store port (``controller.services.ports``: ``Store``,
``StoreSession``, ``Transaction``), implemented structurally with SQLAlchemy Core statements (those of
:mod:`controller.db.sqlite_statements`) on one connection per session.

SQLite serialises writers: every write transaction begins with ``BEGIN IMMEDIATE`` (see
:mod:`controller.db.engine`), so the "locked" reads of the port need no lock of their own, and
there are no serialization conflicts to retry. Reads outside a unit of work begin deferred and, in
WAL mode, never wait for a writer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from controller.core.effects import AfterCommit, Rerun, ScheduleRequest
from controller.core.records import Task
from controller.core.runs import RunEvent
from controller.db import sqlite_lifecycle_statements as lifecycle
from controller.db import sqlite_statements as sql
from controller.db.base import utcnow
from controller.db.engine import READ_ONLY_OPTION
from controller.db.locks import is_lock_timeout
from controller.db.retries import (
    MAX_ATTEMPTS,
    MAX_RECONNECTS,
    busy,
    connect,
    pause_before_retry,
    unavailable,
)
from controller.db.sqlite_transaction import SqliteTransaction

T = TypeVar("T")
R = TypeVar("R")
Pair = tuple[int, str]
Listener = Callable[[str, Any], None]
logger = logging.getLogger("flux_control.runtime")


class SqliteStore:
    """The runtime's database on SQLite, over ``engine`` (the caller's: this store never disposes it).

    ``listeners`` are called with (statement text, the :class:`~sqlalchemy.Connection`) before every
    statement sent on a connection of this store (``BEGIN`` included), and with ``"COMMIT"`` just
    before a transaction commits: how tests count statements and inject faults.
    """

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name != "sqlite":
            raise ValueError(f"SqliteStore needs a SQLite engine, not {engine.dialect.name}")
        self.engine = engine
        self.listeners: list[Listener] = []
        # Connections checked out by this store's sessions: other users of the engine are not forwarded.
        self._connections: set[Connection] = set()
        self._forwarding = self._forward  # one bound method: event.remove needs the one listened with
        event.listen(engine, "before_cursor_execute", self._forwarding)

    @contextmanager
    def session(self) -> Iterator[SqliteSession]:
        """A session holding one connection for a unit of work and the bookkeeping after it."""
        session = SqliteSession(self)
        try:
            yield session
        finally:
            session.close()

    def close(self) -> None:
        """Stop forwarding statements to ``listeners`` and close the connections of sessions still
        open. The engine is left as it is (it belongs to the caller)."""
        if event.contains(self.engine, "before_cursor_execute", self._forwarding):
            event.remove(self.engine, "before_cursor_execute", self._forwarding)
        for connection in list(self._connections):
            self.release(connection)

    def connect(self) -> Connection:
        """A new connection of this store (its statements are forwarded to ``listeners``).

        A database file that cannot be opened (its directory missing, a volume not mounted, no
        permission) raises :class:`~controller.core.errors.Unavailable`: on SQLite that is the outage a
        refused connection is on PostgreSQL (see :func:`~controller.db.retries.connect`)."""
        connection = connect(self.engine)
        self._connections.add(connection)
        return connection

    def release(self, connection: Connection) -> None:
        """Close a connection of this store (back to the pool, unless it was invalidated)."""
        self._connections.discard(connection)
        connection.close()

    def notify(self, statement: str, connection: Connection) -> None:
        """Call every listener with a statement about to be sent on ``connection``."""
        for listener in list(self.listeners):
            listener(statement, connection)

    def _forward(
        self, connection: Connection, _cursor: Any, statement: str, *_rest: Any
    ) -> None:  # the engine's before_cursor_execute
        if self.listeners and connection in self._connections:
            self.notify(statement, connection)


class SqliteSession:
    """One connection of a :class:`SqliteStore`: units of work (:meth:`transact`), what is recorded
    after them, and the sweep's reads. Not thread-safe: one session per thread of work.

    A connection lost mid-way is replaced by a new one at the next use.
    """

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._connection: Connection | None = store.connect()

    @property
    def connection(self) -> Connection:
        """The connection the next statement goes to (a new one after a loss)."""
        if self._connection is None or self._connection.closed or self._connection.invalidated:
            if self._connection is not None:
                self._store.release(self._connection)
            self._connection = self._store.connect()
        return self._connection

    def close(self) -> None:
        """Give the connection back."""
        if self._connection is not None:
            self._store.release(self._connection)
            self._connection = None

    def transact(self, work: Callable[[SqliteTransaction, AfterCommit], T]) -> tuple[T, AfterCommit]:
        """Run ``work`` in one transaction with a fresh :class:`AfterCommit`, writing its events to the
        outbox under its batch before COMMIT; returns (what ``work`` returned, the AfterCommit).

        Runs it again from scratch, on a new connection, after the connection was lost before COMMIT
        (nothing was written), and after a concurrent registration took the same idempotency key (the
        next try finds it). Raises :class:`~controller.core.errors.Unavailable` when the connection is
        lost while committing (whether the COMMIT applied is unknown) or on every try.
        """
        reconnects = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            after = AfterCommit()
            committing = False
            connection = self._prepared(read_only=False)
            try:
                with connection.begin():
                    result = work(SqliteTransaction(connection), after)
                    # The outbox rows commit with the changes they describe (published after commit).
                    if after.events:
                        rows = sql.event_rows(after.events, after.batch, utcnow())
                        connection.execute(sql.INSERT_EVENTS, rows)
                    committing = True  # every statement but COMMIT has been sent
                    self._store.notify("COMMIT", connection)
                return result, after
            except DBAPIError as exc:
                lost = bool(exc.connection_invalidated)
                # A concurrent registration with the same idempotency key won the insert: running
                # again finds it and answers with its result.
                replay = isinstance(exc, IntegrityError) and "idempotency" in str(exc.orig)
                if lost:
                    self._drop(connection)
                    reconnects += 1
                    if committing or reconnects > MAX_RECONNECTS:
                        raise unavailable(committing, cause=exc) from exc
                elif isinstance(exc, OperationalError) and is_lock_timeout(exc):
                    raise busy(exc) from exc  # BEGIN IMMEDIATE waited out the busy timeout: nothing written
                elif not replay:
                    raise
                if attempt == MAX_ATTEMPTS:
                    raise busy(exc) from exc
                sqlstate = getattr(exc.orig, "sqlstate", None)  # None on SQLite
                pause_before_retry(attempt, sqlstate, "connection lost" if lost else "idempotency key taken")
        raise AssertionError("unreachable")

    def record_done(self, synced: Sequence[ScheduleRequest], batch: str | None, now: datetime) -> None:
        """Mark the runs whose schedule was written (only where the run's fire time is still the one
        written) and the outbox ``batch`` published: two statements in one transaction, or none when
        there is nothing to record."""
        if not synced and batch is None:
            return

        def mark(connection: Connection) -> None:
            if synced:
                rows = [{"b_id": r.run_id, "b_fire_at": r.fire_at, "b_name": r.name} for r in synced]
                connection.execute(sql.MARK_SCHEDULED, rows)
            if batch is not None:
                connection.execute(sql.MARK_BATCH_PUBLISHED, {"b_batch": batch, "b_at": now})

        self._once(mark, read_only=False)

    # --- the sweep's reads (each its own short transaction) ----------------------------------------
    def unsynced_runs(self, after: datetime, limit: int) -> list[tuple[int, int, datetime]]:
        """(id, table id, fire time) of scheduled runs firing after ``after`` whose schedule was not
        written at their fire time."""
        rows = self._read(sql.UNSYNCED_RUNS, {"after": after, "limit": limit})
        return [(row.id, row.table_id, row.fire_at) for row in rows]

    def overdue_runs(self, before: datetime, limit: int) -> list[int]:
        """Scheduled runs due at or before ``before``."""
        return [row.id for row in self._read(sql.OVERDUE_RUNS, {"before": before, "limit": limit})]

    def unpublished_events(self, before: datetime, limit: int) -> list[tuple[int, RunEvent]]:
        """(outbox id, event) of events written at or before ``before`` and not published, oldest first."""
        rows = self._read(sql.UNPUBLISHED_EVENTS, {"before": before, "limit": limit})
        return [(row.id, RunEvent.from_detail(row.detail)) for row in rows]

    def mark_published(self, event_ids: Sequence[int], at: datetime) -> None:
        """Outbox rows published at ``at``."""
        if event_ids:
            parameters = {"b_ids": list(event_ids), "b_at": at}
            self._once(lambda c: c.execute(sql.MARK_PUBLISHED, parameters), read_only=False)

    def run_state(self, run_id: int) -> tuple[str, datetime | None] | None:
        """A run's status and fire time as they are now (None: no such run)."""
        rows = self._read(sql.RUN_STATE, {"run_id": run_id})
        return (rows[0].status, rows[0].fire_at) if rows else None

    def leftover_schedules(self, limit: int) -> list[tuple[int, str, datetime]]:
        """(run id, schedule name, fire time written) of runs no longer scheduled holding a written
        schedule, by id."""
        rows = self._read(sql.LEFTOVER_SCHEDULES, {"limit": limit})
        return [(row.id, row.schedule_name, row.scheduled_fire_at) for row in rows]

    def tasks_to_check(self, now: datetime, limit: int) -> list[tuple[Task, datetime | None]]:
        """Started tasks whose check time has come, oldest check first, with their deadlines."""
        rows = self._read(lifecycle.TASKS_TO_CHECK, {"now": now, "limit": limit})
        return [(Task(*row[:-1]), row[-1]) for row in rows]

    def postpone_checks(self, checks: Sequence[tuple[int, datetime]]) -> None:
        """Ask about each task (by id) again at its time: one executemany."""
        if checks:
            rows = [{"b_id": task_id, "b_check_at": check_at} for task_id, check_at in checks]
            self._once(lambda c: c.execute(lifecycle.POSTPONE_CHECK, rows), read_only=False)

    def queued_tables(self, limit: int) -> list[int]:
        """Tables with queued runs."""
        return [row[0] for row in self._read(lifecycle.QUEUED_TABLES, {"limit": limit})]

    def failed_reruns(self, limit: int) -> list[Rerun]:
        """Failed runs whose key must still run again, oldest first."""
        return [Rerun(*row) for row in self._read(lifecycle.FAILED_RERUNS, {"limit": limit})]

    def forget_schedules(self, deleted: Sequence[tuple[int, datetime]]) -> None:
        """The schedules of these runs were deleted (where still the one written, the run not scheduled)."""
        if deleted:
            rows = [{"b_id": run_id, "b_written": written} for run_id, written in deleted]
            self._once(lambda c: c.execute(sql.FORGET_SCHEDULES, rows), read_only=False)

    # --- connection handling -----------------------------------------------------------------------
    def _prepared(self, *, read_only: bool) -> Connection:
        """The connection, set to begin its next transaction deferred (reads) or IMMEDIATE (writes)."""
        connection = self.connection
        if connection.get_execution_options().get(READ_ONLY_OPTION, False) != read_only:
            connection.execution_options(**{READ_ONLY_OPTION: read_only})  # in place, for the engine's begin
        return connection

    def _once(self, statements: Callable[[Connection], R], *, read_only: bool) -> R:
        """``statements`` in one transaction, not retried (the sweep runs again anyway). A read ends
        with a rollback: it has nothing to commit. A read that lost its connection raises
        :class:`~controller.core.errors.Unavailable`; a write (bookkeeping the sweep repeats) its error."""
        connection = self._prepared(read_only=read_only)
        try:
            with connection.begin() as transaction:
                result = statements(connection)
                if read_only:
                    transaction.rollback()
                else:
                    self._store.notify("COMMIT", connection)
            return result
        except DBAPIError as exc:
            if exc.connection_invalidated:
                self._drop(connection)
                if read_only:
                    raise unavailable(committing=False, cause=exc) from exc
            raise

    def _read(self, statement: Any, parameters: dict[str, Any]) -> list[Any]:
        return self._once(lambda c: list(c.execute(statement, parameters)), read_only=True)

    def _drop(self, connection: Connection) -> None:
        """Discard a lost connection: the pool must not hand its DBAPI connection out again."""
        if not connection.closed and not connection.invalidated:
            connection.invalidate()
        self._store.release(connection)
        if self._connection is connection:
            self._connection = None
