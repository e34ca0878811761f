"""The sweep's cost: one sweep over 10, 1,000 and 10,000 healthy running runs, and over a backlog of
tasks due for a check (DESIGN §8: "a sweep's cost is bounded whatever the backlog").

A healthy running run is what a Glue job in progress leaves in the database: the run ``running``, its
one task ``started`` with its JobRunId, its check time (``FLUX_POLL_AFTER_SECONDS`` after its start)
and its deadline still ahead, its run events published. Such rows are inserted in bulk, straight into
``runs``, ``task_dispatches`` and ``run_events`` (:func:`add_running`), then one
:func:`controller.services.sweep.sweep` is measured at a time: its wall time (median of several), the
SQL statements the runtime's store sent, and its calls of the AWS ports, which record and answer
without any AWS behind them (:class:`RecordingAws`: a task asked about is still running).

The floor, measured in the same run on the same database: the sweep over an empty database (no run
at all), and the round trips alone, one ``SELECT 1`` per statement that empty sweep sends. The tasks
due for a check are measured apart: each sweep asks AWS about ``FLUX_POLL_BATCH`` of them (50) and
postpones their next check, whatever the backlog; their check times are set back before each timed
sweep so that every one meets the same backlog. ``tests/test_sweep_cost.py`` asserts the counts.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Engine, func, insert, select, text, update
from sqlalchemy.orm import Session

from bench.common import StatementCounter, Table, database, timed
from controller import wiring
from controller.core.effects import ScheduleRequest, TaskRequest, TaskStatus, schedule_name
from controller.core.keys import key_text, make_key
from controller.core.plans import state_of
from controller.core.records import TASK_STARTED
from controller.core.runs import RUNNING, RunEvent
from controller.core.specs import TableSpec
from controller.db.definition_models import TableRow
from controller.db.engine import make_engine
from controller.db.run_models import RunEventRow, RunRow, TaskDispatchRow
from controller.reconciler import apply
from controller.services.dependencies import Dependencies
from controller.services.sweep import sweep

#: Healthy running runs measured (cumulative: each size adds to the previous one's rows).
SIZES = (10, 1_000, 10_000)
QUICK_SIZES = (10, 1_000)
#: Tasks due for a check, on top of the largest size (cumulative too).
DUE = (200, 2_000)
QUICK_DUE = (200,)
REPEAT = 51
QUICK_REPEAT = 3
#: Round trips timed for the ``SELECT 1`` floor.
ROUND_TRIPS = 200

#: The clock of every sweep: rows are placed around it (healthy checks ahead, due ones behind).
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TABLE = "watched"
ALIAS = "load"
JOB = "job-watched"
DEFINITION: dict[str, Any] = {
    "version": 1,
    "name": TABLE,
    "partitions": [{"name": "k", "type": "int"}],
    "tasks": [{"alias": ALIAS, "type": "glue", "target": JOB}],
}
#: A healthy task started an hour ago; its check comes in 14 minutes and its deadline in 23 hours.
STARTED = NOW - timedelta(hours=1)
HEALTHY_CHECK = NOW + timedelta(minutes=14)
DEADLINE = STARTED + timedelta(days=1)
#: A due task's check time: passed (its completion event may have been lost).
DUE_CHECK = NOW - timedelta(minutes=10)


# --- AWS: recording ports, nothing behind them -----------------------------------------------------------


@dataclass
class AwsCalls:
    """The sweep's calls of the AWS ports, by kind."""

    schedule_puts: int = 0
    schedule_deletes: int = 0
    task_starts: int = 0
    task_status: int = 0
    task_stops: int = 0
    publish_calls: int = 0
    events_published: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)

    @property
    def total(self) -> int:
        """Every call of a port (events published in one call are one call)."""
        return (
            self.schedule_puts
            + self.schedule_deletes
            + self.task_starts
            + self.task_status
            + self.task_stops
            + self.publish_calls
        )


