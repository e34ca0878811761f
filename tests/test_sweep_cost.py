"""A sweep over 10,000 healthy running runs costs the same as over 10: the same SQL statements and
no AWS call; a backlog of tasks due for a check costs ``FLUX_POLL_BATCH`` status calls and one
statement each, whatever its size (DESIGN §8). On SQLite and on PostgreSQL.

The rows are the benchmark's (:mod:`bench.sweep`): a healthy running run is ``running`` with its one
Glue task ``started``, its check time and deadline ahead, its events published, bulk-inserted; AWS is
a recording fake behind every port (a task asked about is still running); the clock is stopped. The
statements are logged twice: by the runtime's store (its ``listeners``) and by the engine (whatever
else went through SQLAlchemy).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from bench import sweep as bench_sweep
from bench.sweep import RecordingAws, add_running, due_count, install, sweep_runtime
from controller.services.dependencies import Dependencies
from controller.services.sweep import sweep
from tests.factories import StatementLog

#: What a sweep that finds nothing to do reports, pass by pass.
NOTHING_DONE = {
    "schedules_written": 0,
    "overdue_fired": 0,
    "overdue_given_up": 0,
    "schedules_deleted": 0,
    "events_published": 0,
    "stuck_settled": 0,
    "stuck_failed": 0,
    "queued_fired": 0,
    "reruns_served": 0,
    "tasks_settled": 0,
    "tasks_timed_out": 0,
    "tasks_still_running": 0,
    "tasks_unreachable": 0,
}
#: One indexed read per pass, and nothing else: more would be a statement per something.
MOST_STATEMENTS_WHEN_IDLE = 10
POSTPONE = "UPDATE task_dispatches SET check_at"


@dataclass
class Cost:
    """One sweep's statement texts (the store's, BEGIN and COMMIT left out; the engine's), its AWS
    port calls by kind, and what it reported."""

    store: list[str]
    engine: list[str]
    aws: dict[str, int]
    report: dict[str, int]


@dataclass
class World:
    engine: Engine
    table_id: int
    aws: RecordingAws
    deps: Dependencies

    def cost(self) -> Cost:
        before = self.aws.calls.snapshot()
        with StatementLog(self.deps.store) as store, StatementLog(self.engine) as engine:
            report = sweep(self.deps)
        after = self.aws.calls.snapshot()
        calls = {kind: after[kind] - before[kind] for kind in after if after[kind] != before[kind]}
        return Cost(store.statements, engine.statements, calls, report)


@pytest.fixture
def world(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The definition applied, the runtime on recording AWS fakes, one sweep done (connections open,
    statements prepared); the settings at their defaults."""
    for name in ("FLUX_POLL_BATCH", "FLUX_POLL_AFTER_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    table_id = install(engine)
    aws = RecordingAws()
    deps = sweep_runtime(engine, aws)
    try:
        sweep(deps)
        yield World(engine, table_id, aws, deps)
    finally:
        deps.store.close()


def test_a_sweep_over_10000_healthy_running_runs_costs_what_one_over_10_does(world: World) -> None:
    add_running(world.engine, world.table_id, 10)
    few = world.cost()
    add_running(world.engine, world.table_id, 9_990)
    many = world.cost()

    assert few.report == many.report == NOTHING_DONE
    assert few.aws == many.aws == {}  # no schedule, task or event call: nothing was due
    assert many.store == few.store  # the very same statements, one by one
    assert many.engine == few.engine
    assert 0 < len(few.store) <= MOST_STATEMENTS_WHEN_IDLE, few.store


def test_a_backlog_of_due_checks_costs_one_batch_of_status_calls_whatever_its_size(world: World) -> None:
    batch = world.deps.poll_batch
    assert batch == 50  # FLUX_POLL_BATCH's default (DESIGN §8)
    add_running(world.engine, world.table_id, 100)
    idle = world.cost()

    add_running(world.engine, world.table_id, 200, due=True)
    some = world.cost()
    assert due_count(world.engine) == 200 - batch  # those asked about are postponed: the next sweep's
    add_running(world.engine, world.table_id, 2_000 - due_count(world.engine), due=True)
    assert due_count(world.engine) == 2_000
    more = world.cost()
    assert due_count(world.engine) == 2_000 - batch

    for cost in (some, more):
        assert cost.aws == {"task_status": batch}  # the oldest checks first, at most a batch
        assert cost.report == {**NOTHING_DONE, "tasks_still_running": batch}
        # The statements of a sweep with nothing due, and one postponing every task asked about.
        extra = Counter(cost.store) - Counter(idle.store)
        assert sum(extra.values()) == len(cost.store) - len(idle.store) == 1
        assert all(statement.startswith(POSTPONE) for statement in extra), extra
    assert more.store == some.store and more.engine == some.engine


def test_the_sweep_benchmark_runs_and_finds_the_counts_constant(tmp_path: Path) -> None:
    """``python -m bench --only sweep`` in quick mode, on SQLite: every case measured, the counts of a
    sweep over healthy runs the same at every size."""
    [table] = bench_sweep.run(quick=True, kinds=["sqlite"], workdir=str(tmp_path))
    column = {name: table.headers.index(name) for name in table.headers}
    cases = [(row[column["case"]], row[column["healthy running runs"]]) for row in table.rows[1:]]
    assert table.rows[0][column["case"]].endswith("× `SELECT 1`")  # the round-trip floor
    assert cases == [
        ("floor: empty database", 0),
        *(("healthy", size) for size in bench_sweep.QUICK_SIZES),
        *(("due checks", bench_sweep.QUICK_SIZES[-1]) for _ in bench_sweep.QUICK_DUE),
    ]
    measured = table.rows[1:]
    assert all(isinstance(row[column["median ms"]], float) for row in measured)
    idle = [row for row in measured if row[column["case"]] != "due checks"]
    assert len({row[column["SQL statements"]] for row in idle}) == 1  # the empty floor's included
    assert {row[column["AWS calls"]] for row in idle} == {0}
    due = [row for row in measured if row[column["case"]] == "due checks"]
    assert {row[column["of which task status"]] for row in due} == {50}
    assert "NOT constant" not in table.markdown()
