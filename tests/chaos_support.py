"""The chaos soak's worker processes and the fake AWS they share (the design: ``tests/test_chaos.py``).

Three kinds of process import this module: the test itself; the manager's server process, which holds
the one :class:`AwsState` (so the class must be importable by name, which a test module is not meant
to be); and each spawned worker, which runs :func:`worker` as a Lambda container would run requests.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.managers import ListProxy, SyncManager
from multiprocessing.synchronize import Barrier
from typing import Any, Protocol

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from controller import wiring
from controller.core.effects import ScheduleRequest, TaskRequest, TaskStartError
from controller.core.errors import ServiceError
from controller.core.runs import CANCELLABLE_STATES, FAILED, RunEvent
from controller.db.definition_models import TableRow
from controller.db.engine import make_engine
from controller.db.run_models import ApprovalRow, RunRow, TaskDispatchRow
from controller.services import approvals, completion, firing, run_actions, sweep
from controller.services.dependencies import Dependencies
from controller.services.registration import ExecutionInput, register_executions
from tests.factories import person, table_doc

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SEED = 20261129
KEYS = 6
#: Each worker's seconds to import, connect and reach the start line (spawned processes start cold).
SETUP_TIMEOUT = 60.0
FAULT_RATE = 0.15
#: How long a scheduler call or a task start takes: uniform up to this (seconds), and one call in
#: twenty up to ten times as long (AWS's slow tail). Without a delay between a commit and its
#: schedule's write, a cancel could never get between them: the race this soak is after.
LATENCY = 0.01
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
        # A long debounce (the clock runs some 400 times faster than the wall, so this is seconds):
        # an approved run is then scheduled, its schedule written after commit, which is what a
        # cancel can race; and a schedule left behind by a cancel is still pending when the chaos
        # stops, for the final sweep to delete (one whose time passed has fired and deleted itself).
        debounce_seconds=1800,
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

#: (who, operation, schedule name, its fire time, the clock): every scheduler call, for diagnosis.
LogEntry = tuple[str, str, str, datetime | None, datetime]


# --- the AWS every process shares --------------------------------------------------------------------


class AwsState:
    """What AWS holds, seen by every worker process alike: the schedules that exist, the invocations
    of those that fired, the tasks started, the events published, and the time.

    It lives in the manager's server process, which serves each connected process on a thread of its
    own: every method takes the lock, so one call is one atomic step, as one AWS API call is.

    EventBridge Scheduler is modelled as deployed (one-time schedules, ``ActionAfterCompletion=DELETE``):
    once the clock reaches a schedule's time, the schedule is gone and an invocation of the Lambda
    for its run is waiting (:meth:`take_delivery`). Firing promptly matters to the invariants: the
    controller forgets a schedule when a fire claims its run, trusting it fired and deleted itself.
    """

    def __init__(self, start: datetime) -> None:
        self._lock = threading.Lock()
        self._now = start
        self._schedules: dict[str, tuple[int, datetime]] = {}  # name → (run id, fire time)
        self._deliveries: list[tuple[str, int]] = []  # fired schedules whose invocation is pending
        self._starts: list[tuple[int, int, str]] = []  # (run id, attempt, alias) per start
        self._published: list[tuple[int, str | None, str]] = []  # (run id, old, new) per event
        self._log: list[LogEntry] = []

    # the clock

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._fire_due()
            return self._now

    # EventBridge Scheduler

    def put_schedule(self, name: str, run_id: int, fire_at: datetime, who: str) -> None:
        with self._lock:
            self._schedules[name] = (run_id, fire_at)
            self._log.append((who, "put", name, fire_at, self._now))

    def delete_schedule(self, name: str, who: str) -> None:
        with self._lock:
            gone = self._schedules.pop(name, None)
            self._log.append((who, "delete" if gone else "delete-none", name, None, self._now))

    def refused(self, who: str, operation: str, name: str, fire_at: datetime | None) -> None:
        """An injected failure before AWS acted: nothing changes, the log says it was tried."""
        with self._lock:
            self._log.append((who, f"{operation}-refused", name, fire_at, self._now))

    def schedules(self) -> dict[str, tuple[int, datetime]]:
        with self._lock:
            self._fire_due()
            return dict(self._schedules)

    def history(self, name: str) -> list[LogEntry]:
        with self._lock:
            return [entry for entry in self._log if entry[2] == name]

    def log(self) -> list[LogEntry]:
        with self._lock:
            return list(self._log)

    def take_delivery(self, pick: float, again: bool) -> int | None:
        """The run of one pending invocation (``pick`` in [0, 1) chooses which), or None. ``again``
        leaves it pending as well: delivery is at least once, so another process may fire it too."""
        with self._lock:
            self._fire_due()
            if not self._deliveries:
                return None
            index = int(pick * len(self._deliveries))
            _, run_id = self._deliveries[index] if again else self._deliveries.pop(index)
            return run_id

    def drain_deliveries(self) -> list[int]:
        """Every pending invocation's run (the final repair handles them all)."""
        with self._lock:
            self._fire_due()
            runs = [run_id for _, run_id in self._deliveries]
            self._deliveries.clear()
            return runs

    def _fire_due(self) -> None:
        # Called with the lock held: schedules whose time has come fire, and delete themselves.
        for name, (run_id, fire_at) in list(self._schedules.items()):
            if fire_at <= self._now:
                del self._schedules[name]
                self._deliveries.append((name, run_id))
                self._log.append(("eventbridge", "fired", name, fire_at, self._now))

    # the task targets and the event bus

    def record_start(self, run_id: int, attempt: int, alias: str) -> None:
        with self._lock:
            self._starts.append((run_id, attempt, alias))

    def starts(self) -> list[tuple[int, int, str]]:
        with self._lock:
            return list(self._starts)

    def record_published(self, events: list[tuple[int, str | None, str]]) -> None:
        with self._lock:
            self._published.extend(events)

    def published(self) -> list[tuple[int, str | None, str]]:
        with self._lock:
            return list(self._published)


