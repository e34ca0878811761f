"""The SQLite store on a migrated file database: each statement of the port does what the services
rely on (compare-and-set, full runs with aware UTC times, the outbox written with the batch, the
bookkeeping after commit), and a unit of work is retried, or refused, as a lost connection requires."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, Engine, func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from controller.core.effects import AfterCommit, ScheduleRequest
from controller.core.errors import Unavailable
from controller.core.gates import Probe
from controller.core.keys import Key, key_text
from controller.core.records import NewExecution, NewRun, NewTask, Trigger
from controller.core.runs import (
    AWAITING_APPROVAL,
    CANCELLED,
    DISPATCHING,
    RUN_FIELDS,
    SCHEDULED,
    Run,
    RunEvent,
    transition,
)
from controller.db.definition_models import TableRow
from controller.db.engine import make_engine
from controller.db.migrate import upgrade
from controller.db.retries import MAX_RECONNECTS
from controller.db.run_models import ExecutionRow, RunEventRow, RunRow, TaskDispatchRow
from controller.db.sqlite_store import SqliteSession, SqliteStore
from controller.db.sqlite_transaction import SqliteTransaction
from controller.reconciler import apply
from tests.factories import states, table_doc

T = TypeVar("T")
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=10)
TABLES = [table_doc("up"), table_doc("down", dependencies=[{"dependency_name": "up"}])]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'f.db'}")
    upgrade(engine)
    apply(engine, desired=states(TABLES), revision="one", actor="t", now=NOW)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Iterator[SqliteStore]:
    store = SqliteStore(engine)
    yield store
    store.close()


@pytest.fixture
def ids(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {row.name: row.id for row in connection.execute(select(TableRow.name, TableRow.id))}


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry's sleeps, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr("controller.db.retries.time.sleep", slept.append)
    return slept


def in_transaction(store: SqliteStore, work: Callable[[SqliteTransaction], T]) -> T:
    with store.session() as session:
        result, _ = session.transact(lambda tx, _after: work(tx))
    return result


def day(dt: str) -> tuple[str, Key]:
    key: Key = {"dt": dt}
    return key_text(key), key


def new_run(table_id: int, dt: str, status: str = SCHEDULED, fire_at: datetime | None = LATER) -> NewRun:
    text_key, key = day(dt)
    return NewRun(table_id, text_key, key, status, fire_at if status == SCHEDULED else None)


def create(store: SqliteStore, *runs: NewRun) -> dict[tuple[int, str], Run]:
    return in_transaction(store, lambda tx: tx.insert_runs(runs, [], NOW, manual=False, reason="test"))


def new_execution(table_id: int, dt: str, idempotency_key: str | None = None) -> NewExecution:
    text_key, key = day(dt)
    return NewExecution(table_id, text_key, key, "test", None, idempotency_key, [("dt", dt)])


def lost(statement: str = "INSERT INTO runs …") -> OperationalError:
    """What SQLAlchemy raises for a disconnect (SQLite cannot lose a connection for real)."""
    return OperationalError(
        statement, {}, sqlite3.OperationalError("disk I/O error"), connection_invalidated=True
    )


def count(engine: Engine, model: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(model)).scalar_one())


class Recorder:
    """A store listener: the statements and the connections they were sent on."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Connection]] = []

    def __call__(self, statement: str, connection: Connection) -> None:
        self.sent.append((" ".join(statement.split()), connection))

    @property
    def statements(self) -> list[str]:
        return [s for s, _ in self.sent]

    def verbs(self) -> list[str]:
        return [s.split()[0] if not s.startswith("BEGIN") else s for s in self.statements]


def set_columns(update: str) -> set[str]:
    """The columns an ``UPDATE … SET a=?, b=? WHERE …`` sets."""
    assignments = update.split(" SET ", 1)[1].split(" WHERE ", 1)[0]
    return {part.split("=")[0].strip() for part in assignments.split(",")}


# --- runs ----------------------------------------------------------------------------------------


