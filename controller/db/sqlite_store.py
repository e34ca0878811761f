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
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit, ScheduleRequest
from controller.core.errors import Unavailable
from controller.core.gates import Execution, Probe
from controller.core.keys import key_from_text
from controller.core.records import Approval, NewExecution, NewRun, NewTask, StoredExecution, Task, Trigger
from controller.core.runs import Run, RunChange, RunEvent
from controller.db import sqlite_statements as sql
from controller.db.base import utcnow
from controller.db.catalog_store import load_catalog
from controller.db.engine import READ_ONLY_OPTION

T = TypeVar("T")
R = TypeVar("R")
Pair = tuple[int, str]
Listener = Callable[[str, Any], None]
logger = logging.getLogger("flux_control.runtime")

#: Tries of a unit of work in all.
MAX_ATTEMPTS = 8
#: Tries of a unit of work whose connection was lost before COMMIT (then nothing was written and
#: running it again is safe), after the first one.
MAX_RECONNECTS = 2


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
        """A new connection of this store (its statements are forwarded to ``listeners``)."""
        connection = self.engine.connect()
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
                        raise _unavailable(committing) from exc
                elif not replay:
                    raise
                if attempt == MAX_ATTEMPTS:
                    raise
                logger.info(
                    "retrying the transaction",
                    extra={
                        "attempt": attempt,
                        "sqlstate": getattr(exc.orig, "sqlstate", None),  # None on SQLite
                        "reason": "connection lost" if lost else "idempotency key taken",
                    },
                )
                time.sleep(min(0.5, 0.01 * 2**attempt) * random.random())  # jitter, not crypto
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

    # --- connection handling -----------------------------------------------------------------------
    def _prepared(self, *, read_only: bool) -> Connection:
        """The connection, set to begin its next transaction deferred (reads) or IMMEDIATE (writes)."""
        connection = self.connection
        if connection.get_execution_options().get(READ_ONLY_OPTION, False) != read_only:
            connection.execution_options(**{READ_ONLY_OPTION: read_only})  # in place, for the engine's begin
        return connection

    def _once(self, statements: Callable[[Connection], R], *, read_only: bool) -> R:
        """``statements`` in one transaction, not retried (the sweep runs again anyway). A read ends
        with a rollback: it has nothing to commit."""
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


def _unavailable(committing: bool) -> Unavailable:
    if committing:
        return Unavailable(
            "the database connection was lost while committing: the change may or may not have been "
            "written. Repeating the request is safe for registrations that carry an idempotency_key; "
            "otherwise check first (GET /executions, GET /runs)."
        )
    return Unavailable("the database connection was lost; nothing was written. Repeat the request.")