class SharedAws(Protocol):
    """:class:`AwsState` as its proxy offers it to other processes: its methods (arguments and answers
    are pickled copies), not its attributes."""

    def now(self) -> datetime: ...
    def advance(self, seconds: float) -> datetime: ...
    def put_schedule(self, name: str, run_id: int, fire_at: datetime, who: str) -> None: ...
    def delete_schedule(self, name: str, who: str) -> None: ...
    def refused(self, who: str, operation: str, name: str, fire_at: datetime | None) -> None: ...
    def schedules(self) -> dict[str, tuple[int, datetime]]: ...
    def history(self, name: str) -> list[LogEntry]: ...
    def log(self) -> list[LogEntry]: ...
    def take_delivery(self, pick: float, again: bool) -> int | None: ...
    def drain_deliveries(self) -> list[int]: ...
    def record_start(self, run_id: int, attempt: int, alias: str) -> None: ...
    def starts(self) -> list[tuple[int, int, str]]: ...
    def record_published(self, events: list[tuple[int, str | None, str]]) -> None: ...
    def published(self) -> list[tuple[int, str | None, str]]: ...


class ChaosManager(SyncManager):
    """A SyncManager that also serves one :class:`AwsState` (and the standard lists, for reports)."""

    # Declared for the type checker; ``register`` below defines it (it returns a proxy).
    AwsState: Callable[[datetime], SharedAws]


ChaosManager.register("AwsState", AwsState)


# --- the AWS ports of one process: thin adapters over the shared state, failing at random -------------


@dataclass
class Faults:
    """One process's injected failures, from its own seeded RNG (so its choices replay)."""

    rng: random.Random
    on: bool = True
    rate: float = FAULT_RATE

    def refused(self) -> bool:
        """The call fails before AWS acts (throttled, unavailable)."""
        return self.on and self.rng.random() < self.rate

    def lost(self) -> bool:
        """AWS acted but its answer never came (a timeout after the request arrived)."""
        return self.on and self.rng.random() < self.rate / 3

    def wait(self) -> None:
        """The time the request takes to reach AWS."""
        if self.on:
            slow = self.rng.random() < 0.05
            time.sleep(self.rng.uniform(LATENCY, 10 * LATENCY) if slow else self.rng.uniform(0, LATENCY))