def test_inserted_runs_are_full_runs_with_aware_utc_times_and_read_back_the_same(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    created = create(
        store, new_run(ids["down"], "2026-01-01"), new_run(ids["down"], "2026-01-02", AWAITING_APPROVAL)
    )
    scheduled = created[(ids["down"], day("2026-01-01")[0])]
    waiting = created[(ids["down"], day("2026-01-02")[0])]
    assert (scheduled.status, scheduled.attempt, scheduled.manual, scheduled.reason) == (
        SCHEDULED,
        1,
        False,
        "test",
    )
    assert (scheduled.partitions, scheduled.fire_at, waiting.fire_at) == ({"dt": "2026-01-01"}, LATER, None)
    for name in ("first_trigger_at", "last_trigger_at", "created_at", "updated_at", "fire_at"):
        moment = getattr(scheduled, name)
        assert moment.tzinfo is UTC, name  # aware, and UTC: not the naive text SQLite stores
    assert (scheduled.scheduled_fire_at, scheduled.schedule_name, scheduled.finished_at) == (None, None, None)
    read = in_transaction(
        store, lambda tx: (tx.lock_run(scheduled.id), tx.lock_runs([scheduled.id, waiting.id, 999]))
    )
    assert read == (scheduled, {scheduled.id: scheduled, waiting.id: waiting})
    assert in_transaction(store, lambda tx: tx.lock_run(999)) is None
    # Every field from its own column (the store builds runs from rows by position).
    with engine.connect() as connection:
        row = connection.execute(select(RunRow).where(RunRow.id == scheduled.id)).mappings().one()
    assert {name: getattr(scheduled, name) for name in RUN_FIELDS} == {name: row[name] for name in RUN_FIELDS}


def test_triggers_are_recorded_for_new_and_existing_runs_once(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    up = ids["up"]
    first, second = in_transaction(
        store,
        lambda tx: tx.insert_executions(
            [new_execution(up, "2026-01-01"), new_execution(up, "2026-01-02")], NOW, "me"
        ),
    )
    assert first < second  # ids in the order given
    pair = (ids["down"], day("2026-01-01")[0])
    created = in_transaction(
        store,
        lambda tx: tx.insert_runs(
            [new_run(ids["down"], "2026-01-01")], [Trigger(None, *pair, first)], NOW, manual=True, reason=None
        ),
    )
    run = created[pair]
    assert run.manual is True
    # The same trigger again (ignored) and a new one of the existing run.
    again = [Trigger(run.id, *pair, first), Trigger(run.id, *pair, second)]
    assert in_transaction(store, lambda tx: tx.insert_runs([], again, LATER, manual=False, reason=None)) == {}
    triggered = in_transaction(store, lambda tx: tx.runs_triggered_by([first, second, 999]))
    assert triggered == {first: [run], second: [run]}
    partitions = in_transaction(store, lambda tx: tx.trigger_partitions(run.id))
    assert partitions == [("up", {"dt": "2026-01-01"}), ("up", {"dt": "2026-01-02"})]


def test_apply_is_a_compare_and_set_and_returns_false_when_the_run_moved(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    (run,) = create(store, new_run(ids["down"], "2026-01-01")).values()
    claim = transition(run, DISPATCHING, LATER, "down")
    assert in_transaction(store, lambda tx: tx.apply(claim)) is True
    assert in_transaction(store, lambda tx: tx.apply(claim)) is False  # decided from `scheduled`: moved
    cancel = transition(run, CANCELLED, LATER, "down", reason="stale")
    assert in_transaction(store, lambda tx: tx.apply(cancel)) is False
    stored = in_transaction(store, lambda tx: tx.lock_run(run.id))
    assert stored == claim.applied_to(run)
    assert (stored.status, stored.updated_at, stored.reason) == (DISPATCHING, LATER, "test")
    assert count(engine, RunEventRow) == 0  # the event is the caller's to record


def test_pushes_with_different_columns_are_one_executemany_per_set_of_columns(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    created = create(store, *(new_run(ids["down"], f"2026-01-0{d}") for d in (1, 2, 3)))
    a, b, c = sorted(created.values(), key=lambda r: r.id)
    recorder = Recorder()
    store.listeners.append(recorder)
    pushed = LATER + timedelta(minutes=5)
    same_set_other_order = {"id": c.id, "fire_at": pushed, "updated_at": LATER, "last_trigger_at": LATER}
    changes = [
        {"id": a.id, "last_trigger_at": LATER, "fire_at": pushed, "updated_at": LATER},
        {"id": b.id, "rerun_requested": True, "updated_at": LATER},
        same_set_other_order,
    ]
    in_transaction(store, lambda tx: tx.push_runs(changes))
    updates = [s for s in recorder.statements if s.startswith("UPDATE")]
    assert [set_columns(s) for s in updates] == [
        {"fire_at", "last_trigger_at", "updated_at"},
        {"rerun_requested", "updated_at"},
    ]
    a2, b2, c2 = in_transaction(store, lambda tx: [tx.lock_run(r.id) for r in (a, b, c)])
    assert a2 is not None and b2 is not None and c2 is not None
    assert (a2.fire_at, a2.last_trigger_at, a2.rerun_requested) == (pushed, LATER, False)
    assert (b2.fire_at, b2.rerun_requested, b2.updated_at) == (LATER, True, LATER)
    assert (c2.fire_at, c2.status) == (pushed, SCHEDULED)


def test_open_runs_are_found_only_for_the_pairs_asked_with_their_newest_approval(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    down, up = ids["down"], ids["up"]
    created = create(
        store,
        new_run(down, "2026-01-01", AWAITING_APPROVAL),
        new_run(down, "2026-01-02"),
        new_run(up, "2026-01-01"),
        new_run(up, "2026-01-02"),
    )
    waiting = created[(down, day("2026-01-01")[0])]
    done = created[(up, day("2026-01-02")[0])]
    first = in_transaction(store, lambda tx: tx.request_approvals([waiting.id], NOW))
    assert in_transaction(store, lambda tx: tx.request_approvals([waiting.id], LATER)) == first  # none twice
    assert in_transaction(store, lambda tx: tx.apply(transition(done, CANCELLED, NOW, "up")))
    asked = [(down, day("2026-01-01")[0]), (up, day("2026-01-02")[0]), (down, day("2026-01-02")[0])]
    found = in_transaction(store, lambda tx: tx.lock_open_runs(asked))
    # (up, 01-01) is a candidate of the statement (table × key) but was not asked; (up, 01-02) is closed.
    assert found == {
        asked[0]: (waiting, first[waiting.id]),
        asked[2]: (created[asked[2]], None),
    }


def test_a_run_of_a_key_in_some_states_and_a_table_name_deleted_or_not(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    down = ids["down"]
    (run,) = create(store, new_run(down, "2026-01-01")).values()
    assert (
        in_transaction(store, lambda tx: tx.run_of_key(down, run.partition_key, [SCHEDULED, DISPATCHING]))
        == run
    )
    assert in_transaction(store, lambda tx: tx.run_of_key(down, run.partition_key, [DISPATCHING])) is None
    apply(engine, desired=states(TABLES[:1]), revision="two", actor="t", now=LATER, allow_delete=True)
    assert in_transaction(store, lambda tx: (tx.table_name(down), tx.table_name(999))) == ("down", None)
    catalog = in_transaction(store, lambda tx: tx.load_catalog(tx.newest_revision()))
    assert (list(catalog.ids), catalog.table("down")) == (["up"], None)


def test_stuck_dispatching_runs_are_those_unchanged_since_before(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    created = create(store, *(new_run(ids["down"], f"2026-01-0{d}") for d in (1, 2, 3)))
    a, b, _ = sorted(created.values(), key=lambda r: r.id)
    in_transaction(store, lambda tx: tx.apply(transition(a, DISPATCHING, NOW, "down")))
    in_transaction(store, lambda tx: tx.apply(transition(b, DISPATCHING, LATER, "down")))
    stuck = in_transaction(store, lambda tx: tx.stuck_dispatching(NOW, 10))
    assert [(r.id, r.status, r.updated_at) for r in stuck] == [(a.id, DISPATCHING, NOW)]
    assert [r.id for r in in_transaction(store, lambda tx: tx.stuck_dispatching(LATER, 1))] == [a.id]


# --- executions and definitions ---------------------------------------------------------------------


def test_probes_find_executions_by_value_or_whole_table_and_leave_unknown_tables_out(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    up, down = ids["up"], ids["down"]
    omitted = NewExecution(up, key_text({}), {}, "test", None, None, [("dt", None)])  # agrees with any value
    executions = [
        new_execution(up, "2026-01-01"),
        new_execution(up, "2026-01-02"),
        omitted,
        new_execution(down, "2026-01-01"),
    ]
    e1, e2, e3, e4 = in_transaction(store, lambda tx: tx.insert_executions(executions, NOW, None))
    names = {up: "up", down: "down"}

    def probed(*probes: Probe, names: dict[int, str] = names) -> dict[str, set[int]]:
        found = in_transaction(store, lambda tx: tx.probe(probes, ids, names))
        return {table: {e.id for e in found_} for table, found_ in found.items()}

    assert probed(Probe("up", "dt", "2026-01-01")) == {"up": {e1, e3}}
    assert probed(Probe("down")) == {"down": {e4}}
    assert probed(Probe("up", "dt", "2026-01-02"), Probe("down")) == {"up": {e2, e3}, "down": {e4}}
    assert probed(Probe("down"), names={up: "up"}) == {}  # a deleted table's executions open nothing
    assert probed() == {}
    found = in_transaction(store, lambda tx: tx.probe([Probe("up", "dt", "2026-01-02")], ids, names))
    assert sorted((e.id, e.table, e.key) for e in found["up"]) == [
        (e2, "up", {"dt": "2026-01-02"}),
        (e3, "up", {}),
    ]


def test_executions_are_found_by_their_idempotency_key_whatever_the_table(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    up, down = ids["up"], ids["down"]
    (first,) = in_transaction(
        store, lambda tx: tx.insert_executions([new_execution(up, "2026-01-01", "k-1")], NOW, None)
    )
    (second,) = in_transaction(
        store, lambda tx: tx.insert_executions([new_execution(down, "2026-01-01", "k-2")], NOW, None)
    )
    in_transaction(store, lambda tx: tx.insert_executions([new_execution(up, "2026-01-02")], NOW, None))
    found = in_transaction(store, lambda tx: tx.executions_by_idempotency_key({"k-1", "k-2", "k-3"}))
    assert sorted((e.id, e.table_id, e.idempotency_key, e.partitions) for e in found) == [
        (first, up, "k-1", {"dt": "2026-01-01"}),
        (second, down, "k-2", {"dt": "2026-01-01"}),
    ]
    assert in_transaction(store, lambda tx: tx.executions_by_idempotency_key(set())) == []


def test_the_gate_lock_returns_the_newest_revision_and_the_catalog_is_read_in_the_transaction(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    def work(tx: SqliteTransaction) -> tuple[int | None, Any, Run]:
        revision = tx.lock_gates([ids["down"]], [(ids["up"], day("2026-01-01")[0])])
        catalog = tx.load_catalog(revision)
        # The transaction goes on after the catalog's ORM session is done with it.
        (run,) = tx.insert_runs(
            [new_run(ids["down"], "2026-01-01")], [], NOW, manual=False, reason=None
        ).values()
        return revision, catalog, run

    revision, catalog, run = in_transaction(store, work)
    assert revision is not None and revision == in_transaction(store, lambda tx: tx.newest_revision())
    assert (catalog.revision, catalog.ids, catalog.names) == (revision, ids, {i: n for n, i in ids.items()})
    assert sorted(catalog.graph.tables) == ["down", "up"]
    assert in_transaction(store, lambda tx: tx.lock_run(run.id)) == run  # committed


# --- tasks and approvals -----------------------------------------------------------------------------


def test_tasks_start_settle_once_and_come_back_in_the_order_they_finished(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    (run,) = create(store, new_run(ids["down"], "2026-01-01")).values()
    tasks = [NewTask(alias, "glue", f"job-{alias}", {"--dt": "2026-01-01"}) for alias in ("a", "b", "c")]
    in_transaction(store, lambda tx: tx.add_tasks(run, tasks))
    in_transaction(store, lambda tx: tx.task_started(run.id, 1, "a", "ext-a", NOW))
    in_transaction(store, lambda tx: tx.task_started(run.id, 1, "b", "ext-b", NOW))
    in_transaction(store, lambda tx: tx.task_not_started(run.id, 1, "c", "no quota", NOW))
    in_transaction(store, lambda tx: tx.task_started(run.id, 1, "c", "ext-c", NOW))  # not pending: ignored
    b = in_transaction(store, lambda tx: tx.lock_task("ext-b"))
    assert b is not None and (b.alias, b.status, b.started_at, b.attempt) == ("b", "started", NOW, 1)
    assert in_transaction(store, lambda tx: tx.settle_task(b.id, True, "ignored on success", LATER)) is True
    assert in_transaction(store, lambda tx: tx.settle_task(b.id, False, "late duplicate", LATER)) is False
    assert in_transaction(store, lambda tx: tx.lock_task("ext-c")) is None
    listed = in_transaction(store, lambda tx: tx.tasks_of(run.id, 1))
    # c finished first, then b; a is unfinished: last (SQLite alone would sort its NULL first).
    assert [(t.alias, t.status, t.external_id, t.error, t.finished_at) for t in listed] == [
        ("c", "failed", None, "no quota", NOW),
        ("b", "succeeded", "ext-b", None, LATER),
        ("a", "started", "ext-a", None, None),
    ]
    assert in_transaction(store, lambda tx: tx.tasks_of(run.id, 2)) == []


def test_unfinished_tasks_settle_with_an_error_only_when_one_is_given(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    created = create(store, *(new_run(ids["down"], f"2026-01-0{d}") for d in (1, 2, 3)))
    first, second, untouched = sorted(created.values(), key=lambda r: r.id)
    three = [NewTask(alias, "glue", "job", {}) for alias in ("a", "b", "c")]

    def add_and_start(run: Run) -> None:
        in_transaction(store, lambda tx: tx.add_tasks(run, three))
        in_transaction(store, lambda tx: tx.task_started(run.id, 1, "a", f"a-{run.id}", NOW))
        in_transaction(store, lambda tx: tx.task_started(run.id, 1, "c", f"c-{run.id}", NOW))

    for run in (first, second, untouched):
        add_and_start(run)
    done = in_transaction(store, lambda tx: tx.lock_task(f"c-{first.id}"))
    assert done is not None and in_transaction(store, lambda tx: tx.settle_task(done.id, True, None, NOW))
    with engine.begin() as connection:  # an error already noted on an unfinished task
        connection.execute(
            update(TaskDispatchRow)
            .where(TaskDispatchRow.run_id == first.id, TaskDispatchRow.alias == "b")
            .values(error="noted")
        )
    in_transaction(store, lambda tx: tx.settle_unfinished_tasks([first.id], "succeeded", None, LATER))
    in_transaction(store, lambda tx: tx.settle_unfinished_tasks([second.id], "failed", "reported", LATER))
    in_transaction(store, lambda tx: tx.settle_unfinished_tasks([], "failed", "nothing", LATER))
    settled = in_transaction(store, lambda tx: [tx.tasks_of(r.id, 1) for r in (first, second, untouched)])
    assert [sorted((t.alias, t.status, t.error, t.finished_at) for t in tasks) for tasks in settled] == [
        [("a", "succeeded", None, LATER), ("b", "succeeded", "noted", LATER), ("c", "succeeded", None, NOW)],
        [
            ("a", "failed", "reported", LATER),
            ("b", "failed", "reported", LATER),
            ("c", "failed", "reported", LATER),
        ],
        [("a", "started", None, None), ("b", "pending", None, None), ("c", "started", None, None)],
    ]


def test_an_approval_is_decided_once_and_a_pending_one_cancelled(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    created = create(
        store,
        new_run(ids["down"], "2026-01-01", AWAITING_APPROVAL),
        new_run(ids["down"], "2026-01-02", AWAITING_APPROVAL),
    )
    first, second = sorted(created.values(), key=lambda r: r.id)
    approvals = in_transaction(store, lambda tx: tx.request_approvals([first.id, second.id], NOW))
    pending = in_transaction(store, lambda tx: tx.lock_approval(approvals[first.id]))
    assert pending is not None and (pending.run_id, pending.status, pending.requested_at) == (
        first.id,
        "pending",
        NOW,
    )
    assert pending.requested_at.tzinfo is UTC
    assert (
        in_transaction(store, lambda tx: tx.decide_approval(pending.id, "approved", "ana", LATER, "ok"))
        is True
    )
    assert (
        in_transaction(store, lambda tx: tx.decide_approval(pending.id, "rejected", "bia", LATER, None))
        is False
    )
    decided = in_transaction(store, lambda tx: tx.lock_approval(pending.id))
    assert decided is not None
    assert (decided.status, decided.decided_by, decided.decided_at, decided.comment) == (
        "approved",
        "ana",
        LATER,
        "ok",
    )
    in_transaction(store, lambda tx: tx.cancel_pending_approvals(second.id, LATER))
    in_transaction(store, lambda tx: tx.cancel_pending_approvals(first.id, LATER))  # decided: left as it is
    cancelled = in_transaction(store, lambda tx: tx.lock_approval(approvals[second.id]))
    assert cancelled is not None and (cancelled.status, cancelled.decided_at) == ("cancelled", LATER)
    # A decided approval no longer blocks a new pending one; the newest is then that one.
    again = in_transaction(store, lambda tx: tx.request_approvals([first.id], LATER))
    assert again[first.id] > pending.id
    assert in_transaction(store, lambda tx: tx.newest_approvals([first.id, second.id, 999])) == {
        first.id: again[first.id],
        second.id: approvals[second.id],
    }
    assert in_transaction(store, lambda tx: tx.lock_approval(999)) is None


# --- the unit of work --------------------------------------------------------------------------------


def test_a_unit_of_work_writes_its_events_to_the_outbox_with_its_batch(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    def work(tx: SqliteTransaction, after: AfterCommit) -> Run:
        (run,) = tx.insert_runs(
            [new_run(ids["down"], "2026-01-01")], [], NOW, manual=False, reason=None
        ).values()
        after.events.append(RunEvent(run.id, "down", run.partitions, None, SCHEDULED, at=NOW))
        after.events.append(RunEvent(run.id, "down", run.partitions, SCHEDULED, DISPATCHING, at=LATER))
        return run

    with store.session() as session:
        run, after = session.transact(work)
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                RunEventRow.run_id,
                RunEventRow.batch,
                RunEventRow.created_at,
                RunEventRow.detail,
                RunEventRow.published_at,
            ).order_by(RunEventRow.id)
        ).all()
    assert [tuple(row) for row in rows] == [
        (run.id, after.batch, event.at, event.detail(), None) for event in after.events
    ]


def test_a_connection_lost_before_commit_is_retried_on_a_new_connection_with_fresh_effects(
    store: SqliteStore,
    engine: Engine,
    ids: dict[str, int],
    caplog: pytest.LogCaptureFixture,
    no_backoff: list[float],
) -> None:
    tries: list[tuple[Connection, AfterCommit]] = []
    drivers: list[Any] = []

    def work(tx: SqliteTransaction, after: AfterCommit) -> str:
        tries.append((tx.connection, after))
        drivers.append(tx.connection.connection.dbapi_connection)
        (run,) = tx.insert_runs(
            [new_run(ids["down"], "2026-01-01")], [], NOW, manual=False, reason=None
        ).values()
        after.events.append(RunEvent(run.id, "down", run.partitions, None, SCHEDULED, at=NOW))
        if len(tries) == 1:
            raise lost()
        return "done"

    with caplog.at_level(logging.INFO, logger="flux_control.runtime"), store.session() as session:
        result, after = session.transact(work)
        assert session.connection is tries[1][0]
    assert result == "done"
    (first, first_after), (second, _) = tries
    assert second is not first and first.closed
    assert drivers[1] is not drivers[0]
    with pytest.raises(sqlite3.ProgrammingError):  # discarded, not back in the pool
        drivers[0].execute("SELECT 1")
    assert after is tries[1][1] and after is not first_after and after.batch != first_after.batch
    assert (count(engine, RunRow), count(engine, RunEventRow)) == (1, 1)  # the first try wrote nothing
    (record,) = [r for r in caplog.records if r.getMessage() == "retrying the transaction"]
    extra = record.__dict__
    assert (extra["attempt"], extra["reason"], extra["sqlstate"]) == (1, "connection lost", None)
    assert len(no_backoff) == 1 and 0 <= no_backoff[0] <= 0.02


def test_a_connection_lost_on_every_try_is_unavailable_and_nothing_was_written(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    tries: list[Connection] = []

    def work(tx: SqliteTransaction, after: AfterCommit) -> None:
        tries.append(tx.connection)
        tx.insert_runs([new_run(ids["down"], "2026-01-01")], [], NOW, manual=False, reason=None)
        raise lost()

    with store.session() as session, pytest.raises(Unavailable, match="nothing was written") as raised:
        session.transact(work)
    assert len(tries) == 1 + MAX_RECONNECTS and len(set(map(id, tries))) == len(tries)
    assert isinstance(raised.value.__cause__, OperationalError)
    assert count(engine, RunRow) == 0


def test_a_connection_lost_while_committing_is_not_retried_and_may_or_may_not_have_been_written(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    tries: list[Connection] = []

    def drop_at_commit(statement: str, connection: Connection) -> None:
        if statement == "COMMIT" and len(tries) == 1:
            raise lost("COMMIT")

    def work(tx: SqliteTransaction, after: AfterCommit) -> None:
        tries.append(tx.connection)
        tx.insert_runs([new_run(ids["down"], "2026-01-01")], [], NOW, manual=False, reason=None)

    store.listeners.append(drop_at_commit)
    with store.session() as session:
        with pytest.raises(Unavailable, match="may or may not have been written"):
            session.transact(work)
        assert len(tries) == 1 and tries[0].closed
        # The session goes on with a new connection.
        assert session.connection is not tries[0]
        session.transact(work)
    assert len(tries) == 2


def test_a_statement_failing_as_a_lost_connection_is_retried(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    """Listeners are called before the statement is sent: a fault there is a connection lost before it."""
    faults: list[str] = []

    def drop_first_insert(statement: str, connection: Connection) -> None:
        if statement.startswith("INSERT INTO runs") and not faults:
            faults.append(statement)
            raise lost(statement)

    store.listeners.append(drop_first_insert)
    create(store, new_run(ids["down"], "2026-01-01"))
    assert len(faults) == 1 and count(engine, RunRow) == 1


def test_an_idempotency_key_taken_concurrently_is_retried_and_the_next_try_finds_it(
    store: SqliteStore, engine: Engine, ids: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    up = ids["up"]
    (theirs,) = in_transaction(
        store, lambda tx: tx.insert_executions([new_execution(up, "2026-01-01", "k-1")], NOW, None)
    )
    tries: list[int] = []

    def register(tx: SqliteTransaction, after: AfterCommit) -> int:
        tries.append(1)
        if len(tries) > 1:  # as a registration that read before the other committed would not
            (found,) = tx.executions_by_idempotency_key({"k-1"})
            return found.id
        (mine,) = tx.insert_executions([new_execution(up, "2026-01-01", "k-1")], NOW, None)
        return mine

    with caplog.at_level(logging.INFO, logger="flux_control.runtime"), store.session() as session:
        result, _ = session.transact(register)
    assert (result, len(tries), count(engine, ExecutionRow)) == (theirs, 2, 1)
    (record,) = [r for r in caplog.records if r.getMessage() == "retrying the transaction"]
    assert (record.__dict__["attempt"], record.__dict__["reason"]) == (1, "idempotency key taken")


def test_other_database_errors_and_exceptions_roll_back_and_are_not_retried(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    tries: list[int] = []

    def two_open_runs(tx: SqliteTransaction, after: AfterCommit) -> None:
        tries.append(1)
        tx.insert_executions([new_execution(ids["up"], "2026-01-01")], NOW, None)
        pair = new_run(ids["down"], "2026-01-01")
        tx.insert_runs([pair], [], NOW, manual=False, reason=None)
        tx.insert_runs([pair], [], NOW, manual=False, reason=None)  # one open run per key

    def refused(tx: SqliteTransaction, after: AfterCommit) -> None:
        tries.append(1)
        tx.insert_executions([new_execution(ids["up"], "2026-01-01")], NOW, None)
        raise LookupError("a service refuses")

    with store.session() as session:
        with pytest.raises(IntegrityError, match="UNIQUE"):
            session.transact(two_open_runs)
        with pytest.raises(LookupError):
            session.transact(refused)
        assert len(tries) == 2
        session.transact(
            lambda tx, after: tx.insert_executions([new_execution(ids["up"], "2026-01-02")], NOW, None)
        )
    assert (count(engine, ExecutionRow), count(engine, RunRow)) == (1, 0)


def test_listeners_see_the_store_statements_and_commit_on_their_connection_only(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    recorder = Recorder()
    store.listeners.append(recorder)
    with store.session() as session:
        session.transact(
            lambda tx, after: tx.insert_executions([new_execution(ids["up"], "2026-01-01")], NOW, None)
        )
        transaction_connection = session.connection
    with engine.connect() as other:
        other.execute(text("SELECT 1"))  # not the store's
    assert recorder.verbs() == ["BEGIN IMMEDIATE", "INSERT", "INSERT", "COMMIT"]
    assert {id(c) for _, c in recorder.sent} == {id(transaction_connection)}
    store.close()
    with store.session() as session:
        session.run_state(1)
    assert len(recorder.sent) == 4  # closed: nothing forwarded any more


# --- after commit and the sweep -----------------------------------------------------------------------


def test_record_done_marks_only_runs_still_at_the_fire_time_written_and_publishes_the_batch(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    created = create(store, new_run(ids["down"], "2026-01-01"), new_run(ids["down"], "2026-01-02"))
    first, second = sorted(created.values(), key=lambda r: r.id)

    def with_event(run: Run) -> Callable[[SqliteTransaction, AfterCommit], None]:
        return lambda tx, after: after.events.append(
            RunEvent(run.id, "down", run.partitions, None, SCHEDULED, at=NOW)
        )

    recorder = Recorder()
    with store.session() as session:
        _, published = session.transact(with_event(first))
        _, other = session.transact(with_event(second))
        store.listeners.append(recorder)
        stale = LATER - timedelta(seconds=1)  # the run was pushed after this schedule was written
        synced = [ScheduleRequest("s-1", first.id, LATER), ScheduleRequest("s-2", second.id, stale)]
        session.record_done(synced, published.batch, LATER)
    assert recorder.verbs() == ["BEGIN IMMEDIATE", "UPDATE", "UPDATE", "COMMIT"]
    states_now = in_transaction(store, lambda tx: [tx.lock_run(r.id) for r in (first, second)])
    assert [(r.scheduled_fire_at, r.schedule_name) for r in states_now if r] == [(LATER, "s-1"), (None, None)]
    with engine.connect() as connection:
        marks = dict(connection.execute(select(RunEventRow.batch, RunEventRow.published_at)).all())
    assert marks == {published.batch: LATER, other.batch: None}


def test_record_done_with_nothing_to_record_sends_nothing(store: SqliteStore) -> None:
    recorder = Recorder()
    store.listeners.append(recorder)
    with store.session() as session:
        session.record_done([], None, NOW)
    assert recorder.sent == []


def test_record_done_is_all_or_nothing(store: SqliteStore, engine: Engine, ids: dict[str, int]) -> None:
    (run,) = create(store, new_run(ids["down"], "2026-01-01")).values()

    def fail_publishing(statement: str, connection: Connection) -> None:
        if statement.startswith("UPDATE run_events"):
            raise lost(statement)

    store.listeners.append(fail_publishing)
    with store.session() as session, pytest.raises(OperationalError):
        session.record_done([ScheduleRequest("s-1", run.id, LATER)], "some-batch", LATER)
    stored = in_transaction(store, lambda tx: tx.lock_run(run.id))
    assert stored is not None and stored.scheduled_fire_at is None  # the first UPDATE rolled back


def test_the_sweep_reads_begin_deferred_and_see_what_needs_repair(
    store: SqliteStore, engine: Engine, ids: dict[str, int]
) -> None:
    down = ids["down"]
    early = NOW - timedelta(minutes=5)
    created = create(
        store,
        new_run(down, "2026-01-01"),  # fires later, schedule never written
        new_run(down, "2026-01-02"),  # fires later, schedule written below
        new_run(down, "2026-01-03", fire_at=early),  # overdue
        new_run(down, "2026-01-04", AWAITING_APPROVAL),
    )
    unsynced, synced, overdue, _ = sorted(created.values(), key=lambda r: r.id)
    old = RunEvent(unsynced.id, "down", unsynced.partitions, None, SCHEDULED, at=early)
    new = RunEvent(synced.id, "down", synced.partitions, None, SCHEDULED, at=LATER)
    with store.session() as session:
        session.transact(lambda tx, after: after.events.extend([old, new]))
        session.record_done([ScheduleRequest("s", synced.id, LATER)], None, NOW)
        recorder = Recorder()
        store.listeners.append(recorder)
        assert session.unsynced_runs(NOW, 10) == [(unsynced.id, down, LATER)]
        assert session.unsynced_runs(LATER, 10) == []
        assert session.overdue_runs(NOW, 10) == [overdue.id]
        assert session.overdue_runs(LATER, 1) == [unsynced.id]
        outbox = session.unpublished_events(NOW, 10)
        assert [event for _, event in outbox] == [old]
        assert session.run_state(overdue.id) == (SCHEDULED, early)
        assert session.run_state(999) is None
        reads = list(recorder.verbs())
        session.mark_published([i for i, _ in outbox], NOW)
        assert session.unpublished_events(LATER, 10)[0][1] == new
        session.mark_published([], NOW)
    assert reads == ["BEGIN", "SELECT"] * 7  # deferred: a read takes no write lock, and commits nothing
    assert recorder.verbs()[len(reads) :] == ["BEGIN IMMEDIATE", "UPDATE", "COMMIT", "BEGIN", "SELECT"]
    with engine.connect() as connection:
        marks = dict(connection.execute(select(RunEventRow.run_id, RunEventRow.published_at)).all())
    assert marks == {old.run_id: NOW, new.run_id: None}


def test_a_session_holds_one_connection_and_gives_it_back(store: SqliteStore) -> None:
    with store.session() as session:
        assert isinstance(session, SqliteSession)
        held = session.connection
        session.run_state(1)
        session.transact(lambda tx, after: tx.newest_revision())
        assert session.connection is held
    assert held.closed
