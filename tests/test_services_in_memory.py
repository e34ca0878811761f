"""The services through their public functions, on the in-memory store (:mod:`tests.memory_store`)
with recording fakes for AWS and a clock the tests move: no database, no moto.

The definitions: roots ``a`` and ``b``; ``c`` needs both (a Glue task ``etl``); ``d`` needs ``c``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.core.effects import AfterCommit, ScheduleRequest, TaskRequest, TaskStartError
from controller.core.errors import Conflict, Forbidden, Unavailable, Unprocessable
from controller.core.gates import Probe
from controller.core.keys import key_text
from controller.core.records import NewExecution, NewRun, NewTask
from controller.core.runs import Run, RunEvent, transition
from controller.core.specs import TableSpec
from controller.services.approvals import decide
from controller.services.completion import fail_run, task_state_changed
from controller.services.dependencies import Dependencies
from controller.services.dispatch import STUCK_REASON
from controller.services.explain import explain
from controller.services.firing import fire
from controller.services.queries import get_run, list_executions, list_runs
from controller.services.registering import ExecutionInput
from controller.services.registration import register_executions
from controller.services.run_actions import cancel_run, manual_run, retry_run
from controller.services.sweep import sweep
from tests.factories import person
from tests.memory_store import (
    ConnectionLost,
    IntegrityViolation,
    MemoryReads,
    MemoryStore,
    MemoryTransaction,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DAY, OTHER_DAY = "2024-05-01", "2024-05-02"
DEBOUNCE = 300


def iso(at: datetime) -> str:
    return at.isoformat()


def after(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- definitions --------------------------------------------------------------------------------------
def glue(table: str) -> dict[str, Any]:
    """The Glue task of ``table``: job ``job-<table>``, given the run's day."""
    return {
        "alias": "etl",
        "type": "glue",
        "target": f"job-{table}",
        "params": {"--dt": "{{ partitions.dt }}"},
    }


def spec(name: str, *upstream: str, **fields: Any) -> TableSpec:
    """A table partitioned by a required ``dt`` date, needing ``upstream``; a table with upstreams has
    the Glue task :func:`glue` and a debounce of :data:`DEBOUNCE` seconds unless ``fields`` say otherwise."""
    document: dict[str, Any] = {"version": 1, "name": name, "partitions": [{"name": "dt", "type": "date"}]}
    if upstream:
        document |= {
            "dependencies": [{"dependency_name": u} for u in upstream],
            "tasks": [glue(name)],
            "debounce_seconds": DEBOUNCE,
        }
    document.update(fields)
    return TableSpec.model_validate(document)


def standard(**c_fields: Any) -> list[TableSpec]:
    return [spec("a"), spec("b"), spec("c", "a", "b", **c_fields), spec("d", "c")]


# --- the AWS fakes and the clock ----------------------------------------------------------------------
class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class RecordingScheduler:
    """EventBridge Scheduler: records the schedules written and deleted; ``failing`` refuses writes."""

    puts: list[ScheduleRequest] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    failing: bool = False

    def put(self, request: ScheduleRequest) -> None:
        if self.failing:
            raise RuntimeError("scheduler unavailable")
        self.puts.append(request)

    def delete(self, name: str) -> None:
        self.deletes.append(name)


@dataclass
class RecordingTasks:
    """Glue and friends: each start returns ``jr_<n>``; ``refuse`` maps an alias to the AWS error it gets;
    ``crash`` plays the Lambda dying mid-dispatch. AWS knows nothing of a started task (``status`` is
    None); ``stop`` records the external id and stops Glue and Step Functions tasks."""

    started: list[TaskRequest] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    crash: bool = False
    #: Called before each start (what AWS does meanwhile: another task's completion event).
    on_start: Callable[[TaskRequest], None] | None = None
    stopped: list[str] = field(default_factory=list)

    def start(self, request: TaskRequest) -> str:
        if self.on_start is not None:
            self.on_start(request)
        if self.crash:
            raise RuntimeError("the Lambda died")
        if request.alias in self.refuse:
            raise TaskStartError(self.refuse[request.alias])
        self.started.append(request)
        return f"jr_{len(self.started)}"

    def status(self, type: str, target: str, external_id: str) -> None:
        return None

    def stop(self, type: str, target: str, external_id: str) -> bool:
        self.stopped.append(external_id)
        return type in ("glue", "step_function")


@dataclass
class RecordingEvents:
    """EventBridge: records each batch published; ``failing`` refuses; ``on_publish`` sees each batch first."""

    batches: list[list[RunEvent]] = field(default_factory=list)
    failing: bool = False
    on_publish: Callable[[Sequence[RunEvent]], None] | None = None

    def publish(self, events: Sequence[RunEvent]) -> None:
        if self.failing:
            raise RuntimeError("EventBridge unavailable")
        if self.on_publish is not None:
            self.on_publish(events)
        self.batches.append(list(events))

    @property
    def published(self) -> list[RunEvent]:
        return [event for batch in self.batches for event in batch]


