"""Smoke tests of the runtime and peer benchmarks (quick mode)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bench import peer_dagster, runtime, runtime_cpu


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.slow
def test_runtime_bench_quick_on_sqlite(tmp_path: Path) -> None:
    tables = runtime.run(quick=True, kinds=["sqlite"], workdir=str(tmp_path))
    latency, counts = tables  # no PostgreSQL: no concurrency table
    for table in tables:
        assert table.rows, table.title
        assert all(len(row) == len(table.headers) for row in table.rows), table.title
    for row in latency.rows:
        assert all(_numeric(v) and v > 0 for v in row[4:]), row  # reg/s, p50, p99: moto and in-memory
    by_case = {(row[1], row[2]): row for row in counts.rows}
    column = counts.headers.index("SQL statements")
    statements = {case: row[column] for case, row in by_case.items()}
    assert all(_numeric(v) for v in statements.values()), statements  # constant within each pass
    assert statements[(1, runtime.QUICK_HISTORY)] == statements[(10, runtime.QUICK_HISTORY)]
    assert statements[(1, 0)] == statements[(1, runtime.QUICK_HISTORY)]  # nor with history
    runs = counts.headers.index("runs opened")
    writes = counts.headers.index("schedule writes")
    publishes = counts.headers.index("event publish calls")
    for row in counts.rows:
        assert row[runs] == row[1]  # one run per dependent
        assert row[writes] == row[runs]  # one schedule write per run opened
        assert row[publishes] == 1  # the registration's events in one call


def test_peer_bench_without_dagster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dagster", None)  # makes `import dagster` fail
    [table] = peer_dagster.run(quick=True, kinds=["sqlite"], workdir=str(tmp_path))
    assert table.rows == []
    assert table.notes == ["not run: install the bench extra (pip install -e '.[bench]')"]
    assert "not run" in table.markdown()


@pytest.mark.postgresql
def test_cpu_split_quick_on_postgresql(tmp_path: Path, postgres_admin: object) -> None:
    """Every path is measured; the server's share is read (PostgreSQL runs on this machine in CI)."""
    table = runtime_cpu.cpu_split(quick=True, history=200, workdir=str(tmp_path))
    assert [row[0].split(" ")[0] for row in table.rows] == [
        "floor:",
        "register_executions",
        "lambda_handler",
        "lambda_handler,",
    ]
    client, server = table.headers.index("client CPU ms"), table.headers.index("server CPU ms")
    stub = table.rows[-1]
    assert _numeric(stub[client]) and stub[client] > 0 and stub[server] == 0  # no database at all
    for row in table.rows[:3]:
        assert _numeric(row[client]) and row[client] > 0, row
        assert _numeric(row[server]), row  # a number, not "n/a": the backends were found in /proc


class _Sent:
    """What psycopg connections are asked to send, as the driver sees it: per statement, its text, the
    ``prepare`` option, how many parameters, and whether the connection is in autocommit."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, int | None, bool]] = []

    def spy(self, execute: Any) -> Any:
        def recording(connection: Any, query: Any, params: Any = None, **options: Any) -> Any:
            count = None if params is None else len(params)
            self.calls.append((str(query), options.get("prepare"), count, connection.autocommit))
            return execute(connection, query, params, **options)

        return recording


@pytest.mark.postgresql
def test_the_floor_sends_what_the_postgresql_store_sends_for_one_registration(
    tmp_path: Path, postgres_admin: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The floor is honest: per registration, the PostgreSQL store's statement texts (its listeners
    heard them), in order, with the same BEGIN/COMMIT framing and after-commit record_done, the same
    prepare options, parameter counts and autocommit connection, from psycopg alone."""
    import psycopg

    from bench.common import database
    from bench.runtime_floor import DEPENDENT, connect, table_ids
    from bench.runtime_floor import register as floor_register
    from bench.runtime_setup import (
        apply_definitions,
        closing_store,
        fan_out_definitions,
        in_memory_runtime,
        load_history,
        measured_days,
    )
    from controller.db.engine import make_engine
    from controller.services.registration import ExecutionInput, register_executions

    assert fan_out_definitions(1)[-1]["name"] == DEPENDENT
    days = measured_days(0, 3)
    heard: list[str] = []
    by_store, by_floor = _Sent(), _Sent()
    execute = psycopg.Connection.execute
    with database("postgresql", str(tmp_path)) as url:
        engine = make_engine(url)
        try:
            apply_definitions(engine, fan_out_definitions(1))
            load_history(engine, 10, days)
            with closing_store(in_memory_runtime(engine)) as deps:
                first = [ExecutionInput("source", {"dt": days[0].isoformat()}, "bench")]
                register_executions(deps, first, None)  # warm-up: the definitions cached
                deps.store.listeners.append(lambda statement, _connection: heard.append(statement))
                monkeypatch.setattr(psycopg.Connection, "execute", by_store.spy(execute))
                item = [ExecutionInput("source", {"dt": days[1].isoformat()}, "bench")]
                answer = register_executions(deps, item, None)
                monkeypatch.setattr(psycopg.Connection, "execute", execute)
            assert [run["table_name"] for run in answer["runs"]] == [DEPENDENT]
            found = table_ids(url, ["source", "reference", DEPENDENT])
            ids = {"source": found["source"], "reference": found["reference"], "dependent": found[DEPENDENT]}
            with connect(url) as connection:
                monkeypatch.setattr(psycopg.Connection, "execute", by_floor.spy(execute))
                floor_register(connection, ids, days[2], 0)
                monkeypatch.setattr(psycopg.Connection, "execute", execute)
                state = connection.execute(
                    "SELECT status, schedule_name IS NOT NULL FROM runs WHERE partition_key = %s",
                    (f'[["dt","{days[2].isoformat()}"]]',),
                ).fetchall()
        finally:
            engine.dispose()
    assert heard[0] == "BEGIN" and heard[-2] == "COMMIT" and "pg_advisory_xact_lock" in heard[1]
    assert [text for text, *_ in by_store.calls] == heard  # the listeners heard every statement sent
    assert [text for text, *_ in by_floor.calls] == heard
    assert by_floor.calls == by_store.calls
    assert state == [("scheduled", True)]  # the floor's registration did what the store's does
