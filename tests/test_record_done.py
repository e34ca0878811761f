"""After commit, what AWS did is recorded all or nothing: schedules written (compare-and-set on the
fire time written) and the outbox batch published; one statement on PostgreSQL, two on SQLite."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from controller import wiring
from controller.core.effects import ScheduleRequest
from controller.db.run_models import RunEventRow, RunRow
from controller.reconciler import apply
from controller.services.dependencies import Dependencies
from controller.services.registration import ExecutionInput, register_executions
from tests.factories import StatementLog, states, table_doc
from tests.runtime_support import START

TABLES = [
    table_doc("up"),
    table_doc("down", debounce_seconds=600, dependencies=[{"dependency_name": "up"}]),
]


class Quiet:
    """AWS ports whose writes fail, so that nothing is recorded before the test records by hand."""

    def put(self, request: object) -> None:
        raise ConnectionError("not written: the test records by hand")

    def delete(self, name: str) -> None:
        pass

    def start(self, request: object) -> str:
        return "x"

    def status(self, type: str, target: str, external_id: str) -> None:
        return None

    def stop(self, type: str, target: str, external_id: str) -> bool:
        return False

    def publish(self, events: object) -> None:
        raise ConnectionError("not published: the test records by hand")


def sent(log: StatementLog) -> list[str]:
    """The statements, without SQLite's BEGIN IMMEDIATE (the engine's own, sent for every transaction)."""
    return [s for s in log.statements if not s.startswith("BEGIN")]


def opened(engine: Engine, days: list[str]) -> tuple[Dependencies, list[tuple[Any, ...]]]:
    apply(engine, desired=states(TABLES), revision="t", actor="t", now=START)
    deps = wiring.dependencies_for(engine, Quiet(), Quiet(), Quiet(), clock=lambda: START)
    for day in days:
        register_executions(deps, [ExecutionInput("up", {"dt": day}, "test")], None)
    with Session(engine) as session:
        runs = [tuple(r) for r in session.execute(select(RunRow.id, RunRow.fire_at).order_by(RunRow.id))]
    return deps, runs


def record(deps: Dependencies, synced: list[tuple[Any, ...]], batch: str | None) -> StatementLog:
    """``record_done`` of (run id, fire time, schedule name) on a session of the store, logged."""
    requests = [ScheduleRequest(name, run_id, fire_at) for run_id, fire_at, name in synced]
    with deps.store.session() as session, StatementLog(deps.store) as log:
        session.record_done(requests, batch, START)
    deps.store.close()
    return log


def test_written_schedules_are_marked_only_at_the_fire_time_written(engine: Engine) -> None:
    deps, [(first, fire_at), (second, _)] = opened(engine, ["2026-01-01", "2026-01-02"])
    stale = START + timedelta(seconds=1)  # the run was pushed after this schedule was written
    log = record(deps, [(first, fire_at, "s-1"), (second, stale, "s-2")], None)
    assert len(sent(log)) == 1  # one UPDATE (an executemany on SQLite)
    with Session(engine) as session:
        rows = dict(session.execute(select(RunRow.id, RunRow.scheduled_fire_at).order_by(RunRow.id)).all())
    assert rows == {first: fire_at, second: None}


def test_the_published_batch_is_marked_with_the_schedules_in_one_go(engine: Engine) -> None:
    deps, [(run_id, fire_at)] = opened(engine, ["2026-01-01"])
    with Session(engine) as session:
        batch = session.execute(select(RunEventRow.batch)).scalar_one()
    log = record(deps, [(run_id, fire_at, "s-1")], batch)
    assert len(sent(log)) == (1 if engine.dialect.name == "postgresql" else 2)
    with Session(engine) as session:
        assert session.execute(select(RunEventRow.published_at)).scalar_one() == START
        assert session.execute(select(RunRow.schedule_name)).scalar_one() == "s-1"


def test_nothing_to_record_sends_nothing(engine: Engine) -> None:
    deps, _ = opened(engine, [])
    log = record(deps, [], None)
    assert len(sent(log)) == 0