@dataclass
class RecordingAws:
    """The Scheduler, TaskStarter and EventPublisher ports in one, counting every call in ``calls``.
    A task asked about is still running (as a healthy Glue job is); nothing fails."""

    calls: AwsCalls = field(default_factory=AwsCalls)

    def put(self, request: ScheduleRequest) -> None:
        self.calls.schedule_puts += 1

    def delete(self, name: str) -> None:
        self.calls.schedule_deletes += 1

    def start(self, request: TaskRequest) -> str:
        self.calls.task_starts += 1
        return f"jr_{request.dispatch_id}"

    def status(self, type: str, target: str, external_id: str) -> TaskStatus:
        self.calls.task_status += 1
        return TaskStatus(finished=False)

    def stop(self, type: str, target: str, external_id: str) -> bool:
        self.calls.task_stops += 1
        return True

    def publish(self, events: Sequence[RunEvent]) -> None:
        self.calls.publish_calls += 1
        self.calls.events_published += len(events)


def sweep_runtime(engine: Engine, aws: RecordingAws, store_url: str | None = None) -> Dependencies:
    """The runtime on ``engine`` as :mod:`controller.wiring` builds it, with ``aws`` for every port and
    the clock stopped at :data:`NOW`; ``store_url``: the URL the PostgreSQL store's connections open
    (by default the engine's). Close its store when done."""
    current_url = (lambda: store_url) if store_url is not None else None
    return wiring.dependencies_for(engine, aws, aws, aws, clock=lambda: NOW, current_url=current_url)


# --- the database: the definition and bulk-inserted running runs -----------------------------------------


def install(engine: Engine) -> int:
    """Apply the one definition (:data:`TABLE`, a Glue task); its table id."""
    spec = TableSpec.model_validate(DEFINITION)
    apply(engine, desired={TABLE: state_of(spec)}, revision="bench", actor="bench", now=NOW)
    with Session(engine) as session:
        return session.execute(select(TableRow.id).where(TableRow.name == TABLE)).scalar_one()


def add_running(engine: Engine, table_id: int, count: int, *, due: bool = False) -> list[int]:
    """``count`` more running runs of the table, each with its one Glue task started and its events
    published, inserted in bulk (keys after those of the runs already there); their tasks' ids.
    ``due``: their tasks' check time has passed (else it is ahead: healthy)."""
    if count <= 0:
        return []
    spec = TableSpec.model_validate(DEFINITION)
    with Session(engine) as session, session.begin():
        first = session.execute(select(func.count()).select_from(RunRow)).scalar_one()
        keys = [make_key(spec, {"k": first + n}) for n in range(count)]
        run_rows = [
            {
                "table_id": table_id,
                "partition_key": key_text(key),
                "partitions": dict(key),
                "status": RUNNING,
                "attempt": 1,
                "manual": False,
                "rerun_requested": False,
                "first_trigger_at": STARTED,
                "last_trigger_at": STARTED,
                "fire_at": STARTED,
                "created_at": STARTED,
                "updated_at": STARTED,
            }
            for key in keys
        ]
        inserted = session.execute(
            insert(RunRow).returning(RunRow.id, RunRow.partitions, sort_by_parameter_order=True), run_rows
        ).all()
        # The schedule that fired them (deleted by then: ``scheduled_fire_at`` is NULL).
        session.execute(
            update(RunRow),
            [{"id": run_id, "schedule_name": schedule_name(run_id, TABLE)} for run_id, _ in inserted],
        )
        task_ids = (
            session.execute(
                insert(TaskDispatchRow).returning(TaskDispatchRow.id, sort_by_parameter_order=True),
                [
                    {
                        "run_id": run_id,
                        "attempt": 1,
                        "alias": ALIAS,
                        "type": "glue",
                        "target": JOB,
                        "status": TASK_STARTED,
                        "request": {"--k": str(partitions["k"])},
                        "external_id": f"jr_{run_id:012d}",
                        "started_at": STARTED,
                        "token": f"token-{run_id}",
                        "check_at": DUE_CHECK if due else HEALTHY_CHECK,
                        "deadline_at": DEADLINE,
                    }
                    for run_id, partitions in inserted
                ],
            )
            .scalars()
            .all()
        )
        session.execute(
            insert(RunEventRow),
            [
                {
                    "run_id": run_id,
                    "created_at": STARTED,
                    "batch": f"bench-{run_id}",
                    "detail": _event(run_id, partitions, old, new),
                    "published_at": STARTED,
                }
                for run_id, partitions in inserted
                for old, new in ((None, "scheduled"), ("scheduled", "dispatching"), ("dispatching", RUNNING))
            ],
        )
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:  # as autovacuum would soon after a bulk load
            connection.execute(text("ANALYZE runs, task_dispatches, run_events"))
    return list(task_ids)


