"""The run lifecycle of DESIGN §4 and §8 as a hypothesis state machine over the services, on the
in-memory store (:mod:`tests.memory_store`) with a fake AWS and a clock the machine moves.

What is modelled, and why:

- the definitions: a root ``up`` (no tasks, so a manual run of it succeeds at once and cascades);
  ``lim`` after ``up`` with ``max_concurrent_runs: 2`` and a Glue task, debounce 0 (a registration
  fires it at once, so runs queue for a slot); ``ret`` after ``up`` with ``retries`` (3 attempts,
  backoff 30 s) and a Glue task timing out after 600 s, debounce 60 (so a fire can come early). One
  int partition ``k`` in 0..3: keys collide, triggers arrive while runs are open or in progress;
- :class:`FakeAws`, the Glue of the model: it starts tasks (or refuses them: at the target's own
  limit, ``limited=True``, or broken), and knows which of its job runs ended, whether or not the
  state-change event reached Flux Control: a rule ends a job run and loses its event, and the sweep
  must find it by asking (``status``), or time it out (``stop``);
- the rules are what the world does: producers register ``up``, operators run, fail, cancel and
  retry runs by hand, schedules fire (any run, due or not, or none), AWS delivers (or loses, or
  repeats) state changes, targets fill up and free, the sweep passes, time goes on;
- the invariants are DESIGN's promises, checked after every step on the store's committed rows and on
  what the fake AWS saw when it was called; at the end (:meth:`LifecycleMachine.teardown`, and the
  ``drain`` rule) the world is left to settle, and nothing may stay open.

Services' refusals a rule can expect (a conflict: cancelling a running run, retrying a run that did
not fail) are caught per rule; any other exception fails the test, and so does any exception the
services only log (a fire after commit, the sweep: they log and go on, so a bug there would be
silent otherwise). Nothing here sleeps or draws randomness outside hypothesis (tokens are a counter).
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from controller.core.effects import TaskRequest, TaskStartError, TaskStatus
from controller.core.errors import Conflict
from controller.core.runs import (
    DISPATCHING,
    FAILED,
    IN_PROGRESS_STATES,
    OPEN_STATES,
    QUEUED,
    SCHEDULED,
    Run,
    RunEvent,
)
from controller.core.specs import TableSpec
from controller.services.completion import fail_run, task_state_changed
from controller.services.dependencies import Dependencies
from controller.services.firing import fire
from controller.services.registering import ExecutionInput
from controller.services.registration import register_executions
from controller.services.run_actions import cancel_run, manual_run, retry_run
from controller.services.sweep import OVERDUE_GRACE, sweep
from tests.factories import person
from tests.memory_store import MemoryReads, MemoryStore
from tests.test_services_in_memory import Clock, RecordingEvents, RecordingScheduler

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
KEYS = st.integers(0, 3)
#: Operators list nobody: any identified caller may operate and complete (DESIGN §7).
OPS = person("ops")
POLL_AFTER_SECONDS = 300
POLL_BATCH = 3
LIMIT = 2
LIM_JOB, RET_JOB = "job-lim", "job-ret"
#: The fake Glue's modes for a target: it starts job runs, refuses them at its own concurrency limit
#: (the run is queued, DESIGN §8), or refuses them for good (the run fails).
ACCEPTING, LIMITED, BROKEN = "accepting", "limited", "broken"
RUNNING_IN_AWS = "RUNNING"
#: The drain: every pass ends every job run in AWS (succeeded, or failed, its event lost), moves the
#: clock by the polling interval and sweeps; this many passes are far more than any state of the model
#: needs to settle (backoffs ≤ 60 s, debounce ≤ 60 s, the overdue grace 2 min, at most 8 open runs with
#: tasks polled 3 a sweep, 3 attempts each).
DRAIN_PASSES = 30
DRAIN_STEP_SECONDS = POLL_AFTER_SECONDS


def table(name: str, **fields: Any) -> TableSpec:
    """A table partitioned by one required int ``k``."""
    return TableSpec.model_validate({"name": name, "partitions": [{"name": "k", "type": "int"}], **fields})


def glue_task(job: str, **fields: Any) -> list[dict[str, Any]]:
    """The one Glue task ``load`` of a table, starting ``job`` with the run's ``k``."""
    return [
        {"alias": "load", "type": "glue", "target": job, "params": {"--k": "{{ partitions.k }}"}, **fields}
    ]


