"""Smoke tests of the runtime and peer benchmarks (quick mode)."""

from __future__ import annotations

import sys
from pathlib import Path

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
