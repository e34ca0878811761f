"""The registration's statements: definitions cached per process but checked in the gate-lock statement,
multi-row shapes (several items, partitions omitted), and what each statement leaves in the tables.
On PostgreSQL these are the driver-level statements of ``controller.db.postgresql_statements``; on SQLite, Core."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from controller import wiring
from controller.core.errors import NotFound
from controller.db import postgresql_statements
from controller.db.run_models import ExecutionRow, ExecutionValueRow, RunEventRow, RunRow, RunTriggerRow
from controller.reconciler import apply
from controller.services.dependencies import Dependencies
from controller.services.registration import ExecutionInput, register_executions
from tests.factories import StatementLog, person, states, table_doc
from tests.runtime_support import START

DAILY = [{"name": "dt", "type": "date"}]
REGIONAL = [{"name": "dt", "type": "date"}, {"name": "regiao", "type": "string", "is_required": False}]


class Ports:
    """AWS ports that accept everything and remember nothing."""

    def put(self, request: object) -> None:
        pass

    def delete(self, name: str) -> None:
        pass

    def start(self, request: object) -> str:
        return "x"

    def status(self, type: str, target: str, external_id: str) -> None:
        return None

    def stop(self, type: str, target: str, external_id: str) -> bool:
        return False

    def publish(self, events: object) -> None:
        pass


_made: list[Dependencies] = []


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    """Each test's stores are closed after it (the PostgreSQL store holds connections of its own)."""
    yield
    while _made:
        _made.pop().store.close()


def runtime_for(engine: Engine, clock: Callable[[], datetime] = lambda: START) -> Dependencies:
    deps = wiring.dependencies_for(engine, Ports(), Ports(), Ports(), clock=clock)
    _made.append(deps)
    return deps


def applied(engine: Engine, documents: list[dict[str, Any]], revision: str) -> None:
    apply(engine, desired=states(documents), revision=revision, actor="t", now=START, allow_delete=True)


