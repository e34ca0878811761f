"""The SQLite store's transaction: the statements of one unit of work (see
:mod:`controller.db.sqlite_store` for the store and its retries, :mod:`controller.db.sqlite_statements`
for the statements)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from controller.core.catalog import Catalog
from controller.core.gates import Execution, Probe
from controller.core.keys import key_from_text
from controller.core.records import (
    APPROVAL_PENDING,
    Approval,
    NewExecution,
    NewRun,
    NewTask,
    StoredExecution,
    Task,
    Trigger,
)
from controller.core.runs import Run, RunChange
from controller.db import sqlite_lifecycle_statements as lifecycle
from controller.db import sqlite_statements as sql
from controller.db.catalog_store import load_catalog

Pair = tuple[int, str]


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

    def executions_by_idempotency_key(self, keys: set[str]) -> list[StoredExecution]:
        """The executions carrying these idempotency keys, whatever their table."""
        if not keys:
            return []
        rows = self.connection.execute(sql.EXECUTIONS_BY_KEY, {"keys": sorted(keys)})
        return [sql.stored_execution_of(row) for row in rows]

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
        """A pending task started with ``external_id`` (a task no longer pending is left as it is)."""
        parameters = {"b_run_id": run_id, "b_attempt": attempt, "b_alias": alias}
        started = {
            "b_external_id": external_id,
            "b_at": at,
            "b_check_at": check_at,
            "b_deadline_at": deadline_at,
        }
        self.connection.execute(sql.TASK_STARTED, parameters | started)

    def forget_tasks(self, run_id: int, attempt: int) -> None:
        """Delete an attempt's tasks that did not start."""
        self.connection.execute(lifecycle.FORGET_TASKS, {"run_id": run_id, "attempt": attempt})

    # --- backfills -----------------------------------------------------------------------------
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
        """Record a backfill and the runs it opened; its id."""
        row = {"table_id": table_id, "keys": keys, "already_open": already_open, "reason": reason}
        found = self.connection.execute(
            lifecycle.INSERT_BACKFILL, row | {"requested_by": by, "created_at": at}
        )
        backfill_id = cast(int, found.scalar_one())
        if run_ids:
            links = [{"backfill_id": backfill_id, "run_id": run_id} for run_id in run_ids]
            self.connection.execute(lifecycle.INSERT_BACKFILL_RUNS, links)
        return backfill_id

    # --- concurrency ---------------------------------------------------------------------------
    def busy_runs(self, table_id: int, *, lock: bool) -> list[int]:
        """The table's runs dispatching or running; no lock to take (BEGIN IMMEDIATE serialises)."""
        return [row[0] for row in self.connection.execute(lifecycle.BUSY_RUNS, {"table_id": table_id})]

    def queued_runs(self, table_id: int, limit: int) -> list[int]:
        """The table's queued runs, oldest first."""
        parameters = {"table_id": table_id, "limit": limit}
        return [row[0] for row in self.connection.execute(lifecycle.QUEUED_RUNS, parameters)]

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
        rows = [{"run_id": run_id, "status": APPROVAL_PENDING, "requested_at": at} for run_id in run_ids]
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
