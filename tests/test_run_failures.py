"""What a run's failure does (DESIGN §8), through ``lambda_handler`` on SQLite and PostgreSQL, with
moto: its tasks still running in AWS are stopped (its slot is free: they must not run on beside the
next run), and a trigger that arrived while it was in progress is not lost — served by its next
attempt when it has retries, by a new run of its key when it has none."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from sqlalchemy import Engine

from controller.services import firing
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


def flow(name: str) -> str:
    return f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}"


def flow_task(name: str, alias: str = "flow") -> dict[str, Any]:
    return {"alias": alias, "type": "step_function", "target": flow(name)}


UPSTREAM = [{"dependency_name": "source", "is_required": True}]
TABLES = [
    table_doc("source", partitions=MONTH, tasks=[flow_task("source-flow")]),
    table_doc(
        "pair",
        partitions=MONTH,
        tasks=[{"alias": "load", "type": "glue", "target": "job-pair"}, flow_task("pair-flow")],
    ),
    table_doc(
        "downstream",
        partitions=MONTH,
        dependencies=UPSTREAM,
        debounce_seconds=0,
        tasks=[flow_task("down-flow")],
    ),
    table_doc(
        "downstream_retried",
        partitions=MONTH,
        dependencies=UPSTREAM,
        debounce_seconds=0,
        retries={"max_attempts": 2, "backoff_seconds": 0},
        tasks=[flow_task("retried-flow")],
    ),
]


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler, glue_runs_kept_running():
        yield handler


def execution_status(arn: str) -> str:
    status: str = boto3.client("stepfunctions", region_name=REGION).describe_execution(executionArn=arn)[
        "status"
    ]
    return status


def tasks_of(flux: Lambda, run_id: int) -> dict[str, dict[str, Any]]:
    return {t["alias"]: t for t in run_detail(flux, run_id)["tasks"]}


def start(flux: Lambda, table: str, month: int) -> dict[str, Any]:
    body = {"table_name": table, "partitions": partitions(mes=month)}
    return run_detail(flux, flux.ok("POST", "/runs", body, user=OPERATOR)["run"]["id"])


def produce(flux: Lambda, month: int) -> list[dict[str, Any]]:
    """``source`` produced ``mes=month``; the runs it opened or pushed."""
    item = {"table_name": "source", "partitions": partitions(mes=month), "source": "glue"}
    runs: list[dict[str, Any]] = flux.ok("POST", "/register_execution", {"data": [item]})["runs"]
    return runs


def runs_of(flux: Lambda, table: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = flux.ok("GET", "/runs", query={"table": table})["runs"]
    return sorted(runs, key=lambda r: r["id"])


# --- the tasks of a failed run are stopped ----------------------------------------------------------


def test_an_operator_failing_a_running_run_stops_its_execution(flux: Lambda) -> None:
    run = start(flux, "downstream", 1)
    execution = tasks_of(flux, run["id"])["flow"]["external_id"]
    assert execution_status(execution) == "RUNNING"
    flux.ok("POST", f"/runs/{run['id']}/fail", {"reason": "wrong input"}, user=OPERATOR)
    detail = run_detail(flux, run["id"])
    assert (detail["status"], detail["error"]) == ("failed", "wrong input")
    assert execution_status(execution) == "ABORTED"
    assert tasks_of(flux, run["id"])["flow"]["status"] == "failed"


def test_a_task_failing_stops_the_other_tasks_of_its_run(flux: Lambda) -> None:
    run = start(flux, "pair", 1)
    tasks = tasks_of(flux, run["id"])
    assert {alias: t["status"] for alias, t in tasks.items()} == {"load": "started", "flow": "started"}
    flux.invoke(glue_event("job-pair", tasks["load"]["external_id"], "FAILED"))
    assert run_detail(flux, run["id"])["status"] == "failed"
    assert execution_status(tasks["flow"]["external_id"]) == "ABORTED"
    flow_task_now = tasks_of(flux, run["id"])["flow"]
    assert (flow_task_now["status"], flow_task_now["error"]) == ("failed", "stopped: task load failed")


def test_a_stop_that_aws_refuses_is_logged_and_the_failure_stands(
    flux: Lambda, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run = start(flux, "downstream", 2)
    execution = tasks_of(flux, run["id"])["flow"]["external_id"]

    def refuse(*args: Any) -> bool:
        raise RuntimeError("AccessDenied")

    monkeypatch.setattr(flux.deps.tasks, "stop", refuse)
    status, body = flux.call("POST", f"/runs/{run['id']}/fail", {"reason": "bad"}, user=OPERATOR)
    assert status == 200, body  # the failure committed: the caller hears that it did
    assert run_detail(flux, run["id"])["status"] == "failed"
    assert execution_status(execution) == "RUNNING"
    assert "could not stop the task of a failed run; it runs on" in caplog.text


# --- a trigger that arrived while the run was in progress --------------------------------------------


def test_a_trigger_during_a_run_that_fails_without_retries_opens_a_new_run(flux: Lambda) -> None:
    [first] = [r for r in produce(flux, 1) if r["table_name"] == "downstream"]
    assert run_detail(flux, first["id"])["status"] == "running"  # no debounce: started at once
    produce(flux, 1)  # new data while it runs: it must run again
    flux.ok("POST", f"/runs/{first['id']}/fail", {"reason": "broken"}, user=OPERATOR)
    runs = runs_of(flux, "downstream")
    assert [r["status"] for r in runs] == ["failed", "running"]  # no debounce: at once
    rerun = run_detail(flux, runs[1]["id"])
    assert rerun["partitions"] == {"mes": 1}
    reason = f"a trigger arrived while run {first['id']} was in progress; it failed"
    assert rerun["events"][0]["reason"] == reason


def test_the_sweep_serves_a_rerun_the_lambda_did_not(flux: Lambda, monkeypatch: pytest.MonkeyPatch) -> None:
    [first] = [r for r in produce(flux, 5) if r["table_name"] == "downstream"]
    produce(flux, 5)
    with monkeypatch.context() as patched:  # the Lambda ends right after the failure commits
        patched.setattr(firing, "rerun_after_commit", lambda deps, request: None)
        flux.ok("POST", f"/runs/{first['id']}/fail", {"reason": "broken"}, user=OPERATOR)
    assert [r["status"] for r in runs_of(flux, "downstream")] == ["failed"]
    assert flux.invoke({"flux_action": "sweep"})["reruns_served"] == 1
    assert [r["status"] for r in runs_of(flux, "downstream")] == ["failed", "running"]
    assert flux.invoke({"flux_action": "sweep"})["reruns_served"] == 0  # served once


def test_a_failure_without_a_trigger_meanwhile_opens_nothing(flux: Lambda) -> None:
    [first] = [r for r in produce(flux, 2) if r["table_name"] == "downstream"]
    flux.ok("POST", f"/runs/{first['id']}/fail", {"reason": "broken"}, user=OPERATOR)
    assert [r["status"] for r in runs_of(flux, "downstream")] == ["failed"]


def test_a_retry_serves_the_trigger_that_arrived_during_the_failed_attempt(flux: Lambda) -> None:
    [run] = [r for r in produce(flux, 3) if r["table_name"] == "downstream_retried"]
    produce(flux, 3)  # new data during attempt 1
    flux.ok("POST", f"/runs/{run['id']}/fail", {"reason": "broken"}, user=OPERATOR)
    detail = run_detail(flux, run["id"])
    assert (detail["status"], detail["attempt"]) == ("running", 2)  # backoff 0: started at once
    # Attempt 2 saw the new data: its success opens no further run.
    token_task = tasks_of(flux, run["id"])["flow"]
    assert token_task["attempt"] == 2
    flux.ok("POST", "/register_execution", {"data": [_completion(run["id"], 3)]}, user=OPERATOR)
    assert [r["status"] for r in runs_of(flux, "downstream_retried")] == ["succeeded"]


def test_a_manual_retry_serves_the_trigger_too(flux: Lambda) -> None:
    [run] = [r for r in produce(flux, 4) if r["table_name"] == "downstream_retried"]
    flux.ok("POST", f"/runs/{run['id']}/fail", {"reason": "broken"}, user=OPERATOR)  # attempt 2 runs
    produce(flux, 4)  # new data during attempt 2, the last
    flux.ok("POST", f"/runs/{run['id']}/fail", {"reason": "broken again"}, user=OPERATOR)
    runs = runs_of(flux, "downstream_retried")
    assert [r["status"] for r in runs] == ["failed", "running"]  # no retries left: a new run
    flux.ok("POST", "/register_execution", {"data": [_completion(runs[1]["id"], 4)]}, user=OPERATOR)
    # Retried by hand later, the old run starts afresh: the trigger it had seen is served.
    flux.ok("POST", f"/runs/{run['id']}/retry", {}, user=OPERATOR)
    assert run_detail(flux, run["id"])["status"] == "running"
    flux.ok("POST", "/register_execution", {"data": [_completion(run["id"], 4)]}, user=OPERATOR)
    statuses = [r["status"] for r in runs_of(flux, "downstream_retried")]
    assert statuses == ["succeeded", "succeeded"]  # no third run after the retry


def _completion(run_id: int, month: int) -> dict[str, Any]:
    return {"table_name": "downstream_retried", "partitions": partitions(mes=month), "run_id": run_id}
