"""An in-memory store for the services' tests: no database, no SQLAlchemy, only plain Python data.

:class:`MemoryStore` implements, structurally, the write-path ports of
:mod:`controller.services.ports` (``Store``, ``StoreSession`` with the sweep's reads, ``Transaction``)
and :class:`MemoryReads` the read port (``Reads``) on the same data, like cosmicpython's
``FakeRepository`` and ``FakeUnitOfWork``. They mirror the semantics of
:mod:`controller.db.sqlite_store` (with :mod:`controller.db.sqlite_statements`) and
:class:`controller.db.reads.SqlReads`:

- a unit of work (:meth:`MemorySession.transact`) runs on a copy of the data, published only when
  the work returns (with its events written to the outbox under the batch of a fresh
  :class:`~controller.core.effects.AfterCommit`); an exception leaves the data as it was;
- one :class:`threading.RLock` serialises every write, as SQLite's ``BEGIN IMMEDIATE`` does; a
  unit of work started inside another on the same thread is refused (on SQLite it would wait for
  itself);
- the rules the databases enforce by index or foreign key raise :class:`IntegrityViolation` inside
  the transaction (at most one open run per (table, key), one pending approval per run, one task
  per (run, attempt, alias), an idempotency key used once whatever the table, references to rows
  that exist), so that a bug in the services shows up instead of being absorbed;
- the definitions are whatever the test gave :meth:`MemoryStore.define`, each call one reconcile
  revision.

``listeners`` are called with (the name of the operation, ``None``) before every operation and with
``"COMMIT"`` before a unit of work commits: a listener that raises makes the operation fail there
(:class:`ConnectionLost` plays a connection lost at that point, as the real stores see it).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit, Rerun, ScheduleRequest
from controller.core.gates import Execution, Graph, Probe
from controller.core.keys import Key, key_from_text
from controller.core.plans import TableState, state_of
from controller.core.records import (
    Approval,
    Backfill,
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
from controller.core.runs import (
    DISPATCHING,
    FAILED,
    IN_PROGRESS_STATES,
    OPEN_STATES,
    QUEUED,
    SCHEDULED,
    Run,
    RunChange,
    RunEvent,
)
from controller.core.specs import TableSpec
from controller.db.retries import MAX_RECONNECTS, unavailable  # the real stores' policy (no driver)

if TYPE_CHECKING:
    from controller.services import ports

T = TypeVar("T")
#: A run's (table id, key text): unique among open runs.
Pair = tuple[int, str]
Listener = Callable[[str, Any], None]


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


class IntegrityViolation(Exception):
    """A write the databases would refuse (a unique index or a foreign key): a bug in the caller."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule


class ConnectionLost(Exception):
    """Raised by a listener to play a connection lost at that statement: before ``COMMIT`` the unit
    of work runs again from scratch, at ``COMMIT`` it fails with :class:`Unavailable`."""