@dataclass
class World:
    """The services' dependencies on the in-memory store, with the fakes kept at hand."""

    store: MemoryStore
    reads: MemoryReads
    scheduler: RecordingScheduler
    tasks: RecordingTasks
    events: RecordingEvents
    clock: Clock
    deps: Dependencies

    def register(self, table: str, dt: str = DAY, **fields: Any) -> dict[str, Any]:
        item = ExecutionInput(table, {"dt": dt}, fields.pop("source", "test"), **fields)
        return register_executions(self.deps, [item], person("tester"))

    def open_c(self) -> Run:
        """Register ``a`` and ``b`` for :data:`DAY`: the run of ``c`` it opens."""
        self.register("a")
        [opened] = self.register("b")["runs"]
        return self.store.run(opened["id"])

    def running_c(self) -> Run:
        """The run of ``c``, fired when due: its task ``etl`` started as ``jr_1``."""
        run = self.open_c()
        self.clock.now = run.fire_at or self.clock.now
        assert fire(self.deps, run.id) == "running"
        return self.store.run(run.id)

    def run_of(self, table: str, dt: str = DAY) -> Run:
        """The newest run of (table, dt)."""
        table_id = self.store.definitions.ids[table]
        return max(
            (
                r
                for r in self.store.runs()
                if (r.table_id, r.partition_key) == (table_id, key_text({"dt": dt}))
            ),
            key=lambda r: r.id,
        )

    def changes(self, run_id: int) -> list[tuple[str | None, str]]:
        """(old, new) state of every event of a run published so far."""
        return [(e.old_state, e.new_state) for e in self.events.published if e.run_id == run_id]


@pytest.fixture
def world() -> World:
    clock = Clock(T0)
    store = MemoryStore(clock)
    store.define(standard())
    reads = MemoryReads(store)
    scheduler, tasks, events = RecordingScheduler(), RecordingTasks(), RecordingEvents()
    deps = Dependencies(store, reads, scheduler, tasks, events, clock=clock)
    return World(store, reads, scheduler, tasks, events, clock, deps)


# --- registration and gates ---------------------------------------------------------------------------
def test_a_run_opens_only_when_every_required_upstream_has_the_same_partition(world: World) -> None:
    assert world.register("a")["runs"] == []
    assert world.register("b", OTHER_DAY)["runs"] == []
    assert world.store.runs() == []

    answer = world.register("b")

    fire_at = after(DEBOUNCE)
    assert answer == {
        "executions": [{"id": 3, "table_name": "b", "partitions": {"dt": DAY}}],
        "runs": [
            {
                "id": 1,
                "table_name": "c",
                "partitions": {"dt": DAY},
                "status": "scheduled",
                "fire_at": iso(fire_at),
                "approval_id": None,
            }
        ],
    }
    [run] = world.store.runs()
    assert (run.status, run.attempt, run.manual, run.fire_at) == ("scheduled", 1, False, fire_at)
    assert world.store.triggers(run.id) == [3, 1]  # the execution that opened it, then a's of that day
    assert world.scheduler.puts == [ScheduleRequest("flux-run-1-c", 1, fire_at)]
    # The schedule written is recorded after commit: the run is synced.
    assert (run.scheduled_fire_at, run.schedule_name) == (fire_at, "flux-run-1-c")
    assert world.changes(run.id) == [(None, "scheduled")]
    assert world.store.open_sessions == 0


def test_an_optional_upstream_never_blocks_but_its_execution_is_a_trigger(world: World) -> None:
    needs_a = {"dependency_name": "a"}
    maybe_b = {"dependency_name": "b", "is_required": False}
    world.store.define([spec("a"), spec("b"), spec("c", "a", "b", dependencies=[needs_a, maybe_b])])
    assert world.register("b")["runs"] == []

    [opened] = world.register("a")["runs"]

    assert opened["table_name"] == "c"
    assert world.store.triggers(opened["id"]) == [2, 1]


def test_a_partition_map_carries_the_canonical_value_downstream(world: World) -> None:
    month = [{"name": "ano_mes", "type": "int"}]
    mapped = {"dependency_name": "a", "partition_map": {"m": "ano_mes"}}
    world.store.define(
        [
            spec("a", partitions=month),
            spec("c", "a", partitions=[{"name": "m", "type": "int"}], dependencies=[mapped]),
        ]
    )

    answer = register_executions(world.deps, [ExecutionInput("a", {"ano_mes": "0202405"}, "test")], None)

    assert answer["executions"][0]["partitions"] == {"ano_mes": 202405}
    assert [(r["table_name"], r["partitions"]) for r in answer["runs"]] == [("c", {"m": 202405})]


def test_a_registration_after_a_reconcile_uses_the_new_definitions(world: World) -> None:
    world.register("a")  # the definitions are cached now
    world.store.define([*standard(), spec("e", "a")])

    answer = world.register("a", OTHER_DAY)

    assert [r["table_name"] for r in answer["runs"]] == ["e"]
    world.store.define([spec("a")])
    assert world.register("a", "2024-05-03")["runs"] == []  # c, d and e are gone: nothing opens


