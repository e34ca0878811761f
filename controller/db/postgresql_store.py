"""The runtime's store on PostgreSQL, on psycopg 3 directly: the texts are in
:mod:`controller.db.postgresql_statements`, the connections in :mod:`controller.db.postgresql_connections`.

It implements the services' store port structurally: :class:`PostgresqlStore` (``Store``),
:class:`PostgresqlSession` (``StoreSession`` with its sweep reads) and :class:`PostgresqlTransaction`
(``Transaction``). A unit of work runs in one explicit transaction (``BEGIN`` … ``COMMIT`` on an
autocommit connection), run again from scratch after a serialization failure, a deadlock, a lost race
for an idempotency key, or a connection lost before ``COMMIT``. Values crossing it are core values:
aware UTC datetimes in and out, JSON columns as dicts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors, pq
from psycopg.rows import TupleRow

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit, Rerun, ScheduleRequest
from controller.core.records import Task
from controller.core.runs import SCHEDULED, RunEvent
from controller.db import postgresql_lifecycle_statements as lifecycle
from controller.db import postgresql_statements as sql
from controller.db.postgresql_connections import Connection, ConnectionPool, conninfo_from_url, send
from controller.db.postgresql_transaction import PostgresqlTransaction, task_of, utc
from controller.db.retries import MAX_ATTEMPTS, MAX_RECONNECTS, busy, pause_before_retry, unavailable

T = TypeVar("T")
#: Called with (statement text, the psycopg connection) before every statement the store sends.
Listener = Callable[[str, Any], None]
logger = logging.getLogger("flux_control.runtime")

#: Serialization failure and deadlock: the transaction was rolled back and is safe to run again.
_RETRYABLE = {"40001", "40P01"}

__all__ = ["PostgresqlSession", "PostgresqlStore", "PostgresqlTransaction", "conninfo_from_url"]


class PostgresqlStore:
    """The runtime's database on PostgreSQL: a pool of psycopg connections (LIFO, at most ``max_idle``
    idle) and the definitions loader ``load_catalog`` (injected: it reads through SQLAlchemy on a
    connection of its own). ``conninfo``: a libpq string or URI (see :func:`conninfo_from_url`), or a
    function returning one, called for each new connection."""

    def __init__(
        self,
        conninfo: str | Callable[[], str],
        load_catalog: Callable[[int | None], Catalog],
        *,
        max_idle: int = 2,
    ) -> None:
        self.listeners: list[Listener] = []
        self.load_catalog = load_catalog
        self.pool = ConnectionPool(conninfo, max_idle=max_idle)

    @contextmanager
    def session(self) -> Iterator[PostgresqlSession]:
        """One pooled connection (taken on first use) for a unit of work and the record after it."""
        session = PostgresqlSession(self)
        try:
            yield session
        finally:
            session.release()

    def close(self) -> None:
        """Close every pooled connection (those in use when they are returned)."""
        self.pool.close()

    def send(
        self, connection: Connection, statement: str, parameters: Sequence[Any] | None = None
    ) -> psycopg.Cursor[TupleRow]:
        """:func:`~controller.db.postgresql_connections.send` with this store's listeners."""
        return send(self.listeners, connection, statement, parameters)