# --- the rows ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One row of ``executions`` with its ``execution_values`` (name → text, None when omitted)."""

    id: int
    table_id: int
    partition_key: str
    partitions: Key
    source: str
    run_id: int | None
    idempotency_key: str | None
    registered_at: datetime
    registered_by: str | None
    values: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One row of ``run_events``: an event written with its change, published after commit."""

    id: int
    run_id: int
    created_at: datetime
    batch: str
    detail: dict[str, Any]
    published_at: datetime | None = None

    @property
    def event(self) -> RunEvent:
        return RunEvent.from_detail(self.detail)


@dataclass
class Tables:
    """Every row of the runtime's tables: immutable records by id. Copied (shallowly: the records
    are frozen) for each unit of work; equal copies mean nothing was written."""

    runs: dict[int, Run] = field(default_factory=dict)
    executions: dict[int, ExecutionRecord] = field(default_factory=dict)
    #: (run id, execution id) pairs of ``run_triggers``, in the order recorded.
    triggers: dict[tuple[int, int], None] = field(default_factory=dict)
    tasks: dict[int, Task] = field(default_factory=dict)
    #: The request each task dispatch was recorded with (``task_dispatches.request``).
    task_requests: dict[int, dict[str, Any]] = field(default_factory=dict)
    approvals: dict[int, Approval] = field(default_factory=dict)
    outbox: dict[int, OutboxRecord] = field(default_factory=dict)
    #: The last id given per kind of row.
    last_ids: dict[str, int] = field(default_factory=dict)
    #: (check_at, deadline_at) of each started task (``task_dispatches.check_at``, ``deadline_at``).
    task_checks: dict[int, tuple[datetime | None, datetime | None]] = field(default_factory=dict)
    backfills: dict[int, Backfill] = field(default_factory=dict)
    #: The runs each backfill opened (``backfill_runs``).
    backfill_runs: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def copy(self) -> Tables:
        return Tables(
            dict(self.runs),
            dict(self.executions),
            dict(self.triggers),
            dict(self.tasks),
            dict(self.task_requests),
            dict(self.approvals),
            dict(self.outbox),
            dict(self.last_ids),
            dict(self.task_checks),
            dict(self.backfills),
            dict(self.backfill_runs),
        )

    def next_id(self, kind: str) -> int:
        self.last_ids[kind] = self.last_ids.get(kind, 0) + 1
        return self.last_ids[kind]

    def newest_approvals(self, run_ids: Iterable[int]) -> dict[int, int]:
        wanted = set(run_ids)
        found: dict[int, int] = {}
        for approval in self.approvals.values():
            if approval.run_id in wanted:
                found[approval.run_id] = max(found.get(approval.run_id, 0), approval.id)
        return found


@dataclass(frozen=True)
class Definitions:
    """The reconciled definitions: every table name ever defined with its id, the live specs, and
    the newest revision (None before the first :meth:`MemoryStore.define`)."""

    ids: dict[str, int] = field(default_factory=dict)
    live: dict[str, TableSpec] = field(default_factory=dict)
    revision: int | None = None
    #: (Git revision, applied at) of the newest revision.
    stamp: tuple[str, datetime] | None = None

    def names(self) -> dict[int, str]:
        return {table_id: name for name, table_id in self.ids.items()}

    def catalog(self, revision: int | None) -> Catalog:
        ids = {name: self.ids[name] for name in self.live}
        return Catalog(Graph(self.live.values()), ids, {v: k for k, v in ids.items()}, revision)


def _fresh(run: Run) -> Run:
    """A run as a read returns it: its own partitions (a caller changing them changes no row)."""
    return replace(run, partitions=dict(run.partitions))


def _tasks_in_finishing_order(tasks: Iterable[Task]) -> list[Task]:
    """Finished first (by finishing time), unfinished last, then in the order recorded."""
    return sorted(
        tasks,
        key=lambda t: (t.finished_at is None, t.finished_at.timestamp() if t.finished_at else 0.0, t.id),
    )


def _probe(
    data: Tables, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
) -> dict[str, list[Execution]]:
    """Executions answering the probes, by table name, as ``probe_query``: a valued probe matches an
    execution whose stored value of the partition is the probe's or NULL (omitted); a probe without
    a partition matches every execution of the table; executions of tables not in ``names`` are left
    out."""
    found: dict[str, list[Execution]] = {}
    if not probes:
        return found
    whole = {ids[p.table] for p in probes if p.partition is None}
    valued = {(ids[p.table], p.partition, str(p.value)) for p in probes if p.partition is not None}
    for execution in data.executions.values():
        stored = dict(execution.values)
        hit = execution.table_id in whole or any(
            table_id == execution.table_id and name in stored and stored[name] in (None, value)
            for table_id, name, value in valued
        )
        name = names.get(execution.table_id)
        if hit and name is not None:
            found.setdefault(name, []).append(
                Execution(execution.id, name, key_from_text(execution.partition_key))
            )
    return found


# --- the store ----------------------------------------------------------------------------------------
class MemoryStore:
    """The runtime's database in memory (the write path): definitions, runs, executions, tasks,
    approvals and the outbox, changed only by units of work, :meth:`define` and the bookkeeping after
    commit. ``clock`` dates outbox rows of events without a time (the real stores use the wall clock).
    """

    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.listeners: list[Listener] = []
        self.clock = clock
        self._lock = threading.RLock()
        self._local = threading.local()
        self._data = Tables()
        self._definitions = Definitions()
        self._open_sessions = 0
        self._closed = False

    # --- the port ---------------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[MemorySession]:
        """A session for a unit of work and its bookkeeping after commit; unusable once closed."""
        if self._closed:
            raise RuntimeError("the store is closed")
        session = MemorySession(self)
        with self._lock:
            self._open_sessions += 1
        try:
            yield session
        finally:
            session.closed = True
            with self._lock:
                self._open_sessions -= 1

    def close(self) -> None:
        """No new session after this (the data stays readable for assertions)."""
        self._closed = True

    # --- what tests give and look at -------------------------------------------------------------------
    def define(self, specs: Sequence[TableSpec], *, git_revision: str | None = None) -> Catalog:
        """Reconcile to exactly ``specs``: new names get ids, tables left out are deleted (their ids and
        names stay, for history); one new revision. Returns the catalog now live."""
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"table names defined twice: {sorted({n for n in names if names.count(n) > 1})}")
        with self._writing("define"):
            old = self._definitions
            ids = dict(old.ids)
            for name in names:
                if name not in ids:
                    ids[name] = max(ids.values(), default=0) + 1
            revision = (old.revision or 0) + 1
            stamp = (git_revision or f"memory-{revision}", self.clock())
            self._definitions = Definitions(ids, {s.name: s for s in specs}, revision, stamp)
            return self._definitions.catalog(revision)

    @property
    def definitions(self) -> Definitions:
        """The definitions as the last :meth:`define` left them."""
        with self._lock:
            return self._definitions

    def snapshot(self) -> Tables:
        """A copy of every committed row: compare two snapshots to see whether anything was written."""
        with self._lock:
            return self._data.copy()

    @property
    def open_sessions(self) -> int:
        """Sessions currently open (every service closes the ones it opens)."""
        with self._lock:
            return self._open_sessions

    def run(self, run_id: int) -> Run:
        """A committed run (KeyError when there is none)."""
        with self._lock:
            return _fresh(self._data.runs[run_id])

    def runs(self) -> list[Run]:
        """Every committed run, oldest first."""
        with self._lock:
            return [_fresh(run) for run in self._data.runs.values()]

    def executions(self) -> list[ExecutionRecord]:
        """Every committed execution, oldest first."""
        with self._lock:
            return list(self._data.executions.values())

    def tasks(self, run_id: int | None = None) -> list[Task]:
        """Every committed task dispatch (of one run), in the order recorded."""
        with self._lock:
            return [t for t in self._data.tasks.values() if run_id is None or t.run_id == run_id]

    def approvals(self, run_id: int | None = None) -> list[Approval]:
        """Every committed approval (of one run), oldest first."""
        with self._lock:
            return [a for a in self._data.approvals.values() if run_id is None or a.run_id == run_id]

    def outbox(self) -> list[OutboxRecord]:
        """Every committed outbox row, oldest first."""
        with self._lock:
            return list(self._data.outbox.values())

    def triggers(self, run_id: int) -> list[int]:
        """The executions recorded as triggers of a run, in the order recorded."""
        with self._lock:
            return [e for r, e in self._data.triggers if r == run_id]

    # --- machinery ---------------------------------------------------------------------------------
    def notify(self, statement: str) -> None:
        """Call every listener with an operation about to run."""
        for listener in list(self.listeners):
            listener(statement, None)

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Hold the writers' lock; refuse a write inside a unit of work of the same thread."""
        with self._lock:
            if getattr(self._local, "depth", 0):
                raise RuntimeError(f"{what} inside a unit of work: on SQLite it would wait for itself")
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0

    def commit_with(self, what: str, change: Callable[[Tables], T]) -> T:
        """``change`` on a copy of the data, published when it returns (one write transaction)."""
        with self._writing(what):
            data = self._data.copy()
            result = change(data)
            self.notify("COMMIT")
            self._data = data
            return result

    def read_with(self, what: str, read: Callable[[Tables, Definitions], T]) -> T:
        """``read`` on the committed data (a short read-only transaction)."""
        with self._lock:
            self.notify(what)
            return read(self._data, self._definitions)


