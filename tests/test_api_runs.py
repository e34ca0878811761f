"""Runs through the HTTP API: per key, debounce and max wait, schedules, manual runs, cancel,
SQS/Lambda completion, tables deleted by a reconcile."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from sqlalchemy import Engine

from controller.reconciler import apply
from tests.api_support import (
    AT_START,
    FUNCTION,
    QUEUE_NAME,
    QUEUE_URL,
    TABLES,
    error_of,
    glue_runs,
    item,
    manual,
    register,
    run_detail,
)
from tests.factories import states
from tests.runtime_support import (
    REGION,
    START,
    Lambda,
    create_lambda_function,
    partitions,
    running_lambda,
    schedule_of,
    schedules,
    stored_token,
)


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


# --- runs per key, debounce, max wait, schedules ----------------------------------------------------


def test_two_partition_values_of_a_dependent_give_two_runs(flux: Lambda) -> None:
    status, body = register(flux, item("tb_a", ano_mes=202305), item("tb_a", ano_mes=202306))
    assert status == 200, body
    runs = sorted(body["runs"], key=lambda r: r["partitions"]["ano_mes"])
    assert [(r["table_name"], r["partitions"], r["status"]) for r in runs] == [
        ("tb_b", {"ano_mes": 202305}, "scheduled"),
        ("tb_b", {"ano_mes": 202306}, "scheduled"),
    ]
    assert runs[0]["id"] != runs[1]["id"]
    assert sorted(schedules()) == sorted(f"flux-run-{r['id']}-tb_b" for r in runs)
    listed = flux.ok("GET", "/runs", query={"table": "tb_b"})["runs"]
    assert sorted(r["id"] for r in listed) == sorted(r["id"] for r in runs)


def test_a_reregistered_upstream_pushes_the_same_run_and_max_wait_caps_it(flux: Lambda) -> None:
    [run] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})["runs"]
    assert run["fire_at"] == "2026-11-29T12:05:00+00:00"  # 12:00 + debounce 300 s

    flux.clock.advance(120)  # 12:02
    [pushed] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes="202305")]})["runs"]
    assert pushed["id"] == run["id"]
    assert pushed["status"] == "scheduled"
    assert pushed["fire_at"] == "2026-11-29T12:07:00+00:00"  # last trigger 12:02 + 300 s

    flux.clock.advance(240)  # 12:06: 12:11 would pass first trigger + max wait (12:00 + 600 s)
    [capped] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})["runs"]
    assert capped["id"] == run["id"]
    assert capped["fire_at"] == "2026-11-29T12:10:00+00:00"

    detail = run_detail(flux, run["id"])
    assert detail["fire_at"] == "2026-11-29T12:10:00+00:00"
    assert detail["first_trigger_at"] == AT_START
    assert detail["last_trigger_at"] == "2026-11-29T12:06:00+00:00"
    assert len(detail["triggers"]) == 3
    assert len(flux.ok("GET", "/runs", query={"table": "tb_b"})["runs"]) == 1


def test_a_pushed_run_has_one_schedule_at_the_new_fire_time(flux: Lambda) -> None:
    [run] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})["runs"]
    name = f"flux-run-{run['id']}-tb_b"
    assert schedules() == [name]
    assert schedule_of(run["id"], "tb_b")["ScheduleExpression"] == "at(2026-11-29T12:05:00)"

    flux.clock.advance(60)
    flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})
    flux.clock.advance(60)
    flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})

    assert schedules() == [name]
    schedule = schedule_of(run["id"], "tb_b")
    assert schedule["ScheduleExpression"] == "at(2026-11-29T12:07:00)"
    assert json.loads(schedule["Target"]["Input"]) == {"flux_action": "fire", "run_id": run["id"]}
    assert run_detail(flux, run["id"])["schedule_synced"] is True

    # The old fire time arriving is not the run's time any more; the new one fires it.
    flux.clock.advance(180)  # 12:05
    assert flux.invoke({"flux_action": "fire", "run_id": run["id"]})["status"].startswith("ignored: not due")
    flux.clock.advance(120)  # 12:07
    assert flux.invoke({"flux_action": "fire", "run_id": run["id"]}) == {"status": "running"}
    assert len(glue_runs("job-b")) == 1


# --- manual runs -------------------------------------------------------------------------------------


def test_a_manual_run_fires_now_and_dispatches_in_the_same_request(flux: Lambda) -> None:
    run = manual(flux, "tb_manual", 202305, reason="backfill May")
    assert (run["table_name"], run["partitions"], run["fire_at"]) == (
        "tb_manual",
        {"ano_mes": 202305},
        AT_START,
    )
    assert run["approval_id"] is None
    [job_run] = glue_runs("job-manual")
    token = stored_token(flux, run["id"], "load")
    assert job_run["Arguments"] == {
        "--ano_mes": "202305",
        "--flux_run_id": str(run["id"]),
        "--flux_token": token,
    }
    detail = run_detail(flux, run["id"])
    assert detail["status"] == "running"
    assert (detail["manual"], detail["reason"]) == (True, "backfill May")
    assert [(t["alias"], t["status"], t["external_id"]) for t in detail["tasks"]] == [
        ("load", "started", job_run["Id"])
    ]
    assert schedules() == []  # it fired at once: no schedule


def test_a_manual_run_of_a_table_requiring_approval_awaits_it(flux: Lambda) -> None:
    run = manual(flux, "tb_gated", 202305)
    assert (run["status"], run["fire_at"]) == ("awaiting_approval", None)
    assert run["approval_id"] is not None
    assert schedules() == []
    pending = flux.ok("GET", "/approvals", query={"status": "pending"})["approvals"]
    assert pending == [
        {
            "id": run["approval_id"],
            "status": "pending",
            "run_id": run["id"],
            "table_name": "tb_gated",
            "partitions": {"ano_mes": 202305},
        }
    ]


def test_a_manual_run_while_the_same_key_is_running_is_409(flux: Lambda) -> None:
    run = manual(flux, "tb_manual", 202305)
    assert run_detail(flux, run["id"])["status"] == "running"
    status, error = error_of(
        flux, "POST", "/runs", {"table_name": "tb_manual", "partitions": partitions(ano_mes=202305)}
    )
    assert (status, error["code"]) == (409, "conflict")
    assert error["details"] == {"run_id": run["id"]}
    assert len(glue_runs("job-manual")) == 1
    # Another key is free.
    other = manual(flux, "tb_manual", 202306)
    assert other["id"] != run["id"]
    assert len(glue_runs("job-manual")) == 2


# --- cancel ------------------------------------------------------------------------------------------


def test_cancelling_a_scheduled_run_deletes_its_schedule(flux: Lambda) -> None:
    [run] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})["runs"]
    assert schedules() == [f"flux-run-{run['id']}-tb_b"]
    answer = flux.ok("POST", f"/runs/{run['id']}/cancel", {"reason": "not needed"})
    assert answer["run"]["id"] == run["id"]
    assert answer["run"]["status"] == "cancelled"
    assert schedules() == []
    detail = run_detail(flux, run["id"])
    assert (detail["status"], detail["reason"]) == ("cancelled", "not needed")
    # A late fire is a no-op.
    flux.clock.advance(300)
    assert flux.invoke({"flux_action": "fire", "run_id": run["id"]}) == {
        "status": "ignored: run is cancelled"
    }
    assert glue_runs("job-b") == []


def test_cancelling_a_running_run_is_409(flux: Lambda) -> None:
    run = manual(flux, "tb_manual", 202305)
    status, error = error_of(flux, "POST", f"/runs/{run['id']}/cancel", {"reason": "too late"})
    assert (status, error["code"]) == (409, "conflict")
    assert run_detail(flux, run["id"])["status"] == "running"


# --- SQS and Lambda tasks ----------------------------------------------------------------------------


def test_an_sqs_task_is_completed_by_register_execution_with_its_run_id(flux: Lambda) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    assert sqs.create_queue(QueueName=QUEUE_NAME)["QueueUrl"] == QUEUE_URL
    run = manual(flux, "tb_queue", 202305)
    assert run_detail(flux, run["id"])["status"] == "running"
    [message] = sqs.receive_message(QueueUrl=QUEUE_URL, MaxNumberOfMessages=10)["Messages"]
    sent = json.loads(message["Body"])
    assert sent["flux"]["run_id"] == run["id"]
    assert (sent["flux"]["table"], sent["flux"]["alias"]) == ("tb_queue", "notify")
    assert sent["mes"] == "202305"
    [task] = run_detail(flux, run["id"])["tasks"]
    assert (task["type"], task["status"], task["external_id"]) == ("sqs", "started", message["MessageId"])

    flux.clock.advance(30)
    done = {**item("tb_queue", source="consumer", ano_mes=202305), "run_id": sent["flux"]["run_id"]}
    answer = flux.ok("POST", "/register_execution", {"data": [done]})
    [execution] = answer["executions"]
    assert (execution["table_name"], execution["partitions"]) == ("tb_queue", {"ano_mes": 202305})
    assert answer["runs"] == []
    detail = run_detail(flux, run["id"])
    assert detail["status"] == "succeeded"
    assert [t["status"] for t in detail["tasks"]] == ["succeeded"]
    executions = flux.ok("GET", "/executions", query={"table": "tb_queue"})["executions"]
    assert [(e["id"], e["source"], e["run_id"]) for e in executions] == [
        (execution["id"], "consumer", run["id"])
    ]
    # The run is over: completing it again is a conflict.
    status, error = error_of(flux, "POST", "/register_execution", {"data": [done]})
    assert (status, error["code"]) == (409, "conflict")


def test_a_lambda_task_reports_failure_through_the_fail_route(
    flux: Lambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_lambda_function(monkeypatch, FUNCTION)
    run = manual(flux, "tb_fn", 202305)
    detail = run_detail(flux, run["id"])
    assert detail["status"] == "running"
    [task] = detail["tasks"]
    assert (task["type"], task["status"]) == ("lambda", "started")
    assert task["external_id"]

    answer = flux.ok("POST", f"/runs/{run['id']}/fail", {"reason": "consumer crashed: disk full"})
    assert (answer["run"]["id"], answer["run"]["status"]) == (run["id"], "failed")
    detail = run_detail(flux, run["id"])
    assert (detail["status"], detail["error"]) == ("failed", "consumer crashed: disk full")
    assert [(t["status"], t["error"]) for t in detail["tasks"]] == [("failed", "consumer crashed: disk full")]
    assert flux.ok("GET", "/executions", query={"table": "tb_fn"})["executions"] == []
    status, error = error_of(flux, "POST", f"/runs/{run['id']}/fail", {"reason": "again"})
    assert (status, error["code"]) == (409, "conflict")


def test_a_completion_report_with_a_token_must_carry_the_current_attempts(flux: Lambda) -> None:
    """The token of the message is how a consumer reports (serve's local consumer does so); one of
    another run, or of an earlier attempt, is refused and changes nothing."""
    sqs = boto3.client("sqs", region_name=REGION)
    sqs.create_queue(QueueName=QUEUE_NAME)
    other = manual(flux, "tb_queue", 202304)
    run = manual(flux, "tb_queue", 202305)
    tokens = {}
    for message in sqs.receive_message(QueueUrl=QUEUE_URL, MaxNumberOfMessages=10)["Messages"]:
        sent = json.loads(message["Body"])["flux"]
        tokens[sent["run_id"]] = sent["token"]
    done = {**item("tb_queue", source="consumer", ano_mes=202305), "run_id": run["id"]}
    for wrong in (tokens[other["id"]], f"flux-{run['id']}-1-notify", "guess"):
        status, error = error_of(flux, "POST", "/register_execution", {"data": [{**done, "token": wrong}]})
        assert (status, error["code"]) == (403, "forbidden"), wrong
        assert "is not one of run" in error["message"]
        status, error = error_of(flux, "POST", f"/runs/{run['id']}/fail", {"reason": "x", "token": wrong})
        assert (status, error["code"]) == (403, "forbidden"), wrong
    assert run_detail(flux, run["id"])["status"] == "running"
    assert flux.ok("GET", "/executions", query={"table": "tb_queue"})["executions"] == []

    answer = flux.ok("POST", "/register_execution", {"data": [{**done, "token": tokens[run["id"]]}]})
    assert [e["table_name"] for e in answer["executions"]] == ["tb_queue"]
    assert run_detail(flux, run["id"])["status"] == "succeeded"
    failed = flux.ok(
        "POST", f"/runs/{other['id']}/fail", {"reason": "bad input", "token": tokens[other["id"]]}
    )
    assert failed["run"]["status"] == "failed"
    # Its retry is attempt 2, started with a new token: the first attempt's is refused now.
    assert flux.ok("POST", f"/runs/{other['id']}/retry", {"reason": "fixed"})["run"]["status"] == "running"
    [message] = sqs.receive_message(QueueUrl=QUEUE_URL, MaxNumberOfMessages=10)["Messages"]
    second = json.loads(message["Body"])["flux"]["token"]
    assert second != tokens[other["id"]]
    again = {**item("tb_queue", ano_mes=202304), "run_id": other["id"]}
    stale = {"data": [{**again, "token": tokens[other["id"]]}]}
    status, error = error_of(flux, "POST", "/register_execution", stale)
    assert (status, error["code"]) == (403, "forbidden")
    flux.ok("POST", "/register_execution", {"data": [{**again, "token": second}]})
    assert run_detail(flux, other["id"])["status"] == "succeeded"


# --- a table deleted by a reconcile ------------------------------------------------------------------


def test_a_fire_for_a_table_deleted_by_a_reconcile_cancels_the_run(flux: Lambda, engine: Engine) -> None:
    [run] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})["runs"]
    assert run["table_name"] == "tb_b"
    remaining = [d for d in TABLES if d["name"] != "tb_b"]
    outcome = apply(
        engine, desired=states(remaining), allow_delete=True, revision="drop-b", actor="test", now=START
    )
    assert outcome.applied
    flux.clock.advance(300)
    assert flux.invoke({"flux_action": "fire", "run_id": run["id"]}) == {"status": "cancelled: table deleted"}
    assert glue_runs("job-b") == []
    detail = run_detail(flux, run["id"])
    assert detail["status"] == "cancelled"
    assert detail["tasks"] == []
    # tb_a has no dependent any more: registering it opens nothing.
    assert flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202306)]})["runs"] == []