def backoff(backoff_seconds: int, failed_attempt: int) -> timedelta:
    """DESIGN §8, computed here rather than asked of ``RetrySpec``: ``backoff_seconds × 2^(attempt−1)``
    after the failure of ``failed_attempt``, capped at one hour."""
    return timedelta(seconds=min(backoff_seconds * 2 ** (failed_attempt - 1), 3600))


AFTER_UP = [{"dependency_name": "up"}]
SPECS = [
    table("up"),
    table(
        "lim", dependencies=AFTER_UP, max_concurrent_runs=LIMIT, debounce_seconds=0, tasks=glue_task(LIM_JOB)
    ),
    table(
        "ret",
        dependencies=AFTER_UP,
        retries={"max_attempts": 3, "backoff_seconds": 30},
        debounce_seconds=60,
        tasks=glue_task(RET_JOB, timeout_seconds=600),
    ),
]
BY_NAME = {spec.name: spec for spec in SPECS}


# --- the fake AWS ---------------------------------------------------------------------------------------
@dataclass
class FakeAws:
    """Glue for the model (the services' ``TaskStarter`` with its monitoring): each start is recorded
    with its request and gets job run id ``jr_<n>``; ``modes`` say how each target answers the next
    starts; ``states`` is what AWS knows of each job run (``RUNNING`` or its final Glue state), whether
    or not Flux Control heard of the end; ``stop`` records and stops a running job run. ``watch`` sees
    each request before it starts (the machine checks the run's state at that moment); ``in_progress``
    reads the store when a job run is stopped."""

    modes: dict[str, str] = field(default_factory=dict)
    started: list[TaskRequest] = field(default_factory=list)
    requests: dict[str, TaskRequest] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    #: (external id, state AWS knew it in, whether its attempt was still in progress in the store)
    #: when Flux Control stopped it.
    stopped: list[tuple[str, str, bool]] = field(default_factory=list)
    refused: int = 0
    watch: Callable[[TaskRequest], None] | None = None
    #: Whether a request's attempt is in progress in the store, as a stop finds it (a timeout stops
    #: before failing the run; a failure stops the run's other job runs after).
    in_progress: Callable[[TaskRequest], bool] = lambda request: False

    def start(self, request: TaskRequest) -> str:
        mode = self.modes.get(request.target, ACCEPTING)
        if mode == LIMITED:
            self.refused += 1
            raise TaskStartError("ConcurrentRunsExceededException: the job is at its limit", limited=True)
        if mode == BROKEN:
            self.refused += 1
            raise TaskStartError("EntityNotFoundException: the job does not exist")
        if self.watch is not None:
            self.watch(request)
        self.started.append(request)
        external_id = f"jr_{len(self.started)}"
        self.requests[external_id] = request
        self.states[external_id] = RUNNING_IN_AWS
        return external_id

    def status(self, type: str, target: str, external_id: str) -> TaskStatus | None:
        state = self.states.get(external_id)
        if state is None:
            return None
        if state == RUNNING_IN_AWS:
            return TaskStatus(finished=False)
        return TaskStatus(finished=True, succeeded=state == "SUCCEEDED", message=state)

    def stop(self, type: str, target: str, external_id: str) -> bool:
        state = self.states.get(external_id, "UNKNOWN")
        request = self.requests.get(external_id)
        self.stopped.append((external_id, state, request is not None and self.in_progress(request)))
        if state == RUNNING_IN_AWS:
            self.states[external_id] = "STOPPED"
        return type in ("glue", "step_function")

    def running(self) -> list[str]:
        """Job runs AWS still runs, in the order started."""
        return [i for i, state in self.states.items() if state == RUNNING_IN_AWS]


