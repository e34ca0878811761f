"""Chaos soak: worker processes register, approve, cancel, fire, complete, retry and sweep at random while
the AWS ports fail at random, on PostgreSQL; then the invariants that matter are checked.

The design:

- Each worker is an OS process, as each Lambda container is: started with ``spawn`` (forking a process
  whose psycopg and SQLAlchemy connections exist would share their sockets), it builds its own engine,
  store and ``Dependencies`` from the database URL (:func:`tests.chaos_support.worker`). Workers share
  only the database and AWS.
- AWS is one :class:`~tests.chaos_support.AwsState` held by a ``SyncManager`` (its own process): the
  schedules that exist (name → run, fire time), the invocations of those that fired, every task start
  (run, attempt, alias: duplicates are counted across processes), the events published, and the clock.
  Each process talks to it through thin adapters of the Scheduler, TaskStarter and EventPublisher ports
  that fail at random, from a seeded RNG of the process's own: refused before AWS acts, or (scheduler,
  events) acted on with the answer lost.
- EventBridge Scheduler fires a schedule once the clock reaches its time and deletes it
  (``ActionAfterCompletion=DELETE``); a worker's "fire" takes one pending invocation, sometimes leaving
  it for another worker as well (delivery is at least once).
- Bounded: ``DURATION`` seconds of chaos (CI runs it: it is marked ``postgresql`` and ``slow``, not
  skipped). The seeds are fixed per worker, so a failure replays the same choices (the interleaving of
  the processes still varies, which is the point). A worker that raises anything but a ServiceError
  (the API's 4xx answers) fails the test with its traceback.
- Then the final repair, in this process, with the faults off, in two steps. First at the time the
  chaos stopped: the pending invocations handled, two sweeps, and the schedules checked: a schedule
  outliving its run (an approve whose schedule is written after a cancel deleted it, a cancel whose
  delete failed) must be deleted by the sweep, and this is the moment to see it, because once the
  clock passes its time it fires, does nothing, and deletes itself, hiding the leak. Then the clock is
  advanced an hour, twice, firing what is due and sweeping, and every invariant is checked.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from multiprocessing.context import SpawnProcess
from multiprocessing.managers import ListProxy

import pytest
from sqlalchemy import Engine, exists, func, select
from sqlalchemy.orm import Session

from controller.core.runs import DISPATCHING, OPEN_STATES, RUNNING, SCHEDULED, SUCCEEDED
from controller.db.definition_models import TableRow
from controller.db.engine import make_engine
from controller.db.run_models import ExecutionRow, RunEventRow, RunRow, TaskDispatchRow
from controller.reconciler import apply
from controller.services import firing, sweep
from controller.services.dependencies import Dependencies
from tests.chaos_support import (
    SEED,
    SETUP_TIMEOUT,
    START,
    TABLES,
    ChaosManager,
    Faults,
    LogEntry,
    SharedAws,
    WorkerReport,
    dependencies,
    worker,
)
from tests.conftest import postgres_schema
from tests.factories import states

pytestmark = [pytest.mark.postgresql, pytest.mark.slow]

DURATION = 20.0  # seconds of chaos
WORKERS = 4


@pytest.fixture
def chaos_url(postgres_admin: Engine) -> Iterator[str]:
    """PostgreSQL only: the soak is about concurrent writers, which SQLite serialises."""
    with postgres_schema(postgres_admin, "flux_chaos") as url:
        yield url


def test_chaos_soak_keeps_every_invariant(chaos_url: str) -> None:
    engine = make_engine(chaos_url, pool_size=2, max_overflow=2)
    context = multiprocessing.get_context("spawn")
    processes: list[SpawnProcess] = []
    try:
        apply(engine, desired=states(TABLES), revision="chaos", actor="test", now=START)
        with ChaosManager(ctx=context) as manager:
            aws = manager.AwsState(START)
            reports: ListProxy[WorkerReport] = manager.list()
            start = context.Barrier(WORKERS + 1)
            processes = [
                context.Process(
                    target=worker,
                    args=(chaos_url, index, DURATION, aws, start, reports),
                    name=f"chaos-worker-{index}",
                )
                for index in range(WORKERS)
            ]
            launched = time.monotonic()
            for process in processes:
                process.start()
            # Broken when a worker could not start: its report says why (below).
            with contextlib.suppress(threading.BrokenBarrierError):
                start.wait(SETUP_TIMEOUT)
            began = time.monotonic()
            for process in processes:
                process.join(DURATION + SETUP_TIMEOUT)
            soaked = time.monotonic() - began
            assert [p.name for p in processes if p.is_alive()] == [], (
                f"workers still running after {soaked:.0f} s"
            )
            done = sorted(reports, key=lambda report: report.index)
            print(summary(done, began - launched, soaked, written_after_delete(aws.log())))
            failed = [report for report in done if report.error is not None]
            assert failed == [], "\n".join(f"worker {r.index} raised:\n{r.error}" for r in failed)
            assert [p.exitcode for p in processes] == [0] * WORKERS, "a worker died without a report"
            assert len(done) == WORKERS
            actions = sum((Counter(report.actions) for report in done), Counter[str]())
            assert actions["register"] > 50 and actions["complete"] > 10, actions

            repair = dependencies(engine, aws, Faults(random.Random(SEED), on=False), "repair")
            try:
                # The final repair, step one: AWS is back, at the time the chaos stopped.
                final_repair(repair, aws)
                with Session(engine) as session:
                    problems = schedule_problems(session, aws, aws.now(), window=sweep.OVERDUE_GRACE)
                    assert problems == [], explain(problems)
                    assert running_without_tasks(session) == [], (
                        "runs running without a task of their attempt"
                    )
                # Step two: the clock moves on; everything due fires, every leftover is swept.
                for _ in range(2):
                    aws.advance(3600)
                    final_repair(repair, aws)
            finally:
                repair.store.close()
            accepted = {i for report in done for i in report.accepted}
            check_invariants(engine, aws, accepted)
    finally:
        for process in processes:  # only after a failure above: a worker that still runs is ended
            if process.is_alive():
                process.kill()
                process.join()
        engine.dispose()


def summary(reports: list[WorkerReport], setup: float, seconds: float, races: int) -> str:
    """What the soak did, for ``pytest -s`` (and a reader of a failure): per worker, its actions and
    the warnings it logged; the tracebacks of those not caused by an injected fault."""
    lines = [
        f"chaos: {len(reports)} processes, started in {setup:.1f} s, soaked {seconds:.1f} s;"
        f" schedules written after a delete (the race): {races}"
    ]
    lines += [f"  worker {r.index}: {dict(sorted(r.actions.items()))}" for r in reports]
    logged = sum((Counter(r.logged) for r in reports), Counter[str]())
    lines += [f"  logged {count:5d} × {message}" for message, count in logged.most_common()]
    unexpected = {m: e for r in reports for m, e in r.examples.items() if "injected:" not in e}
    lines += [f"  not injected: {message}\n{example}" for message, example in unexpected.items()]
    return "\n".join(lines)


def final_repair(deps: Dependencies, aws: SharedAws) -> None:
    """A few sweeps, each after the invocations of the schedules that fired are handled (EventBridge
    fires on time: a sweep that found a written schedule overdue would be a fake's artifact)."""
    for _ in range(2):
        for run_id in aws.drain_deliveries():
            firing.fire(deps, run_id)
        sweep.sweep(deps)
    for run_id in aws.drain_deliveries():
        firing.fire(deps, run_id)


def written_after_delete(log: list[LogEntry]) -> int:
    """Schedules written after they were deleted: the approve (or push) racing a cancel, seen from AWS.
    Not a failure in itself (the sweep must repair it); it shows the race happened."""
    deleted: set[str] = set()
    raced: set[str] = set()
    for _, operation, name, _, _ in log:
        if operation in ("delete", "delete-none"):
            deleted.add(name)
        elif operation == "put" and name in deleted:
            raced.add(name)
    return len(raced)


def schedule_problems(
    session: Session, aws: SharedAws, now: datetime, *, window: timedelta
) -> list[tuple[str, str]]:
    """Invariant (b): no schedule whose run is not ``scheduled`` (nor later than the run's fire time),
    and every scheduled run firing after ``now + window`` has its schedule, written at or before its
    fire time. (Runs firing sooner are not the sweep's to write: their fire, or the next sweep, handles
    them.) Each problem is (its kind, with the run's state for a schedule outliving it; its story).

    A schedule *earlier* than its run is allowed: two writes of one schedule race (a push's and the
    write before it), the scheduler keeps the last to land, and fire times only move later, so a
    stale write is an earlier one; its fire comes early, dispatches nothing and writes the schedule
    again for the fire time (``dispatch._rearm``, tested in test_nothing_stuck)."""
    schedules = aws.schedules()
    runs = {
        row.id: row
        for row in session.execute(
            select(RunRow.id, RunRow.status, RunRow.fire_at, RunRow.scheduled_fire_at, RunRow.schedule_name)
            .where(RunRow.status == SCHEDULED)
            .union(
                select(
                    RunRow.id, RunRow.status, RunRow.fire_at, RunRow.scheduled_fire_at, RunRow.schedule_name
                ).where(RunRow.id.in_(sorted({run_id for run_id, _ in schedules.values()})))
            )
        ).all()
    }
    problems: list[tuple[str, str]] = []
    for name, (run_id, fire_at) in sorted(schedules.items()):
        run = runs[run_id]
        if run.status != SCHEDULED:
            story = f"schedule {name} at {fire_at} outlives its run:\n{describe(session, aws, run_id, name)}"
            problems.append((f"outlives a {run.status} run", story))
        elif run.fire_at > now + window and fire_at > run.fire_at:
            story = f"schedule {name} at {fire_at}, its run at {run.fire_at}\n{describe(session, aws, run_id, name)}"
            problems.append(("later than its run", story))
    for run in runs.values():
        if run.status == SCHEDULED and run.fire_at > now + window:
            written = schedules.get(run.schedule_name or "")
            found = written is not None and written[0] == run.id and written[1] <= run.fire_at
            if not found or run.scheduled_fire_at != run.fire_at:
                story = (
                    f"run {run.id} fires at {run.fire_at}: schedule {run.schedule_name} is {written}, "
                    f"recorded {run.scheduled_fire_at}\n{describe(session, aws, run.id, run.schedule_name)}"
                )
                problems.append(("a scheduled run without its schedule", story))
    return problems


def explain(problems: list[tuple[str, str]]) -> str:
    """Schedule problems counted by kind, then the first few stories."""
    kinds = Counter(kind for kind, _ in problems)
    heading = ", ".join(f"{count} × {kind}" for kind, count in kinds.most_common())
    return f"schedule problems: {heading}\n" + "\n".join(story for _, story in problems[:5])


def describe(session: Session, aws: SharedAws, run_id: int, name: str | None) -> str:
    """A run's story, for a failure to be read: its table and states, then what the scheduler saw."""
    run = session.execute(
        select(TableRow.name, RunRow.status, RunRow.fire_at, RunRow.scheduled_fire_at)
        .join(TableRow, TableRow.id == RunRow.table_id)
        .where(RunRow.id == run_id)
    ).one()
    lines = [
        f"  run {run_id} of {run.name}: {run.status}, fire at {run.fire_at}, written {run.scheduled_fire_at}"
    ]
    details = session.execute(
        select(RunEventRow.detail).where(RunEventRow.run_id == run_id).order_by(RunEventRow.id)
    ).scalars()
    lines += [f"    {d['at']}: {d['old_state']} → {d['new_state']} ({d['reason']})" for d in details]
    lines += [
        f"    {at}: {who} {operation} {fire_at or ''}"
        for who, operation, _, fire_at, at in aws.history(name or "")
    ]
    return "\n".join(lines)


def running_without_tasks(session: Session) -> list[tuple[int, int]]:
    """Invariant (a): runs ``running`` with no task recorded for their current attempt."""
    rows = session.execute(
        select(RunRow.id, RunRow.attempt).where(
            RunRow.status == RUNNING,
            ~exists().where(TaskDispatchRow.run_id == RunRow.id, TaskDispatchRow.attempt == RunRow.attempt),
        )
    ).all()
    return [(run_id, attempt) for run_id, attempt in rows]


def check_invariants(engine: Engine, aws: SharedAws, accepted: set[int]) -> None:
    starts = Counter(aws.starts())
    with Session(engine) as session:
        duplicates = session.execute(
            select(RunRow.table_id, RunRow.partition_key)
            .where(RunRow.status.in_(OPEN_STATES))
            .group_by(RunRow.table_id, RunRow.partition_key)
            .having(func.count() > 1)
        ).all()
        assert duplicates == [], "two open runs of one (table, key)"

        stored = dict(session.execute(select(ExecutionRow.id, ExecutionRow.source)).all())
        assert accepted <= set(stored), "an accepted registration was lost"
        # The rest are the executions that Glue runs registered when they succeeded.
        assert {source for i, source in stored.items() if i not in accepted} <= {"glue"}
        completions = session.execute(
            select(ExecutionRow.run_id, RunRow.status)
            .join(RunRow, RunRow.id == ExecutionRow.run_id)
            .where(ExecutionRow.run_id.is_not(None))
        ).all()
        assert all(status == SUCCEEDED for _, status in completions), "a run's execution but not succeeded"
        assert len({run_id for run_id, _ in completions}) == len(completions), "a run completed twice"

        # Invariant (c): across every process, no task of a run's attempt was started twice.
        twice = sorted(task for task, count in starts.items() if count > 1)
        assert twice == [], f"tasks started twice (run, attempt, alias): {twice[:10]}"
        succeeded = session.execute(select(RunRow.id, RunRow.attempt).where(RunRow.status == SUCCEEDED)).all()
        for run_id, attempt in succeeded:
            dispatches = session.execute(
                select(TaskDispatchRow.alias, TaskDispatchRow.status).where(
                    TaskDispatchRow.run_id == run_id, TaskDispatchRow.attempt == attempt
                )
            ).all()
            assert dispatches and all(status == "succeeded" for _, status in dispatches), (run_id, dispatches)
            for alias, _ in dispatches:
                assert starts[(run_id, attempt, alias)] == 1

        # Invariant (a): a run running has its tasks; none is left dispatching.
        assert running_without_tasks(session) == [], "runs running without a task of their attempt"
        dispatching = session.execute(select(RunRow.id).where(RunRow.status == DISPATCHING)).scalars().all()
        assert dispatching == [], f"runs left dispatching: {dispatching}"

        # Invariant (b), the clock an hour on: no schedule outlives its run, and no scheduled run is
        # overdue or without its schedule at its fire time.
        now = aws.now()
        overdue = (
            session.execute(select(RunRow.id).where(RunRow.status == SCHEDULED, RunRow.fire_at <= now))
            .scalars()
            .all()
        )
        assert overdue == [], f"runs overdue after the final sweep: {overdue}"
        problems = schedule_problems(session, aws, now, window=timedelta(0))
        assert problems == [], explain(problems)

        unpublished = session.execute(
            select(func.count()).select_from(RunEventRow).where(RunEventRow.published_at.is_(None))
        ).scalar()
        assert unpublished == 0, "run events left in the outbox"
        # Every state change written to the outbox reached the event bus (at least once).
        published = set(aws.published())
        assert published, "no event was ever published"
        written = {
            (d["run_id"], d["old_state"], d["new_state"])
            for d in session.execute(select(RunEventRow.detail)).scalars()
        }
        assert written <= published, (
            f"events marked published but never sent: {sorted(written - published)[:10]}"
        )
        assert len(succeeded) > 0, "the soak never got a run through (too short to prove anything)"
