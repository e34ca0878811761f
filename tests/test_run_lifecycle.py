"""The run lifecycle of DESIGN §8 through ``lambda_handler``, on SQLite and PostgreSQL, with moto:
concurrency limits and the queue, a target's own limit, lost completions found by polling, timeouts,
automatic retries, and every attempt visible on the run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from moto.moto_api import state_manager
from sqlalchemy import Engine

from controller.services import firing
from controller.services.explain import explain, render
from tests.api_support import run_detail
from tests.factories import table_doc
from tests.runtime_support import (
    ACCOUNT,
    REGION,
    Lambda,
    glue_event,
    glue_runs_kept_running,
    partitions,
    running_lambda,
)

MONTH = [{"name": "mes", "type": "int"}]
OPERATOR = "otto"
TIMED_FLOW = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:timed-flow"


def glue_task(job: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"alias": "load", "type": "glue", "target": job, **extra}]


TABLES = [
    table_doc("limited", partitions=MONTH, max_concurrent_runs=2, tasks=glue_task("job-limited")),
    table_doc("single", partitions=MONTH, tasks=glue_task("job-single")),
    table_doc("watched", partitions=MONTH, tasks=glue_task("job-watched", timeout_seconds=3600)),
    table_doc(
        "timed",
        partitions=MONTH,
        tasks=[{"alias": "flow", "type": "step_function", "target": TIMED_FLOW, "timeout_seconds": 5400}],
    ),
    table_doc(
        "retried",
        partitions=MONTH,
        retries={"max_attempts": 3, "backoff_seconds": 60},
        tasks=glue_task("job-retried"),
    ),
    table_doc(
        "gated_retried",
        partitions=MONTH,
        requires_approval=True,
        retries={"max_attempts": 2, "backoff_seconds": 0},
        tasks=glue_task("job-gated"),
    ),
]


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        glue = boto3.client("glue", region_name=REGION)
        for job in ("job-limited", "job-retried", "job-watched", "job-gated"):  # no target limit of its own
            glue.delete_job(JobName=job)  # moto has no update_job
            glue.create_job(
                Name=job,
                Role="arn:aws:iam::123456789012:role/glue",
                Command={"Name": "glueetl", "ScriptLocation": "s3://scripts/job.py"},
                ExecutionProperty={"MaxConcurrentRuns": 100},
            )
        with glue_runs_kept_running():
            yield handler


def start(flux: Lambda, table: str, month: int) -> dict[str, Any]:
    body = {"table_name": table, "partitions": partitions(mes=month)}
    run: dict[str, Any] = flux.ok("POST", "/runs", body, user=OPERATOR)["run"]
    return run_detail(flux, run["id"])


def job_of(flux: Lambda, run_id: int, attempt: int | None = None) -> str:
    detail = run_detail(flux, run_id)
    wanted = attempt or detail["attempt"]
    [task] = [t for t in detail["tasks"] if t["attempt"] == wanted]
    external_id: str = task["external_id"]
    return external_id


def reasons(flux: Lambda, run_id: int) -> list[tuple[str | None, str, str | None]]:
    return [(e["old_state"], e["new_state"], e["reason"]) for e in run_detail(flux, run_id)["events"]]


def sweep(flux: Lambda) -> dict[str, int]:
    return flux.invoke({"flux_action": "sweep"})


# --- concurrency -----------------------------------------------------------------------------------


def test_runs_beyond_the_limit_wait_queued_and_start_oldest_first_as_slots_free(flux: Lambda) -> None:
    runs = [start(flux, "limited", month) for month in (1, 2, 3, 4)]
    first, second, third, fourth = (r["id"] for r in runs)
    assert [r["status"] for r in runs] == ["running", "running", "queued", "queued"]
    assert ("scheduled", "queued", f"queued: 2 of 2 slots busy (runs {first}, {second})") in reasons(
        flux, third
    )
    assert run_detail(flux, third)["tasks"] == []  # nothing recorded, nothing started

    # The first succeeds: its slot goes to the oldest queued run, not to the newer one.
    flux.invoke(glue_event("job-limited", job_of(flux, first), "SUCCEEDED"))
    assert [run_detail(flux, i)["status"] for i in (first, third, fourth)] == [
        "succeeded",
        "running",
        "queued",
    ]
    # The second fails (reported by an operator): the last queued run starts.
    flux.ok("POST", f"/runs/{second}/fail", {"reason": "broken"}, user=OPERATOR)
    assert run_detail(flux, fourth)["status"] == "running"


def test_a_queued_run_can_be_cancelled_and_gives_its_place_up(flux: Lambda) -> None:
    first, _second, third = (start(flux, "limited", month)["id"] for month in (1, 2, 3))
    flux.ok("POST", f"/runs/{third}/cancel", {"reason": "not needed"}, user=OPERATOR)
    assert run_detail(flux, third)["status"] == "cancelled"
    flux.invoke(glue_event("job-limited", job_of(flux, first), "SUCCEEDED"))
    assert run_detail(flux, third)["status"] == "cancelled"  # not started by the freed slot


def test_the_sweep_starts_queued_runs_a_lost_fire_left_waiting(
    flux: Lambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _second, third = (start(flux, "limited", month)["id"] for month in (1, 2, 3))
    # The fire after the first's completion is lost (the Lambda ended first).
    with monkeypatch.context() as patched:
        patched.setattr(firing, "fire_after_commit", lambda deps, run_id: None)
        flux.invoke(glue_event("job-limited", job_of(flux, first), "SUCCEEDED"))
    assert run_detail(flux, third)["status"] == "queued"
    assert sweep(flux)["queued_fired"] == 1
    assert run_detail(flux, third)["status"] == "running"
    assert sweep(flux)["queued_fired"] == 0  # nothing queued any more


def test_a_target_at_its_own_limit_queues_the_run_instead_of_failing_it(flux: Lambda) -> None:
    first = start(flux, "single", 1)  # job-single keeps Glue's default: one run at a time
    second = start(flux, "single", 2)
    assert (first["status"], second["status"]) == ("running", "queued")
    [(old, _new, reason)] = [r for r in reasons(flux, second["id"]) if r[1] == "queued"]
    assert old == "dispatching"
    assert reason is not None and reason.startswith(
        "queued: the target of task load is at its own concurrency limit"
    )
    assert run_detail(flux, second["id"])["tasks"] == []  # its attempt starts afresh, new token
    assert run_detail(flux, second["id"])["attempt"] == 1  # a refusal for a limit is no attempt

    # The first job ends; the sweep tries the queued run's target again.
    state_manager.unset_transition("glue::job_run")
    flux.invoke(glue_event("job-single", job_of(flux, first["id"]), "SUCCEEDED"))
    assert sweep(flux)["queued_fired"] == 1
    assert run_detail(flux, second["id"])["status"] == "running"


# --- lost completions and timeouts ----------------------------------------------------------------


def test_a_lost_completion_event_is_found_by_the_sweep_after_the_poll_delay(flux: Lambda) -> None:
    run = start(flux, "watched", 1)
    assert sweep(flux)["tasks_still_running"] == 0  # not asked before FLUX_POLL_AFTER_SECONDS
    flux.clock.advance(901)
    assert sweep(flux)["tasks_still_running"] == 1  # asked: still STARTING in Glue
    assert sweep(flux)["tasks_still_running"] == 0  # not asked again before the next delay

    state_manager.unset_transition("glue::job_run")  # Glue ends it; its event never comes
    flux.clock.advance(901)
    assert sweep(flux)["tasks_settled"] == 1
    detail = run_detail(flux, run["id"])
    assert detail["status"] == "succeeded"
    executions = flux.ok("GET", "/executions", query={"table": "watched"})["executions"]
    assert [(e["run_id"], e["source"]) for e in executions] == [(run["id"], "glue")]


def test_a_task_past_its_timeout_is_stopped_and_its_run_fails(flux: Lambda) -> None:
    run = start(flux, "timed", 2)
    execution = job_of(flux, run["id"])
    flux.clock.advance(5399)
    assert sweep(flux)["tasks_timed_out"] == 0
    flux.clock.advance(1)
    assert sweep(flux)["tasks_timed_out"] == 1
    detail = run_detail(flux, run["id"])
    assert (detail["status"], detail["error"]) == ("failed", "timed out after 90 min: task flow was stopped")
    sfn = boto3.client("stepfunctions", region_name=REGION)
    assert sfn.describe_execution(executionArn=execution)["status"] == "ABORTED"
    assert sweep(flux)["tasks_timed_out"] == 0  # settled: never stopped twice


# --- retries ---------------------------------------------------------------------------------------


def test_a_failed_run_comes_back_by_itself_with_backoff_until_its_attempts_run_out(flux: Lambda) -> None:
    run_id = start(flux, "retried", 1)["id"]
    tokens = set()
    for attempt, backoff in ((1, 60), (2, 120)):
        flux.invoke(glue_event("job-retried", job_of(flux, run_id, attempt), "FAILED"))
        detail = run_detail(flux, run_id)
        assert (detail["status"], detail["attempt"]) == ("scheduled", attempt + 1)
        assert detail["fire_at"] == (flux.clock.now + timedelta(seconds=backoff)).isoformat()
        assert reasons(flux, run_id)[-1] == (
            "failed",
            "scheduled",
            f"automatic retry: attempt {attempt + 1} of 3 at {detail['fire_at']}",
        )
        flux.clock.advance(backoff)
        assert flux.invoke({"flux_action": "fire", "run_id": run_id}) == {"status": "running"}
        tokens.add(job_of(flux, run_id))
    flux.invoke(glue_event("job-retried", job_of(flux, run_id, 3), "FAILED"))
    detail = run_detail(flux, run_id)
    assert (detail["status"], detail["attempt"]) == ("failed", 3)  # max_attempts reached: stays failed
    assert len(tokens) == 2
    attempts = detail["attempts"]
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert all(a["error"] == "task load Job failed" for a in attempts)
    assert len({a["tasks"][0]["external_id"] for a in attempts}) == 3


def test_an_approved_run_retried_by_itself_keeps_its_approval(flux: Lambda) -> None:
    run = start(flux, "gated_retried", 1)
    assert run["status"] == "awaiting_approval"
    flux.ok("POST", "/approve", {"approval_status_id": run["approval"]["id"]}, user=OPERATOR)
    assert run_detail(flux, run["id"])["status"] == "running"
    flux.invoke(glue_event("job-gated", job_of(flux, run["id"]), "FAILED"))
    detail = run_detail(flux, run["id"])
    # Backoff 0: the next attempt starts at once, approved as before.
    assert (detail["status"], detail["attempt"], detail["approval"]["status"]) == ("running", 2, "approved")


# --- backfills -------------------------------------------------------------------------------------


def backfill(
    flux: Lambda, table: str, partitions_: dict[str, Any], **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    return flux.call(
        "POST", "/backfills", {"table_name": table, "partitions": partitions_, **kwargs}, user=OPERATOR
    )


def test_a_backfill_opens_a_run_per_key_within_the_tables_limit(flux: Lambda) -> None:
    already = start(flux, "limited", 3)  # open (running): reported, not opened twice
    status, answer = backfill(flux, "limited", {"mes": {"from": 1, "to": 6}}, reason="reprocess H1")
    assert status == 200, answer
    opened = answer["backfill"]
    assert (opened["table_name"], opened["keys"]) == ("limited", 6)
    assert [r["partitions"] for r in opened["runs"]] == [{"mes": m} for m in (1, 2, 4, 5, 6)]
    assert [r["id"] for r in opened["already_open"]] == [already["id"]]
    # One slot was free (the other holds the open run): the oldest key starts, the others wait.
    states = [run_detail(flux, r["id"])["status"] for r in opened["runs"]]
    assert states == ["running", "queued", "queued", "queued", "queued"]
    first = run_detail(flux, opened["runs"][0]["id"])
    assert first["manual"] and first["reason"] == "reprocess H1"
    assert first["events"][0]["actor"] == OPERATOR

    summary = flux.ok("GET", f"/backfills/{opened['id']}")["backfill"]
    assert summary["runs"] == {"queued": 4, "running": 1}
    assert (summary["keys"], summary["already_open"], summary["total_runs"]) == (6, 1, 5)
    assert (summary["requested_by"], summary["reason"]) == (OPERATOR, "reprocess H1")


def test_a_backfill_of_a_table_that_requires_approval_asks_for_each_run(flux: Lambda) -> None:
    status, answer = backfill(flux, "gated_retried", {"mes": [1, 2]})
    assert status == 200, answer
    runs = answer["backfill"]["runs"]
    assert [r["status"] for r in runs] == ["awaiting_approval", "awaiting_approval"]
    assert all(r["approval_id"] for r in runs)


@pytest.mark.parametrize(
    ("partitions_", "status", "message"),
    [
        (
            {"mes": {"from": 1, "to": 1001}},
            422,
            "partition 'mes': the range has 1,001 values; at most 1,000 keys at once",
        ),
        ({"mes": {"from": 5, "to": 1}}, 422, "partition 'mes': the range ends (1) before it starts (5)"),
        (
            {"mes": {"from": 1, "to": 2, "step": "month"}},
            422,
            "partition 'mes': an int range has no step (it is 1)",
        ),
        ({"month": [1]}, 404, "table 'limited' has no partition 'month' (it has: mes)"),
        ({}, 422, "partition 'mes' of 'limited' is required: give its values or a range"),
        ({"mes": ["x"]}, 422, "partition 'mes' is int: 'x' is not an integer"),
    ],
)
def test_a_bad_backfill_is_refused_with_the_partition_at_fault_and_opens_nothing(
    flux: Lambda, partitions_: dict[str, Any], status: int, message: str
) -> None:
    answered, error = backfill(flux, "limited", partitions_)
    assert (answered, error["error"]["message"]) == (status, message)
    assert flux.ok("GET", "/runs", query={"table": "limited"})["runs"] == []


def test_a_backfill_needs_an_identified_caller_and_an_unknown_one_is_a_404(flux: Lambda) -> None:
    status, error = flux.call(
        "POST", "/backfills", {"table_name": "limited", "partitions": {"mes": [1]}}, user=None
    )
    assert status == 403, error
    assert flux.ok("GET", "/runs", query={"table": "limited"})["runs"] == []
    status, error = flux.call("GET", "/backfills/999")
    assert (status, error["error"]["message"]) == (404, "unknown backfill 999")


# --- explain ---------------------------------------------------------------------------------------


def open_run_line(flux: Lambda, table: str, month: int) -> str:
    text = render(explain(flux.deps.reads, table, {"mes": month}))
    [line] = [line for line in text.splitlines() if line.startswith("  open run:")]
    return line


def test_explain_says_what_a_queued_run_waits_for_and_which_attempt_a_retry_is(flux: Lambda) -> None:
    first, second, third, _fourth = (start(flux, "limited", month)["id"] for month in (1, 2, 3, 4))
    assert open_run_line(flux, "limited", 3) == (
        f"  open run: {third} queued; queued: 2 of 2 slots busy (runs {first}, {second})"
    )
    assert open_run_line(flux, "limited", 4).endswith(f"(runs {first}, {second}); 1 queued before it")

    run_id = start(flux, "retried", 7)["id"]
    flux.invoke(glue_event("job-retried", job_of(flux, run_id), "FAILED"))
    fire_at = run_detail(flux, run_id)["fire_at"]
    assert open_run_line(flux, "retried", 7).startswith(
        f"  open run: {run_id} scheduled, attempt 2 of 3 at {fire_at} (last trigger "
    )