class LoggedExceptions(logging.Handler):
    """The runtime's log records carrying an exception: a service that logs one and goes on (a fire
    after commit, the sweep) hides a bug the fakes cannot cause (they only raise TaskStartError, which
    is logged without one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(f"{record.getMessage()}: {record.exc_info[1]!r}")


# --- the machine ------------------------------------------------------------------------------------------
class LifecycleMachine(RuleBasedStateMachine):
    """The services on a fresh in-memory store per example; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(T0)
        self.store = MemoryStore(self.clock)
        self.store.define(SPECS)
        self.aws = FakeAws(watch=self._starting, in_progress=self._in_progress)
        self.events = RecordingEvents()
        tokens = itertools.count(1)
        self.deps = Dependencies(
            self.store,
            MemoryReads(self.store),
            RecordingScheduler(),
            self.aws,
            self.events,
            clock=self.clock,
            new_token=lambda: f"token-{next(tokens)}",
            poll_after_seconds=POLL_AFTER_SECONDS,
            poll_batch=POLL_BATCH,
        )
        self.ids = dict(self.store.definitions.ids)
        #: Attempts started by an operator's retry, per run.
        self.hand_retries: Counter[int] = Counter()
        #: When an operator's manual run pushed the open run of (table, k) to now.
        self.manual_runs: dict[tuple[str, int], list[datetime]] = {}
        #: What was wrong when the fake AWS was called (checked by an invariant after the step).
        self.violations: list[str] = []
        self.logged = LoggedExceptions()
        logging.getLogger("flux_control.runtime").addHandler(self.logged)

    # --- reading the store -------------------------------------------------------------------------
    def runs(self, name: str | None = None) -> list[Run]:
        return [r for r in self.store.runs() if name is None or r.table_id == self.ids[name]]

    def name_of(self, run: Run) -> str:
        return next(name for name, table_id in self.ids.items() if table_id == run.table_id)

    def run_ids(self) -> list[int]:
        return [r.id for r in self.store.runs()]

    def events_of(self, run_id: int) -> list[RunEvent]:
        """The run's state changes, in the order written (the outbox keeps every one)."""
        rows = sorted(self.store.snapshot().outbox.values(), key=lambda row: row.id)
        return [row.event for row in rows if row.run_id == run_id]

    def _in_progress(self, request: TaskRequest) -> bool:
        run = self.store.run(request.run_id)
        return run.status in IN_PROGRESS_STATES and run.attempt == request.attempt

    # --- what the fake AWS checks when a task starts --------------------------------------------------
    def _starting(self, request: TaskRequest) -> None:
        """A task starts only for its run's current attempt while the run is dispatching, within
        ``lim``'s slots, never twice, and an automatic retry not before its backoff (DESIGN §8)."""
        run = self.store.run(request.run_id)
        where = f"start of run {run.id} attempt {request.attempt} task {request.alias}"
        if (run.status, run.attempt) != (DISPATCHING, request.attempt):
            self.violations.append(f"{where}: the run is {run.status} at attempt {run.attempt}")
        if any(r.dispatch_id == request.dispatch_id for r in self.aws.started):
            self.violations.append(f"{where}: started before")
        if request.table == "lim":
            busy = [r.id for r in self.runs("lim") if r.status in IN_PROGRESS_STATES]
            if len(busy) > LIMIT:
                self.violations.append(f"{where}: lim runs {busy} in progress")
        retries = BY_NAME[request.table].retries
        if retries is not None and request.attempt > 1:
            reopenings = [e for e in self.events_of(run.id) if e.old_state == FAILED]
            reopened = reopenings[request.attempt - 2]
            assert reopened.at is not None
            key = (request.table, int(request.partitions["k"]))
            pushed = any(at >= reopened.at for at in self.manual_runs.get(key, []))
            earliest = reopened.at + backoff(retries.backoff_seconds, request.attempt - 1)
            if reopened.actor is None and not pushed and self.clock() < earliest:
                self.violations.append(f"{where}: an automatic retry started before {earliest.isoformat()}")

    # --- rules: producers, operators, schedules -------------------------------------------------------
    @rule(k=KEYS)
    def register_upstream(self, k: int) -> None:
        """A producer registers ``up`` for ``k``: opens the runs of ``lim`` and ``ret`` for ``k``, or
        pushes them, or asks for a re-run of the ones in progress."""
        register_executions(self.deps, [ExecutionInput("up", {"k": k}, "test")], OPS)

    @rule(name=st.sampled_from(sorted(BY_NAME)), k=KEYS)
    def run_by_hand(self, name: str, k: int) -> None:
        """An operator's manual run: refused while the key's run is in progress."""
        pushes = self.manual_runs.setdefault((name, k), [])
        pushes.append(self.clock())  # before: the run it pushes to now starts within the call
        try:
            manual_run(self.deps, name, {"k": k}, "by hand", OPS)
        except Conflict:
            pushes.pop()

    @rule(seconds=st.integers(0, 700))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(data=st.data())
    def fire_a_run(self, data: st.DataObject) -> None:
        """A schedule fires any run (due or not, in any state) or one that does not exist: a fire of a
        run that is not due, not scheduled or queued, or unknown writes nothing and starts nothing."""
        ids = self.run_ids()
        run_id = data.draw(st.sampled_from([*ids, max(ids, default=0) + 1]), label="run")
        before = self.store.snapshot()
        run = before.runs.get(run_id)
        starts = len(self.aws.started)
        outcome = fire(self.deps, run_id)
        not_due = run is not None and run.status == SCHEDULED and (run.fire_at or T0) > self.clock()
        if run is None or run.status not in (SCHEDULED, QUEUED) or not_due:
            assert outcome.startswith(("ignored", "unknown")), outcome
            assert self.store.snapshot() == before, f"a fire that did nothing ({outcome}) wrote"
            assert len(self.aws.started) == starts

    # --- rules: AWS ---------------------------------------------------------------------------------
    @precondition(lambda self: bool(self.aws.states))
    @rule(data=st.data(), succeeded=st.booleans())
    def deliver_completion(self, data: st.DataObject, succeeded: bool) -> None:
        """EventBridge delivers a job run's state change: its end now, or again (a duplicate, or late
        after the sweep found it or timed it out: always the state AWS has)."""
        external_id = data.draw(st.sampled_from(sorted(self.aws.states)), label="job run")
        if self.aws.states[external_id] == RUNNING_IN_AWS:
            self.aws.states[external_id] = "SUCCEEDED" if succeeded else "FAILED"
        state = self.aws.states[external_id]
        task_state_changed(self.deps, "glue", external_id, state, None if succeeded else "OutOfMemory")

    @precondition(lambda self: bool(self.aws.running()))
    @rule(data=st.data(), succeeded=st.booleans())
    def lose_completion(self, data: st.DataObject, succeeded: bool) -> None:
        """A job run ends in AWS and its state-change event is lost: only the sweep can find out."""
        external_id = data.draw(st.sampled_from(self.aws.running()), label="job run")
        self.aws.states[external_id] = "SUCCEEDED" if succeeded else "FAILED"

    @rule(job=st.sampled_from([LIM_JOB, RET_JOB]), mode=st.sampled_from([ACCEPTING, LIMITED, BROKEN]))
    def set_target(self, job: str, mode: str) -> None:
        """A target fills up (its own concurrency limit), breaks, or accepts again."""
        self.aws.modes[job] = mode

    # --- rules: runs by hand ------------------------------------------------------------------------
    @precondition(lambda self: bool(self.store.runs()))
    @rule(data=st.data())
    def report_failure(self, data: st.DataObject) -> None:
        """An operator reports a run failed (``POST /runs/{id}/fail`` without a token)."""
        run_id = data.draw(st.sampled_from(self.run_ids()), label="run")
        try:
            fail_run(self.deps, run_id, "reported by an operator", caller=OPS)
        except Conflict:
            assert self.store.run(run_id).status not in IN_PROGRESS_STATES

    @precondition(lambda self: bool(self.store.runs()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        run_id = data.draw(st.sampled_from(self.run_ids()), label="run")
        try:
            cancel_run(self.deps, run_id, "not needed", OPS)
        except Conflict:
            assert self.store.run(run_id).status not in ("scheduled", "queued", "awaiting_approval")

    @precondition(lambda self: bool(self.store.runs()))
    @rule(data=st.data())
    def retry_by_hand(self, data: st.DataObject) -> None:
        run_id = data.draw(st.sampled_from(self.run_ids()), label="run")
        try:
            retry_run(self.deps, run_id, "fixed it", OPS)
        except Conflict:
            return
        self.hand_retries[run_id] += 1

    # --- rules: the sweep ---------------------------------------------------------------------------
    @rule()
    def run_sweep(self) -> None:
        """A sweep; after it, no slot a queued run could take is left free (DESIGN §8: at the latest
        by the next sweep), unless the target itself is full."""
        sweep(self.deps)
        self._check_queues_after_a_sweep()

    def _check_queues_after_a_sweep(self) -> None:
        lim = self.runs("lim")
        queued = [r.id for r in lim if r.status == QUEUED]
        busy = [r.id for r in lim if r.status in IN_PROGRESS_STATES]
        if self.aws.modes.get(LIM_JOB, ACCEPTING) != LIMITED:
            assert not queued or len(busy) == LIMIT, f"lim runs {queued} queued, only {busy} in progress"
        if self.aws.modes.get(RET_JOB, ACCEPTING) != LIMITED:
            stuck = [r.id for r in self.runs("ret") if r.status == QUEUED]
            assert not stuck, f"ret (no limit of its own) runs {stuck} still queued after a sweep"

    @rule(ending=st.sampled_from(["SUCCEEDED", "FAILED"]))
    def drain(self, ending: str) -> None:
        """The world settles (then the machine goes on from there); every job run failing uses up
        every automatic attempt of ``ret``'s runs."""
        self._drain_and_check(ending)

    def _drain_and_check(self, ending: str = "SUCCEEDED") -> None:
        """Every target accepts; each pass ends every job run in AWS (as ``ending``, its event lost),
        moves the clock by the polling interval and sweeps. Checked: within :data:`DRAIN_PASSES`
        passes no run is open (every one succeeded, failed or was cancelled); no task is left pending
        or started; a further sweep leaves every run as it is, holds no schedule of a run that is not
        scheduled, and leaves nothing in the outbox unpublished."""
        for target in (LIM_JOB, RET_JOB):
            self.aws.modes[target] = ACCEPTING
        for _ in range(DRAIN_PASSES):
            if not any(r.status in OPEN_STATES for r in self.store.runs()):
                break
            for external_id in self.aws.running():
                self.aws.states[external_id] = ending
            self.clock.advance(DRAIN_STEP_SECONDS)
            sweep(self.deps)
            self._check_queues_after_a_sweep()
            self.check_every_invariant()
        still_open = [(r.id, self.name_of(r), r.status) for r in self.store.runs() if r.status in OPEN_STATES]
        assert not still_open, f"open after {DRAIN_PASSES} passes: {still_open}"
        unsettled = [
            (t.run_id, t.attempt, t.status) for t in self.store.tasks() if t.status in ("pending", "started")
        ]
        assert not unsettled, f"tasks never settled: {unsettled}"
        self.clock.advance(OVERDUE_GRACE.total_seconds())
        states = [(r.id, r.status) for r in self.store.runs()]
        sweep(self.deps)
        assert [(r.id, r.status) for r in self.store.runs()] == states
        held = [r.id for r in self.store.runs() if r.scheduled_fire_at is not None]
        assert not held, f"runs {held} are over and still hold a schedule"
        unpublished = [row.id for row in self.store.snapshot().outbox.values() if row.published_at is None]
        assert not unpublished, f"outbox rows {unpublished} never published"

    # --- invariants -----------------------------------------------------------------------------------
    def check_every_invariant(self) -> None:
        for check in (
            self.lim_never_has_more_than_its_slots_in_progress,
            self.one_open_run_per_key,
            self.no_task_starts_twice,
            self.attempts_are_automatic_retries_or_by_hand,
            self.no_dispatch_outlives_its_step,
            self.a_failed_run_with_retries_used_them_all,
            self.the_store_knows_every_task_aws_started,
            self.timeouts_stop_only_running_job_runs,
            self.no_job_run_outlives_its_attempt,
            self.aws_saw_nothing_wrong,
            self.no_exception_was_only_logged,
        ):
            check()

    @invariant()
    def lim_never_has_more_than_its_slots_in_progress(self) -> None:
        busy = [r.id for r in self.runs("lim") if r.status in IN_PROGRESS_STATES]
        assert len(busy) <= LIMIT, f"lim runs {busy} dispatching or running at once"

    @invariant()
    def one_open_run_per_key(self) -> None:
        pairs = Counter((r.table_id, r.partition_key) for r in self.store.runs() if r.status in OPEN_STATES)
        twice = [pair for pair, count in pairs.items() if count > 1]
        assert not twice, f"more than one open run of {twice}"

    @invariant()
    def no_task_starts_twice(self) -> None:
        starts = Counter(r.dispatch_id for r in self.aws.started)
        twice = [dispatch for dispatch, count in starts.items() if count > 1]
        assert not twice, f"started more than once: {twice}"

    @invariant()
    def attempts_are_automatic_retries_or_by_hand(self) -> None:
        """Each attempt after the first is an operator's retry or an automatic one, and a table
        retries by itself only up to ``max_attempts`` attempts (an operator may retry beyond)."""
        for run in self.store.runs():
            retries = BY_NAME[self.name_of(run)].retries
            automatic = run.attempt - 1 - self.hand_retries[run.id]
            allowed = retries.max_attempts - 1 if retries else 0
            assert 0 <= automatic <= allowed, (
                f"run {run.id} at attempt {run.attempt} after {self.hand_retries[run.id]} retries by hand"
            )

    @invariant()
    def no_dispatch_outlives_its_step(self) -> None:
        """Nothing crashes in this model: every dispatch ends within the call that began it."""
        left = [r.id for r in self.store.runs() if r.status == DISPATCHING]
        assert not left, f"runs {left} left dispatching"

    @invariant()
    def a_failed_run_with_retries_used_them_all(self) -> None:
        """A failure with attempts left comes back by itself in the unit of work that failed it."""
        for run in self.runs("ret"):
            retries = BY_NAME["ret"].retries
            assert retries is not None
            if run.status == FAILED:
                assert run.attempt >= retries.max_attempts, f"run {run.id} failed at attempt {run.attempt}"

    @invariant()
    def the_store_knows_every_task_aws_started(self) -> None:
        """Each job run's id is committed with its task (run, attempt, alias), and no other."""
        stored = {t.external_id: (t.run_id, t.attempt, t.alias) for t in self.store.tasks() if t.external_id}
        started = {i: (r.run_id, r.attempt, r.alias) for i, r in self.aws.requests.items()}
        assert stored == started, f"stored {stored}, started in AWS {started}"

    @invariant()
    def timeouts_stop_only_running_job_runs(self) -> None:
        """A timeout stops a task still running; one that ended (its event lost) is settled as it
        ended (DESIGN §8), not stopped and failed ``timed out``. (A run that failed otherwise has its
        job runs stopped after its failure: one may have ended meanwhile, which is harmless.)"""
        ended = [
            (i, state)
            for i, state, in_progress in self.aws.stopped
            if state != RUNNING_IN_AWS and in_progress
        ]
        assert not ended, f"timed out after they ended in AWS: {ended}"

    @invariant()
    def no_job_run_outlives_its_attempt(self) -> None:
        """A job run AWS still runs belongs to an attempt in progress: a run that fails has its job
        runs stopped, or its slot would be taken twice (DESIGN §8)."""
        for external_id in self.aws.running():
            request = self.aws.requests[external_id]
            run = self.store.run(request.run_id)
            assert self._in_progress(request), (
                f"{external_id} of run {run.id} attempt {request.attempt} runs on; the run is"
                f" {run.status} at attempt {run.attempt}"
            )

    @invariant()
    def aws_saw_nothing_wrong(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def no_exception_was_only_logged(self) -> None:
        assert not self.logged.records, self.logged.records

    def teardown(self) -> None:
        """The world settles and nothing stays open (unless the example already failed: its own
        error is the one to report)."""
        try:
            if sys.exc_info()[1] is None:
                self._drain_and_check()
        finally:
            logging.getLogger("flux_control.runtime").removeHandler(self.logged)


#: Sized to run in well under a minute here (each example: a fresh store, up to 60 steps, then the drain).
LifecycleMachine.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLifecycle = pytest.mark.slow(LifecycleMachine.TestCase)


# --- a bug the machine found (fixed: the sweep asks AWS before it times a task out) --------------------
def test_a_task_that_ended_before_its_deadline_is_settled_not_timed_out() -> None:
    """A ``ret`` job run succeeds 5 s after it started; its event is lost. With the default polling
    interval (900 s, longer than its 600 s timeout) its first check falls on its deadline, and the
    sweep then stops it and fails the run ``timed out`` (attempt 2 runs the job again) instead of
    asking AWS and succeeding it (DESIGN §8: only a task *running* past its timeout is stopped)."""
    clock = Clock(T0)
    store = MemoryStore(clock)
    store.define(SPECS)
    aws = FakeAws()
    deps = Dependencies(store, MemoryReads(store), RecordingScheduler(), aws, RecordingEvents(), clock=clock)
    register_executions(deps, [ExecutionInput("up", {"k": 1}, "test")], OPS)
    [run] = [r for r in store.runs() if r.table_id == store.definitions.ids["ret"]]
    clock.now = run.fire_at or clock.now
    assert fire(deps, run.id) == "running"
    [external_id] = [i for i in aws.running() if aws.requests[i].run_id == run.id]
    clock.advance(5)
    aws.states[external_id] = "SUCCEEDED"  # ended; its event is lost
    clock.advance(600)
    sweep(deps)
    assert aws.stopped == []
    assert (store.run(run.id).status, store.run(run.id).attempt) == ("succeeded", 1)