class PostgresqlSession:
    """One connection of the pool, held for a unit of work (:meth:`transact`) and what follows it
    (:meth:`record_done`, the sweep's reads). A connection found lost is replaced by a new one."""

    def __init__(self, store: PostgresqlStore) -> None:
        self._store = store
        self._connection: Connection | None = None
        self._lost = False

    @property
    def connection(self) -> Connection:
        """The session's connection: the pool's last used, or (once one was lost) a new one."""
        if self._connection is None:
            pool = self._store.pool
            self._connection = pool.connect() if self._lost else pool.acquire()
        return self._connection

    def release(self) -> None:
        """Give the connection back to the pool (which closes it unless it is fit to serve again)."""
        if self._connection is not None:
            self._store.pool.release(self._connection)
            self._connection = None

    def transact(self, work: Callable[[PostgresqlTransaction, AfterCommit], T]) -> tuple[T, AfterCommit]:
        """Run ``work`` in one transaction with its outbox rows (``AfterCommit.events``), from scratch
        with a fresh :class:`AfterCommit` on every try; returns what it returned and its effects.

        Run again: after a serialization failure or a deadlock; after a unique violation of the
        idempotency index (a concurrent registration with the same key won: running again finds it);
        after a connection lost before COMMIT (nothing was written), on a new connection. A connection
        lost while committing raises :class:`Unavailable` (whether COMMIT was applied is unknown), as
        does one lost, or refused (the database stopped, not accepting connections), on every try.
        Any other error: ROLLBACK, and the error as it is.
        """
        reconnects = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            after = AfterCommit()
            committing = False
            try:
                connection = self.connection
                self._store.send(connection, "BEGIN")
                transaction = PostgresqlTransaction(
                    connection, self._store.listeners, self._store.load_catalog
                )
                result = work(transaction, after)
                # The outbox rows commit with the change they describe (published after commit).
                transaction.record_events(after.events, after.batch)
                committing = True
                self._store.send(connection, "COMMIT")
                return result, after
            except psycopg.Error as exc:
                lost = self._is_lost(exc)
                if lost:
                    self._drop()
                    reconnects += 1
                    if committing or reconnects > MAX_RECONNECTS:
                        raise unavailable(committing, cause=exc) from exc
                else:
                    self._rollback()
                    if not _retryable(exc):
                        raise
                if attempt == MAX_ATTEMPTS:
                    raise busy(exc) from exc  # rolled back: tried again and again, nothing written
                pause_before_retry(
                    attempt, exc.sqlstate, "connection lost" if lost else "serialization conflict"
                )
            except BaseException:
                self._rollback()
                raise
        raise AssertionError("unreachable")

    def record_done(self, synced: Sequence[ScheduleRequest], batch: str | None, now: datetime) -> None:
        """Mark the runs whose schedule was written (only where the fire time written is still theirs)
        and the outbox ``batch`` published, all or nothing: one statement in autocommit, or several in
        one transaction past :data:`~controller.db.postgresql_statements.MAX_PARAMETERS`."""
        if not synced and batch is None:
            return
        done = [(r.run_id, r.fire_at, r.name) for r in synced]
        parts = sql.batched(done, lambda _: 3, reserved=2) or [[]]
        statements: list[tuple[str, list[Any]]] = []
        for number, part in enumerate(parts, 1):
            published = batch is not None and number == len(parts)
            parameters: list[Any] = [x for row in part for x in row] + ([now, batch] if published else [])
            statements.append((sql.record_done(len(part), published), parameters))
        self._outside(statements, reads=False)

    # --- the sweep's reads (SweepReads) and other statements outside any transaction --------------

    def unsynced_runs(self, after: datetime, limit: int) -> list[tuple[int, int, datetime]]:
        rows = self._read(sql.UNSYNCED_RUNS, [after, limit])
        return [(run_id, table_id, fire_at.astimezone(UTC)) for run_id, table_id, fire_at in rows]

    def overdue_runs(self, before: datetime, limit: int) -> list[int]:
        return [row[0] for row in self._read(sql.OVERDUE_RUNS, [before, limit])]

    def unpublished_events(self, before: datetime, limit: int) -> list[tuple[int, RunEvent]]:
        rows = self._read(sql.UNPUBLISHED_EVENTS, [before, limit])
        return [(event_id, RunEvent.from_detail(detail)) for event_id, detail in rows]

    def mark_published(self, event_ids: Sequence[int], at: datetime) -> None:
        if event_ids:
            self._outside([(sql.MARK_PUBLISHED, [at, list(event_ids)])], reads=False)

    def run_state(self, run_id: int) -> tuple[str, datetime | None] | None:
        rows = self._read(sql.RUN_STATE, [run_id])
        return (rows[0][0], utc(rows[0][1])) if rows else None

    def leftover_schedules(self, limit: int) -> list[tuple[int, str, datetime]]:
        rows = self._read(sql.LEFTOVER_SCHEDULES, [SCHEDULED, limit])
        return [(run_id, name, written.astimezone(UTC)) for run_id, name, written in rows]

    def tasks_to_check(self, now: datetime, limit: int) -> list[tuple[Task, datetime | None]]:
        rows = self._read(lifecycle.TASKS_TO_CHECK, [now, limit])
        return [(task_of(row[:-1]), utc(row[-1])) for row in rows]

    def postpone_checks(self, checks: Sequence[tuple[int, datetime]]) -> None:
        if checks:
            ids, times = [task_id for task_id, _ in checks], [at for _, at in checks]
            self._outside([(lifecycle.POSTPONE_CHECKS, [ids, times])], reads=False)

    def queued_tables(self, limit: int) -> list[int]:
        return [row[0] for row in self._read(lifecycle.QUEUED_TABLES, [limit])]

    def failed_reruns(self, limit: int) -> list[Rerun]:
        return [Rerun(*row) for row in self._read(lifecycle.FAILED_RERUNS, [limit])]

    def forget_schedules(self, deleted: Sequence[tuple[int, datetime]]) -> None:
        if deleted:
            ids, written = [run_id for run_id, _ in deleted], [at for _, at in deleted]
            self._outside([(sql.FORGET_SCHEDULES, [ids, written, SCHEDULED])], reads=False)

    def _read(self, statement: str, parameters: list[Any]) -> list[TupleRow]:
        return self._outside([(statement, parameters)], reads=True)

    def _outside(self, statements: list[tuple[str, list[Any]]], *, reads: bool) -> list[TupleRow]:
        """Statements outside :meth:`transact`: one alone in autocommit (its rows), several in one
        transaction. Sent again once, on a new connection, when the connection was lost: every caller's
        statements may be repeated (reads, and writes that set again what they set). Lost twice (or
        refused), :class:`Unavailable`: for a write (bookkeeping the sweep repeats), one whose outcome
        is unknown, as at COMMIT."""
        for last in (False, True):
            try:
                connection = self.connection
                if len(statements) == 1:
                    cursor = self._store.send(connection, *statements[0])
                    return cursor.fetchall() if cursor.description is not None else []
                self._store.send(connection, "BEGIN")
                for statement, parameters in statements:
                    self._store.send(connection, statement, parameters)
                self._store.send(connection, "COMMIT")
                return []
            except psycopg.Error as exc:
                if not self._is_lost(exc):
                    self._rollback()
                    raise
                self._drop()
                if last:
                    raise unavailable(committing=not reads, cause=exc) from exc
                logger.info("sending again on a new connection", extra={"reason": "connection lost"})
            except BaseException:
                self._rollback()
                raise
        raise AssertionError("unreachable")

    # --- the connection's fate --------------------------------------------------------------------

    def _is_lost(self, exc: psycopg.Error) -> bool:
        """The error is the connection's loss (or a failure to open one), not the statement's."""
        connection = self._connection
        return isinstance(exc, psycopg.OperationalError) and (connection is None or connection.closed)

    def _drop(self) -> None:
        """Close the lost connection; the next statement goes on a new one (not an idle one of the
        pool: whatever lost this one, a failover or a restart, may have lost them too)."""
        if self._connection is not None:
            self._store.pool.discard(self._connection)
            self._connection = None
        self._lost = True

    def _rollback(self) -> None:
        """End the transaction left open by an error, if the connection is still there; if even that
        fails, the connection is dropped (never reused in an unknown state)."""
        connection = self._connection
        if connection is None or connection.closed:
            return
        if connection.info.transaction_status == pq.TransactionStatus.IDLE:
            return  # the error came before BEGIN, or with the statement outside any transaction
        try:
            self._store.send(connection, "ROLLBACK")
        except Exception:
            self._drop()


def _retryable(exc: psycopg.Error) -> bool:
    if exc.sqlstate in _RETRYABLE:
        return True
    return isinstance(exc, errors.UniqueViolation) and exc.diag.constraint_name == sql.IDEMPOTENCY_INDEX
