"""What the services need from the outside world, as small interfaces: the database (a store, one
implementation per database, and the reads of the GET routes) and AWS (schedules, tasks, events).

Adapters implement them structurally (no adapter imports this module); the services receive them in
:class:`~controller.services.dependencies.Dependencies`. Every value crossing them is a core value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, TypeVar

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit, Rerun, ScheduleRequest, TaskRequest, TaskStatus
from controller.core.gates import Execution, Probe
from controller.core.keys import Key
from controller.core.plans import TableState
from controller.core.records import (
    Approval,
    BackfillDetail,
    ExecutionEntry,
    NewExecution,
    NewRun,
    NewTask,
    RunDetail,
    StoredExecution,
    Task,
    Trigger,
)
from controller.core.runs import Run, RunChange, RunEvent

T = TypeVar("T")
#: A run's (table id, key text): unique among open runs.
Pair = tuple[int, str]


class Transaction(Protocol):
    """The statements of one unit of work, inside its transaction. Reads marked "locked" hold their
    rows until commit (``FOR UPDATE`` on PostgreSQL; SQLite's writers are serialised anyway)."""

    def newest_revision(self) -> int | None:
        """The newest reconcile revision's id: the version stamp of the definitions."""
        ...

    def load_catalog(self, revision: int | None) -> Catalog:
        """The live definitions (read now, stamped ``revision``)."""
        ...

    def lock_gates(self, tables: Iterable[int], keys: Iterable[Pair] = ()) -> int | None:
        """Serialise gate decisions on whole tables and on single keys of tables; returns the newest
        reconcile revision (read in the same statement where the database allows)."""
        ...

    # executions
    def insert_executions(
        self, executions: Sequence[NewExecution], at: datetime, by: str | None
    ) -> list[int]:
        """Insert executions with their partition values; their ids in the order given."""
        ...

    def probe(
        self, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
    ) -> dict[str, list[Execution]]:
        """Executions answering the probes, by table name (one statement whatever the history)."""
        ...

    def executions_by_idempotency_key(self, keys: set[str]) -> list[StoredExecution]:
        """The executions carrying these idempotency keys, whatever their table: at most one per key
        (the database holds each key once)."""
        ...

    def runs_triggered_by(self, execution_ids: Sequence[int]) -> dict[int, list[Run]]:
        """The runs each execution triggered (execution id → runs)."""
        ...

    def trigger_partitions(self, run_id: int) -> list[tuple[str, dict[str, Any]]]:
        """(table name, partitions) of the executions that triggered a run, oldest first."""
        ...

    # runs
    def lock_run(self, run_id: int) -> Run | None:
        """A run, locked."""
        ...

    def lock_runs(self, run_ids: Iterable[int]) -> dict[int, Run]:
        """Runs by id, locked."""
        ...

    def lock_open_runs(self, pairs: Iterable[Pair]) -> dict[Pair, tuple[Run, int | None]]:
        """The open runs of these pairs, locked, each with its newest approval's id."""
        ...

    def run_of_key(self, table_id: int, partition_key: str, states: Sequence[str]) -> Run | None:
        """A run of (table, key) in one of ``states`` (at most one is open)."""
        ...

    def insert_runs(
        self,
        runs: Sequence[NewRun],
        triggers: Sequence[Trigger],
        now: datetime,
        *,
        manual: bool,
        reason: str | None,
    ) -> dict[Pair, Run]:
        """Create runs and record the triggers of new and existing runs; the new runs by pair."""
        ...

    def push_runs(self, changes: Sequence[dict[str, Any]]) -> None:
        """Set columns other than the state (``id`` and the same columns in every change)."""
        ...

    def apply(self, change: RunChange) -> bool:
        """Persist a state change with compare-and-set on ``change.expected``; False if the run moved."""
        ...

    def stuck_dispatching(self, before: datetime, limit: int) -> list[Run]:
        """Runs dispatching since before ``before``."""
        ...

    def table_name(self, table_id: int) -> str | None:
        """The name of a table, deleted or not."""
        ...

    # task dispatches
    def add_tasks(self, run: Run, tasks: Sequence[NewTask]) -> None:
        """Record a run's tasks as pending, for its current attempt."""
        ...

    def tasks_of(self, run_id: int, attempt: int) -> list[Task]:
        """The tasks of an attempt, in the order they finished (unfinished last), then recorded."""
        ...

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
        """A pending task started with ``external_id``; the sweep asks AWS about it from ``check_at``
        and stops it at ``deadline_at`` (DESIGN §8)."""
        ...

    def forget_tasks(self, run_id: int, attempt: int) -> None:
        """Delete an attempt's tasks, none of which started (its run queued again for its target's
        limit: the next claim records them again, with new tokens)."""
        ...

    # backfills
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
        ...

    # concurrency
    def busy_runs(self, table_id: int, *, lock: bool) -> list[int]:
        """The ids of the table's runs dispatching or running, by id; ``lock``: first take the
        table's slot lock, held until commit, so that two claims of its runs never both count a free
        slot (SQLite's writers are serialised anyway)."""
        ...

    def queued_runs(self, table_id: int, limit: int) -> list[int]:
        """The ids of the table's queued runs, oldest first (fire time, then id)."""
        ...

    def task_not_started(self, run_id: int, attempt: int, alias: str, error: str, at: datetime) -> None:
        """A pending task failed to start."""
        ...

    def lock_task(self, external_id: str) -> Task | None:
        """The task AWS knows as ``external_id``, locked."""
        ...

    def settle_task(self, task_id: int, succeeded: bool, error: str | None, at: datetime) -> bool:
        """A started task ended; False if it was not started (already settled)."""
        ...

    def settle_unfinished_tasks(
        self, run_ids: Sequence[int], status: str, error: str | None, at: datetime
    ) -> None:
        """Every pending or started task of these runs ends as ``status``."""
        ...

    # approvals
    def request_approvals(self, run_ids: Sequence[int], at: datetime) -> dict[int, int]:
        """A pending approval for each run (none twice); run id → its newest approval id."""
        ...

    def newest_approvals(self, run_ids: Sequence[int]) -> dict[int, int]:
        """The newest approval of each run that has one, pending or decided."""
        ...

    def lock_approval(self, approval_id: int) -> Approval | None:
        """An approval, locked."""
        ...

    def decide_approval(
        self, approval_id: int, status: str, by: str, at: datetime, comment: str | None
    ) -> bool:
        """Compare-and-set a pending approval to ``status``; False if it was decided meanwhile."""
        ...

    def cancel_pending_approvals(self, run_id: int, at: datetime) -> None:
        """The run's pending approval, if any, is cancelled."""
        ...


class SweepReads(Protocol):
    """What the sweep looks for, outside any transaction."""

    def unsynced_runs(self, after: datetime, limit: int) -> list[tuple[int, int, datetime]]:
        """(id, table id, fire time) of scheduled runs firing after ``after`` whose schedule is not
        written at their fire time."""
        ...

    def overdue_runs(self, before: datetime, limit: int) -> list[int]:
        """Scheduled runs due before ``before``."""
        ...

    def unpublished_events(self, before: datetime, limit: int) -> list[tuple[int, RunEvent]]:
        """(outbox id, event) of events written before ``before`` and not yet published, oldest first."""
        ...

    def mark_published(self, event_ids: Sequence[int], at: datetime) -> None:
        """Outbox rows published."""
        ...

    def run_state(self, run_id: int) -> tuple[str, datetime | None] | None:
        """A run's status and fire time as they are now."""
        ...

    def leftover_schedules(self, limit: int) -> list[tuple[int, str, datetime]]:
        """(run id, schedule name, fire time written) of runs no longer ``scheduled`` whose schedule
        was written and not consumed by a fire (cancelled, or written after the run moved on), by id."""
        ...

    def tasks_to_check(self, now: datetime, limit: int) -> list[tuple[Task, datetime | None]]:
        """Started tasks whose check time has come (the sweep asks AWS about them), oldest check
        first, each with its deadline."""
        ...

    def postpone_checks(self, checks: Sequence[tuple[int, datetime]]) -> None:
        """Ask about each started task (by id) again at its time: one statement, whatever the count."""
        ...

    def queued_tables(self, limit: int) -> list[int]:
        """The ids of tables that have queued runs."""
        ...

    def failed_reruns(self, limit: int) -> list[Rerun]:
        """Failed runs whose key must still run again (a trigger arrived while they were in
        progress, and they did not come back by themselves), oldest first."""
        ...

    def forget_schedules(self, deleted: Sequence[tuple[int, datetime]]) -> None:
        """The schedules of these (run id, fire time written) were deleted: forget them, only where
        that is still the schedule written (one written again meanwhile is another leftover) and the
        run is still not ``scheduled`` (one scheduled again keeps the schedule it needs)."""
        ...


class StoreSession(SweepReads, Protocol):
    """One database connection, held for a unit of work and what follows it."""

    def transact(self, work: Callable[[Transaction, AfterCommit], T]) -> tuple[T, AfterCommit]:
        """Run ``work`` in one transaction and write ``AfterCommit.events`` to the outbox with it;
        run it again from scratch after a serialization conflict or a connection lost before COMMIT.

        Raises :class:`~controller.core.errors.Unavailable` when the connection is lost while
        committing (the outcome is unknown) or on every try.
        """
        ...

    def record_done(self, synced: Sequence[ScheduleRequest], batch: str | None, now: datetime) -> None:
        """After commit, outside a transaction: mark the runs whose schedule was written (where that
        is still their fire time) and the outbox ``batch`` published, all or nothing."""
        ...


class Store(Protocol):
    """The runtime's database (the write path): PostgreSQL or SQLite, chosen once in wiring.

    ``listeners`` are called with (statement text, the connection it is sent on) before every
    statement the store sends, ``COMMIT`` included: how tests count statements and inject faults.
    """

    listeners: list[Callable[[str, Any], None]]

    def session(self) -> AbstractContextManager[StoreSession]:
        """A connection for a unit of work and its bookkeeping after commit."""
        ...

    def close(self) -> None:
        """Close every connection."""
        ...


class Scheduler(Protocol):
    def put(self, request: ScheduleRequest) -> None:
        """Create the schedule, or update it if it exists (idempotent)."""
        ...

    def delete(self, name: str) -> None:
        """Delete the schedule; a schedule that does not exist is not an error."""
        ...


class TaskStarter(Protocol):
    def start(self, request: TaskRequest) -> str:
        """Start the task; return its external id (JobRunId, executionArn, MessageId, request id).

        Raises :class:`~controller.core.effects.TaskStartError` when AWS refuses (``limited`` when
        the target's own concurrency limit refused it).
        """
        ...

    def status(self, type: str, target: str, external_id: str) -> TaskStatus | None:
        """Ask AWS how a started task is (Glue ``GetJobRun``, Step Functions ``DescribeExecution``);
        None for the kinds of task AWS cannot be asked about (SQS, Lambda)."""
        ...

    def stop(self, type: str, target: str, external_id: str) -> bool:
        """Stop a started task (Glue ``BatchStopJobRun``, Step Functions ``StopExecution``); False for
        the kinds that cannot be stopped (SQS, Lambda). Stopping a task that already ended is no error."""
        ...


class EventPublisher(Protocol):
    def publish(self, events: Sequence[RunEvent]) -> None:
        """Publish events (in batches as the service allows); raises if any entry failed."""
        ...


# The read port (the GET routes).


class Reads(Protocol):
    """The reads of the GET routes and of ``explain``: each in a read-only transaction of its own,
    with a constant number of statements whatever the history size."""

    def catalog(self) -> Catalog:
        """The live definitions, stamped with the newest reconcile revision."""
        ...

    def backfill(self, backfill_id: int) -> BackfillDetail | None:
        """A backfill, its table's name and its runs counted per state; None for an unknown one."""
        ...

    def definitions(self) -> tuple[dict[str, TableState], tuple[str, datetime] | None]:
        """The live definitions by name, and (Git revision, applied at) of the last reconcile."""
        ...

    def last_reconcile(self) -> tuple[str, str | None, datetime] | None:
        """(Git revision, who applied it, when) of the last reconcile, in one statement; None before any."""
        ...

    def table_exists(self, name: str) -> bool:
        """Whether the database ever had a table of this name (a deleted one keeps its history)."""
        ...

    def runs(
        self, table: str | None, status: str | None, limit: int, *, before: int | None = None
    ) -> list[tuple[Run, str, int | None]]:
        """The newest runs (of a table, in a state; older than run ``before``: the next page), newest
        first, each with its table name and its newest approval's id (pending or decided; None when
        it never needed one)."""
        ...

    def run_detail(self, run_id: int) -> RunDetail | None:
        """A run with its table name, its newest approval, its tasks (by attempt, then recorded) and
        the executions that triggered it (oldest first); None for an unknown run."""
        ...

    def newest_states(self, wanted: Sequence[tuple[int, str | None]]) -> dict[int, str]:
        """The state of the newest run of each table id (of the key text given with it, or of any
        key with None): one statement for them all. Tables without such a run are left out."""
        ...

    def triggers(self, run_ids: Sequence[int]) -> dict[int, list[tuple[int, str, Key]]]:
        """The executions that triggered each run (id, table name, partitions; oldest first): one
        statement for them all."""
        ...

    def runs_of_key(self, table_id: int, partition_key: str, limit: int) -> list[tuple[Run, Approval | None]]:
        """The last ``limit`` runs of (table, key), newest first, each with its newest approval."""
        ...

    def approvals(self, status: str | None, limit: int) -> list[tuple[Approval, str, Key]]:
        """The newest approvals (in a state), newest first, each with its run's table name and
        partitions."""
        ...

    def executions(self, table: str | None, limit: int) -> list[ExecutionEntry]:
        """The newest executions (of a table), newest first."""
        ...

    def executions_by_id(self, ids: Sequence[int]) -> dict[int, tuple[Key, str, datetime]]:
        """(partitions, source, registered at) of these executions, by id (unknown ids are left out)."""
        ...

    def probe(
        self, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
    ) -> dict[str, list[Execution]]:
        """Executions answering the probes, by table name (one statement whatever the history)."""
        ...
