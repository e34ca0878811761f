"""The worker processes of ``tests/test_concurrency_limit.py`` and what they share: the database only.

Two kinds of process import this module: the test itself, and each spawned worker, which runs
:func:`worker` as a Lambda container would serve requests. Nothing is shared between them but
PostgreSQL: the task starts are rows of the test's own ``task_starts`` table (written by
:class:`RecordingTasks` on each worker's engine), and the invariant is watched by a trigger the test
installs (:data:`INVARIANT_SQL`), which sees every commit of every process.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from controller import wiring
from controller.core.effects import ScheduleRequest, TaskRequest
from controller.core.errors import ServiceError
from controller.core.runs import OPEN_STATES, RunEvent
from controller.db.engine import make_engine
from controller.db.run_models import RunRow, TaskDispatchRow
from controller.services import completion, firing, run_actions, sweep
from controller.services.dependencies import Dependencies
from tests.factories import person, table_doc

TABLE = "limited"
LIMIT = 2
#: Keys are drawn from this many: most manual runs open a new run, some meet an open one (pushed while
#: waiting, a 409 while it runs), and a key whose run ended is opened again.
KEYS = 400
#: Each worker's seconds to import, connect and reach the start line (spawned processes start cold).
SETUP_TIMEOUT = 60.0
#: A task start takes up to this long (seconds): the window in which a slot is held but not yet
#: recorded as running, which a wrong count would let a second claim slip through.
START_LATENCY = 0.005
SEED = 20261203
#: Seconds of each phase of the load, and the weights of open, fire, complete and sweep in each.
PHASE = 1.5
FILLING = [25, 10, 60, 5]
EMPTYING = [0, 10, 85, 5]
TABLES = [
    table_doc(
        TABLE,
        partitions=[{"name": "k", "type": "int"}],
        debounce_seconds=0,
        max_concurrent_runs=LIMIT,
        tasks=[{"alias": "load", "type": "glue", "target": "job-limited"}],
    )
]

#: Installed by the test in its schema, after the definitions are applied (``{limit}`` filled in).
#:
#: ``task_starts``: one row per task start, from every process. ``limit_violations``: one row per
#: commit that left more than ``limit`` runs of a table dispatching or running. ``limit_checks``: per
#: table, how many commits were checked and the most runs in progress any of them left (so that a
#: trigger that never fired, or a limit never reached, cannot pass for a kept invariant).
#:
#: The trigger is a deferred constraint trigger: it runs at COMMIT of any transaction that moved a run
#: into ``dispatching`` or ``running`` (or inserted one there), after the product's own statements, and
#: takes a lock of its own first, so that the checks of concurrent commits run one after the other:
#: each check's count (a fresh snapshot, READ COMMITTED) sees every transaction committed before it
#: plus its own. Two transactions that each left a third run in progress cannot both pass: the second
#: to commit waits for the first's lock, which is released only once the first is visible. It records
#: rather than raises: the product's transactions go on as they would without it.
INVARIANT_SQL = [
    "CREATE TABLE task_starts (id serial PRIMARY KEY, run_id int NOT NULL, attempt int NOT NULL,"
    " alias text NOT NULL, external_id text NOT NULL, started_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    "CREATE TABLE limit_violations (id serial PRIMARY KEY, table_id int NOT NULL, run_id int NOT NULL,"
    " busy int NOT NULL, runs text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    "CREATE TABLE limit_checks (table_id int PRIMARY KEY, checks int NOT NULL DEFAULT 0,"
    " peak int NOT NULL DEFAULT 0)",
    """
    CREATE FUNCTION check_concurrency_limit() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        busy int;
        ids text;
    BEGIN
        PERFORM pg_advisory_xact_lock(hashtext(current_schema() || '/test/concurrency-limit'));
        SELECT count(*), coalesce(string_agg(id::text, ', ' ORDER BY id), '') INTO busy, ids
            FROM runs WHERE table_id = NEW.table_id AND status IN ('dispatching', 'running');
        UPDATE limit_checks SET checks = checks + 1, peak = greatest(peak, busy)
            WHERE table_id = NEW.table_id;
        IF busy > {limit} THEN
            INSERT INTO limit_violations (table_id, run_id, busy, runs)
                VALUES (NEW.table_id, NEW.id, busy, ids);
        END IF;
        RETURN NULL;
    END
    $$
    """,
    "CREATE CONSTRAINT TRIGGER runs_concurrency_limit AFTER INSERT OR UPDATE OF status ON runs"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
    " WHEN (NEW.status IN ('dispatching', 'running')) EXECUTE FUNCTION check_concurrency_limit()",
    "INSERT INTO limit_checks (table_id) SELECT id FROM tables WHERE name = '{table}'",
]


# --- the AWS ports of one process ----------------------------------------------------------------------


@dataclass
class RecordingTasks:
    """Glue, as far as the runtime sees it: each start takes a moment, is recorded in ``task_starts``
    (every process's starts in one table, to find a task started twice) and gets a JobRunId of its
    own. AWS is never asked about a task (completions come from the workers' events)."""

    engine: Engine
    rng: random.Random

    def start(self, request: TaskRequest) -> str:
        time.sleep(self.rng.uniform(0, START_LATENCY))
        external_id = f"jr_{uuid.uuid4().hex}"
        with self.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO task_starts (run_id, attempt, alias, external_id)"
                    " VALUES (:run_id, :attempt, :alias, :external_id)"
                ),
                {
                    "run_id": request.run_id,
                    "attempt": request.attempt,
                    "alias": request.alias,
                    "external_id": external_id,
                },
            )
        return external_id

    def status(self, type: str, target: str, external_id: str) -> None:
        return None

    def stop(self, type: str, target: str, external_id: str) -> bool:
        return False


