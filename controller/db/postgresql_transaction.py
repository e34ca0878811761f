"""The statements of one unit of work on PostgreSQL, inside the transaction
:meth:`controller.db.postgresql_store.PostgresqlSession.transact` opened (the texts are in
:mod:`controller.db.postgresql_statements`). Each method sends one statement whatever the fan-out,
several only past :data:`~controller.db.postgresql_statements.MAX_PARAMETERS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from psycopg.rows import TupleRow

from controller.core.catalog import Catalog
from controller.core.gates import Execution, Probe
from controller.core.keys import key_from_text
from controller.core.records import (
    APPROVAL_CANCELLED,
    APPROVAL_PENDING,
    TASK_FAILED,
    TASK_PENDING,
    TASK_STARTED,
    TASK_SUCCEEDED,
    Approval,
    NewExecution,
    NewRun,
    NewTask,
    StoredExecution,
    Task,
    Trigger,
)
from controller.core.runs import (
    APPROVAL_STATES,
    IN_PROGRESS_STATES,
    OPEN_STATES,
    QUEUED,
    Run,
    RunChange,
    RunEvent,
)
from controller.db import postgresql_lifecycle_statements as lifecycle
from controller.db import postgresql_statements as sql
from controller.db.postgresql_connections import Connection, Listener, send

D = TypeVar("D", datetime, None)
#: A run's (table id, key text): unique among open runs.
Pair = tuple[int, str]
#: States of a task dispatch (``task_dispatches.status``).
assert {APPROVAL_PENDING, APPROVAL_CANCELLED} <= set(APPROVAL_STATES)


def utc(value: D) -> D:
    """A timestamp as read (in the session's time zone) as an aware UTC datetime."""
    return None if value is None else value.astimezone(UTC)


def _utc_all(row: Iterable[Any]) -> list[Any]:
    return [value.astimezone(UTC) if isinstance(value, datetime) else value for value in row]


def _run(row: Sequence[Any]) -> Run:
    """A run from a row of :data:`~controller.db.postgresql_statements.RUNS` (RUN_FIELDS, in order)."""
    return Run(*_utc_all(row))


def task_of(row: Sequence[Any]) -> Task:
    """A task from a row of :data:`~controller.db.postgresql_statements.TASKS`."""
    return Task(*_utc_all(row))


def _json(column: str, value: Any) -> Any:
    """A run column's value as a parameter: JSON columns as JSON text (cast to jsonb in the text)."""
    return json.dumps(value) if value is not None and sql.RUN_TYPES[column] == "jsonb" else value


class PostgresqlTransaction:
    """What a unit of work reads and writes, in its transaction on ``connection`` (the psycopg
    connection, exposed for tests: ``connection.info.backend_pid``). Reads said "locked" in the port
    use ``FOR UPDATE``: they hold their rows until commit."""

    def __init__(
        self,
        connection: Connection,
        listeners: list[Listener],
        load_catalog: Callable[[int | None], Catalog],
    ) -> None:
        self.connection = connection
        self._listeners = listeners
        self._load_catalog = load_catalog

    def _rows(self, statement: str, parameters: Sequence[Any]) -> list[TupleRow]:
        return send(self._listeners, self.connection, statement, parameters).fetchall()

    def _changed(self, statement: str, parameters: Sequence[Any]) -> int:
        return send(self._listeners, self.connection, statement, parameters).rowcount

    # --- definitions and gates --------------------------------------------------------------------

    def newest_revision(self) -> int | None:
        return cast("int | None", self._rows(sql.NEWEST_REVISION, ())[0][0])

    def load_catalog(self, revision: int | None) -> Catalog:
        return self._load_catalog(revision)

    def lock_gates(self, tables: Iterable[int], keys: Iterable[Pair] = ()) -> int | None:
        """Serialise gate decisions on whole tables and on single keys; returns the newest revision.

        Two registrations of different upstreams of one table must not both miss each other's execution
        (write skew): each takes the lock of what it decides before inserting and reading. A key lock
        also takes its table's lock in shared mode, so a whole-table lock waits for every key lock of
        that table and the reverse. Locks are taken in one order (tables by id, then keys).
        """
        whole = set(tables)
        keyed = sorted({(t, k) for t, k in keys if t not in whole})
        modes = dict.fromkeys(whole, sql.EXCLUSIVE) | {t: sql.SHARED for t, _ in keyed}
        locks: list[tuple[int, list[Any]]] = [(mode, [t]) for t, mode in sorted(modes.items())]
        locks += [(sql.KEY, [t, k]) for t, k in keyed]
        revision: int | None = None
        for number, batch in enumerate(sql.batched(locks, lambda lock: len(lock[1])) or [[]]):
            statement = sql.lock_statement(tuple(mode for mode, _ in batch))
            (row,) = self._rows(statement, [x for _, values in batch for x in values])
            if number == 0:  # read before any lock of a later batch; batches keep the lock order
                revision = row[0]
        return revision

    # --- executions -------------------------------------------------------------------------------

    def insert_executions(
        self, executions: Sequence[NewExecution], at: datetime, by: str | None
    ) -> list[int]:
        ids: list[int] = []
        for batch in sql.batched(executions, lambda e: 6 + 2 * len(e.values), reserved=2):
            parameters: list[Any] = []
            for e in batch:
                parameters += [e.table_id, e.partition_key, json.dumps(e.partitions), e.source]
                parameters += [e.run_id, e.idempotency_key]
            parameters += [at, by]
            parameters += [x for e in batch for pair in e.values for x in pair]
            statement = sql.insert_executions(tuple(len(e.values) for e in batch))
            ids += [row[0] for row in self._rows(statement, parameters)]
        return ids

    def probe(
        self, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
    ) -> dict[str, list[Execution]]:
        rows: dict[tuple[Any, ...], None] = {}  # each execution once, in the order found
        for batch in sql.batched(probes, lambda p: 1 if p.partition is None else 3):
            tables = [ids[p.table] for p in batch if p.partition is None]
            valued = [p for p in batch if p.partition is not None]
            parameters: list[Any] = [x for p in valued for x in (ids[p.table], p.partition, str(p.value))]
            statement = sql.probe_statement(len(valued), len(tables))
            rows.update(dict.fromkeys(self._rows(statement, [*parameters, *tables])))
        found: dict[str, list[Execution]] = {}
        for execution_id, table_id, key in rows:
            name = names.get(table_id)
            if name is not None:
                found.setdefault(name, []).append(Execution(execution_id, name, key_from_text(key)))
        return found

    def executions_by_idempotency_key(self, keys: set[str]) -> list[StoredExecution]:
        found: list[StoredExecution] = []
        for batch in sql.batched(sorted(keys), lambda _: 1):
            statement = sql.executions_by_idempotency_key(len(batch))
            found += [StoredExecution(*row) for row in self._rows(statement, batch)]
        return found

    def runs_triggered_by(self, execution_ids: Sequence[int]) -> dict[int, list[Run]]:
        triggered: dict[int, list[Run]] = {}
        if execution_ids:
            for row in self._rows(sql.RUNS_TRIGGERED_BY, [list(execution_ids)]):
                triggered.setdefault(row[0], []).append(_run(row[1:]))
        return triggered

    def trigger_partitions(self, run_id: int) -> list[tuple[str, dict[str, Any]]]:
        return [(name, partitions) for name, partitions in self._rows(sql.TRIGGER_PARTITIONS, [run_id])]

    # --- runs -------------------------------------------------------------------------------------

    def lock_run(self, run_id: int) -> Run | None:
        rows = self._rows(sql.LOCK_RUN, [run_id])
        return _run(rows[0]) if rows else None

    def lock_runs(self, run_ids: Iterable[int]) -> dict[int, Run]:
        wanted = list(run_ids)
        runs = [_run(row) for row in self._rows(sql.LOCK_RUNS, [wanted])] if wanted else []
        return {run.id: run for run in runs}

    def lock_open_runs(self, pairs: Iterable[Pair]) -> dict[Pair, tuple[Run, int | None]]:
        wanted = set(pairs)
        found: dict[Pair, tuple[Run, int | None]] = {}
        for batch in sql.batched(sorted(wanted), lambda _: 2):
            tables = list(dict.fromkeys(t for t, _ in batch))
            keys = list(dict.fromkeys(k for _, k in batch))
            for row in self._rows(sql.open_runs_for_update(len(tables), len(keys)), [*tables, *keys]):
                run = _run(row[:-1])
                if (run.table_id, run.partition_key) in wanted:  # the statement asks tables × keys
                    found[(run.table_id, run.partition_key)] = (run, row[-1])
        return found

    def run_of_key(self, table_id: int, partition_key: str, states: Sequence[str]) -> Run | None:
        if not states:
            return None
        statement = sql.run_of_key(only_open=set(states) <= set(OPEN_STATES))
        rows = self._rows(statement, [table_id, partition_key, list(states)])
        return _run(rows[0]) if rows else None

    def insert_runs(
        self,
        runs: Sequence[NewRun],
        triggers: Sequence[Trigger],
        now: datetime,
        *,
        manual: bool,
        reason: str | None,
    ) -> dict[Pair, Run]:
        """New runs with the triggers naming them, then the triggers of existing runs: one statement for
        a usual request. Rows are matched by (table id, key text), unique among open runs."""
        of_new: dict[Pair, list[Trigger]] = {}
        for t in triggers:
            if t.run_id is None:
                of_new.setdefault((t.table_id, t.partition_key), []).append(t)
        # A new run travels with the triggers that name it; triggers of existing runs go anywhere.
        items: list[tuple[NewRun | None, list[Trigger]]] = [
            (r, of_new.get((r.table_id, r.partition_key), [])) for r in runs
        ] + [(None, [t]) for t in triggers if t.run_id is not None]
        created: dict[Pair, Run] = {}
        for batch in sql.batched(items, lambda item: (8 if item[0] else 0) + 4 * len(item[1])):
            new = [r for r, _ in batch if r is not None]
            named = [t for _, ts in batch for t in ts]
            parameters: list[Any] = []
            for r in new:
                parameters += [r.table_id, r.partition_key, json.dumps(r.partitions), r.status]
                parameters += [manual, reason, now, r.fire_at]
            parameters += [x for t in named for x in (t.run_id, t.table_id, t.partition_key, t.execution_id)]
            cursor = send(
                self._listeners,
                self.connection,
                sql.insert_runs_and_triggers(len(new), len(named)),
                parameters,
            )
            for row in cursor.fetchall() if new else []:
                run = _run(row)
                created[(run.table_id, run.partition_key)] = run
        return created

    def push_runs(self, changes: Sequence[dict[str, Any]]) -> None:
        """Changes grouped by the columns they set (in any order): one statement per group."""
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for change in changes:
            groups.setdefault(tuple(sorted(c for c in change if c != "id")), []).append(change)
        for columns, group in groups.items():
            if columns:
                self._push_group(columns, group)

    def _push_group(self, columns: tuple[str, ...], changes: list[dict[str, Any]]) -> None:
        for batch in sql.batched(changes, lambda _: 1 + len(columns)):
            parameters = [
                x for change in batch for x in (change["id"], *(_json(c, change[c]) for c in columns))
            ]
            self._changed(sql.push_runs(columns, len(batch)), parameters)

    def apply(self, change: RunChange) -> bool:
        columns = tuple(change.values)
        parameters = [_json(c, v) for c, v in change.values.items()] + [change.run_id, change.expected]
        return self._changed(sql.apply_change(columns), parameters) == 1

    def stuck_dispatching(self, before: datetime, limit: int) -> list[Run]:
        return [_run(row) for row in self._rows(sql.STUCK_DISPATCHING, [before, limit])]

    def table_name(self, table_id: int) -> str | None:
        rows = self._rows(sql.TABLE_NAME, [table_id])
        return cast(str, rows[0][0]) if rows else None

    # --- task dispatches --------------------------------------------------------------------------

    def add_tasks(self, run: Run, tasks: Sequence[NewTask]) -> None:
        for batch in sql.batched(tasks, lambda _: 8):
            parameters = [
                x
                for t in batch
                for x in (
                    run.id,
                    run.attempt,
                    t.alias,
                    t.type,
                    t.target,
                    TASK_PENDING,
                    json.dumps(t.request),
                    t.token,
                )
            ]
            self._changed(sql.add_tasks(len(batch)), parameters)

    def tasks_of(self, run_id: int, attempt: int) -> list[Task]:
        return [task_of(row) for row in self._rows(sql.TASKS_OF, [run_id, attempt])]

    def task_started(
        self,
        run_id: int,
        attempt: int,
        alias: str,
        external_id: str,
        at: datetime,
        check_at: datetime | None = None,
        deadline_at: datetime | None = None,
    ) -> None:
        where = [run_id, attempt, alias, TASK_PENDING]
        self._changed(sql.TASK_STARTED, [TASK_STARTED, external_id, at, check_at, deadline_at, *where])

    def forget_tasks(self, run_id: int, attempt: int) -> None:
        self._changed(lifecycle.FORGET_TASKS, [run_id, attempt, [TASK_PENDING, TASK_FAILED]])

    # --- backfills --------------------------------------------------------------------------------

    def insert_backfill(
        self,
        table_id: int,
        keys: int,
        already_open: int,
        reason: str | None,
        by: str | None,
        at: datetime,
        run_ids: Sequence[int],
    ) -> int:
        [(backfill_id,)] = self._rows(
            lifecycle.INSERT_BACKFILL, [table_id, keys, already_open, reason, by, at]
        )
        if run_ids:
            self._changed(lifecycle.INSERT_BACKFILL_RUNS, [backfill_id, list(run_ids)])
        return cast(int, backfill_id)

    # --- concurrency ------------------------------------------------------------------------------

    def busy_runs(self, table_id: int, *, lock: bool) -> list[int]:
        if lock:  # its own statement: the read after it must see what the lock's holder committed
            self._rows(lifecycle.LOCK_SLOTS, [table_id])
        return [row[0] for row in self._rows(lifecycle.BUSY_RUNS, [table_id, list(IN_PROGRESS_STATES)])]

    def queued_runs(self, table_id: int, limit: int) -> list[int]:
        return [row[0] for row in self._rows(lifecycle.QUEUED_RUNS, [table_id, QUEUED, limit])]

    def task_not_started(self, run_id: int, attempt: int, alias: str, error: str, at: datetime) -> None:
        where = [run_id, attempt, alias, TASK_PENDING]
        self._changed(sql.TASK_NOT_STARTED, [TASK_FAILED, error, at, *where])

    def lock_task(self, external_id: str) -> Task | None:
        rows = self._rows(sql.LOCK_TASK, [external_id])
        return task_of(rows[0]) if rows else None

    def settle_task(self, task_id: int, succeeded: bool, error: str | None, at: datetime) -> bool:
        status, error = (TASK_SUCCEEDED, None) if succeeded else (TASK_FAILED, error)
        return self._changed(sql.SETTLE_TASK, [status, at, error, task_id, TASK_STARTED]) == 1

    def settle_unfinished_tasks(
        self, run_ids: Sequence[int], status: str, error: str | None, at: datetime
    ) -> None:
        if not run_ids:
            return
        given = [error] if error is not None else []  # no error given: each task keeps its own
        parameters = [status, at, *given, list(run_ids), [TASK_PENDING, TASK_STARTED]]
        self._changed(sql.settle_unfinished_tasks(error is not None), parameters)

    # --- approvals --------------------------------------------------------------------------------

    def request_approvals(self, run_ids: Sequence[int], at: datetime) -> dict[int, int]:
        if not run_ids:
            return {}
        rows = self._rows(sql.REQUEST_APPROVALS, [APPROVAL_PENDING, at, list(run_ids), list(run_ids)])
        return dict(rows)

    def newest_approvals(self, run_ids: Sequence[int]) -> dict[int, int]:
        if not run_ids:
            return {}
        return dict(self._rows(sql.NEWEST_APPROVALS, [list(run_ids)]))

    def lock_approval(self, approval_id: int) -> Approval | None:
        rows = self._rows(sql.LOCK_APPROVAL, [approval_id])
        return Approval(*_utc_all(rows[0])) if rows else None

    def decide_approval(
        self, approval_id: int, status: str, by: str, at: datetime, comment: str | None
    ) -> bool:
        parameters = [status, by, at, comment, approval_id, APPROVAL_PENDING]
        return self._changed(sql.DECIDE_APPROVAL, parameters) == 1

    def cancel_pending_approvals(self, run_id: int, at: datetime) -> None:
        parameters = [APPROVAL_CANCELLED, at, run_id, APPROVAL_PENDING]
        self._changed(sql.CANCEL_PENDING_APPROVALS, parameters)

    # --- the outbox -------------------------------------------------------------------------------

    def record_events(self, events: Sequence[RunEvent], batch: str) -> None:
        """Write run state changes to the outbox under ``batch`` (published after commit)."""
        for part in sql.batched(events, lambda _: 4):
            parameters = [x for e in part for x in (e.run_id, e.at, batch, json.dumps(e.detail()))]
            self._changed(sql.insert_events(len(part)), parameters)
