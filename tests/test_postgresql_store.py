"""The PostgreSQL store on psycopg alone, each test in a fresh schema: what each statement leaves in the
tables, compare-and-set, the retry loop of a transaction (lost connections, conflicts) and the pool.

The store's connections run in the Asia/Tokyo time zone, so every timestamp read proves its conversion
to UTC."""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine, make_url, text

from bench.sweep import add_running, install
from controller.core.effects import AfterCommit, ScheduleRequest
from controller.core.errors import Unavailable
from controller.core.gates import Probe
from controller.core.keys import key_text
from controller.core.records import NewExecution, NewRun, NewTask, Trigger
from controller.core.runs import DISPATCHING, OPEN_STATES, SCHEDULED, Run, RunEvent, transition
from controller.db import postgresql_lifecycle_statements as lifecycle
from controller.db import postgresql_statements as sql
from controller.db.catalog_store import catalog_loader
from controller.db.engine import make_engine
from controller.db.migrate import upgrade
from controller.db.postgresql_connections import ConnectionPool, conninfo_from_url
from controller.db.postgresql_store import PostgresqlStore, PostgresqlTransaction
from controller.reconciler import apply
from tests.conftest import POSTGRES_URL, postgres_schema
from tests.factories import states, table_doc

pytestmark = pytest.mark.postgresql

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TABLES = [
    table_doc("up"),
    table_doc("down", debounce_seconds=600, dependencies=[{"dependency_name": "up"}]),
    table_doc("gated", requires_approval=True, dependencies=[{"dependency_name": "up"}]),
]


@dataclass
class Database:
    """A fresh schema with :data:`TABLES` applied, a store on it, and what tests do to both."""

    admin: Engine
    engine: Engine
    store: PostgresqlStore
    ids: dict[str, int]
    conninfo: str
    connects: list[int]

    def scalar(self, query: str) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(text(query)).scalar()

    def terminate(self, connection: Any) -> None:
        """End the connection's server process, as a failover or an idle timeout would."""
        pid = connection.info.backend_pid
        with self.admin.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar()

    def terminating(self, when: Callable[[str], bool], times: int = 1_000) -> list[int]:
        """Terminate the connection before each statement ``when`` accepts (``times`` at most)."""
        killed: list[int] = []

        def listener(statement: str, connection: Any) -> None:
            if len(killed) < times and when(statement):
                killed.append(connection.info.backend_pid)
                self.terminate(connection)

        self.store.listeners.append(listener)
        return killed

    def statements(self) -> list[str]:
        """The statements the store sends from now on, whitespace collapsed."""
        sent: list[str] = []
        self.store.listeners.append(lambda statement, _: sent.append(" ".join(statement.split())))
        return sent

    def transact(self, work: Callable[[PostgresqlTransaction, AfterCommit], Any]) -> Any:
        with self.store.session() as session:
            return session.transact(work)[0]


def in_tokyo(conninfo: str) -> str:
    options = conninfo_to_dict(conninfo).get("options") or ""
    return make_conninfo(conninfo, options=f"{options} -c TimeZone=Asia/Tokyo")


@pytest.fixture
def db(postgres_admin: Engine) -> Iterator[Database]:
    with postgres_schema(postgres_admin) as url:
        engine = make_engine(url)
        upgrade(engine)
        apply(engine, desired=states(TABLES), revision="one", actor="t", now=START)
        conninfo = in_tokyo(conninfo_from_url(url))
        connects: list[int] = []

        def current() -> str:  # a function: called for each new connection
            connects.append(1)
            return conninfo

        store = PostgresqlStore(current, catalog_loader(engine))
        ids = catalog_loader(engine)(None).ids
        try:
            yield Database(postgres_admin, engine, store, ids, conninfo, connects)
        finally:
            store.close()
            engine.dispose()


def execution(db: Database, day: str, key: str | None = None, table: str = "up") -> NewExecution:
    return NewExecution(db.ids[table], key_text({"dt": day}), {"dt": day}, "test", None, key, [("dt", day)])