def _event(run_id: int, partitions: dict[str, Any], old: str | None, new: str) -> dict[str, Any]:
    """A run event's detail as the runtime writes it (already published)."""
    return {
        "run_id": run_id,
        "table": TABLE,
        "partitions": partitions,
        "old_state": old,
        "new_state": new,
        "approval_id": None,
        "reason": None,
        "at": STARTED.isoformat(),
    }


def make_due(engine: Engine, task_ids: Sequence[int]) -> None:
    """Set these tasks' check time back in the past (a sweep postponed those it asked about)."""
    with engine.begin() as connection:
        connection.execute(
            update(TaskDispatchRow).where(TaskDispatchRow.id.in_(list(task_ids))).values(check_at=DUE_CHECK)
        )


def due_count(engine: Engine) -> int:
    """Started tasks whose check time has come."""
    with Session(engine) as session:
        return session.execute(
            select(func.count())
            .select_from(TaskDispatchRow)
            .where(TaskDispatchRow.status == TASK_STARTED, TaskDispatchRow.check_at <= NOW)
        ).scalar_one()


# --- one sweep, counted ----------------------------------------------------------------------------------


@dataclass
class SweepCount:
    """What one sweep sent: SQL statements (the store's, BEGIN and COMMIT left out), transactions
    begun, its AWS port calls by kind, and the seconds from sending each kind of statement (its first
    words) to the next event of the store, or the sweep's end: its round trip and the work after it,
    summed over the statements of that kind."""

    statements: int
    transactions: int
    aws: dict[str, int]
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def aws_total(self) -> int:
        return sum(v for k, v in self.aws.items() if k != "events_published")


class TimedCounter(StatementCounter):
    """A :class:`~bench.common.StatementCounter` that also notes when each statement was sent."""

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self.marks: list[tuple[float, str | None]] = []

    def sending(self, statement: str, connection: Any) -> None:
        self.marks.append((time.perf_counter(), " ".join(statement.split()[:HEAD_WORDS])))

    def committing(self, connection: Any) -> None:
        self.marks.append((time.perf_counter(), None))  # the time of COMMIT is not a statement's

    def durations(self, end: float) -> dict[str, float]:
        spans: dict[str, float] = {}
        for (at, head), (following, _) in zip(self.marks, [*self.marks[1:], (end, None)], strict=True):
            if head is not None:
                spans[head] = spans.get(head, 0.0) + following - at
        return spans


#: Statements are told apart by their first words (enough for the sweep's: one per pass).
HEAD_WORDS = 8


def counted_sweep(deps: Dependencies, aws: RecordingAws) -> SweepCount:
    """One sweep, its statements and AWS calls counted."""
    before = aws.calls.snapshot()
    with TimedCounter(deps.store) as counter:
        sweep(deps)
        end = time.perf_counter()
    after = aws.calls.snapshot()
    calls = {k: after[k] - before[k] for k in after}
    return SweepCount(counter.count, counter.begins, calls, counter.durations(end))


def round_trip(engine: Engine) -> float:
    """Median seconds of one ``SELECT 1`` on a connection of ``engine`` (the database's floor)."""
    with engine.connect() as connection:
        samples = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            connection.exec_driver_sql("SELECT 1").scalar()
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@dataclass
class Row:
    """One measured case: its size, the median wall time and the counts (the same every sweep, or a
    range)."""

    healthy: int
    due: int
    seconds: float
    counts: list[SweepCount]

    def constant(self, pick: Callable[[SweepCount], int]) -> int | str:
        values = sorted({pick(c) for c in self.counts})
        return values[0] if len(values) == 1 else f"{values[0]}–{values[-1]}"

    def slowest(self) -> str:
        """The statement that took longest (median over the sweeps), as ``0.123 ms: `SELECT …```."""
        heads = {head for count in self.counts for head in count.durations}
        if not heads:
            return "—"
        medians = {h: statistics.median(c.durations.get(h, 0.0) for c in self.counts) for h in heads}
        head = max(medians, key=lambda h: medians[h])
        return f"{medians[head] * 1000:.3f} ms: `{head} …`"


def measure(
    deps: Dependencies,
    aws: RecordingAws,
    healthy: int,
    due: int,
    repeat: int,
    setup: Callable[[], Any] | None = None,
) -> Row:
    """``repeat`` sweeps, each timed and counted (``setup`` before each, untimed)."""
    counts: list[SweepCount] = []
    timing = timed(lambda: counts.append(counted_sweep(deps, aws)), repeat, setup)
    return Row(healthy, due, timing.median, counts)