@dataclass
class SharedScheduler:
    aws: SharedAws
    faults: Faults
    who: str

    def put(self, request: ScheduleRequest) -> None:
        if self.faults.refused():
            self.aws.refused(self.who, "put", request.name, request.fire_at)
            raise ConnectionError("injected: scheduler unavailable")
        self.faults.wait()
        self.aws.put_schedule(request.name, request.run_id, request.fire_at, self.who)
        if self.faults.lost():
            raise TimeoutError("injected: scheduler answer lost after the write")

    def delete(self, name: str) -> None:
        if self.faults.refused():
            self.aws.refused(self.who, "delete", name, None)
            raise ConnectionError("injected: scheduler unavailable")
        self.faults.wait()
        self.aws.delete_schedule(name, self.who)
        if self.faults.lost():
            raise TimeoutError("injected: scheduler answer lost after the delete")


@dataclass
class SharedTasks:
    aws: SharedAws
    faults: Faults

    def start(self, request: TaskRequest) -> str:
        # Refused only, never lost: a start whose answer is lost fails the run while its task runs,
        # a case of its own (the start's idempotency), not one this soak's invariants judge.
        if self.faults.refused():
            raise TaskStartError(f"{request.type} {request.target}: injected: ThrottlingException")
        self.faults.wait()
        self.aws.record_start(request.run_id, request.attempt, request.alias)
        return f"ext-{request.dispatch_id}"

    def status(self, type: str, target: str, external_id: str) -> None:
        # Completions come from the soak's own events; AWS is never asked.
        return None

    def stop(self, type: str, target: str, external_id: str) -> bool:
        return False


@dataclass
class SharedEvents:
    aws: SharedAws
    faults: Faults

    def publish(self, events: Sequence[RunEvent]) -> None:
        if self.faults.refused():
            raise ConnectionError("injected: EventBridge unavailable")
        self.aws.record_published([(e.run_id, e.old_state, e.new_state) for e in events])
        if self.faults.lost():  # published, but the caller cannot know: they go out again (at least once)
            raise TimeoutError("injected: EventBridge answer lost after publishing")


def dependencies(engine: Engine, aws: SharedAws, faults: Faults, who: str) -> Dependencies:
    """A process's dependencies, as ``controller.wiring`` builds them in a Lambda container, on the
    shared AWS and the shared clock."""
    return wiring.dependencies_for(
        engine,
        SharedScheduler(aws, faults, who),
        SharedTasks(aws, faults),
        SharedEvents(aws, faults),
        clock=aws.now,
    )


# --- one worker process ------------------------------------------------------------------------------


@dataclass
class WorkerReport:
    """What a worker sends back: what it did, the registrations it was answered, what it logged, and
    its traceback if something other than a ServiceError (an API's 4xx) escaped."""

    index: int
    actions: dict[str, int]
    accepted: list[int]
    logged: dict[str, int]
    #: The first record of each message that carried an exception, formatted (for a reader to judge).
    examples: dict[str, str]
    error: str | None = None