def opened(db: Database, *days: str, table: str = "down") -> list[Run]:
    """Scheduled runs of ``table`` for these days, each triggered by an execution of ``up``."""

    def work(tx: PostgresqlTransaction, _: AfterCommit) -> list[Run]:
        ids = tx.insert_executions([execution(db, day) for day in days], START, "tester")
        new = [NewRun(db.ids[table], key_text({"dt": d}), {"dt": d}, SCHEDULED, START) for d in days]
        triggers = [Trigger(None, r.table_id, r.partition_key, i) for r, i in zip(new, ids, strict=True)]
        created = tx.insert_runs(new, triggers, START, manual=False, reason=None)
        return [created[(r.table_id, r.partition_key)] for r in new]

    runs: list[Run] = db.transact(work)
    return runs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg://flux:p%40ss@db:5432/flux?options=-csearch_path%3Dtenant&sslmode=require",
            {
                "user": "flux",
                "password": "p@ss",
                "host": "db",
                "port": "5432",
                "dbname": "flux",
                "options": "-csearch_path=tenant",
                "sslmode": "require",
            },
        ),
        # As SQLAlchemy renders a URL whose options hold spaces (``URL.render_as_string``).
        (
            "postgresql+psycopg://postgres@127.0.0.1/test?options=-c+search_path%3Dx+-c+statement_timeout%3D5s",
            {
                "user": "postgres",
                "host": "127.0.0.1",
                "dbname": "test",
                "options": "-c search_path=x -c statement_timeout=5s",
            },
        ),
        (
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
            {"user": "u", "host": "/var/run/postgresql", "dbname": "db"},
        ),
        (
            "postgresql://u@[::1]:5433,replica/db",
            {"user": "u", "host": "::1,replica", "port": "5433,", "dbname": "db"},
        ),
    ],
)
def test_a_sqlalchemy_url_becomes_the_libpq_parameters_sqlalchemy_would_pass(
    url: str, expected: dict[str, str]
) -> None:
    assert conninfo_to_dict(conninfo_from_url(url)) == expected
    if "+psycopg" in url:  # what SQLAlchemy itself makes of it
        query = make_url(url).query
        assert all(expected[name] == value for name, value in query.items())


def test_a_url_of_another_database_is_refused() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        conninfo_from_url("sqlite:///flux.db")


def test_options_with_spaces_reach_the_server_through_the_engines_url(postgres_admin: Engine) -> None:
    """The store's connections are made from the engine's URL rendered again (``wiring.store_for``):
    an ``options`` value with spaces sets every setting it names."""
    url = make_url(POSTGRES_URL).update_query_dict(
        {"options": "-c statement_timeout=4321 -c TimeZone=Asia/Tokyo"}
    )
    conninfo = conninfo_from_url(url.render_as_string(hide_password=False))
    with psycopg.connect(conninfo) as connection:
        settings = [
            connection.execute(f"SHOW {name}").fetchone() for name in ("statement_timeout", "TimeZone")
        ]
    assert settings == [("4321ms",), ("Asia/Tokyo",)]


def test_the_listeners_see_begin_each_statement_and_commit_and_events_commit_with_the_batch(
    db: Database,
) -> None:
    [run] = opened(db, "2026-01-01")
    sent = db.statements()
    event = RunEvent(run.id, "down", run.partitions, SCHEDULED, DISPATCHING, at=START)

    def work(tx: PostgresqlTransaction, after: AfterCommit) -> int | None:
        after.events.append(event)
        return tx.lock_gates([db.ids["down"]])

    with db.store.session() as session:
        revision, after = session.transact(work)
    assert revision == db.scalar("SELECT max(id) FROM reconcile_revisions")
    assert sent == [
        "BEGIN",
        " ".join(sql.lock_statement((sql.EXCLUSIVE,)).split()),
        " ".join(sql.insert_events(1).split()),
        "COMMIT",
    ]
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT run_id, created_at, batch, detail FROM run_events")).all()
    assert [tuple(r) for r in rows] == [(run.id, START, after.batch, event.detail())]