def test_a_new_trigger_pushes_the_fire_time_by_the_debounce_but_not_past_the_max_wait(world: World) -> None:
    world.store.define(standard(max_wait_seconds=400))
    run = world.open_c()
    assert run.fire_at == after(300)

    world.clock.advance(60)
    [pushed] = world.register("a")["runs"]
    assert (pushed["id"], pushed["fire_at"]) == (run.id, iso(after(360)))

    world.clock.advance(60)
    world.register("b")
    pushed_again = world.store.run(run.id)
    assert pushed_again.fire_at == after(400)  # 120 + 300 is later than first trigger + max wait
    assert (pushed_again.first_trigger_at, pushed_again.last_trigger_at) == (T0, after(120))
    assert len(world.store.runs()) == 1
    assert world.store.triggers(run.id) == [2, 1, 3, 4]
    assert [p.fire_at for p in world.scheduler.puts] == [after(300), after(360), after(400)]
    assert world.changes(run.id) == [(None, "scheduled")]  # a push changes no state


def test_a_due_run_fires_and_starts_its_glue_task_with_the_token(world: World) -> None:
    run = world.open_c()
    assert fire(world.deps, run.id) == "ignored: not due yet (its schedule is written again)"
    assert world.tasks.started == []

    world.clock.now = after(DEBOUNCE)
    assert fire(world.deps, run.id) == "running"

    [request] = world.tasks.started
    [task] = world.store.tasks(run.id)
    assert task.token is not None and len(task.token) == 43  # secrets.token_urlsafe(32)
    assert request == TaskRequest(
        run_id=run.id,
        attempt=1,
        table="c",
        alias="etl",
        type="glue",
        target="job-c",
        partitions={"dt": DAY},
        params={"--dt": DAY},
        token=task.token,  # drawn by the dispatch and recorded with the task
    )
    assert (task.status, task.external_id, task.started_at) == ("started", "jr_1", after(DEBOUNCE))
    assert world.store.run(run.id).status == "running"
    assert world.changes(run.id) == [
        (None, "scheduled"),
        ("scheduled", "dispatching"),
        ("dispatching", "running"),
    ]
    # A duplicate fire finds the run claimed: nothing starts twice.
    assert fire(world.deps, run.id) == "ignored: run is running"
    assert len(world.tasks.started) == 1


def test_a_task_that_cannot_start_fails_the_run_with_the_aws_message(world: World) -> None:
    world.tasks.refuse["etl"] = "AccessDeniedException: not allowed"
    run = world.open_c()
    world.clock.now = after(DEBOUNCE)

    outcome = fire(world.deps, run.id)

    assert outcome == "failed: task etl did not start: AccessDeniedException: not allowed"
    failed = world.store.run(run.id)
    assert (failed.status, failed.error) == (
        "failed",
        "task etl did not start: AccessDeniedException: not allowed",
    )
    [task] = world.store.tasks(run.id)
    assert (task.status, task.error) == ("failed", "AccessDeniedException: not allowed")


def test_a_glue_success_succeeds_the_run_registers_its_execution_and_cascades(world: World) -> None:
    run = world.running_c()
    world.clock.advance(600)

    assert task_state_changed(world.deps, "glue", "jr_1", "SUCCEEDED", None) == "run succeeded"

    done = world.store.run(run.id)
    assert (done.status, done.finished_at) == ("succeeded", world.clock.now)
    [task] = world.store.tasks(run.id)
    assert (task.status, task.finished_at, task.error) == ("succeeded", world.clock.now, None)
    produced = world.store.executions()[-1]
    assert (produced.table_id, produced.partitions, produced.source, produced.run_id) == (
        world.store.definitions.ids["c"],
        {"dt": DAY},
        "glue",
        run.id,
    )
    downstream = world.run_of("d")
    assert (downstream.status, downstream.fire_at) == (
        "scheduled",
        world.clock.now + timedelta(seconds=DEBOUNCE),
    )
    assert world.store.triggers(downstream.id) == [produced.id]
    assert world.changes(run.id)[-1] == ("running", "succeeded")
    assert world.changes(downstream.id) == [(None, "scheduled")]

    # The same event again (EventBridge delivers at least once) changes nothing.
    before = world.store.snapshot()
    assert (
        task_state_changed(world.deps, "glue", "jr_1", "SUCCEEDED", None) == "ignored: task already succeeded"
    )
    assert (
        task_state_changed(world.deps, "glue", "jr_1", "RUNNING", None)
        == "ignored: RUNNING is not a final state"
    )
    assert task_state_changed(world.deps, "glue", "jr_404", "FAILED", None) == "ignored: unknown task"
    assert world.store.snapshot() == before