class MemorySession:
    """A "connection" of a :class:`MemoryStore`: units of work, the bookkeeping after them and the
    sweep's reads, each on the committed data."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.closed = False

    def _check(self) -> MemoryStore:
        if self.closed:
            raise RuntimeError("the session is closed")
        return self._store

    def transact(self, work: Callable[[MemoryTransaction, AfterCommit], T]) -> tuple[T, AfterCommit]:
        """Run ``work`` on a copy of the data with a fresh :class:`AfterCommit`, write its events to the
        outbox under its batch, then publish the copy; an exception publishes nothing.

        A :class:`ConnectionLost` before ``COMMIT`` runs the work again from scratch (at most
        :data:`MAX_RECONNECTS` times); at ``COMMIT``, or once too often, it raises :class:`Unavailable`.
        """
        store = self._check()
        reconnects = 0
        while True:
            after = AfterCommit()
            committing = False
            with store._writing("a unit of work"):
                data = store._data.copy()
                tx = MemoryTransaction(store, data)
                try:
                    result = work(tx, after)
                    tx.write_events(after.events, after.batch)
                    committing = True
                    store.notify("COMMIT")
                except ConnectionLost as exc:
                    reconnects += 1
                    if committing or reconnects > MAX_RECONNECTS:
                        raise unavailable(committing) from exc
                    continue
                finally:
                    tx.closed = True
                store._data = data
            return result, after

    def record_done(self, synced: Sequence[ScheduleRequest], batch: str | None, now: datetime) -> None:
        """Mark the runs whose schedule was written (where that is still their fire time) and the
        outbox ``batch`` published, all or nothing; nothing to record: no write."""
        if not synced and batch is None:
            return

        def mark(data: Tables) -> None:
            for request in synced:
                run = data.runs.get(request.run_id)
                if run is not None and run.fire_at == request.fire_at:
                    data.runs[run.id] = replace(
                        run, scheduled_fire_at=request.fire_at, schedule_name=request.name
                    )
            if batch is not None:
                for row in list(data.outbox.values()):
                    if row.batch == batch:
                        data.outbox[row.id] = replace(row, published_at=now)

        self._check().commit_with("record_done", mark)

    # --- the sweep's reads -------------------------------------------------------------------------
    def unsynced_runs(self, after: datetime, limit: int) -> list[tuple[int, int, datetime]]:
        """(id, table id, fire time) of scheduled runs firing after ``after`` whose schedule was not
        written at their fire time, by id."""

        def read(data: Tables, _: Definitions) -> list[tuple[int, int, datetime]]:
            return [
                (run.id, run.table_id, run.fire_at)
                for run in sorted(data.runs.values(), key=lambda r: r.id)
                if run.status == SCHEDULED
                and run.fire_at is not None
                and run.fire_at > after
                and run.scheduled_fire_at != run.fire_at
            ][:limit]

        return self._check().read_with("unsynced_runs", read)

    def overdue_runs(self, before: datetime, limit: int) -> list[int]:
        """Scheduled runs due at or before ``before``, by id."""

        def read(data: Tables, _: Definitions) -> list[int]:
            return [
                run.id
                for run in sorted(data.runs.values(), key=lambda r: r.id)
                if run.status == SCHEDULED and run.fire_at is not None and run.fire_at <= before
            ][:limit]

        return self._check().read_with("overdue_runs", read)

    def unpublished_events(self, before: datetime, limit: int) -> list[tuple[int, RunEvent]]:
        """(outbox id, event) of events written at or before ``before`` and not published, oldest first."""

        def read(data: Tables, _: Definitions) -> list[tuple[int, RunEvent]]:
            rows = sorted(data.outbox.values(), key=lambda r: r.id)
            return [(r.id, r.event) for r in rows if r.published_at is None and r.created_at <= before][
                :limit
            ]

        return self._check().read_with("unpublished_events", read)

    def mark_published(self, event_ids: Sequence[int], at: datetime) -> None:
        """Outbox rows published at ``at``."""
        if not event_ids:
            return

        def mark(data: Tables) -> None:
            for event_id in event_ids:
                row = data.outbox.get(event_id)
                if row is not None:
                    data.outbox[event_id] = replace(row, published_at=at)

        self._check().commit_with("mark_published", mark)

    def leftover_schedules(self, limit: int) -> list[tuple[int, str, datetime]]:
        """(run id, schedule name, fire time written) of runs no longer scheduled holding a written
        schedule, by id."""

        def read(data: Tables, _: Definitions) -> list[tuple[int, str, datetime]]:
            return [
                (run.id, run.schedule_name, run.scheduled_fire_at)
                for run in sorted(data.runs.values(), key=lambda r: r.id)
                if run.status != SCHEDULED and run.scheduled_fire_at is not None and run.schedule_name
            ][:limit]

        return self._check().read_with("leftover_schedules", read)

    def tasks_to_check(self, now: datetime, limit: int) -> list[tuple[Task, datetime | None]]:
        """Started tasks whose check time has come, oldest check first, with their deadlines."""

        def read(data: Tables, _: Definitions) -> list[tuple[Task, datetime | None]]:
            due = [
                (check_at, task.id)
                for task in data.tasks.values()
                if task.status == "started"
                for check_at, _deadline in [data.task_checks.get(task.id, (None, None))]
                if check_at is not None and check_at <= now
            ]
            return [(data.tasks[i], data.task_checks[i][1]) for _, i in sorted(due)[:limit]]

        return self._check().read_with("tasks_to_check", read)

    def postpone_checks(self, checks: Sequence[tuple[int, datetime]]) -> None:
        """Ask about each task (by id) again at its time."""

        def postpone(data: Tables) -> None:
            for task_id, check_at in checks:
                if task_id in data.tasks:
                    deadline = data.task_checks.get(task_id, (None, None))[1]
                    data.task_checks[task_id] = (check_at, deadline)

        if checks:
            self._check().commit_with("postpone_checks", postpone)

    def queued_tables(self, limit: int) -> list[int]:
        """Tables with queued runs."""

        def read(data: Tables, _: Definitions) -> list[int]:
            return sorted({r.table_id for r in data.runs.values() if r.status == QUEUED})[:limit]

        return self._check().read_with("queued_tables", read)

    def failed_reruns(self, limit: int) -> list[Rerun]:
        """Failed runs whose key must still run again, oldest first."""

        def read(data: Tables, _: Definitions) -> list[Rerun]:
            wanting = sorted(r.id for r in data.runs.values() if r.status == FAILED and r.rerun_requested)
            return [Rerun(i, data.runs[i].table_id, data.runs[i].partition_key) for i in wanting[:limit]]

        return self._check().read_with("failed_reruns", read)

    def forget_schedules(self, deleted: Sequence[tuple[int, datetime]]) -> None:
        """The schedules of these runs were deleted (where still the one written, the run not scheduled)."""
        if not deleted:
            return

        def forget(data: Tables) -> None:
            for run_id, written in deleted:
                run = data.runs.get(run_id)
                if run is not None and run.status != SCHEDULED and run.scheduled_fire_at == written:
                    data.runs[run_id] = replace(run, scheduled_fire_at=None)  # no index involved

        self._check().commit_with("forget_schedules", forget)

    def run_state(self, run_id: int) -> tuple[str, datetime | None] | None:
        """A run's status and fire time as they are now (None: no such run)."""

        def read(data: Tables, _: Definitions) -> tuple[str, datetime | None] | None:
            run = data.runs.get(run_id)
            return None if run is None else (run.status, run.fire_at)

        return self._check().read_with("run_state", read)