def test_new_runs_come_back_whole_with_aware_utc_times_and_their_triggers(db: Database) -> None:
    [run] = opened(db, "2026-01-01")
    assert (run.status, run.attempt, run.manual, run.rerun_requested, run.partitions) == (
        SCHEDULED,
        1,
        False,
        False,
        {"dt": "2026-01-01"},
    )
    for moment in (run.created_at, run.updated_at, run.first_trigger_at, run.fire_at):
        assert moment == START and moment is not None and moment.tzinfo is UTC
    assert (run.scheduled_fire_at, run.finished_at) == (None, None)

    def read(tx: PostgresqlTransaction, _: AfterCommit) -> tuple[Any, ...]:
        [execution_id] = db.scalar("SELECT array_agg(id) FROM executions")
        return (tx.lock_run(run.id), tx.runs_triggered_by([execution_id]), tx.trigger_partitions(run.id))

    locked, triggered, partitions = db.transact(read)
    assert locked == run and list(triggered.values()) == [[run]]
    assert partitions == [("up", {"dt": "2026-01-01"})]


def test_a_state_change_is_compare_and_set_and_records_no_event(db: Database) -> None:
    [run] = opened(db, "2026-01-01")
    change = transition(run, DISPATCHING, START + timedelta(minutes=1), "down")
    assert db.transact(lambda tx, _: tx.apply(change)) is True
    assert db.transact(lambda tx, _: tx.apply(change)) is False  # the run moved: no longer scheduled
    moved = db.transact(lambda tx, _: tx.lock_run(run.id))
    assert moved == change.applied_to(run)
    assert db.scalar("SELECT count(*) FROM run_events") == 0


def test_pushes_of_different_columns_go_in_one_statement_per_set_of_columns(db: Database) -> None:
    first, second, third = opened(db, "2026-01-01", "2026-01-02", "2026-01-03")
    later = START + timedelta(minutes=5)
    changes = [
        {"id": first.id, "last_trigger_at": later, "fire_at": later, "updated_at": later},
        {"id": second.id, "rerun_requested": True, "updated_at": later},
        {"id": third.id, "fire_at": later, "updated_at": later, "last_trigger_at": later},  # same set
    ]
    sent = db.statements()
    db.transact(lambda tx, _: tx.push_runs(changes))
    assert len([s for s in sent if s.startswith("UPDATE runs")]) == 2
    runs = db.transact(lambda tx, _: tx.lock_runs([first.id, second.id, third.id]))
    assert runs[first.id] == replace(first, last_trigger_at=later, fire_at=later, updated_at=later)
    assert runs[second.id] == replace(second, rerun_requested=True, updated_at=later)
    assert runs[third.id].fire_at == later
    with pytest.raises(ValueError, match="status"):
        db.transact(lambda tx, _: tx.push_runs([{"id": first.id, "status": "running"}]))


def test_open_runs_are_found_locked_with_their_newest_approval(db: Database) -> None:
    [run] = opened(db, "2026-01-01", table="gated")
    pair = (run.table_id, run.partition_key)

    def request(tx: PostgresqlTransaction, _: AfterCommit) -> tuple[Any, ...]:
        first = tx.request_approvals([run.id], START)
        again = tx.request_approvals([run.id], START)  # one pending approval per run
        return first, again, tx.lock_open_runs([pair, (run.table_id, "other")])

    first, again, found = db.transact(request)
    assert first == again == {run.id: db.scalar("SELECT id FROM approvals")}
    assert found == {pair: (run, first[run.id])}
    states_asked = [DISPATCHING]
    assert db.transact(lambda tx, _: tx.run_of_key(run.table_id, run.partition_key, OPEN_STATES)) == run
    assert db.transact(lambda tx, _: tx.run_of_key(run.table_id, run.partition_key, states_asked)) is None