class SqliteTransaction:
    """The statements of one unit of work, on ``connection`` inside its transaction.

    Reads the port calls "locked" are plain reads here: the transaction holds SQLite's write lock
    from ``BEGIN IMMEDIATE`` to COMMIT, so nothing else changes the rows meanwhile.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # --- definitions ---------------------------------------------------------------------------
    def newest_revision(self) -> int | None:
        """The newest reconcile revision's id: the version stamp of the definitions."""
        return cast("int | None", self.connection.execute(sql.NEWEST_REVISION).scalar())

    def load_catalog(self, revision: int | None) -> Catalog:
        """The live definitions, read now in this transaction and stamped ``revision``."""
        # Bound to the connection, the ORM session joins its transaction and leaves it open on close.
        with Session(bind=self.connection, join_transaction_mode="rollback_only") as session:
            return load_catalog(session, revision)

    def lock_gates(self, tables: Iterable[int], keys: Iterable[Pair] = ()) -> int | None:
        """The newest revision; no lock to take: SQLite's writers are serialised by BEGIN IMMEDIATE."""
        return self.newest_revision()

    # --- executions ----------------------------------------------------------------------------
    def insert_executions(
        self, executions: Sequence[NewExecution], at: datetime, by: str | None
    ) -> list[int]:
        """Insert executions with their partition values; their ids in the order given."""
        if not executions:
            return []
        ids = [
            row[0]
            for row in self.connection.execute(sql.INSERT_EXECUTIONS, sql.execution_rows(executions, at, by))
        ]
        value_rows = sql.value_rows(executions, ids)
        if value_rows:
            self.connection.execute(sql.INSERT_VALUES, value_rows)
        return ids

    def probe(
        self, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
    ) -> dict[str, list[Execution]]:
        """Executions answering the probes, by table name (executions of tables not in ``names``,
        deleted ones, are left out)."""
        found: dict[str, list[Execution]] = {}
        if not probes:
            return found
        for execution_id, table_id, key in self.connection.execute(sql.probe_query(probes, ids)):
            name = names.get(table_id)
            if name is not None:
                found.setdefault(name, []).append(Execution(execution_id, name, key_from_text(key)))
        return found

    def executions_by_idempotency_key(self, pairs: set[tuple[int, str]]) -> list[StoredExecution]:
        """Executions of these (table id, idempotency key) pairs."""
        if not pairs:
            return []
        parameters = {"keys": sorted({k for _, k in pairs}), "tables": sorted({t for t, _ in pairs})}
        rows = self.connection.execute(sql.EXECUTIONS_BY_KEY, parameters)
        return [sql.stored_execution_of(row) for row in rows if (row.table_id, row.idempotency_key) in pairs]

    def runs_triggered_by(self, execution_ids: Sequence[int]) -> dict[int, list[Run]]:
        """The runs each execution triggered (execution id → runs, oldest first)."""
        found: dict[int, list[Run]] = {}
        if execution_ids:
            for row in self.connection.execute(sql.RUNS_TRIGGERED_BY, {"ids": list(execution_ids)}):
                found.setdefault(row.execution_id, []).append(sql.run_of(row))
        return found

    def trigger_partitions(self, run_id: int) -> list[tuple[str, dict[str, Any]]]:
        """(table name, partitions) of the executions that triggered a run, oldest first."""
        rows = self.connection.execute(sql.TRIGGER_PARTITIONS, {"run_id": run_id})
        return [(name, partitions) for name, partitions in rows]

    # --- runs ----------------------------------------------------------------------------------
    def lock_run(self, run_id: int) -> Run | None:
        """A run (None: no such run)."""
        row = self.connection.execute(sql.RUN_BY_ID, {"run_id": run_id}).first()
        return None if row is None else sql.run_of(row)

    def lock_runs(self, run_ids: Iterable[int]) -> dict[int, Run]:
        """Runs by id (unknown ids are missing)."""
        wanted = list(run_ids)
        if not wanted:
            return {}
        runs = (sql.run_of(row) for row in self.connection.execute(sql.RUNS_BY_ID, {"ids": wanted}))
        return {run.id: run for run in runs}

    def lock_open_runs(self, pairs: Iterable[Pair]) -> dict[Pair, tuple[Run, int | None]]:
        """The open runs of these (table id, key text) pairs, each with its newest approval's id."""
        wanted = set(pairs)
        if not wanted:
            return {}
        parameters = {"tables": sorted({t for t, _ in wanted}), "keys": sorted({k for _, k in wanted})}
        found: dict[Pair, tuple[Run, int | None]] = {}
        for row in self.connection.execute(sql.OPEN_RUNS, parameters):
            pair = (row.table_id, row.partition_key)
            if pair in wanted:
                found[pair] = (sql.run_of(row), row.approval)
        return found

    def run_of_key(self, table_id: int, partition_key: str, states: Sequence[str]) -> Run | None:
        """The first run of (table, key) in one of ``states`` (at most one is open)."""
        parameters = {"table_id": table_id, "key": partition_key, "states": list(states)}
        row = self.connection.execute(sql.RUN_OF_KEY, parameters).first()
        return None if row is None else sql.run_of(row)

    def insert_runs(
        self,
        runs: Sequence[NewRun],
        triggers: Sequence[Trigger],
        now: datetime,
        *,
        manual: bool,
        reason: str | None,
    ) -> dict[Pair, Run]:
        """Create runs (attempt 1, triggered now) and record the triggers of new and existing runs
        (a trigger recorded before is kept once); the new runs by (table id, key text)."""
        inserted: dict[Pair, Run] = {}
        if runs:
            rows = sql.run_rows(runs, now, manual, reason)
            created = (sql.run_of(row) for row in self.connection.execute(sql.INSERT_RUNS, rows))
            inserted = {(run.table_id, run.partition_key): run for run in created}
        trigger_rows = [
            {
                "run_id": t.run_id if t.run_id is not None else inserted[(t.table_id, t.partition_key)].id,
                "execution_id": t.execution_id,
            }
            for t in triggers
        ]
        if trigger_rows:
            self.connection.execute(sql.INSERT_TRIGGERS, trigger_rows)
        return inserted

    def push_runs(self, changes: Sequence[dict[str, Any]]) -> None:
        """Set columns other than the state, by ``id``: one executemany per set of columns."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for change in changes:
            columns = tuple(sorted(name for name in change if name != "id"))
            groups.setdefault(columns, []).append({f"b_{name}": value for name, value in change.items()})
        for columns, rows in groups.items():
            if columns:
                self.connection.execute(sql.push_runs(columns), rows)

    def apply(self, change: RunChange) -> bool:
        """Write ``change`` provided the run is still ``change.expected``; False if it moved. The
        event is the caller's to record."""
        columns = tuple(sorted(change.values))
        parameters = {f"b_{name}": value for name, value in change.values.items()}
        parameters |= {"b_id": change.run_id, "b_expected": change.expected}
        return self.connection.execute(sql.apply_change(columns), parameters).rowcount == 1

    def stuck_dispatching(self, before: datetime, limit: int) -> list[Run]:
        """Runs dispatching since ``before`` or earlier (last changed then)."""
        rows = self.connection.execute(sql.STUCK_DISPATCHING, {"before": before, "limit": limit})
        return [sql.run_of(row) for row in rows]

    def table_name(self, table_id: int) -> str | None:
        """The name of a table, deleted or not."""
        return cast("str | None", self.connection.execute(sql.TABLE_NAME, {"table_id": table_id}).scalar())

    # --- task dispatches -----------------------------------------------------------------------
    def add_tasks(self, run: Run, tasks: Sequence[NewTask]) -> None:
        """Record a run's tasks as pending, for its current attempt."""
        rows = sql.task_rows(run, tasks)
        if rows:
            self.connection.execute(sql.INSERT_TASKS, rows)

    def tasks_of(self, run_id: int, attempt: int) -> list[Task]:
        """The tasks of an attempt, in the order they finished (unfinished last), then recorded."""
        rows = self.connection.execute(sql.TASKS_OF, {"run_id": run_id, "attempt": attempt})
        return [sql.task_of(row) for row in rows]

    def task_started(self, run_id: int, attempt: int, alias: str, external_id: str, at: datetime) -> None:
        """A pending task started with ``external_id`` (a task no longer pending is left as it is)."""
        parameters = {"b_run_id": run_id, "b_attempt": attempt, "b_alias": alias}
        self.connection.execute(sql.TASK_STARTED, parameters | {"b_external_id": external_id, "b_at": at})

    def task_not_started(self, run_id: int, attempt: int, alias: str, error: str, at: datetime) -> None:
        """A pending task failed to start."""
        parameters = {"b_run_id": run_id, "b_attempt": attempt, "b_alias": alias}
        self.connection.execute(sql.TASK_NOT_STARTED, parameters | {"b_error": error, "b_at": at})

    def lock_task(self, external_id: str) -> Task | None:
        """The task AWS knows as ``external_id``."""
        row = self.connection.execute(sql.TASK_BY_EXTERNAL_ID, {"external_id": external_id}).first()
        return None if row is None else sql.task_of(row)

    def settle_task(self, task_id: int, succeeded: bool, error: str | None, at: datetime) -> bool:
        """A started task ended (its error kept only on failure); False if it was not started."""
        parameters = {
            "b_id": task_id,
            "b_status": "succeeded" if succeeded else "failed",
            "b_at": at,
            "b_error": None if succeeded else error,
        }
        return self.connection.execute(sql.SETTLE_TASK, parameters).rowcount == 1

    def settle_unfinished_tasks(
        self, run_ids: Sequence[int], status: str, error: str | None, at: datetime
    ) -> None:
        """Every pending or started task of these runs ends as ``status`` (with ``error`` if given)."""
        if not run_ids:
            return
        parameters = {"b_run_ids": list(run_ids), "b_status": status, "b_at": at}
        if error is None:
            self.connection.execute(sql.SETTLE_UNFINISHED, parameters)
        else:
            self.connection.execute(sql.SETTLE_UNFINISHED_WITH_ERROR, parameters | {"b_error": error})

    # --- approvals -----------------------------------------------------------------------------
    def request_approvals(self, run_ids: Sequence[int], at: datetime) -> dict[int, int]:
        """A pending approval for each run (none twice); run id → its newest approval id."""
        if not run_ids:
            return {}
        rows = [{"run_id": run_id, "status": "pending", "requested_at": at} for run_id in run_ids]
        self.connection.execute(sql.INSERT_APPROVALS, rows)
        return self.newest_approvals(run_ids)

    def newest_approvals(self, run_ids: Sequence[int]) -> dict[int, int]:
        """The newest approval of each run that has one, pending or decided."""
        if not run_ids:
            return {}
        rows = self.connection.execute(sql.NEWEST_APPROVALS, {"run_ids": list(run_ids)})
        return {int(run_id): int(approval_id) for run_id, approval_id in rows}

    def lock_approval(self, approval_id: int) -> Approval | None:
        """An approval (None: no such approval)."""
        row = self.connection.execute(sql.APPROVAL_BY_ID, {"approval_id": approval_id}).first()
        return None if row is None else sql.approval_of(row)

    def decide_approval(
        self, approval_id: int, status: str, by: str, at: datetime, comment: str | None
    ) -> bool:
        """Compare-and-set a pending approval to ``status``; False if it was decided meanwhile."""
        parameters = {"b_id": approval_id, "b_status": status, "b_by": by, "b_at": at, "b_comment": comment}
        return self.connection.execute(sql.DECIDE_APPROVAL, parameters).rowcount == 1

    def cancel_pending_approvals(self, run_id: int, at: datetime) -> None:
        """The run's pending approval, if any, is cancelled."""
        self.connection.execute(sql.CANCEL_PENDING_APPROVALS, {"b_run_id": run_id, "b_at": at})
