"""Never more than N runs dispatching or running, under 8 concurrent Lambdas on PostgreSQL (DESIGN §8).

The design:

- One table, ``limited``: ``max_concurrent_runs: 2``, one Glue task, debounce 0.
- Eight worker processes (spawned, as the chaos soak's: each Lambda container is a process of its own,
  with its own engine, store and connections; :func:`tests.concurrency_limit_support.worker`) do at
  random, for :data:`DURATION` seconds: open manual runs for many keys (each fires at once, and queues
  when both slots are busy), fire open runs again (duplicate and late fires), complete started tasks
  (Glue's SUCCEEDED event, sometimes twice) and sweep. No faults are injected: what is judged is the
  slot count under concurrency alone.
- The invariant is measured by the database itself, at every commit of every process: a deferred
  constraint trigger installed by the test on ``runs`` counts the table's runs in ``dispatching`` or
  ``running`` once the transaction that moved one there commits, under a lock of the test's own that
  orders those counts, and records a violation when the count exceeds the limit
  (:data:`tests.concurrency_limit_support.INVARIANT_SQL` explains why no interleaving can hide one).
  It also records the peak, so that a trigger that never fired cannot pass for a kept limit.
- Every task start is a row in the test's ``task_starts`` table, from every process: a task started
  twice for one (run, attempt, alias) shows there.
- Then, in this process, a final drain (complete what started, fire what waits, sweep) until every run
  ended; every run must have succeeded, and some must have waited ``queued`` (the run events say so).

PostgreSQL only: SQLite serialises writers, so concurrent claims cannot race there. Skipped on a
developer machine without PostgreSQL, never in CI (``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from multiprocessing.context import SpawnProcess

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from controller.core.runs import OPEN_STATES, QUEUED, SCHEDULED, SUCCEEDED
from controller.db.definition_models import TableRow
from controller.db.engine import make_engine
from controller.db.run_models import RunEventRow, RunRow, TaskDispatchRow
from controller.reconciler import apply
from controller.services import completion, firing, sweep
from controller.services.dependencies import Dependencies
from tests.concurrency_limit_support import (
    INVARIANT_SQL,
    LIMIT,
    SEED,
    SETUP_TIMEOUT,
    TABLE,
    TABLES,
    WorkerReport,
    dependencies,
    worker,
)
from tests.conftest import postgres_schema
from tests.factories import states

pytestmark = [pytest.mark.postgresql, pytest.mark.slow]

WORKERS = 8
DURATION = 12.0  # seconds of concurrent load
#: Rounds of the final drain; each ends at least the runs in progress (two), so this covers any queue
#: the load can leave.
DRAIN_ROUNDS = 1000
#: Every worker must have done this much for the load to mean anything.
MINIMUM = {"open": 20, "complete": 20}


@pytest.fixture
def limit_url(postgres_admin: Engine) -> Iterator[str]:
    """A fresh PostgreSQL schema (PostgreSQL only: concurrent writers are what this is about)."""
    with postgres_schema(postgres_admin, "flux_limit") as url:
        yield url


def install(engine: Engine) -> int:
    """The definitions applied, the invariant's trigger and tables installed; the table's id."""
    apply(engine, desired=states(TABLES), revision="limit", actor="test", now=datetime.now(UTC))
    with engine.begin() as connection:
        for statement in INVARIANT_SQL:
            connection.execute(text(statement.replace("{limit}", str(LIMIT)).replace("{table}", TABLE)))
    with Session(engine) as session:
        return session.execute(select(TableRow.id).where(TableRow.name == TABLE)).scalar_one()


def test_never_more_than_the_limit_in_progress_under_eight_concurrent_lambdas(limit_url: str) -> None:
    engine = make_engine(limit_url, pool_size=2, max_overflow=2)
    context = multiprocessing.get_context("spawn")
    processes: list[SpawnProcess] = []
    try:
        table_id = install(engine)
        reports_queue = context.Queue()
        start = context.Barrier(WORKERS + 1)
        processes = [
            context.Process(
                target=worker,
                args=(limit_url, index, DURATION, start, reports_queue),
                name=f"limit-worker-{index}",
            )
            for index in range(WORKERS)
        ]
        for process in processes:
            process.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # a worker that could not start says why
            start.wait(SETUP_TIMEOUT)
        began = time.monotonic()
        reports = sorted(
            (reports_queue.get(timeout=DURATION + SETUP_TIMEOUT) for _ in processes),
            key=lambda report: report.index,
        )
        for process in processes:
            process.join(SETUP_TIMEOUT)
        loaded = time.monotonic() - began
        print(summary(reports, loaded))
        failed = [report for report in reports if report.error is not None]
        assert failed == [], "\n".join(f"worker {r.index} raised:\n{r.error}" for r in failed)
        assert [p.exitcode for p in processes] == [0] * WORKERS
        for report in reports:
            assert all(report.actions.get(name, 0) >= least for name, least in MINIMUM.items()), report
        # No fault is injected: a logged error (an immediate fire that failed after commit, a sweep
        # that gave a run up) would be the product failing under concurrency alone.
        errors = {m: n for r in reports for m, n in r.logged.items() if not m.startswith("WARNING")}
        assert errors == {}, errors

        with Session(engine) as session:
            violations = session.execute(
                text("SELECT run_id, busy, runs, at FROM limit_violations ORDER BY id")
            ).all()
            assert violations == [], (
                f"{len(violations)} commits left more than {LIMIT} runs in progress, the first: "
                + "; ".join(
                    f"run {v.run_id}: {v.busy} in progress ({v.runs}) at {v.at}" for v in violations[:5]
                )
            )
            checks, peak = session.execute(
                text("SELECT checks, peak FROM limit_checks WHERE table_id = :t"), {"t": table_id}
            ).one()
            # The trigger watched, and the limit was reached.
            assert checks > 100 and peak == LIMIT, (checks, peak)

            during = Counter(
                session.execute(select(RunRow.status).where(RunRow.table_id == table_id)).scalars().all()
            )
        assert during[SUCCEEDED] >= 50, f"too few runs got through the slots during the load: {during}"

        repair = dependencies(engine, random.Random(SEED))
        try:
            rounds = drain(repair, engine)
        finally:
            repair.store.close()
        print(f"  after the load: {dict(during)}; drained in {rounds} rounds")
        check_outcome(engine, table_id)
    finally:
        for process in processes:  # only after a failure above: a worker that still runs is ended
            if process.is_alive():
                process.kill()
                process.join()
        engine.dispose()


def summary(reports: list[WorkerReport], seconds: float) -> str:
    """What the load did, for ``pytest -s`` and the reader of a failure."""
    lines = [f"concurrency limit: {len(reports)} processes for {seconds:.1f} s"]
    lines += [f"  worker {r.index}: {dict(sorted(r.actions.items()))}" for r in reports]
    logged = sum((Counter(r.logged) for r in reports), Counter[str]())
    lines += [f"  logged {count:5d} × {message}" for message, count in logged.most_common()]
    return "\n".join(lines)


def drain(deps: Dependencies, engine: Engine) -> int:
    """Until no run is open: every started task completes, every waiting run is fired, the sweep runs.
    (The runtime fires the next queued runs itself when a slot frees; firing them here as well is what
    a late schedule or a duplicate delivery does, and must change nothing.) Returns the rounds taken."""
    for rounds in range(DRAIN_ROUNDS):
        with Session(engine) as session:
            started = (
                session.execute(
                    select(TaskDispatchRow.external_id).where(TaskDispatchRow.status == "started")
                )
                .scalars()
                .all()
            )
            waiting = (
                session.execute(
                    select(RunRow.id).where(RunRow.status.in_([SCHEDULED, QUEUED])).order_by(RunRow.id)
                )
                .scalars()
                .all()
            )
            still_open = session.execute(
                select(func.count()).select_from(RunRow).where(RunRow.status.in_(OPEN_STATES))
            ).scalar_one()
        if not still_open:
            return rounds
        for external_id in started:
            assert external_id is not None
            completion.task_state_changed(deps, "glue", external_id, "SUCCEEDED", "ok")
        for run_id in waiting[:3]:
            firing.fire(deps, run_id)
        sweep.sweep(deps)
    pytest.fail(f"runs still open after {DRAIN_ROUNDS} rounds of the final drain")


def check_outcome(engine: Engine, table_id: int) -> None:
    """After the drain: no violation then either, every run succeeded once with its one task started
    once, and the queue was really used."""
    with Session(engine) as session:
        violations = session.execute(text("SELECT run_id, busy, runs FROM limit_violations")).all()
        assert violations == [], f"the drain broke the limit: {violations[:5]}"

        statuses = Counter(
            session.execute(select(RunRow.status).where(RunRow.table_id == table_id)).scalars().all()
        )
        assert set(statuses) == {SUCCEEDED}, statuses
        runs = statuses[SUCCEEDED]

        starts = Counter(
            (row.run_id, row.attempt, row.alias)
            for row in session.execute(text("SELECT run_id, attempt, alias FROM task_starts")).all()
        )
        twice = sorted(task for task, count in starts.items() if count > 1)
        assert twice == [], f"tasks started twice (run, attempt, alias): {twice[:10]}"
        succeeded = {
            (run_id, attempt)
            for run_id, attempt in session.execute(
                select(RunRow.id, RunRow.attempt).where(RunRow.status == SUCCEEDED)
            ).all()
        }
        assert {(run_id, attempt) for run_id, attempt, _ in starts} == succeeded  # one start each

        queued = session.execute(
            select(func.count(func.distinct(RunEventRow.run_id))).where(
                RunEventRow.detail["new_state"].as_string() == QUEUED
            )
        ).scalar_one()
        assert queued >= 10, f"only {queued} of {runs} runs ever waited queued: the limit was never tested"
        print(f"  {runs} runs, all succeeded; {queued} of them waited queued; {len(starts)} task starts")