@contextmanager
def sweep_database(kind: str, workdir: str) -> Iterator[tuple[str, Engine, int]]:
    """A fresh database with the definition applied: its URL, its engine and the table's id."""
    with database(kind, workdir) as url:
        engine = make_engine(url)
        try:
            yield url, engine, install(engine)
        finally:
            engine.dispose()


#: The server setting of the "generic plans forced" case, added to the store's connection options.
GENERIC_PLANS = "%20-cplan_cache_mode%3Dforce_generic_plan"


def measure_kind(
    kind: str,
    workdir: str,
    sizes: Sequence[int],
    due: Sequence[int],
    repeat: int,
    *,
    generic_plans: bool = False,
) -> tuple[list[Row], float]:
    """The empty floor, then each size of healthy running runs, then each backlog of tasks due on top
    of the largest; and the median ``SELECT 1`` round trip (the lower of two, before the loads and
    after the sweeps). ``generic_plans`` (PostgreSQL): the
    store's connections run every prepared statement with its generic plan."""
    rows: list[Row] = []
    with sweep_database(kind, workdir) as (url, engine, table_id):
        aws = RecordingAws()
        deps = sweep_runtime(engine, aws, url + GENERIC_PLANS if generic_plans else None)
        try:
            before = round_trip(engine)  # on the empty database, before any load
            sweep(deps)  # warm-up: connections opened, statements prepared
            rows.append(measure(deps, aws, 0, 0, repeat))
            present = 0
            for size in sizes:
                add_running(engine, table_id, size - present)
                present = size
                sweep(deps)  # warm-up after the load (the planner's first look at the new rows)
                rows.append(measure(deps, aws, size, 0, repeat))
            due_tasks: list[int] = []
            for backlog in due:
                due_tasks += add_running(engine, table_id, backlog - len(due_tasks), due=True)
                sweep(deps)  # warm-up (and so every timed sweep starts from the checks set back)
                rows.append(
                    measure(deps, aws, present, backlog, repeat, partial(make_due, engine, list(due_tasks)))
                )
        finally:
            deps.store.close()
        return rows, min(before, round_trip(engine))  # the lower: the other met background work


HEADERS = [
    "database",
    "case",
    "healthy running runs",
    "tasks due for a check",
    "sweeps",
    "median ms",
    "× empty sweep",
    "SQL statements",
    "transactions",
    "AWS calls",
    "of which task status",
    "slowest statement",
]


def _cells(kind: str, row: Row, empty: Row, suffix: str) -> list[Any]:
    """A measured case as a row of the table (``empty``: the floor its ratio is to)."""
    case = "floor: empty database" if row.healthy == 0 else ("due checks" if row.due else "healthy")
    return [
        kind,
        case + suffix,
        row.healthy,
        row.due,
        len(row.counts),
        row.seconds * 1000,
        row.seconds / empty.seconds,
        row.constant(lambda c: c.statements),
        row.constant(lambda c: c.transactions),
        row.constant(lambda c: c.aws_total),
        row.constant(lambda c: c.aws["task_status"]),
        row.slowest(),
    ]


def _growth(rows: Sequence[Row]) -> str:
    """How the time grew from the smallest size of healthy runs to the largest."""
    sized = [row for row in rows if row.healthy > 0 and not row.due]
    smallest, largest = sized[0], sized[-1]
    return (
        f"{largest.seconds / smallest.seconds:.2f}× the time from {smallest.healthy:,} to "
        f"{largest.healthy:,} healthy runs"
    )