def test_approvals_are_decided_once_and_cancelled_with_their_run(db: Database) -> None:
    one, two = opened(db, "2026-01-01", "2026-01-02", table="gated")
    approvals = db.transact(lambda tx, _: tx.request_approvals([one.id, two.id], START))
    decided = START + timedelta(hours=1)

    def decide(tx: PostgresqlTransaction, _: AfterCommit) -> tuple[Any, ...]:
        first = tx.decide_approval(approvals[one.id], "approved", "ana", decided, "ok")
        second = tx.decide_approval(approvals[one.id], "rejected", "bob", decided, None)
        tx.cancel_pending_approvals(two.id, decided)
        return first, second, tx.lock_approval(approvals[one.id]), tx.lock_approval(approvals[two.id])

    first, second, approved, cancelled = db.transact(decide)
    assert (first, second) == (True, False)
    assert (approved.status, approved.decided_by, approved.comment) == ("approved", "ana", "ok")
    assert approved.requested_at.tzinfo is UTC and approved.decided_at == decided
    assert (cancelled.status, cancelled.decided_at) == ("cancelled", decided)
    assert db.transact(lambda tx, _: tx.newest_approvals([one.id, two.id, 0])) == approvals


def test_tasks_start_settle_once_and_are_listed_in_the_order_they_finished(db: Database) -> None:
    [run] = opened(db, "2026-01-01")
    tasks = [NewTask(alias, "glue", f"job-{alias}", {"--dt": "2026-01-01"}) for alias in ("a", "b", "c")]
    later = START + timedelta(minutes=1)

    def dispatch(tx: PostgresqlTransaction, _: AfterCommit) -> tuple[Any, ...]:
        tx.add_tasks(run, tasks)
        tx.task_started(run.id, 1, "a", "jr-a", START)
        tx.task_started(run.id, 1, "b", "jr-b", START)
        tx.task_not_started(run.id, 1, "c", "throttled", START)
        task = tx.lock_task("jr-b")
        assert task is not None and tx.lock_task("unknown") is None
        return tx.settle_task(task.id, True, "ignored", later), tx.settle_task(task.id, False, "late", later)

    assert db.transact(dispatch) == (True, False)
    listed = db.transact(lambda tx, _: tx.tasks_of(run.id, 1))
    assert [(t.alias, t.status, t.external_id, t.error) for t in listed] == [
        ("c", "failed", None, "throttled"),
        ("b", "succeeded", "jr-b", None),
        ("a", "started", "jr-a", None),  # unfinished last
    ]
    assert listed[1].finished_at == later and listed[2].started_at == START
    db.transact(lambda tx, _: tx.settle_unfinished_tasks([run.id], "failed", "run failed", later))
    assert [(t.alias, t.status, t.error) for t in db.transact(lambda tx, _: tx.tasks_of(run.id, 1))] == [
        ("c", "failed", "throttled"),
        ("a", "failed", "run failed"),  # finished when b did: in the order recorded
        ("b", "succeeded", None),
    ]
    assert db.transact(lambda tx, _: tx.request_approvals([], START)) == {}


def test_executions_are_inserted_in_order_with_their_values_without_naming_the_sequence(db: Database) -> None:
    with db.engine.begin() as connection:  # the id sequence is found from the table, whatever its name
        connection.execute(text("ALTER SEQUENCE executions_id_seq RENAME TO execution_numbers"))
    keyed = replace(execution(db, "2026-01-02", key="k-1"), values=[("dt", "2026-01-02"), ("extra", None)])
    items = [execution(db, "2026-01-01"), keyed, replace(execution(db, "2026-01-03"), values=[])]

    def work(tx: PostgresqlTransaction, _: AfterCommit) -> tuple[Any, ...]:
        ids = tx.insert_executions(items, START, None)
        probed = tx.probe(
            [Probe("up", "dt", "2026-01-02"), Probe("down")], db.ids, {v: k for k, v in db.ids.items()}
        )
        return ids, probed, tx.executions_by_idempotency_key({"k-1", "k-2"})

    ids, probed, stored = db.transact(work)
    assert ids == sorted(ids) and len(set(ids)) == 3
    with db.engine.connect() as connection:
        values = connection.execute(
            text("SELECT execution_id, name, value FROM execution_values ORDER BY 1, 2")
        )
        assert [tuple(v) for v in values] == [
            (ids[0], "dt", "2026-01-01"),
            (ids[1], "dt", "2026-01-02"),
            (ids[1], "extra", None),
        ]
    assert [e.id for e in probed["up"]] == [ids[1]] and "down" not in probed
    assert [(s.id, s.idempotency_key, s.partitions) for s in stored] == [
        (ids[1], "k-1", {"dt": "2026-01-02"})
    ]