def register(runtime: Dependencies, *items: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return register_executions(runtime, [ExecutionInput(t, p, "test") for t, p in items], person("tester"))


def runs_of(engine: Engine) -> list[tuple[str, str]]:
    with Session(engine) as session:
        rows = session.execute(select(RunRow.partition_key, RunRow.status).order_by(RunRow.id))
        return [(key, status) for key, status in rows]


def test_a_table_applied_after_the_definitions_were_cached_is_known_at_once(engine: Engine) -> None:
    applied(engine, [table_doc("a", partitions=DAILY)], "one")
    runtime = runtime_for(engine)
    register(runtime, ("a", {"dt": "2026-01-01"}))  # loads and caches the definitions
    applied(engine, [table_doc("a", partitions=DAILY), table_doc("b", partitions=DAILY)], "two")
    answer = register(runtime, ("b", {"dt": "2026-01-01"}))
    assert answer["executions"][0]["table_name"] == "b"


def test_a_dependency_added_after_the_definitions_were_cached_opens_its_gate(engine: Engine) -> None:
    applied(engine, [table_doc("a", partitions=DAILY)], "one")
    runtime = runtime_for(engine)
    register(runtime, ("a", {"dt": "2026-01-01"}))
    downstream = table_doc("d", partitions=DAILY, dependencies=[{"dependency_name": "a"}])
    applied(engine, [table_doc("a", partitions=DAILY), downstream], "two")
    answer = register(runtime, ("a", {"dt": "2026-01-02"}))
    assert [(r["table_name"], r["partitions"]) for r in answer["runs"]] == [("d", {"dt": "2026-01-02"})]


def test_a_table_deleted_after_the_definitions_were_cached_is_refused(engine: Engine) -> None:
    applied(engine, [table_doc("a", partitions=DAILY), table_doc("b", partitions=DAILY)], "one")
    runtime = runtime_for(engine)
    register(runtime, ("b", {"dt": "2026-01-01"}))
    applied(engine, [table_doc("a", partitions=DAILY)], "two")
    with pytest.raises(NotFound, match="unknown table 'b'"):
        register(runtime, ("b", {"dt": "2026-01-02"}))


def test_unchanged_definitions_cost_no_statement_of_their_own(engine: Engine) -> None:
    """The revision is read by the gate-lock statement: no separate version query once cached."""
    downstream = table_doc("d", partitions=DAILY, dependencies=[{"dependency_name": "a"}])
    applied(engine, [table_doc("a", partitions=DAILY), downstream], "one")
    runtime = runtime_for(engine)
    register(runtime, ("a", {"dt": "2026-01-01"}))
    with StatementLog(runtime.store) as log:
        register(runtime, ("a", {"dt": "2026-01-02"}))
    revisions = [s for s in log.statements if "reconcile_revisions" in s]
    assert len(revisions) == 1
    if engine.dialect.name == "postgresql":
        assert "pg_advisory_xact_lock" in revisions[0]


def test_several_items_of_different_shapes_are_stored_with_their_own_values(engine: Engine) -> None:
    downstream = table_doc(
        "d",
        partitions=REGIONAL,
        dependencies=[{"dependency_name": "daily"}, {"dependency_name": "regional"}],
    )
    documents = [table_doc("daily", partitions=DAILY), table_doc("regional", partitions=REGIONAL), downstream]
    applied(engine, documents, "one")
    answer = register(
        runtime_for(engine),
        ("regional", {"dt": "2026-01-01", "regiao": "sul"}),
        ("daily", {"dt": "2026-01-01"}),
        ("regional", {"dt": "2026-01-02"}),  # regiao omitted: stored as NULL, agrees with any region
        ("daily", {"dt": "2026-01-02"}),
    )
    ids = [e["id"] for e in answer["executions"]]
    assert len(set(ids)) == 4 and ids == sorted(ids)
    with Session(engine) as session:
        values = {
            (execution_id, name): value
            for execution_id, name, value in session.execute(
                select(ExecutionValueRow.execution_id, ExecutionValueRow.name, ExecutionValueRow.value)
            )
        }
        by_id = {
            i: (t, k)
            for i, t, k in session.execute(
                select(ExecutionRow.id, ExecutionRow.table_id, ExecutionRow.partition_key)
            )
        }
        triggers = sorted(session.execute(select(RunTriggerRow.run_id, RunTriggerRow.execution_id)).all())
        events = session.execute(select(RunEventRow.run_id, RunEventRow.detail)).all()
    assert values == {
        (ids[0], "dt"): "2026-01-01",
        (ids[0], "regiao"): "sul",
        (ids[1], "dt"): "2026-01-01",
        (ids[2], "dt"): "2026-01-02",
        (ids[2], "regiao"): None,
        (ids[3], "dt"): "2026-01-02",
    }
    assert [by_id[i][1] for i in ids] == [
        '[["dt","2026-01-01"],["regiao","sul"]]',
        '[["dt","2026-01-01"]]',
        '[["dt","2026-01-02"]]',
        '[["dt","2026-01-02"]]',
    ]
    # d opens for (2026-01-01, sul) from items 0+1 and for 2026-01-02 (region omitted) from items 2+3.
    runs = answer["runs"]
    assert sorted((r["partitions"]["dt"], r["partitions"].get("regiao")) for r in runs) == [
        ("2026-01-01", "sul"),
        ("2026-01-02", None),
    ]
    first = next(r["id"] for r in runs if r["partitions"]["dt"] == "2026-01-01")
    second = next(r["id"] for r in runs if r["partitions"]["dt"] == "2026-01-02")
    assert triggers == sorted([(first, ids[0]), (first, ids[1]), (second, ids[2]), (second, ids[3])])
    assert sorted((run_id, detail["run_id"], detail["new_state"]) for run_id, detail in events) == sorted(
        [(first, first, "scheduled"), (second, second, "scheduled")]
    )


def test_a_pushed_run_records_its_trigger_and_its_new_fire_time(engine: Engine) -> None:
    downstream = table_doc(
        "d", partitions=DAILY, debounce_seconds=600, dependencies=[{"dependency_name": "a"}]
    )
    applied(engine, [table_doc("a", partitions=DAILY), downstream], "one")
    clock = [START]
    runtime = runtime_for(engine, lambda: clock[0])
    first = register(runtime, ("a", {"dt": "2026-01-01"}))
    clock[0] = START + timedelta(seconds=60)
    second = register(runtime, ("a", {"dt": "2026-01-01"}))
    (run,) = first["runs"]
    assert second["runs"][0]["id"] == run["id"]
    assert second["runs"][0]["fire_at"] == (START + timedelta(seconds=660)).isoformat()
    with Session(engine) as session:
        triggers = session.execute(
            select(RunTriggerRow.execution_id).where(RunTriggerRow.run_id == run["id"])
        )
        assert sorted(triggers.scalars()) == [first["executions"][0]["id"], second["executions"][0]["id"]]
    assert runs_of(engine) == [('[["dt","2026-01-01"]]', "scheduled")]


def test_a_request_past_the_parameter_limit_is_sent_in_batches_with_the_same_outcome(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill into a wide fan-out can exceed PostgreSQL's 65,535 parameters per statement: each
    statement is cut into batches (here at 20 parameters) and the outcome is that of one."""
    needs = [{"dependency_name": "a"}, {"dependency_name": "r"}]
    dependents = [
        table_doc(f"d{i}", partitions=DAILY, debounce_seconds=600, dependencies=needs) for i in range(3)
    ]
    applied(engine, [table_doc("a", partitions=DAILY), table_doc("r", partitions=DAILY), *dependents], "one")
    runtime = runtime_for(engine)
    days = [f"2026-01-0{day}" for day in range(1, 9)]
    register(runtime, *(("r", {"dt": day}) for day in days))
    register(runtime, ("a", {"dt": days[0]}))  # opens d0..d2 for the first day: pushed below
    monkeypatch.setattr(postgresql_statements, "MAX_PARAMETERS", 20)
    with StatementLog(runtime.store) as log:
        answer = register(runtime, *(("a", {"dt": day}) for day in days))
    ids = [e["id"] for e in answer["executions"]]
    assert len(set(ids)) == len(days) and ids == sorted(ids)
    assert sorted((r["table_name"], r["partitions"]["dt"]) for r in answer["runs"]) == sorted(
        (f"d{i}", day) for i in range(3) for day in days
    )
    with Session(engine) as session:
        values = dict(session.execute(select(ExecutionValueRow.execution_id, ExecutionValueRow.value)).all())
        runs = {r.id: r for r in session.execute(select(RunRow)).scalars()}
        executions = dict(session.execute(select(ExecutionRow.id, ExecutionRow.partition_key)).all())
        triggers = session.execute(select(RunTriggerRow.run_id, RunTriggerRow.execution_id)).all()
        events = session.execute(select(RunEventRow.run_id, RunEventRow.published_at)).all()
    assert [values[i] for i in ids] == days
    assert len(runs) == 3 * len(days)  # the first day's three runs were pushed, not opened again
    by_run: dict[int, list[str]] = {}
    for run_id, execution_id in triggers:
        by_run.setdefault(run_id, []).append(executions[execution_id])
    for run in runs.values():
        key = f'[["dt","{run.partitions["dt"]}"]]'
        # r's execution and a's (twice for the first day: registered before, and again now)
        assert sorted(by_run[run.id]) == [key] * (3 if key.endswith('01"]]') else 2), run.partitions
        assert run.scheduled_fire_at == run.fire_at  # every schedule marked written after commit
    assert len(events) == 3 * len(days) and all(published is not None for _, published in events)
    if engine.dialect.name == "postgresql":
        statements = " ".join(log.statements)
        assert statements.count("pg_advisory_xact_lock(hashtextextended") == 3 * len(days)
        for marker in (
            "INSERT INTO executions",
            "FROM executions WHERE",
            "FROM runs WHERE",
            "INSERT INTO runs",
        ):
            assert sum(marker in s for s in log.statements) > 1, marker  # sent in several batches