class QuietScheduler:
    """EventBridge Scheduler: manual runs with no debounce fire at once, so nothing needs it."""

    def put(self, request: ScheduleRequest) -> None:
        return None

    def delete(self, name: str) -> None:
        return None


class QuietEvents:
    """EventBridge: the run events are published nowhere (the outbox in the database is what is read)."""

    def publish(self, events: Sequence[RunEvent]) -> None:
        return None


def dependencies(engine: Engine, rng: random.Random) -> Dependencies:
    """A process's dependencies, as ``controller.wiring`` builds them in a Lambda container."""
    return wiring.dependencies_for(engine, QuietScheduler(), RecordingTasks(engine, rng), QuietEvents())


# --- one worker process --------------------------------------------------------------------------------


@dataclass
class WorkerReport:
    """What a worker sends back: how often it did what, the warnings and errors it logged (by
    message), and its traceback if anything but a ServiceError (an API's 4xx) escaped."""

    index: int
    actions: dict[str, int]
    logged: dict[str, int]
    error: str | None = None


class LogCounter(logging.Handler):
    """A worker's warnings and errors, counted by message (level name first), not printed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname}: {record.getMessage()}"] += 1


@dataclass
class Load:
    """One worker's actions, chosen at random: what Lambdas serving operators, schedules, Glue's
    events and the sweep's rate schedule do at once."""

    deps: Dependencies
    engine: Engine
    actions: Counter[str] = field(default_factory=Counter)

    def rows(self, query: Any) -> list[Any]:
        with Session(self.engine) as session:
            return list(session.execute(query).all())

    def open(self, rng: random.Random) -> None:
        """A manual run (a backfill's key, an operator's re-run): opened and fired at once."""
        run_actions.manual_run(
            deps=self.deps,
            table_name=TABLE,
            partitions={"k": rng.randrange(KEYS)},
            reason=None,
            caller=person("operator"),
        )

    def fire(self, rng: random.Random) -> None:
        """A fire of an open run: mostly a queued or scheduled one (a duplicate, or a late delivery
        of its schedule), sometimes one already claimed."""
        candidates = self.rows(select(RunRow.id).where(RunRow.status.in_(OPEN_STATES)).limit(20))
        if candidates:
            firing.fire(self.deps, rng.choice(candidates)[0])

    def complete(self, rng: random.Random) -> None:
        """Glue's state-change event for a started task (sometimes delivered twice)."""
        started = self.rows(
            select(TaskDispatchRow.external_id).where(TaskDispatchRow.status == "started").limit(20)
        )
        if started:
            (external_id,) = rng.choice(started)
            for _ in range(rng.choice([1, 1, 1, 2])):
                completion.task_state_changed(self.deps, "glue", external_id, "SUCCEEDED", "ok")

    def sweep(self, rng: random.Random) -> None:
        sweep.sweep(self.deps)

    def run(self, rng: random.Random, deadline: float) -> None:
        """Random actions until ``deadline``; a ServiceError is an answer, anything else escapes.

        The weights alternate between two phases (every :data:`PHASE` seconds of the system's
        monotonic clock, so every process is in the same phase): one opens more runs than the slots
        let through, and the queue grows; the other completes more, and the queue empties, so that
        freed slots are raced for by fresh runs that find no queue before them (the claims whose
        count of busy slots matters most)."""
        choices: list[tuple[str, Callable[[random.Random], None]]] = [
            ("open", self.open),
            ("fire", self.fire),
            ("complete", self.complete),
            ("sweep", self.sweep),
        ]
        while time.monotonic() < deadline:
            weights = FILLING if int(time.monotonic() / PHASE) % 2 == 0 else EMPTYING
            name, action = rng.choices(choices, weights)[0]
            try:
                action(rng)
            except ServiceError:
                name += " (4xx)"  # the key's run is dispatching or running: what the API answers
            self.actions[name] += 1


def worker(url: str, index: int, duration: float, start: Barrier, reports: Queue[WorkerReport]) -> None:
    """One worker process: its own engine, store and dependencies from ``url``, as a Lambda container
    builds them; waits for the others at ``start``, works for ``duration`` seconds, and reports."""
    load: Load | None = None
    engine: Engine | None = None
    error: str | None = None
    counter = LogCounter()
    logging.getLogger().addHandler(counter)  # a spawned process has no handler of its own yet
    try:
        engine = make_engine(url, pool_size=1, max_overflow=2)
        rng = random.Random(SEED + index)
        load = Load(dependencies(engine, random.Random(SEED + 1000 + index)), engine)
        try:
            start.wait(SETUP_TIMEOUT)
        except BaseException:
            start.abort()  # the others, and the test, stop waiting for this one
            raise
        load.run(rng, time.monotonic() + duration)
    except BaseException:
        error = traceback.format_exc()
        if load is None:
            start.abort()
    finally:
        reports.put(WorkerReport(index, dict(load.actions) if load else {}, dict(counter.counts), error))
        if load is not None:
            load.deps.store.close()
        if engine is not None:
            engine.dispose()