def test_gate_locks_past_max_parameters_are_several_statements_all_held(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql, "MAX_PARAMETERS", 3)
    sent = db.statements()
    keys = [(db.ids["down"], f"k{n}") for n in range(3)]

    def work(tx: PostgresqlTransaction, _: AfterCommit) -> tuple[Any, ...]:
        revision = tx.lock_gates([db.ids["up"]], keys)
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        return revision, tx.connection.execute(held).fetchone(), tx.load_catalog(revision)

    revision, held, catalog = db.transact(work)
    assert revision == db.scalar("SELECT max(id) FROM reconcile_revisions") == tx_revision(db)
    assert (catalog.revision, catalog.ids) == (revision, db.ids)  # read by the injected loader
    assert held == (5,)  # up exclusive, down shared, three keys of down
    locks = [s for s in sent if "pg_advisory" in s]
    assert len(locks) == 4  # (up, down): 2 parameters, then one key (2) per statement
    assert "pg_advisory_xact_lock_shared" in locks[0] and "hashtextextended" in locks[-1]


def tx_revision(db: Database) -> int | None:
    revision: int | None = db.transact(lambda tx, _: tx.newest_revision())
    return revision


def test_the_open_run_lookup_can_use_the_partial_index_in_a_generic_plan(db: Database) -> None:
    """The open states are literals, not parameters: a prepared plan may use ``uq_runs_open_key``."""
    numbers = itertools.count(1)
    prepared = re.sub("%s", lambda _: f"${next(numbers)}", sql.open_runs_for_update(1, 1))
    with psycopg.connect(db.conninfo, autocommit=True) as connection:
        connection.execute("SET plan_cache_mode = force_generic_plan")
        connection.execute("SET enable_seqscan = off")
        connection.execute(f"PREPARE open_runs(bigint, text) AS {prepared}")
        plan = "\n".join(row[0] for row in connection.execute("EXPLAIN EXECUTE open_runs(1, 'k')"))
    assert "uq_runs_open_key" in plan


#: The sweep's searches (DESIGN §8: a sweep's cost does not grow with the history), with parameters.
SWEEP_SEARCHES: dict[str, tuple[str, list[object]]] = {
    "unsynced": (sql.UNSYNCED_RUNS, ["2026-01-01T00:00:00Z", 500]),
    "overdue": (sql.OVERDUE_RUNS, ["2026-01-01T00:00:00Z", 500]),
    "stuck": (sql.STUCK_DISPATCHING, ["2026-01-01T00:00:00Z", 500]),
    "queued tables": (lifecycle.QUEUED_TABLES, [500]),
    "failed reruns": (lifecycle.FAILED_RERUNS, [500]),
    "tasks to check": (lifecycle.TASKS_TO_CHECK, ["2026-01-01T00:00:00Z", 50]),
}


