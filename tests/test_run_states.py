"""The run state machine (pure): the table of allowed transitions, and what each change sets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import product

import pytest

from controller.core import runs
from controller.core.runs import (
    ALL_STATES,
    AWAITING_APPROVAL,
    CANCELLED,
    DISPATCHING,
    FAILED,
    FINAL_STATES,
    RUNNING,
    SCHEDULED,
    SUCCEEDED,
    TRANSITIONS,
    IllegalTransition,
    Run,
    opened,
    transition,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


def run_in(status: str, **changes: object) -> Run:
    fields: dict[str, object] = {
        "id": 7,
        "table_id": 3,
        "partition_key": '[["dt","2026-11-30"]]',
        "partitions": {"dt": "2026-11-30"},
        "status": status,
        "attempt": 1,
        "manual": False,
        "rerun_requested": False,
        "reason": "opened by a gate",
        "error": None,
        "first_trigger_at": T0,
        "last_trigger_at": T0,
        "fire_at": T0,
        "scheduled_fire_at": T0,
        "schedule_name": "flux-run-7-t",
        "created_at": T0,
        "updated_at": T0,
        "finished_at": None,
        **changes,
    }
    return Run(**fields)  # type: ignore[arg-type]


def test_every_state_has_its_row_and_final_states_lead_nowhere_but_a_retry() -> None:
    assert set(TRANSITIONS) == {None, *ALL_STATES}
    assert all(to in ALL_STATES for targets in TRANSITIONS.values() for to in targets)
    assert {state for state in FINAL_STATES if TRANSITIONS[state]} == {FAILED}
    # A retry: scheduled, or awaiting approval when the table requires it now (never approved).
    assert TRANSITIONS[FAILED] == {SCHEDULED, AWAITING_APPROVAL}


def test_the_states_named_open_are_those_a_run_leaves_by_a_transition() -> None:
    reachable_from_new = set(TRANSITIONS[None])
    frontier = list(reachable_from_new)
    while frontier:
        for to in TRANSITIONS[frontier.pop()]:
            if to not in reachable_from_new:
                reachable_from_new.add(to)
                frontier.append(to)
    assert reachable_from_new == set(ALL_STATES)  # no state is unreachable
    assert all(TRANSITIONS[state] for state in runs.OPEN_STATES)  # no open state is a dead end


@pytest.mark.parametrize(("old", "new"), list(product(ALL_STATES, ALL_STATES)))
def test_a_change_is_made_exactly_when_the_table_allows_it(old: str, new: str) -> None:
    run = run_in(old)
    if new not in TRANSITIONS[old]:
        with pytest.raises(IllegalTransition, match=f"from {old} to {new}"):
            transition(run, new, NOW, "t", fire_at=NOW)
        return
    change = transition(run, new, NOW, "t", fire_at=NOW)
    assert (change.run_id, change.expected, change.values["status"]) == (7, old, new)
    assert (change.event.old_state, change.event.new_state, change.event.at) == (old, new, NOW)
    assert change.applied_to(run).status == new
    assert ("finished_at" in change.values) == (new in FINAL_STATES or old == FAILED)


def test_a_failure_keeps_its_reason_as_the_error_and_ends_the_run() -> None:
    change = transition(run_in(RUNNING), FAILED, NOW, "t", reason="task load FAILED")
    assert change.values == {
        "status": FAILED,
        "updated_at": NOW,
        "finished_at": NOW,
        "error": "task load FAILED",
    }
    assert change.event.reason == "task load FAILED"


def test_a_cancellation_keeps_its_reason_as_the_reason() -> None:
    change = transition(run_in(SCHEDULED), CANCELLED, NOW, "t", reason="not today")
    assert change.values["reason"] == "not today" and "error" not in change.values


def test_a_retry_is_the_next_attempt_firing_now_without_the_last_error() -> None:
    failed = run_in(FAILED, error="boom", finished_at=T0, attempt=2)
    change = transition(failed, SCHEDULED, NOW, "t", reason="fixed the job")
    retried = change.applied_to(failed)
    assert (retried.attempt, retried.fire_at, retried.error, retried.finished_at) == (3, NOW, None, None)
    assert retried.reason == "fixed the job"
    assert (change.event.old_state, change.event.new_state) == (FAILED, SCHEDULED)


def test_an_approval_needs_the_fire_time_and_keeps_the_runs_reason() -> None:
    waiting = run_in(AWAITING_APPROVAL, fire_at=None)
    with pytest.raises(IllegalTransition, match="needs its fire time"):
        transition(waiting, SCHEDULED, NOW, "t")
    change = transition(waiting, SCHEDULED, NOW, "t", reason="looks fine", approval_id=4, fire_at=NOW)
    approved = change.applied_to(waiting)
    assert (approved.fire_at, approved.reason) == (NOW, "opened by a gate")
    assert (change.event.approval_id, change.event.reason) == (4, "looks fine")


def test_a_dispatch_may_end_in_success_directly_when_its_tasks_finished_meanwhile() -> None:
    assert transition(run_in(DISPATCHING), SUCCEEDED, NOW, "t").values["finished_at"] == NOW


def test_a_new_run_starts_awaiting_approval_or_scheduled_and_nothing_else() -> None:
    event = opened(run_in(SCHEDULED), "t", NOW, approval_id=None, reason="manual")
    assert (event.old_state, event.new_state, event.reason) == (None, SCHEDULED, "manual")
    with pytest.raises(IllegalTransition, match="cannot be created running"):
        opened(run_in(RUNNING), "t", NOW)


def test_an_events_detail_reads_back_as_the_same_event() -> None:
    event = transition(run_in(RUNNING), FAILED, NOW, "t", reason="x").event
    assert runs.RunEvent.from_detail(event.detail()) == event