class LogCounter(logging.Handler):
    """A worker's warnings and errors, counted by message rather than printed: the injected faults make
    hundreds of expected ones, whose tracebacks would bury a failure's on the shared stderr. The first
    traceback of each message is kept, so that an unexpected one can still be read."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.counts[message] += 1
        if record.exc_info and message not in self.examples:
            self.examples[message] = "".join(traceback.format_exception(*record.exc_info)[-3:])


@dataclass
class Soak:
    deps: Dependencies
    engine: Engine
    aws: SharedAws
    approved_table: int
    accepted: set[int] = field(default_factory=set)
    actions: Counter[str] = field(default_factory=Counter)

    def rows(self, query: Any) -> list[Any]:
        with Session(self.engine) as session:
            return list(session.execute(query).all())

    def register(self, rng: random.Random) -> None:
        table, k = rng.choice(["up_a", "up_b"]), rng.randrange(KEYS)
        idempotency = rng.choice([None, f"{table}-{k}-{rng.randrange(2)}"])
        item = ExecutionInput(table, {"k": k}, "chaos", idempotency_key=idempotency)
        self._keep(register_executions(self.deps, [item], None))

    def fire(self, rng: random.Random) -> None:
        # A schedule's invocation reaching this container; sometimes another container gets it too.
        run_id = self.aws.take_delivery(rng.random(), again=rng.random() < 0.25)
        if run_id is not None:
            firing.fire(self.deps, run_id)

    def approve(self, rng: random.Random) -> None:
        pending = self.rows(select(ApprovalRow.id).where(ApprovalRow.status == "pending").limit(20))
        if pending:
            (approval_id,) = rng.choice(pending)
            approvals.decide(self.deps, approval_id, person("alice"), rng.random() < 0.8, "chaos")

    def cancel(self, rng: random.Random) -> None:
        # Mostly the approved table's runs changed last (just approved, or pushed by a registration):
        # a cancel then meets the schedule write that follows that commit, the race that can leave a
        # schedule behind its run. Otherwise any cancellable run.
        query = select(RunRow.id).where(RunRow.status.in_(CANCELLABLE_STATES))
        if rng.random() < 0.7:
            query = query.where(RunRow.table_id == self.approved_table)
            query = query.order_by(RunRow.updated_at.desc(), RunRow.id.desc()).limit(2)
        candidates = self.rows(query.limit(20))
        if candidates:
            run_actions.cancel_run(self.deps, rng.choice(candidates)[0], "chaos cancel")

    def complete(self, rng: random.Random) -> None:
        started = self.rows(
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
        failed = self.rows(select(RunRow.id).where(RunRow.status == FAILED).limit(20))
        if failed:
            run_actions.retry_run(self.deps, rng.choice(failed)[0], "chaos retry")

    def tick(self, rng: random.Random) -> None:
        self.aws.advance(rng.uniform(10, 40))

    def sweep(self, rng: random.Random) -> None:
        sweep.sweep(self.deps)

    def _keep(self, result: dict[str, Any]) -> None:
        self.accepted.update(e["id"] for e in result["executions"])

    def run(self, rng: random.Random, deadline: float) -> None:
        """Random actions until ``deadline``; a ServiceError is an answer, anything else escapes."""
        choices: list[tuple[str, Callable[[random.Random], None]]] = [
            ("register", self.register),
            ("fire", self.fire),
            ("approve", self.approve),
            ("cancel", self.cancel),
            ("complete", self.complete),
            ("retry", self.retry),
            ("tick", self.tick),
            ("sweep", self.sweep),
        ]
        weights = [40, 15, 8, 5, 20, 4, 10, 3]
        while time.monotonic() < deadline:
            name, action = rng.choices(choices, weights)[0]
            try:
                action(rng)
            except ServiceError:
                name += " (4xx)"  # decided meanwhile, not failed any more, …: what the API answers
            self.actions[name] += 1


def worker(
    url: str, index: int, duration: float, aws: SharedAws, start: Barrier, reports: ListProxy[WorkerReport]
) -> None:
    """One worker process: builds its own engine, store and dependencies from ``url``, as a Lambda
    container does, waits for the others at ``start``, soaks for ``duration`` seconds, and reports."""
    soak: Soak | None = None
    engine: Engine | None = None
    error: str | None = None
    counter = LogCounter()
    logging.getLogger().addHandler(counter)  # a spawned process has no handler of its own yet
    try:
        engine = make_engine(url, pool_size=1, max_overflow=1)
        faults = Faults(random.Random(SEED + 1000 + index))
        deps = dependencies(engine, aws, faults, f"worker-{index}")
        with Session(engine) as session:
            approved = session.execute(select(TableRow.id).where(TableRow.name == "approved")).scalar_one()
        soak = Soak(deps, engine, aws, approved)
        try:
            start.wait(SETUP_TIMEOUT)
        except BaseException:
            start.abort()  # the others, and the test, stop waiting for this one
            raise
        soak.run(random.Random(SEED + index), time.monotonic() + duration)
    except BaseException:
        # Anything but an API's answer would be a 5xx: its traceback fails the test.
        error = traceback.format_exc()
        if soak is None:
            start.abort()
    finally:
        reports.append(
            WorkerReport(
                index,
                dict(soak.actions) if soak else {},
                sorted(soak.accepted) if soak else [],
                dict(counter.counts),
                counter.examples,
                error,
            )
        )
        if soak is not None:
            soak.deps.store.close()
        if engine is not None:
            engine.dispose()