class MemoryTransaction:
    """The operations of one unit of work, on its own copy of the data (see
    :meth:`MemorySession.transact`). "Locked" reads are plain reads: the writers' lock is held to the
    end. Unusable once the unit of work is over."""

    def __init__(self, store: MemoryStore, data: Tables) -> None:
        self._store = store
        self._tables = data
        self.closed = False

    def _use(self, statement: str) -> Tables:
        if self.closed:
            raise RuntimeError(f"{statement} after the unit of work ended")
        self._store.notify(statement)
        return self._tables

    # --- integrity --------------------------------------------------------------------------------
    def _table_exists(self, table_id: int, what: str) -> None:
        if table_id not in self._store._definitions.names():
            raise IntegrityViolation("foreign key", f"{what} refers to unknown table {table_id}")

    def _run_exists(self, data: Tables, run_id: int | None, what: str) -> None:
        if run_id is not None and run_id not in data.runs:
            raise IntegrityViolation("foreign key", f"{what} refers to unknown run {run_id}")

    @staticmethod
    def _put_run(data: Tables, run: Run) -> None:
        """Write a run, refusing a second open run of its (table, key) (``uq_runs_open_key``)."""
        if run.status in OPEN_STATES:
            for other in data.runs.values():
                if (
                    other.id != run.id
                    and other.status in OPEN_STATES
                    and (other.table_id, other.partition_key) == (run.table_id, run.partition_key)
                ):
                    raise IntegrityViolation(
                        "uq_runs_open_key",
                        f"run {run.id} ({run.status}) and run {other.id} ({other.status}) are both open "
                        f"for table {run.table_id}, key {run.partition_key}",
                    )
        data.runs[run.id] = run

    @staticmethod
    def _put_approval(data: Tables, approval: Approval) -> None:
        """Write an approval, refusing a second pending one of its run (``uq_approvals_pending_run``)."""
        if approval.status == "pending" and any(
            a.id != approval.id and a.run_id == approval.run_id and a.status == "pending"
            for a in data.approvals.values()
        ):
            raise IntegrityViolation(
                "uq_approvals_pending_run", f"run {approval.run_id} already has a pending approval"
            )
        data.approvals[approval.id] = approval

    def write_events(self, events: Sequence[RunEvent], batch: str) -> None:
        """The outbox rows of ``events`` under ``batch`` (an event without a time is dated now), their
        detail stored as JSON as the databases do."""
        if not events:
            return
        data = self._use("insert_events")
        for event in events:
            self._run_exists(data, event.run_id, "an event")
            detail = json.loads(json.dumps(event.detail()))
            row_id = data.next_id("run_events")
            created = event.at or self._store.clock()
            data.outbox[row_id] = OutboxRecord(row_id, event.run_id, created, batch, detail)

    # --- definitions -------------------------------------------------------------------------------
    def newest_revision(self) -> int | None:
        """The newest reconcile revision's id: the version stamp of the definitions."""
        self._use("newest_revision")
        return self._store._definitions.revision

    def load_catalog(self, revision: int | None) -> Catalog:
        """The live definitions (read now, stamped ``revision``)."""
        self._use("load_catalog")
        return self._store._definitions.catalog(revision)

    def lock_gates(self, tables: Iterable[int], keys: Iterable[Pair] = ()) -> int | None:
        """The newest revision (the writers' lock already serialises gate decisions)."""
        self._use("lock_gates")
        return self._store._definitions.revision

    # --- executions --------------------------------------------------------------------------------
    def insert_executions(
        self, executions: Sequence[NewExecution], at: datetime, by: str | None
    ) -> list[int]:
        """Insert executions with their partition values; their ids in the order given."""
        data = self._use("insert_executions")
        ids: list[int] = []
        for new in executions:
            self._table_exists(new.table_id, "an execution")
            self._run_exists(data, new.run_id, "an execution")
            if new.idempotency_key is not None and any(
                e.idempotency_key == new.idempotency_key for e in data.executions.values()
            ):
                raise IntegrityViolation(
                    "uq_executions_idempotency", f"idempotency key {new.idempotency_key!r} already used"
                )
            names = [name for name, _ in new.values]
            if len(set(names)) != len(names):
                raise IntegrityViolation("execution_values primary key", f"partition values {names}")
            execution_id = data.next_id("executions")
            data.executions[execution_id] = ExecutionRecord(
                execution_id,
                new.table_id,
                new.partition_key,
                dict(new.partitions),
                new.source,
                new.run_id,
                new.idempotency_key,
                at,
                by,
                tuple(new.values),
            )
            ids.append(execution_id)
        return ids

    def probe(
        self, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
    ) -> dict[str, list[Execution]]:
        """Executions answering the probes, by table name."""
        return _probe(self._use("probe"), probes, ids, names)

    def executions_by_idempotency_key(self, keys: set[str]) -> list[StoredExecution]:
        """The executions carrying these idempotency keys, whatever their table."""
        data = self._use("executions_by_idempotency_key")
        return [
            StoredExecution(e.id, e.table_id, e.idempotency_key, dict(e.partitions))
            for e in data.executions.values()
            if e.idempotency_key is not None and e.idempotency_key in keys
        ]

    def runs_triggered_by(self, execution_ids: Sequence[int]) -> dict[int, list[Run]]:
        """The runs each execution triggered (execution id → runs, oldest first)."""
        data = self._use("runs_triggered_by")
        wanted = set(execution_ids)
        found: dict[int, list[Run]] = {}
        for run_id, execution_id in sorted(data.triggers, key=lambda pair: (pair[1], pair[0])):
            if execution_id in wanted:
                found.setdefault(execution_id, []).append(_fresh(data.runs[run_id]))
        return found

    def trigger_partitions(self, run_id: int) -> list[tuple[str, dict[str, Any]]]:
        """(table name, partitions) of the executions that triggered a run, oldest first."""
        data = self._use("trigger_partitions")
        names = self._store._definitions.names()
        executions = sorted((data.executions[e] for r, e in data.triggers if r == run_id), key=lambda e: e.id)
        return [(names[e.table_id], dict(e.partitions)) for e in executions]

    # --- runs ----------------------------------------------------------------------------------
    def lock_run(self, run_id: int) -> Run | None:
        """A run (None: no such run)."""
        run = self._use("lock_run").runs.get(run_id)
        return None if run is None else _fresh(run)

    def lock_runs(self, run_ids: Iterable[int]) -> dict[int, Run]:
        """Runs by id (unknown ids are missing)."""
        data = self._use("lock_runs")
        return {i: _fresh(data.runs[i]) for i in run_ids if i in data.runs}

    def lock_open_runs(self, pairs: Iterable[Pair]) -> dict[Pair, tuple[Run, int | None]]:
        """The open runs of these pairs, each with its newest approval's id."""
        data = self._use("lock_open_runs")
        wanted = set(pairs)
        open_runs = [
            run
            for run in data.runs.values()
            if run.status in OPEN_STATES and (run.table_id, run.partition_key) in wanted
        ]
        approvals = data.newest_approvals(run.id for run in open_runs)
        return {(r.table_id, r.partition_key): (_fresh(r), approvals.get(r.id)) for r in open_runs}

    def run_of_key(self, table_id: int, partition_key: str, states: Sequence[str]) -> Run | None:
        """The first run (by id) of (table, key) in one of ``states``."""
        data = self._use("run_of_key")
        found = [
            run
            for run in data.runs.values()
            if run.table_id == table_id and run.partition_key == partition_key and run.status in states
        ]
        return _fresh(min(found, key=lambda r: r.id)) if found else None

    def insert_runs(
        self,
        runs: Sequence[NewRun],
        triggers: Sequence[Trigger],
        now: datetime,
        *,
        manual: bool,
        reason: str | None,
    ) -> dict[Pair, Run]:
        """Create runs (attempt 1, triggered now) and record the triggers of new and existing runs (a
        trigger recorded before is kept once); the new runs by (table id, key text)."""
        data = self._use("insert_runs")
        inserted: dict[Pair, Run] = {}
        for new in runs:
            self._table_exists(new.table_id, "a run")
            run = Run(
                id=data.next_id("runs"),
                table_id=new.table_id,
                partition_key=new.partition_key,
                partitions=dict(new.partitions),
                status=new.status,
                attempt=1,
                manual=manual,
                rerun_requested=False,
                reason=reason,
                error=None,
                first_trigger_at=now,
                last_trigger_at=now,
                fire_at=new.fire_at,
                scheduled_fire_at=None,
                schedule_name=None,
                created_at=now,
                updated_at=now,
                finished_at=None,
            )
            self._put_run(data, run)
            inserted[(run.table_id, run.partition_key)] = _fresh(run)
        for trigger in triggers:
            if trigger.run_id is not None:
                run_id = trigger.run_id
            elif (trigger.table_id, trigger.partition_key) in inserted:
                run_id = inserted[(trigger.table_id, trigger.partition_key)].id
            else:
                raise IntegrityViolation(
                    "run_triggers.run_id",
                    f"a trigger of table {trigger.table_id}, key {trigger.partition_key} names no run",
                )
            self._run_exists(data, run_id, "a trigger")
            if trigger.execution_id not in data.executions:
                raise IntegrityViolation("foreign key", f"unknown execution {trigger.execution_id}")
            data.triggers[(run_id, trigger.execution_id)] = None
        return inserted

    def push_runs(self, changes: Sequence[dict[str, Any]]) -> None:
        """Set columns other than the state, by ``id`` (the same columns in every change)."""
        data = self._use("push_runs")
        columns = {frozenset(change) for change in changes}
        if len(columns) > 1:
            raise ValueError(
                f"push_runs needs the same columns in every change, got {sorted(map(sorted, columns))}"
            )
        for change in changes:
            values = {name: value for name, value in change.items() if name != "id"}
            if "status" in values:
                raise ValueError("push_runs sets no state: a state changes by apply (compare-and-set)")
            run = data.runs.get(change["id"])
            if run is not None:
                data.runs[run.id] = replace(run, **values)

    def apply(self, change: RunChange) -> bool:
        """Write ``change`` provided the run is still ``change.expected``; False if it moved."""
        data = self._use("apply")
        run = data.runs.get(change.run_id)
        if run is None or run.status != change.expected:
            return False
        self._put_run(data, replace(run, **change.values))
        return True

    def stuck_dispatching(self, before: datetime, limit: int) -> list[Run]:
        """Runs dispatching since ``before`` or earlier (last changed then), by id."""
        data = self._use("stuck_dispatching")
        stuck = sorted(
            (r for r in data.runs.values() if r.status == DISPATCHING and r.updated_at <= before),
            key=lambda r: r.id,
        )
        return [_fresh(run) for run in stuck[:limit]]

    def table_name(self, table_id: int) -> str | None:
        """The name of a table, deleted or not."""
        self._use("table_name")
        return self._store._definitions.names().get(table_id)

    # --- task dispatches -----------------------------------------------------------------------
    def add_tasks(self, run: Run, tasks: Sequence[NewTask]) -> None:
        """Record a run's tasks as pending, for its current attempt."""
        data = self._use("add_tasks")
        self._run_exists(data, run.id, "a task")
        for new in tasks:
            if any(
                (t.run_id, t.attempt, t.alias) == (run.id, run.attempt, new.alias)
                for t in data.tasks.values()
            ):
                raise IntegrityViolation(
                    "task_dispatches (run_id, attempt, alias)",
                    f"task {new.alias} of run {run.id}, attempt {run.attempt} is already recorded",
                )
            task_id = data.next_id("task_dispatches")
            data.tasks[task_id] = Task(
                task_id,
                run.id,
                run.attempt,
                new.alias,
                new.type,
                new.target,
                "pending",
                None,
                None,
                None,
                None,
                new.token,
            )
            data.task_requests[task_id] = json.loads(json.dumps(new.request))

    def tasks_of(self, run_id: int, attempt: int) -> list[Task]:
        """The tasks of an attempt, in the order they finished (unfinished last), then recorded."""
        data = self._use("tasks_of")
        return _tasks_in_finishing_order(
            t for t in data.tasks.values() if t.run_id == run_id and t.attempt == attempt
        )

    def _pending(self, data: Tables, run_id: int, attempt: int, alias: str) -> Task | None:
        return next(
            (
                t
                for t in data.tasks.values()
                if (t.run_id, t.attempt, t.alias) == (run_id, attempt, alias) and t.status == "pending"
            ),
            None,
        )

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
        data = self._use("task_started")
        task = self._pending(data, run_id, attempt, alias)
        if task is not None:
            data.tasks[task.id] = replace(task, status="started", external_id=external_id, started_at=at)
            data.task_checks[task.id] = (check_at, deadline_at)

    def forget_tasks(self, run_id: int, attempt: int) -> None:
        """Delete an attempt's tasks that did not start (pending, or failed to start)."""
        data = self._use("forget_tasks")
        for task in list(data.tasks.values()):
            if (task.run_id, task.attempt) == (run_id, attempt) and task.status in ("pending", "failed"):
                del data.tasks[task.id]
                data.task_requests.pop(task.id, None)

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
        data = self._use("insert_backfill")
        self._table_exists(table_id, "a backfill")
        for run_id in run_ids:
            self._run_exists(data, run_id, "a backfill's run")
        backfill_id = data.next_id("backfills")
        data.backfills[backfill_id] = Backfill(backfill_id, table_id, keys, already_open, reason, by, at)
        data.backfill_runs[backfill_id] = tuple(run_ids)
        return backfill_id

    # --- concurrency ---------------------------------------------------------------------------
    def busy_runs(self, table_id: int, *, lock: bool) -> list[int]:
        """The table's runs dispatching or running, by id (units of work are serialised here)."""
        data = self._use("busy_runs")
        return sorted(
            r.id for r in data.runs.values() if r.table_id == table_id and r.status in IN_PROGRESS_STATES
        )

    def queued_runs(self, table_id: int, limit: int) -> list[int]:
        """The table's queued runs, oldest first (fire time, then id)."""
        data = self._use("queued_runs")
        queued = [r for r in data.runs.values() if r.table_id == table_id and r.status == QUEUED]
        queued.sort(key=lambda r: (r.fire_at or datetime.min.replace(tzinfo=UTC), r.id))
        return [r.id for r in queued[:limit]]

    def task_not_started(self, run_id: int, attempt: int, alias: str, error: str, at: datetime) -> None:
        """A pending task failed to start."""
        data = self._use("task_not_started")
        task = self._pending(data, run_id, attempt, alias)
        if task is not None:
            data.tasks[task.id] = replace(task, status="failed", error=error, finished_at=at)

    def lock_task(self, external_id: str) -> Task | None:
        """The first task (by id) AWS knows as ``external_id``."""
        data = self._use("lock_task")
        return next((t for t in data.tasks.values() if t.external_id == external_id), None)

    def settle_task(self, task_id: int, succeeded: bool, error: str | None, at: datetime) -> bool:
        """A started task ended (its error kept only on failure); False if it was not started."""
        data = self._use("settle_task")
        task = data.tasks.get(task_id)
        if task is None or task.status != "started":
            return False
        status = "succeeded" if succeeded else "failed"
        data.tasks[task_id] = replace(task, status=status, finished_at=at, error=None if succeeded else error)
        return True

    def settle_unfinished_tasks(
        self, run_ids: Sequence[int], status: str, error: str | None, at: datetime
    ) -> None:
        """Every pending or started task of these runs ends as ``status`` (with ``error`` if given)."""
        data = self._use("settle_unfinished_tasks")
        runs = set(run_ids)
        for task in list(data.tasks.values()):
            if task.run_id in runs and task.status in ("pending", "started"):
                settled = replace(task, status=status, finished_at=at)
                data.tasks[task.id] = settled if error is None else replace(settled, error=error)

    # --- approvals -----------------------------------------------------------------------------
    def request_approvals(self, run_ids: Sequence[int], at: datetime) -> dict[int, int]:
        """A pending approval for each run (none twice); run id → its newest approval id."""
        data = self._use("request_approvals")
        for run_id in run_ids:
            self._run_exists(data, run_id, "an approval")
            if any(a.run_id == run_id and a.status == "pending" for a in data.approvals.values()):
                continue  # ON CONFLICT DO NOTHING on the partial unique index
            approval_id = data.next_id("approvals")
            self._put_approval(data, Approval(approval_id, run_id, "pending", at, None, None, None))
        return data.newest_approvals(run_ids)

    def newest_approvals(self, run_ids: Sequence[int]) -> dict[int, int]:
        """The newest approval of each run that has one, pending or decided."""
        return self._use("newest_approvals").newest_approvals(run_ids)

    def lock_approval(self, approval_id: int) -> Approval | None:
        """An approval (None: no such approval)."""
        return self._use("lock_approval").approvals.get(approval_id)

    def decide_approval(
        self, approval_id: int, status: str, by: str, at: datetime, comment: str | None
    ) -> bool:
        """Compare-and-set a pending approval to ``status``; False if it was decided meanwhile."""
        data = self._use("decide_approval")
        approval = data.approvals.get(approval_id)
        if approval is None or approval.status != "pending":
            return False
        decided = replace(approval, status=status, decided_by=by, decided_at=at, comment=comment)
        self._put_approval(data, decided)
        return True

    def cancel_pending_approvals(self, run_id: int, at: datetime) -> None:
        """The run's pending approval, if any, is cancelled."""
        data = self._use("cancel_pending_approvals")
        for approval in list(data.approvals.values()):
            if approval.run_id == run_id and approval.status == "pending":
                data.approvals[approval.id] = replace(approval, status="cancelled", decided_at=at)


