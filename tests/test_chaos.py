"""Chaos soak: several workers register, approve, fire, complete, retry and sweep at random while the
AWS ports fail at random, on PostgreSQL; then the invariants that matter are checked.

Bounded: ``DURATION`` seconds of chaos (CI runs it: it is marked ``postgresql`` and ``slow``, not
skipped), then a final repair with the faults off. The seed is fixed per worker so a failure replays
the same choices (timing between threads still varies, which is the point).
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from controller import wiring
from controller.core.effects import ScheduleRequest, TaskRequest, TaskStartError
from controller.core.errors import ServiceError
from controller.core.runs import DISPATCHING, FAILED, OPEN_STATES, SCHEDULED, SUCCEEDED, RunEvent
from controller.db.engine import make_engine
from controller.db.run_models import ApprovalRow, ExecutionRow, RunEventRow, RunRow, TaskDispatchRow
from controller.reconciler import apply
from controller.services import approvals, completion, firing, run_actions, sweep
from controller.services.dependencies import Dependencies
from controller.services.registration import ExecutionInput, register_executions
from tests.conftest import postgres_schema
from tests.factories import states, table_doc

pytestmark = [pytest.mark.postgresql, pytest.mark.slow]

DURATION = 20.0  # seconds of chaos
WORKERS = 4
KEYS = 6
SEED = 20261129
KEY = [{"name": "k", "type": "int"}]
TABLES = [
    table_doc("up_a", partitions=KEY),
    table_doc("up_b", partitions=KEY),
    table_doc(
        "joined",
        partitions=KEY,
        debounce_seconds=60,
        dependencies=[{"dependency_name": "up_a"}, {"dependency_name": "up_b"}],
        tasks=[
            {"alias": "load", "type": "glue", "target": "job-load"},
            {"alias": "check", "type": "glue", "target": "job-check"},
        ],
    ),
    table_doc(
        "approved",
        partitions=KEY,
        requires_approval=True,
        approvers=["alice"],
        dependencies=[{"dependency_name": "up_a"}],
        tasks=[{"alias": "publish", "type": "sqs", "target": "https://sqs.us-east-1.amazonaws.com/1/q"}],
    ),
    table_doc(
        "downstream",
        partitions=KEY,
        dependencies=[{"dependency_name": "joined"}],
        tasks=[{"alias": "report", "type": "glue", "target": "job-report"}],
    ),
]
START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


# --- AWS ports that fail at random -------------------------------------------------------------------


@dataclass
class Faults:
    on: bool = True
    rate: float = 0.15
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def strike(self) -> bool:
        with self.lock:
            return self.on and self.rng.random() < self.rate


@dataclass
class FlakyScheduler:
    faults: Faults
    schedules: dict[str, datetime] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, request: ScheduleRequest) -> None:
        if self.faults.strike():
            raise ConnectionError("injected: scheduler unavailable")
        with self.lock:
            self.schedules[request.name] = request.fire_at

    def delete(self, name: str) -> None:
        if self.faults.strike():
            raise ConnectionError("injected: scheduler unavailable")
        with self.lock:
            self.schedules.pop(name, None)


@dataclass
class FlakyTasks:
    faults: Faults
    started: Counter[str] = field(default_factory=Counter)
    types: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, request: TaskRequest) -> str:
        if self.faults.strike():
            raise TaskStartError(f"{request.type} {request.target}: injected: ThrottlingException")
        with self.lock:
            self.started[request.token] += 1
            self.types[request.token] = request.type
        return f"ext-{request.token}"


@dataclass
class FlakyEvents:
    faults: Faults
    published: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, events: Sequence[RunEvent]) -> None:
        if self.faults.strike():
            raise ConnectionError("injected: EventBridge unavailable")
        with self.lock:
            self.published += len(events)


@dataclass
class ChaosClock:
    """Shared time that only moves forward, when a worker lets it."""

    now: datetime = START
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> datetime:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += timedelta(seconds=seconds)


# --- the workers -------------------------------------------------------------------------------------


@dataclass
class Soak:
    deps: Dependencies
    engine: Engine
    clock: ChaosClock
    tasks: FlakyTasks
    accepted: set[int] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ids(self, query: Any) -> list[Any]:
        with Session(self.engine) as session:
            return list(session.execute(query).all())

    def register(self, rng: random.Random) -> None:
        table, k = rng.choice(["up_a", "up_b"]), rng.randrange(KEYS)
        idempotency = rng.choice([None, f"{table}-{k}-{rng.randrange(2)}"])
        item = ExecutionInput(table, {"k": k}, "chaos", idempotency_key=idempotency)
        self._keep(register_executions(self.deps, [item], None))

    def fire(self, rng: random.Random) -> None:
        due = self.ids(
            select(RunRow.id).where(RunRow.status == SCHEDULED, RunRow.fire_at <= self.clock()).limit(20)
        )
        for (run_id,) in rng.sample(due, min(2, len(due))):
            for _ in range(rng.choice([1, 1, 2])):  # a schedule may fire twice
                firing.fire(self.deps, run_id)

    def approve(self, rng: random.Random) -> None:
        pending = self.ids(select(ApprovalRow.id).where(ApprovalRow.status == "pending").limit(20))
        if pending:
            (approval_id,) = rng.choice(pending)
            approvals.decide(self.deps, approval_id, "alice", rng.random() < 0.8, "chaos")

    def complete(self, rng: random.Random) -> None:
        started = self.ids(
            select(TaskDispatchRow.external_id, TaskDispatchRow.type, RunRow.id, RunRow.partitions)
            .join(RunRow, RunRow.id == TaskDispatchRow.run_id)
            .where(TaskDispatchRow.status == "started")
            .limit(20)
        )
        if not started:
            return
        external_id, kind, run_id, partitions = rng.choice(started)
        if kind == "glue":
            state = rng.choice(["SUCCEEDED"] * 4 + ["FAILED", "RUNNING"])
            for _ in range(rng.choice([1, 1, 2])):  # duplicate deliveries
                completion.task_state_changed(self.deps, "glue", external_id, state, None)
        else:  # an SQS consumer reports back by registering the run's execution
            item = ExecutionInput("approved", dict(partitions), "consumer", run_id=run_id)
            self._keep(register_executions(self.deps, [item], None))

    def retry(self, rng: random.Random) -> None:
        failed = self.ids(select(RunRow.id).where(RunRow.status == FAILED).limit(20))
        if failed:
            run_actions.retry_run(self.deps, rng.choice(failed)[0], "chaos retry")

    def tick(self, rng: random.Random) -> None:
        self.clock.advance(rng.uniform(10, 40))

    def sweep(self, rng: random.Random) -> None:
        sweep.sweep(self.deps)

    def _keep(self, result: dict[str, Any]) -> None:
        with self.lock:
            self.accepted.update(e["id"] for e in result["executions"])

    def worker(self, index: int, deadline: float) -> None:
        rng = random.Random(SEED + index)
        choices: list[tuple[str, Callable[[random.Random], None]]] = [
            ("register", self.register),
            ("fire", self.fire),
            ("approve", self.approve),
            ("complete", self.complete),
            ("retry", self.retry),
            ("tick", self.tick),
            ("sweep", self.sweep),
        ]
        weights = [40, 15, 8, 20, 4, 10, 3]
        while time.monotonic() < deadline:
            name, action = rng.choices(choices, weights)[0]
            try:
                action(rng)
            except ServiceError:
                pass  # a 4xx the API would answer (decided meanwhile, not failed any more, …): expected
            except BaseException as exc:  # anything else would be a 5xx: collected, asserted below
                self.errors.append(exc)
                return
            with self.lock:
                self.actions[name] += 1


@pytest.fixture
def chaos_url(postgres_admin: Engine) -> Iterator[str]:
    """PostgreSQL only: the soak is about concurrent writers, which SQLite serialises."""
    with postgres_schema(postgres_admin, "flux_chaos") as url:
        yield url


def test_chaos_soak_keeps_every_invariant(chaos_url: str) -> None:
    engine = make_engine(chaos_url, pool_size=WORKERS + 2, max_overflow=4)
    faults = Faults()
    scheduler, tasks, events = FlakyScheduler(faults), FlakyTasks(faults), FlakyEvents(faults)
    clock = ChaosClock()
    deps = wiring.dependencies_for(engine, scheduler, tasks, events, clock=clock)
    try:
        apply(engine, desired=states(TABLES), revision="chaos", actor="test", now=START)
        soak = Soak(deps, engine, clock, tasks)
        deadline = time.monotonic() + DURATION
        threads = [threading.Thread(target=soak.worker, args=(i, deadline)) for i in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DURATION + 120)
        assert soak.errors == [], "".join(traceback.format_exception(soak.errors[0]))
        assert soak.actions["register"] > 50 and soak.actions["complete"] > 10, soak.actions

        faults.on = False  # the final repair: AWS is back
        for _ in range(2):
            clock.advance(3600)
            sweep.sweep(deps)
        check_invariants(engine, soak, scheduler, events)
    finally:
        deps.store.close()
        engine.dispose()


def check_invariants(engine: Engine, soak: Soak, scheduler: FlakyScheduler, events: FlakyEvents) -> None:
    with Session(engine) as session:
        duplicates = session.execute(
            select(RunRow.table_id, RunRow.partition_key)
            .where(RunRow.status.in_(OPEN_STATES))
            .group_by(RunRow.table_id, RunRow.partition_key)
            .having(func.count() > 1)
        ).all()
        assert duplicates == [], "two open runs of one (table, key)"

        stored = dict(session.execute(select(ExecutionRow.id, ExecutionRow.source)).all())
        assert soak.accepted <= set(stored), "an accepted registration was lost"
        # The rest are the executions that Glue runs registered when they succeeded.
        assert {source for i, source in stored.items() if i not in soak.accepted} <= {"glue"}
        completions = session.execute(
            select(ExecutionRow.run_id, RunRow.status)
            .join(RunRow, RunRow.id == ExecutionRow.run_id)
            .where(ExecutionRow.run_id.is_not(None))
        ).all()
        assert all(status == SUCCEEDED for _, status in completions), "a run's execution but not succeeded"
        assert len({run_id for run_id, _ in completions}) == len(completions), "a run completed twice"

        assert set(soak.tasks.started.values()) <= {1}, "a task was started twice"
        succeeded = session.execute(select(RunRow.id, RunRow.attempt).where(RunRow.status == SUCCEEDED)).all()
        for run_id, attempt in succeeded:
            dispatches = session.execute(
                select(TaskDispatchRow.alias, TaskDispatchRow.status).where(
                    TaskDispatchRow.run_id == run_id, TaskDispatchRow.attempt == attempt
                )
            ).all()
            assert dispatches and all(status == "succeeded" for _, status in dispatches), (run_id, dispatches)
            for alias, _ in dispatches:
                assert soak.tasks.started[f"flux-{run_id}-{attempt}-{alias}"] == 1

        now = soak.clock()
        scheduled = session.execute(
            select(RunRow.id, RunRow.fire_at, RunRow.scheduled_fire_at, RunRow.schedule_name).where(
                RunRow.status == SCHEDULED
            )
        ).all()
        for run_id, fire_at, synced_at, name in scheduled:
            assert fire_at is not None and fire_at > now, f"run {run_id} is overdue after the final sweep"
            assert name is not None and synced_at == fire_at and scheduler.schedules.get(name) == fire_at, (
                f"run {run_id} unsynced"
            )
        assert session.execute(select(func.count()).where(RunRow.status == DISPATCHING)).scalar() == 0
        unpublished = session.execute(
            select(func.count()).select_from(RunEventRow).where(RunEventRow.published_at.is_(None))
        ).scalar()
        assert unpublished == 0, "run events left in the outbox"
        assert events.published > 0
        assert len(succeeded) > 0, "the soak never got a run through (too short to prove anything)"