def test_a_glue_failure_fails_the_run_and_retry_starts_attempt_two(world: World) -> None:
    run = world.running_c()

    assert task_state_changed(world.deps, "glue", "jr_1", "FAILED", "OutOfMemory") == "run failed"
    failed = world.store.run(run.id)
    assert (failed.status, failed.error) == ("failed", "task etl OutOfMemory")
    assert world.store.tasks(run.id)[0].error == "OutOfMemory"
    assert world.run_of("c") == failed  # nothing cascades
    assert all(r.table_id != world.store.definitions.ids["d"] for r in world.store.runs())

    world.clock.advance(60)
    answer = retry_run(world.deps, run.id, "fixed the job")

    assert (answer["id"], answer["status"]) == (run.id, "running")  # fired at once
    retried = world.store.run(run.id)
    assert (retried.attempt, retried.error, retried.reason, retried.finished_at) == (
        2,
        None,
        "fixed the job",
        None,
    )
    first, second = world.tasks.started
    assert second.attempt == 2 and second.token != first.token  # a new token for the new attempt
    assert [t.token for t in world.store.tasks(run.id)] == [first.token, second.token]
    assert [(t.attempt, t.status, t.external_id) for t in world.store.tasks(run.id)] == [
        (1, "failed", "jr_1"),
        (2, "started", "jr_2"),
    ]
    assert world.changes(run.id)[3:] == [
        ("running", "failed"),
        ("failed", "scheduled"),
        ("scheduled", "dispatching"),
        ("dispatching", "running"),
    ]
    # A late event of attempt 1 settles nothing of attempt 2.
    assert task_state_changed(world.deps, "glue", "jr_1", "SUCCEEDED", None) == "ignored: task already failed"
    with pytest.raises(Conflict, match="only failed runs can be retried"):
        retry_run(world.deps, run.id, None)


def test_a_task_reporting_failure_needs_a_token_of_the_current_attempt(world: World) -> None:
    run = world.running_c()
    [started] = world.tasks.started
    for wrong in (f"flux-{run.id}-1-etl", started.token[:-1], started.token + "x", "", "é"):
        with pytest.raises(Forbidden):
            fail_run(world.deps, run.id, "bad input", token=wrong)
    assert world.store.run(run.id).status == "running"

    answer = fail_run(world.deps, run.id, "bad input", token=started.token)

    assert answer["status"] == "failed"
    assert world.store.run(run.id).error == "bad input"
    assert [(t.status, t.error) for t in world.store.tasks(run.id)] == [("failed", "bad input")]


def test_a_task_registering_its_partition_completes_its_run(world: World) -> None:
    run = world.running_c()

    [started] = world.tasks.started
    answer = world.register("c", run_id=run.id, token=started.token, source="sqs")

    assert world.store.run(run.id).status == "succeeded"
    assert world.store.tasks(run.id)[0].status == "succeeded"
    assert [r["table_name"] for r in answer["runs"]] == ["d"]


def test_a_dispatch_draws_each_tasks_token_from_its_dependencies_and_no_read_shows_it(world: World) -> None:
    drawn = iter(["drawn-first", "drawn-second"])
    world.deps.new_token = lambda: next(drawn)
    run = world.running_c()

    [request] = world.tasks.started
    assert request.token == "drawn-first" and "drawn-first" not in repr(request)
    assert [t.token for t in world.store.tasks(run.id)] == ["drawn-first"]
    detail = get_run(world.deps, run.id)
    assert [t["alias"] for t in detail["run"]["tasks"]] == ["etl"]
    assert "drawn-first" not in repr(detail)
    with pytest.raises(Forbidden):
        fail_run(world.deps, run.id, "bad input", token="drawn-second")  # drawn, never given to a task
    assert fail_run(world.deps, run.id, "bad input", token="drawn-first")["status"] == "failed"


def test_a_trigger_while_the_run_is_running_opens_a_new_run_once_it_succeeds(world: World) -> None:
    run = world.running_c()
    world.clock.advance(60)
    [pushed] = world.register("a")["runs"]
    assert (pushed["id"], pushed["status"]) == (run.id, "running")
    assert world.store.run(run.id).rerun_requested

    task_state_changed(world.deps, "glue", "jr_1", "SUCCEEDED", None)

    assert world.store.run(run.id).status == "succeeded"
    rerun = world.run_of("c")
    assert rerun.id != run.id
    assert (rerun.status, rerun.fire_at) == ("scheduled", world.clock.now + timedelta(seconds=DEBOUNCE))
    assert world.run_of("d").status == "scheduled"


def two_tasks() -> list[TableSpec]:
    publish = {"alias": "publish", "type": "glue", "target": "job-publish"}
    return standard(tasks=[glue("c"), publish])


def test_a_task_finishing_while_the_others_start_leaves_the_run_waiting_for_them(world: World) -> None:
    world.store.define(two_tasks())
    outcomes: list[str] = []

    def first_finishes(request: TaskRequest) -> None:
        if request.alias == "publish":
            outcomes.append(task_state_changed(world.deps, "glue", "jr_1", "SUCCEEDED", None))

    world.tasks.on_start = first_finishes
    run = world.running_c()

    assert outcomes == ["task succeeded; the run waits for its other tasks"]
    assert [(t.alias, t.status) for t in world.store.tasks(run.id)] == [
        ("etl", "succeeded"),
        ("publish", "started"),
    ]
    assert task_state_changed(world.deps, "glue", "jr_2", "SUCCEEDED", None) == "run succeeded"
    assert world.store.run(run.id).status == "succeeded"