@pytest.mark.parametrize("search", list(SWEEP_SEARCHES))
def test_the_sweeps_searches_use_an_index_in_a_generic_plan_over_many_running_runs(
    db: Database, search: str
) -> None:
    """Their states are literals: in a plan made for any parameters (psycopg prepares a statement
    after its fifth execution) the planner knows the state is rare, and walks its index, not every
    run (``pk_runs`` or a sequential scan)."""
    add_running(db.engine, install(db.engine), 5_000)
    statement, parameters = SWEEP_SEARCHES[search]
    numbers = itertools.count(1)
    prepared = re.sub("%s", lambda _: f"${next(numbers)}", statement)
    with psycopg.connect(db.conninfo, autocommit=True) as connection:
        connection.execute("ANALYZE")
        connection.execute("SET plan_cache_mode = force_generic_plan")
        connection.execute(f"PREPARE search AS {prepared}")
        values = ", ".join(f"'{value}'" for value in parameters)
        plan = "\n".join(row[0] for row in connection.execute(f"EXPLAIN EXECUTE search({values})"))
    assert "Seq Scan" not in plan and "pk_runs" not in plan, plan
    assert "Index" in plan, plan


def test_record_done_marks_only_runs_still_at_the_fire_time_written_in_one_statement(db: Database) -> None:
    first, second = opened(db, "2026-01-01", "2026-01-02")
    event = RunEvent(first.id, "down", first.partitions, None, SCHEDULED, at=START)
    with db.store.session() as session:
        _, after = session.transact(lambda _, a: a.events.append(event))
    sent = db.statements()
    stale = START + timedelta(seconds=1)  # the run was pushed after this schedule was written
    synced = [ScheduleRequest("s-1", first.id, START), ScheduleRequest("s-2", second.id, stale)]
    with db.store.session() as session:
        session.record_done(synced, after.batch, START)
        session.record_done([], None, START)  # nothing to record: nothing sent
    assert len(sent) == 1 and sent[0].startswith("WITH synced AS")  # no BEGIN, no COMMIT
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT id, scheduled_fire_at, schedule_name FROM runs ORDER BY id"))
        assert [tuple(r) for r in rows] == [(first.id, START, "s-1"), (second.id, None, None)]
    assert db.scalar("SELECT published_at FROM run_events") == START