# --- the read port -------------------------------------------------------------------------------------
class MemoryReads:
    """The reads of the GET routes and of ``explain`` on a :class:`MemoryStore`'s committed data."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def catalog(self) -> Catalog:
        """The live definitions, stamped with the newest reconcile revision."""
        return self._store.read_with("catalog", lambda _, d: d.catalog(d.revision))

    def definitions(self) -> tuple[dict[str, TableState], tuple[str, datetime] | None]:
        """The live definitions by name, and (Git revision, applied at) of the last reconcile."""
        return self._store.read_with(
            "definitions", lambda _, d: ({name: state_of(spec) for name, spec in d.live.items()}, d.stamp)
        )

    def last_reconcile(self) -> tuple[str, str | None, datetime] | None:
        """(Git revision, who applied it, when) of the last reconcile (the test's actor: none)."""
        stamp = self._store.read_with("last_reconcile", lambda _, d: d.stamp)
        return None if stamp is None else (stamp[0], None, stamp[1])

    def table_exists(self, name: str) -> bool:
        """Whether a table of this name was ever defined (a deleted one keeps its history)."""
        return self._store.read_with("table_exists", lambda _, d: name in d.ids)

    def runs(
        self, table: str | None, status: str | None, limit: int, *, before: int | None = None
    ) -> list[tuple[Run, str, int | None]]:
        """The newest runs (of a table, in a state), newest first, with table name and newest approval."""

        def read(data: Tables, definitions: Definitions) -> list[tuple[Run, str, int | None]]:
            names = definitions.names()
            rows = [
                run
                for run in sorted(data.runs.values(), key=lambda r: -r.id)
                if (table is None or names[run.table_id] == table)
                and (status is None or run.status == status)
                and (before is None or run.id < before)
            ][:limit]
            approvals = data.newest_approvals(run.id for run in rows)
            return [(_fresh(run), names[run.table_id], approvals.get(run.id)) for run in rows]

        return self._store.read_with("runs", read)

    def backfill(self, backfill_id: int) -> BackfillDetail | None:
        """A backfill, its table's name and its runs counted per state."""

        def read(data: Tables, definitions: Definitions) -> BackfillDetail | None:
            found = data.backfills.get(backfill_id)
            if found is None:
                return None
            counts = Counter(data.runs[run_id].status for run_id in data.backfill_runs[backfill_id])
            return found, definitions.names()[found.table_id], dict(counts)

        return self._store.read_with("backfill", read)

    def newest_states(self, wanted: Sequence[tuple[int, str | None]]) -> dict[int, str]:
        """The state of the newest run of each table (of a key, when given)."""

        def read(data: Tables, _: Definitions) -> dict[int, str]:
            found: dict[int, str] = {}
            for table_id, partition_key in wanted:
                runs = [
                    r
                    for r in data.runs.values()
                    if r.table_id == table_id and (partition_key is None or r.partition_key == partition_key)
                ]
                if runs:
                    found[table_id] = max(runs, key=lambda r: r.id).status
            return found

        return self._store.read_with("newest_states", read)

    def triggers(self, run_ids: Sequence[int]) -> dict[int, list[tuple[int, str, Key]]]:
        """The executions that triggered each run, oldest first."""

        def read(data: Tables, definitions: Definitions) -> dict[int, list[tuple[int, str, Key]]]:
            names = definitions.names()
            found: dict[int, list[tuple[int, str, Key]]] = {run_id: [] for run_id in run_ids}
            for run_id, execution_id in sorted(data.triggers, key=lambda pair: pair[1]):
                if run_id in found:
                    e = data.executions[execution_id]
                    found[run_id].append((e.id, names[e.table_id], dict(e.partitions)))
            return found

        return self._store.read_with("triggers", read)

    def run_detail(self, run_id: int) -> RunDetail | None:
        """A run with its table name, newest approval, tasks (by attempt, then recorded) and the
        executions that triggered it (oldest first); None for an unknown run."""

        def read(data: Tables, definitions: Definitions) -> RunDetail | None:
            run = data.runs.get(run_id)
            if run is None:
                return None
            names = definitions.names()
            approvals = [a for a in data.approvals.values() if a.run_id == run_id]
            # As SqlReads: without their tokens, which no read route shows.
            tasks = sorted(
                (replace(t, token=None) for t in data.tasks.values() if t.run_id == run_id),
                key=lambda t: (t.attempt, t.id),
            )
            executions = sorted(
                (data.executions[e] for r, e in data.triggers if r == run_id), key=lambda e: e.id
            )
            return (
                _fresh(run),
                names[run.table_id],
                max(approvals, key=lambda a: a.id) if approvals else None,
                tasks,
                [(e.id, names[e.table_id], dict(e.partitions)) for e in executions],
                [
                    r.event
                    for r in sorted(data.outbox.values(), key=lambda r: r.id)
                    if r.event.run_id == run_id
                ],
            )

        return self._store.read_with("run_detail", read)

    def runs_of_key(self, table_id: int, partition_key: str, limit: int) -> list[tuple[Run, Approval | None]]:
        """The last ``limit`` runs of (table, key), newest first, each with its newest approval."""

        def read(data: Tables, _: Definitions) -> list[tuple[Run, Approval | None]]:
            runs = sorted(
                (
                    r
                    for r in data.runs.values()
                    if r.table_id == table_id and r.partition_key == partition_key
                ),
                key=lambda r: -r.id,
            )[:limit]
            newest: dict[int, Approval] = {}
            for approval in sorted(data.approvals.values(), key=lambda a: a.id):
                newest[approval.run_id] = approval
            return [(_fresh(run), newest.get(run.id)) for run in runs]

        return self._store.read_with("runs_of_key", read)

    def approvals(self, status: str | None, limit: int) -> list[tuple[Approval, str, Key]]:
        """The newest approvals (in a state), newest first, with their run's table name and partitions."""

        def read(data: Tables, definitions: Definitions) -> list[tuple[Approval, str, Key]]:
            names = definitions.names()
            rows = [
                a
                for a in sorted(data.approvals.values(), key=lambda a: -a.id)
                if status is None or a.status == status
            ][:limit]
            runs = data.runs
            return [(a, names[runs[a.run_id].table_id], dict(runs[a.run_id].partitions)) for a in rows]

        return self._store.read_with("approvals", read)

    def executions(self, table: str | None, limit: int) -> list[ExecutionEntry]:
        """The newest executions (of a table), newest first."""

        def read(data: Tables, definitions: Definitions) -> list[ExecutionEntry]:
            names = definitions.names()
            rows = [
                e
                for e in sorted(data.executions.values(), key=lambda e: -e.id)
                if table is None or names[e.table_id] == table
            ][:limit]
            return [
                (
                    e.id,
                    names[e.table_id],
                    dict(e.partitions),
                    e.source,
                    e.registered_at,
                    e.run_id,
                    e.registered_by,
                )
                for e in rows
            ]

        return self._store.read_with("executions", read)

    def executions_by_id(self, ids: Sequence[int]) -> dict[int, tuple[Key, str, datetime]]:
        """(partitions, source, registered at) of these executions, by id (unknown ids are left out)."""

        def read(data: Tables, _: Definitions) -> dict[int, tuple[Key, str, datetime]]:
            found = (data.executions[i] for i in ids if i in data.executions)
            return {e.id: (dict(e.partitions), e.source, e.registered_at) for e in found}

        return self._store.read_with("executions_by_id", read)

    def probe(
        self, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
    ) -> dict[str, list[Execution]]:
        """Executions answering the probes, by table name."""
        return self._store.read_with("probe", lambda data, _: _probe(data, probes, ids, names))


if TYPE_CHECKING:

    def _conforms(
        store: MemoryStore, session: MemorySession, tx: MemoryTransaction, reads: MemoryReads
    ) -> tuple[ports.Store, ports.StoreSession, ports.Transaction, ports.Reads]:
        """Type-checked only: the fakes implement the ports (mypy refuses this otherwise)."""
        return store, session, tx, reads