def test_a_task_failing_while_the_others_start_fails_the_run_during_dispatch(world: World) -> None:
    world.store.define(two_tasks())
    outcomes: list[str] = []

    def first_fails(request: TaskRequest) -> None:
        if request.alias == "publish":
            outcomes.append(task_state_changed(world.deps, "glue", "jr_1", "FAILED", "boom"))

    world.tasks.on_start = first_fails
    run = world.open_c()
    world.clock.now = after(DEBOUNCE)

    assert fire(world.deps, run.id) == "dispatched; the run is already failed"

    assert outcomes == ["run failed"]
    failed = world.store.run(run.id)
    assert (failed.status, failed.error) == ("failed", "task etl boom")
    assert world.changes(run.id)[-2:] == [("scheduled", "dispatching"), ("dispatching", "failed")]


# --- approvals ----------------------------------------------------------------------------------------
def test_an_approved_run_is_scheduled_and_a_second_decision_is_a_conflict(world: World) -> None:
    world.store.define(standard(requires_approval=True, approvers=["alice"]))
    run = world.open_c()
    assert (run.status, run.fire_at) == ("awaiting_approval", None)
    [approval] = world.store.approvals(run.id)
    assert approval.status == "pending"
    assert world.scheduler.puts == []

    with pytest.raises(Forbidden):
        decide(world.deps, approval.id, person("mallory"), True, None)
    world.clock.advance(60)
    answer = decide(world.deps, approval.id, person("alice"), True, "looks good")

    fire_at = after(DEBOUNCE)  # the last trigger + the debounce, still ahead
    assert answer == {
        "approval": {"id": approval.id, "status": "approved"},
        "run": {
            "id": run.id,
            "table_name": "c",
            "partitions": {"dt": DAY},
            "status": "scheduled",
            "fire_at": iso(fire_at),
            "approval_id": approval.id,
        },
    }
    [decided] = world.store.approvals(run.id)
    assert (decided.status, decided.decided_by, decided.comment) == ("approved", "alice", "looks good")
    assert world.scheduler.puts == [ScheduleRequest(f"flux-run-{run.id}-c", run.id, fire_at)]
    [opened, approved] = [e for e in world.events.published if e.run_id == run.id]
    assert (opened.old_state, opened.new_state, opened.approval_id) == (
        None,
        "awaiting_approval",
        approval.id,
    )
    assert (approved.old_state, approved.new_state, approved.approval_id, approved.reason) == (
        "awaiting_approval",
        "scheduled",
        approval.id,
        "looks good",
    )

    before = world.store.snapshot()
    with pytest.raises(Conflict) as second:
        decide(world.deps, approval.id, person("alice"), False, "changed my mind")
    assert second.value.details == {"status": "approved"}
    assert world.store.snapshot() == before