def test_record_done_past_max_parameters_is_one_transaction(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = opened(db, "2026-01-01", "2026-01-02", "2026-01-03")
    monkeypatch.setattr(sql, "MAX_PARAMETERS", 5)  # one run (3) and the batch (2) per statement
    synced = [ScheduleRequest(f"s-{r.id}", r.id, START) for r in runs]

    def failing_last(statement: str, _: Any) -> None:
        if statement.startswith("WITH synced"):
            raise RuntimeError("the Lambda ran out of time")

    db.store.listeners.append(failing_last)
    with db.store.session() as session, pytest.raises(RuntimeError):
        session.record_done(synced, "b-1", START)
    assert db.scalar("SELECT count(*) FROM runs WHERE scheduled_fire_at IS NOT NULL") == 0  # nothing
    db.store.listeners.remove(failing_last)
    sent = db.statements()
    with db.store.session() as session:
        session.record_done(synced, "b-1", START)
    assert [s.split()[0] for s in sent] == ["BEGIN", "UPDATE", "UPDATE", "WITH", "COMMIT"]
    assert db.scalar("SELECT count(*) FROM runs WHERE scheduled_fire_at IS NOT NULL") == 3  # all


# --- the retry loop -----------------------------------------------------------------------------------


def registering(db: Database, tries: list[int], key: str | None = None) -> Callable[..., Any]:
    """A unit of work that registers one execution, noting each try's server process."""

    def work(tx: PostgresqlTransaction, _: AfterCommit) -> list[int]:
        tries.append(tx.connection.info.backend_pid)
        return tx.insert_executions([execution(db, "2026-01-01", key)], START, None)

    return work


def is_insert(statement: str) -> bool:
    return statement.lstrip().startswith("WITH item AS")


def test_a_connection_terminated_before_commit_is_retried_on_a_new_connection_and_writes_once(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    killed = db.terminating(is_insert, times=1)
    tries: list[int] = []
    with caplog.at_level(logging.INFO, logger="flux_control.runtime"):
        db.transact(registering(db, tries))
    assert len(tries) == 2 and tries[0] == killed[0] and tries[1] != tries[0]
    assert db.scalar("SELECT count(*) FROM executions") == 1
    [record] = [r for r in caplog.records if r.getMessage() == "retrying the transaction"]
    assert (record.attempt, record.sqlstate, record.reason) == (1, "57P01", "connection lost")  # type: ignore[attr-defined]


def test_a_connection_lost_on_every_try_writes_nothing_and_is_unavailable(db: Database) -> None:
    db.terminating(is_insert)
    tries: list[int] = []
    with pytest.raises(Unavailable, match="nothing was written"):
        db.transact(registering(db, tries))
    assert len(tries) == 3  # the first try and MAX_RECONNECTS more
    assert db.scalar("SELECT count(*) FROM executions") == 0
    assert db.store.pool.idle() == 0  # no lost connection went back to the pool


def test_a_connection_lost_while_committing_is_not_retried(db: Database) -> None:
    db.terminating(lambda statement: statement == "COMMIT", times=1)
    tries: list[int] = []
    with pytest.raises(Unavailable, match="may or may not have been written"):
        db.transact(registering(db, tries))
    assert len(tries) == 1
    assert db.scalar("SELECT count(*) FROM executions") == 0  # here COMMIT never reached the server


def test_a_serialization_failure_is_rolled_back_and_retried(db: Database) -> None:
    tries: list[int] = []
    inner = registering(db, tries)

    def work(tx: PostgresqlTransaction, after: AfterCommit) -> Any:
        ids = inner(tx, after)
        if len(tries) == 1:  # the server aborts the transaction, as a concurrent writer would make it
            fail = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"
            tx.connection.execute(fail)
        return ids

    sent = db.statements()
    db.transact(work)
    assert len(tries) == 2 and tries[0] == tries[1]  # the same connection: it was not lost
    assert "ROLLBACK" in sent
    assert db.scalar("SELECT count(*) FROM executions") == 1


def test_a_deadlock_is_retried(db: Database) -> None:
    one, two = opened(db, "2026-01-01", "2026-01-02")
    barrier = threading.Barrier(2, timeout=30)
    tries: dict[str, int] = {}
    failures: list[BaseException] = []

    def locking(name: str, first: int, second: int) -> None:
        def work(tx: PostgresqlTransaction, _: AfterCommit) -> None:
            tries[name] = tries.get(name, 0) + 1
            tx.lock_run(first)
            if tries[name] == 1:
                barrier.wait()  # each holds its first run: the second locks deadlock
            tx.lock_run(second)

        try:
            db.transact(work)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=locking, args=("a", one.id, two.id)),
        threading.Thread(target=locking, args=("b", two.id, one.id)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert sorted(tries.values()) == [1, 2]  # PostgreSQL chose one victim; it ran again


def test_a_lost_race_for_an_idempotency_key_is_retried_and_finds_the_winner(db: Database) -> None:
    tries = 0

    def work(tx: PostgresqlTransaction, _: AfterCommit) -> tuple[str, int]:
        nonlocal tries
        tries += 1
        found = tx.executions_by_idempotency_key({"k-1"})
        if found:
            return "replay", found[0].id
        if tries == 1:  # a concurrent registration with the same key commits first
            winner.extend(db.transact(registering(db, [], key="k-1")))
        return "new", tx.insert_executions([execution(db, "2026-01-01", "k-1")], START, None)[0]

    winner: list[int] = []
    assert db.transact(work) == ("replay", winner[0])
    assert tries == 2


def test_other_errors_are_rolled_back_and_raised_as_they_are(db: Database) -> None:
    [run] = opened(db, "2026-01-01")
    again = NewRun(run.table_id, run.partition_key, run.partitions, SCHEDULED, START)  # one open run per key
    tries: list[int] = []

    def work(tx: PostgresqlTransaction, _: AfterCommit) -> None:
        tries.append(1)
        tx.insert_runs([again], [], START, manual=False, reason=None)

    with pytest.raises(psycopg.errors.UniqueViolation, match="uq_runs_open_key"):
        db.transact(work)
    assert tries == [1]

    def failing(tx: PostgresqlTransaction, _: AfterCommit) -> None:
        tx.newest_revision()
        raise LookupError("not the database's error")

    sent = db.statements()
    with pytest.raises(LookupError):
        db.transact(failing)
    assert sent[-1] == "ROLLBACK" and tries == [1]
    assert db.store.pool.idle() == 1  # rolled back: the connection serves again


# --- the pool ---------------------------------------------------------------------------------------


def test_the_pool_serves_the_connection_used_last_and_keeps_at_most_max_idle(db: Database) -> None:
    pool = ConnectionPool(db.conninfo, max_idle=2)
    first, second, third = pool.acquire(), pool.acquire(), pool.acquire()
    for connection in (first, second, third):
        pool.release(connection)
    assert pool.idle() == 2 and first.closed  # the least recently used was closed
    assert pool.acquire() is third and pool.acquire() is second
    pool.release(second)
    pool.release(third)
    pool.close()
    assert pool.idle() == 0 and second.closed and third.closed


def test_the_pool_discards_broken_connections_and_open_transactions(db: Database) -> None:
    pool = ConnectionPool(db.conninfo)
    broken, busy = pool.acquire(), pool.acquire()
    db.terminate(broken)
    with pytest.raises(psycopg.OperationalError):
        broken.execute("SELECT 1")
    busy.execute("BEGIN")
    pool.release(broken)
    pool.release(busy)
    assert pool.idle() == 0 and busy.closed
    pool.close()


def test_sessions_reuse_the_last_connection_and_replace_one_that_died_idle(db: Database) -> None:
    with db.store.session() as session:
        pid = session.connection.info.backend_pid
    with db.store.session() as session:
        assert session.connection.info.backend_pid == pid
        idle = session.connection
    assert len(db.connects) == 1
    db.terminate(idle)  # e.g. the server's idle timeout while the Lambda was frozen: no pre-ping finds it
    tries: list[int] = []
    db.transact(registering(db, tries))
    assert len(tries) == 1 and tries[0] != pid  # BEGIN failed: nothing ran, run on a new connection
    assert len(db.connects) == 2  # each new connection asked for the conninfo again
    db.terminate(idle := db.store.pool.acquire())
    db.store.pool.release(idle)
    with db.store.session() as session:  # a read outside a transaction is sent again too
        assert session.run_state(0) is None
    assert len(db.connects) == 3


# --- the sweep's reads --------------------------------------------------------------------------------


def test_the_sweep_reads_outside_any_transaction(db: Database) -> None:
    due, later, dispatching = opened(db, "2026-01-01", "2026-01-02", "2026-01-03")
    soon = START + timedelta(minutes=10)
    event = RunEvent(due.id, "down", due.partitions, None, SCHEDULED, at=START)

    def work(tx: PostgresqlTransaction, after: AfterCommit) -> None:
        tx.push_runs([{"id": later.id, "fire_at": soon}])
        tx.apply(transition(dispatching, DISPATCHING, START, "down"))
        after.events.append(event)

    db.transact(work)
    sent = db.statements()
    with db.store.session() as session:
        assert session.unsynced_runs(START, 10) == [(later.id, later.table_id, soon)]
        assert session.overdue_runs(START, 10) == [due.id]
        [(event_id, unpublished)] = session.unpublished_events(START, 10)
        assert unpublished == event and session.unpublished_events(START - timedelta(seconds=1), 10) == []
        session.mark_published([event_id], soon)
        assert session.unpublished_events(soon, 10) == []
        state = session.run_state(later.id)
        assert state == (SCHEDULED, soon) and state[1] is not None and state[1].tzinfo is UTC
        stuck = session.transact(lambda tx, _: tx.stuck_dispatching(START, 10))[0]
        assert [r.id for r in stuck] == [dispatching.id]
    begin = sent.index("BEGIN")  # the reads before it went alone, in autocommit: one statement each
    assert begin == 7 and sent[0] == " ".join(sql.UNSYNCED_RUNS.split()) and sent[-1] == "COMMIT"
    assert db.scalar("SELECT published_at FROM run_events") == soon