def run(quick: bool, kinds: list[str], workdir: str) -> list[Table]:
    """The sweep table: per database, the floors, each size, and the backlog of due checks."""
    sizes = QUICK_SIZES if quick else SIZES
    due = QUICK_DUE if quick else DUE
    repeat = QUICK_REPEAT if quick else REPEAT
    table = Table(
        f"Sweep: one sweep over healthy running runs and a backlog of due checks (median of {repeat})",
        HEADERS,
    )
    verdicts: list[str] = []
    for kind in kinds:
        rows, trip = measure_kind(kind, workdir, sizes, due, repeat)
        empty = rows[0]
        floor = trip * empty.counts[0].statements
        floor_row: list[Any] = [kind, f"floor: {empty.counts[0].statements} × `SELECT 1`", "—", "—", "—"]
        floor_row += [floor * 1000, floor / empty.seconds, empty.counts[0].statements, "—", 0, 0]
        table.rows.append([*floor_row, f"{trip * 1000:.3f} ms: `SELECT 1`"])
        table.rows += [_cells(kind, row, empty, "") for row in rows]
        healthy = [row for row in rows if not row.due]
        same = {(r.constant(lambda c: c.statements), r.constant(lambda c: c.aws_total)) for r in healthy}
        verdicts.append(
            f"{kind}: statements and AWS calls of a sweep over healthy runs "
            + (
                "the same at every size, empty included"
                if len(same) == 1
                else f"NOT constant: {sorted(same)}"
            )
            + f"; {_growth(healthy)}; a `SELECT 1` round trip {trip * 1e6:,.0f} µs."
        )
    if "postgresql" in kinds and not quick:
        rows, _ = measure_kind("postgresql", workdir, sizes, (), repeat, generic_plans=True)
        table.rows += [_cells("postgresql", row, rows[0], ", generic plans forced") for row in rows]
        verdicts.append(f"postgresql, generic plans forced: {_growth(rows)}.")
    table.notes += [
        "Healthy running run: `running`, its one Glue task `started` (JobRunId stored), its next check "
        "(`FLUX_POLL_AFTER_SECONDS` after its start) and its deadline ahead, its three run events "
        "published; bulk-inserted into `runs`, `task_dispatches` and `run_events` (PostgreSQL: then "
        "ANALYZEd, as autovacuum would soon after), each size adding to the previous one's rows. One "
        "unmeasured sweep after each load.",
        "Each sweep is `controller.services.sweep.sweep` in-process on the runtime's store, the clock "
        "stopped: its passes (schedules to write, overdue runs, leftover schedules, the outbox, stuck "
        "dispatches, queued runs, failed runs whose key must run again, tasks to check) each find "
        "their rows through an index, at most a batch each, so a healthy run costs it nothing.",
        "SQL statements: what the store sent, BEGIN and COMMIT not counted (transactions: how many it "
        "began). AWS calls: of the Scheduler, TaskStarter and EventPublisher ports (recording fakes, no "
        "AWS behind them: a task asked about is still running).",
        f"due checks: {' and '.join(f'{d:,}' for d in due)} tasks whose check time has passed, on top "
        "of the largest size; each sweep "
        "asks AWS about `FLUX_POLL_BATCH` (50) of them, oldest check first, and postpones their next "
        "checks (one statement for all); their check times are set back before each timed sweep (untimed), "
        "so every sweep meets the whole backlog.",
        "Floors, in the same run on the same database: the sweep over an empty database (× empty sweep "
        "is the ratio to it), and as many `SELECT 1` round trips (median of "
        f"{ROUND_TRIPS}, on a SQLAlchemy connection; the lower of two, before the loads and after the "
        "sweeps) as that sweep sends statements.",
        "generic plans forced (full mode, PostgreSQL): the same sweeps, the store's connections set to "
        "`plan_cache_mode=force_generic_plan`: what runs once the server prefers a prepared statement's "
        "generic plan (psycopg prepares a statement on the server after its fifth execution; under the "
        "default, `auto`, the server then takes the generic plan whenever its estimated cost is not "
        "above the custom plans'). The passes write the state they filter on as a literal "
        "(`status = 'scheduled'`), so a generic plan too knows it is rare and walks its index; with "
        "the state as a parameter (`status = $1`, until commit 1e3c6e6) `… ORDER BY id LIMIT n` walked "
        "`pk_runs` filtering every run, and the generic sweep over 10,000 healthy runs took 9.01× the "
        "one over 10. The `auto` rows ran under whichever plan the server chose at each size.",
        *verdicts,
    ]
    return [table]


__all__ = ["run"]


if __name__ == "__main__":  # python -m bench.sweep [--quick] [kinds…]
    import sys
    import tempfile

    quick_mode = "--quick" in sys.argv
    chosen = [a for a in sys.argv[1:] if not a.startswith("--")] or ["sqlite", "postgresql"]
    with tempfile.TemporaryDirectory() as scratch:
        for result_table in run(quick_mode, chosen, scratch):
            print(result_table.markdown())