def test_two_decisions_at_once_make_one_decision_and_one_conflict(world: World) -> None:
    world.store.define(standard(requires_approval=True))
    run = world.open_c()
    [approval] = world.store.approvals(run.id)
    barrier = threading.Barrier(2)
    results: list[str] = []

    def decide_now(identity: str, approve: bool) -> None:
        barrier.wait()
        try:
            decide(world.deps, approval.id, person(identity), approve, None)
        except Conflict:
            results.append("conflict")
        else:
            results.append(identity)

    threads = [threading.Thread(target=decide_now, args=args) for args in (("alice", True), ("bob", False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) in (["alice", "conflict"], ["bob", "conflict"])
    [decided] = world.store.approvals(run.id)
    assert decided.decided_by in results
    assert world.store.run(run.id).status == ("scheduled" if decided.status == "approved" else "rejected")


def test_a_rejected_run_ends(world: World) -> None:
    world.store.define(standard(requires_approval=True))
    run = world.open_c()
    [approval] = world.store.approvals(run.id)

    answer = decide(world.deps, approval.id, person("bob"), False, None)

    assert answer["run"]["status"] == "rejected"
    rejected = world.store.run(run.id)
    assert (rejected.status, rejected.reason, rejected.finished_at) == ("rejected", "rejected by bob", T0)
    assert world.changes(run.id) == [(None, "awaiting_approval"), ("awaiting_approval", "rejected")]


# --- cancel, manual runs, deleted tables ----------------------------------------------------------------
def test_cancelling_a_scheduled_run_deletes_its_schedule(world: World) -> None:
    run = world.open_c()

    answer = cancel_run(world.deps, run.id, "not today")

    assert answer["status"] == "cancelled"
    cancelled = world.store.run(run.id)
    assert (cancelled.status, cancelled.reason, cancelled.finished_at) == ("cancelled", "not today", T0)
    assert world.scheduler.deletes == [f"flux-run-{run.id}-c"]
    world.clock.now = after(DEBOUNCE)
    assert fire(world.deps, run.id) == "ignored: run is cancelled"
    with pytest.raises(Conflict):
        cancel_run(world.deps, run.id, None)
    # The key is free again: the next trigger opens a new run.
    [reopened] = world.register("a")["runs"]
    assert reopened["id"] != run.id


def test_cancelling_a_run_awaiting_approval_cancels_its_approval(world: World) -> None:
    world.store.define(standard(requires_approval=True))
    run = world.open_c()

    cancel_run(world.deps, run.id, None)

    [approval] = world.store.approvals(run.id)
    assert (approval.status, approval.decided_at) == ("cancelled", T0)
    with pytest.raises(Conflict):
        decide(world.deps, approval.id, person("alice"), True, None)


def test_a_manual_run_fires_at_once_and_a_second_one_conflicts_while_it_runs(world: World) -> None:
    answer = manual_run(world.deps, "c", {"dt": DAY}, "backfill")

    assert (answer["status"], answer["table_name"]) == ("running", "c")
    run = world.store.run(answer["id"])
    assert (run.manual, run.reason, run.fire_at) == (True, "backfill", T0)
    assert world.store.triggers(run.id) == []
    assert world.tasks.started[0].run_id == run.id
    with pytest.raises(Conflict, match="already running"):
        manual_run(world.deps, "c", {"dt": DAY}, "again")


def test_a_run_of_a_deleted_table_is_cancelled_when_it_fires(world: World) -> None:
    run = world.open_c()
    world.store.define([spec("a"), spec("b")])  # c and d deleted by a reconcile
    world.clock.now = after(DEBOUNCE)

    assert fire(world.deps, run.id) == "cancelled: table deleted"

    cancelled = world.store.run(run.id)
    assert (cancelled.status, cancelled.reason) == ("cancelled", "the table was deleted by a reconcile")
    assert world.events.published[-1].table == "c"  # the name of a deleted table still answers
    assert world.reads.table_exists("c")
    assert [r["status"] for r in list_runs(world.deps, "c", None, 10)["runs"]] == ["cancelled"]


# --- idempotency ----------------------------------------------------------------------------------------
def test_an_idempotent_repeat_returns_the_first_answer_and_writes_nothing(world: World) -> None:
    world.register("b")
    first = world.register("a", idempotency_key="load-1")
    assert [r["table_name"] for r in first["runs"]] == ["c"]
    before = world.store.snapshot()
    puts, published = len(world.scheduler.puts), len(world.events.published)

    world.clock.advance(30)
    again = world.register("a", idempotency_key="load-1")

    assert again == first
    assert world.store.snapshot() == before
    assert (len(world.scheduler.puts), len(world.events.published)) == (puts, published)


@pytest.mark.parametrize(
    ("table", "dt", "partitions"), [("a", OTHER_DAY, OTHER_DAY), ("b", DAY, DAY)], ids=["partition", "table"]
)
def test_a_key_reused_for_another_item_is_a_conflict_naming_the_first_and_writes_nothing(
    world: World, table: str, dt: str, partitions: str
) -> None:
    [first] = world.register("a", idempotency_key="load-1")["executions"]
    before = world.store.snapshot()
    puts, published = len(world.scheduler.puts), len(world.events.published)

    items = [
        ExecutionInput("d", {"dt": DAY}, "test"),
        ExecutionInput(table, {"dt": dt}, "test", idempotency_key="load-1"),
    ]
    with pytest.raises(Conflict) as refused:
        register_executions(world.deps, items, person("tester"))

    assert refused.value.message == (
        f"data[1]: idempotency_key 'load-1' was used by execution {first['id']} "
        f'(table a, partitions {{"dt": "{DAY}"}}); this item is table {table}, '
        f'partitions {{"dt": "{partitions}"}}: a key names one registration item'
    )
    assert refused.value.details == {
        "index": 1,
        "execution_id": first["id"],
        "table_name": "a",
        "partitions": {"dt": DAY},
    }
    assert world.store.snapshot() == before
    assert (len(world.scheduler.puts), len(world.events.published)) == (puts, published)


def test_one_key_twice_in_a_request_is_refused_whatever_the_tables(world: World) -> None:
    items = [ExecutionInput(t, {"dt": DAY}, "test", idempotency_key="same") for t in ("a", "b")]
    with pytest.raises(Unprocessable, match=r"^data\[1\]: idempotency_key 'same' is also used by data\[0\]$"):
        register_executions(world.deps, items, person("tester"))
    assert world.store.executions() == []


# --- the sweep ------------------------------------------------------------------------------------------
def test_the_sweep_writes_the_schedules_that_could_not_be_written(world: World) -> None:
    world.scheduler.failing = True
    run = world.open_c()
    assert (run.status, run.scheduled_fire_at) == ("scheduled", None)  # the run committed anyway

    world.scheduler.failing = False
    counts = sweep(world.deps)

    assert counts == {
        "schedules_written": 1,
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
    synced = world.store.run(run.id)
    assert (synced.scheduled_fire_at, synced.schedule_name) == (synced.fire_at, f"flux-run-{run.id}-c")
    assert sweep(world.deps)["schedules_written"] == 0


def test_the_sweep_fires_overdue_runs(world: World) -> None:
    run = world.open_c()
    world.clock.now = after(DEBOUNCE + 60)
    assert sweep(world.deps)["overdue_fired"] == 0  # within the grace: its schedule may still fire

    world.clock.now = after(DEBOUNCE + 121)
    assert sweep(world.deps)["overdue_fired"] == 1

    assert world.store.run(run.id).status == "running"
    assert [r.run_id for r in world.tasks.started] == [run.id]


def test_the_sweep_fails_runs_stuck_dispatching(world: World) -> None:
    run = world.open_c()
    world.clock.now = after(DEBOUNCE)
    world.tasks.crash = True
    with pytest.raises(RuntimeError, match="the Lambda died"):
        fire(world.deps, run.id)
    assert world.store.run(run.id).status == "dispatching"
    assert world.store.open_sessions == 0
    world.tasks.crash = False

    world.clock.advance(14 * 60)
    assert sweep(world.deps)["stuck_failed"] == 0
    world.clock.advance(60)
    assert sweep(world.deps)["stuck_failed"] == 1

    stuck = world.store.run(run.id)
    assert (stuck.status, stuck.error) == ("failed", STUCK_REASON)
    assert world.tasks.started == []  # whether it started is unknown: never started again by itself


def test_the_sweep_publishes_the_events_that_could_not_be_published(world: World) -> None:
    world.events.failing = True
    run = world.open_c()
    [row] = world.store.outbox()
    assert row.published_at is None

    world.events.failing = False
    assert sweep(world.deps)["events_published"] == 0  # too recent: its own request may publish it
    world.clock.advance(31)
    assert sweep(world.deps)["events_published"] == 1

    assert world.store.outbox()[0].published_at == world.clock.now
    assert world.changes(run.id) == [(None, "scheduled")]
    assert sweep(world.deps)["events_published"] == 0


# --- events and transactions ------------------------------------------------------------------------------
def test_events_are_published_after_commit_with_old_and_new_states(world: World) -> None:
    seen: list[tuple[str, str]] = []

    def committed(events: Sequence[RunEvent]) -> None:
        # Publishing happens after commit: the run is already in the state the last event reports,
        # and the events are in the outbox, not yet marked published.
        last = events[-1]
        seen.append((world.store.run(last.run_id).status, last.new_state))
        assert all(r.published_at is None for r in world.store.outbox()[-len(events) :])

    world.events.on_publish = committed
    run = world.running_c()
    task_state_changed(world.deps, "glue", "jr_1", "SUCCEEDED", None)

    assert world.changes(run.id) == [
        (None, "scheduled"),
        ("scheduled", "dispatching"),
        ("dispatching", "running"),
        ("running", "succeeded"),
    ]
    assert all(status == new for status, new in seen[:-1])
    assert seen[-1] == ("scheduled", "scheduled")  # the last batch: d opened as c succeeded
    succeeded = next(e for e in world.events.published if e.new_state == "succeeded")
    assert (succeeded.table, succeeded.partitions, succeeded.at) == ("c", {"dt": DAY}, world.clock.now)
    outbox = world.store.outbox()
    assert [r.event for r in outbox] == world.events.published
    assert all(r.published_at is not None for r in outbox)


def test_a_service_error_inside_a_transaction_leaves_the_store_unchanged(world: World) -> None:
    world.store.define(standard(requires_approval=True))
    run = world.open_c()
    [approval] = world.store.approvals(run.id)
    world.store.define([spec("a"), spec("b")])  # c deleted while its run awaits approval
    before = world.store.snapshot()

    # The approval is decided (written) before the service finds the table gone and refuses.
    with pytest.raises(Conflict):
        decide(world.deps, approval.id, person("alice"), True, None)

    assert world.store.snapshot() == before
    assert world.store.approvals(run.id)[0].status == "pending"


def test_a_failure_at_commit_writes_nothing_and_does_nothing_in_aws(world: World) -> None:
    world.register("a")
    before = world.store.snapshot()
    puts, published = len(world.scheduler.puts), len(world.events.published)

    def refuse_commit(statement: str, _connection: Any) -> None:
        if statement == "COMMIT":
            raise RuntimeError("disk full")

    world.store.listeners.append(refuse_commit)
    with pytest.raises(RuntimeError, match="disk full"):
        world.register("b")

    assert world.store.snapshot() == before
    assert (len(world.scheduler.puts), len(world.events.published)) == (puts, published)


def test_a_connection_lost_before_commit_runs_the_work_again_and_at_commit_is_unavailable(
    world: World,
) -> None:
    lost: list[str] = []

    def lose_once(statement: str, _connection: Any) -> None:
        if statement == "insert_runs" and not lost:
            lost.append(statement)
            raise ConnectionLost

    world.store.listeners.append(lose_once)
    run = world.open_c()
    assert lost == ["insert_runs"]
    assert [r.id for r in world.store.runs()] == [run.id]
    assert len(world.store.executions()) == 2

    def lose_at_commit(statement: str, _connection: Any) -> None:
        if statement == "COMMIT":
            raise ConnectionLost

    world.store.listeners[:] = [lose_at_commit]
    before = world.store.snapshot()
    with pytest.raises(Unavailable, match="while committing"):
        world.register("a", OTHER_DAY)
    assert world.store.snapshot() == before


# --- the fake's own rules ---------------------------------------------------------------------------------
def _refused(world: World, work: Callable[[MemoryTransaction, AfterCommit], object], rule: str) -> None:
    before = world.store.snapshot()
    with world.store.session() as session, pytest.raises(IntegrityViolation) as refused:
        session.transact(work)
    assert refused.value.rule == rule
    assert world.store.snapshot() == before


def test_the_store_refuses_what_the_database_indexes_refuse(world: World) -> None:
    run = world.open_c()
    table_id, key = run.table_id, run.partition_key
    a_id = world.store.definitions.ids["a"]

    def second_open_run(tx: MemoryTransaction, _after: AfterCommit) -> object:
        return tx.insert_runs(
            [NewRun(table_id, key, {"dt": DAY}, "scheduled", T0)], [], T0, manual=True, reason=None
        )

    def same_idempotency_key(tx: MemoryTransaction, _after: AfterCommit) -> object:
        new = NewExecution(a_id, key, {"dt": DAY}, "test", None, "k", [("dt", DAY)])
        return tx.insert_executions([new, new], T0, None)

    def same_idempotency_key_on_two_tables(tx: MemoryTransaction, _after: AfterCommit) -> object:
        new = NewExecution(a_id, key, {"dt": DAY}, "test", None, "k", [("dt", DAY)])
        return tx.insert_executions([new, replace(new, table_id=world.store.definitions.ids["b"])], T0, None)

    def same_task_twice(tx: MemoryTransaction, _after: AfterCommit) -> object:
        tx.add_tasks(run, [NewTask("etl", "glue", "job-c", {})])
        tx.add_tasks(run, [NewTask("etl", "glue", "job-c", {})])
        return None

    _refused(world, second_open_run, "uq_runs_open_key")
    _refused(world, same_idempotency_key, "uq_executions_idempotency")
    _refused(world, same_idempotency_key_on_two_tables, "uq_executions_idempotency")  # the key alone
    _refused(world, same_task_twice, "task_dispatches (run_id, attempt, alias)")

    # A second approval request for a run is a no-op, as ON CONFLICT DO NOTHING makes it.
    with world.store.session() as session:
        (first, second), _ = session.transact(
            lambda tx, _after: (tx.request_approvals([run.id], T0), tx.request_approvals([run.id], T0))
        )
    assert first == second
    assert len(world.store.approvals(run.id)) == 1


def test_apply_is_a_compare_and_set_on_the_state(world: World) -> None:
    run = world.open_c()
    stale = transition(run, "cancelled", T0, "c")
    with world.store.session() as session:
        (moved, again), _ = session.transact(lambda tx, _after: (tx.apply(stale), tx.apply(stale)))
    assert (moved, again) == (True, False)
    assert world.store.run(run.id).status == "cancelled"


def test_probe_matches_a_value_or_an_omitted_one(world: World) -> None:
    optional = [{"name": "dt", "type": "date"}, {"name": "region", "type": "string", "is_required": False}]
    world.store.define([spec("r", partitions=optional), spec("s")])
    ids = world.store.definitions.ids
    for partitions in ({"dt": DAY, "region": "eu"}, {"dt": DAY}, {"dt": DAY, "region": "us"}):
        register_executions(world.deps, [ExecutionInput("r", partitions, "test")], None)
    catalog = world.reads.catalog()

    found = world.reads.probe([Probe("r", "region", "eu"), Probe("s")], catalog.ids, catalog.names)

    assert [e.key for e in found["r"]] == [{"dt": DAY, "region": "eu"}, {"dt": DAY}]
    assert "s" not in found
    assert world.reads.probe([Probe("r")], ids, {}) == {}  # executions of tables not named are left out


# --- the reads ------------------------------------------------------------------------------------------
def test_the_reads_answer_from_the_same_data(world: World) -> None:
    run = world.running_c()

    detail = get_run(world.deps, run.id)["run"]
    assert (detail["status"], detail["attempt"], detail["schedule_synced"]) == ("running", 1, None)
    assert [(t["alias"], t["external_id"]) for t in detail["tasks"]] == [("etl", "jr_1")]
    assert [(t["execution_id"], t["table_name"]) for t in detail["triggers"]] == [(1, "a"), (2, "b")]
    assert [e["table_name"] for e in list_executions(world.deps, None, 10)["executions"]] == ["b", "a"]

    why = explain(world.reads, "c", {"dt": DAY}).as_dict()
    assert why["gate"] == "open"
    assert [d["execution"]["id"] for d in why["dependencies"]] == [1, 2]
    assert why["open_run"]["id"] == run.id
    closed = explain(world.reads, "c", {"dt": OTHER_DAY}).as_dict()
    assert (closed["gate"], closed["open_run"]) == ("closed", None)


def test_a_unit_of_work_inside_another_and_a_transaction_used_after_its_end_are_refused(world: World) -> None:
    kept: list[MemoryTransaction] = []

    def nested(tx: MemoryTransaction, _after: AfterCommit) -> object:
        kept.append(tx)
        with world.store.session() as inner:
            return inner.transact(lambda tx2, _: tx2.newest_revision())

    with world.store.session() as session:
        with pytest.raises(RuntimeError, match="inside a unit of work"):
            session.transact(nested)
        with pytest.raises(RuntimeError, match="after the unit of work ended"):
            kept[0].lock_run(1)
