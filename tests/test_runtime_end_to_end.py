"""The whole runtime through ``lambda_handler`` only, with moto as AWS: A → B (approval) → C."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from sqlalchemy import Engine

from tests.factories import table_doc
from tests.runtime_support import (
    FUNCTION_ARN,
    GROUP,
    REGION,
    SCHEDULER_ROLE,
    Lambda,
    glue_event,
    partitions,
    running_lambda,
    schedule_of,
    schedules,
    sfn_event,
    stored_token,
)

MONTH = [{"name": "ano_mes", "type": "int"}]
SFN_ARN = f"arn:aws:states:{REGION}:123456789012:stateMachine:publish-c"
CHAIN = [
    table_doc("tb_a", partitions=MONTH),
    table_doc(
        "tb_b",
        partitions=MONTH,
        requires_approval=True,
        approvers=["ana"],
        debounce_seconds=300,
        dependencies=[{"dependency_name": "tb_a"}],
        tasks=[
            {
                "alias": "build",
                "type": "glue",
                "target": "job-b",
                "params": {"--mes": "{{ partitions.ano_mes }}"},
            }
        ],
    ),
    table_doc(
        "tb_c",
        partitions=MONTH,
        debounce_seconds=60,
        dependencies=[{"dependency_name": "tb_b"}],
        tasks=[
            {
                "alias": "publish",
                "type": "step_function",
                "target": SFN_ARN,
                "params": {"mes": "{{ partitions.ano_mes }}"},
            }
        ],
    ),
]


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, CHAIN, monkeypatch) as handler:
        yield handler


def test_the_chain_runs_end_to_end(flux: Lambda) -> None:
    # 1. A produced 2023-05 (as "0202305": the same int).
    status, body = flux.call(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes="0202305"), "source": "glue"}]},
    )
    assert status == 200, body
    assert body["executions"][0]["partitions"] == {"ano_mes": 202305}
    [b_run] = body["runs"]
    assert (b_run["table_name"], b_run["status"], b_run["fire_at"]) == ("tb_b", "awaiting_approval", None)
    assert b_run["partitions"] == {"ano_mes": 202305}
    assert schedules() == []  # no schedule while awaiting approval

    status, pending = flux.call("GET", "/approvals", query={"status": "pending"})
    assert pending["approvals"] == [
        {
            "id": b_run["approval_id"],
            "status": "pending",
            "run_id": b_run["id"],
            "table_name": "tb_b",
            "partitions": {"ano_mes": 202305},
        }
    ]

    # 2. Someone who is not an approver is refused; the approver approves.
    status, refused = flux.call(
        "POST", "/approve", {"approval_status_id": b_run["approval_id"]}, user="mallory"
    )
    assert status == 403, refused
    flux.clock.advance(10)
    status, approved = flux.call(
        "POST", "/approve", {"approval_status_id": b_run["approval_id"], "comment": "ok"}, user="ana"
    )
    assert status == 200, approved
    assert approved["approval"] == {"id": b_run["approval_id"], "status": "approved"}
    assert approved["run"]["status"] == "scheduled"
    assert approved["run"]["fire_at"] == "2026-11-29T12:05:00+00:00"  # last trigger (12:00) + 300 s
    status, again = flux.call("POST", "/approve", {"approval_status_id": b_run["approval_id"]}, user="ana")
    assert status == 409 and again["error"]["code"] == "conflict"

    schedule = schedule_of(b_run["id"], "tb_b")
    assert schedule["ScheduleExpression"] == "at(2026-11-29T12:05:00)"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["ActionAfterCompletion"] == "DELETE"
    assert schedule["GroupName"] == GROUP
    assert schedule["Target"]["Arn"] == FUNCTION_ARN
    assert schedule["Target"]["RoleArn"] == SCHEDULER_ROLE
    fire_b = json.loads(schedule["Target"]["Input"])
    assert fire_b == {"flux_action": "fire", "run_id": b_run["id"]}

    # 3. The schedule fires: B's Glue job starts with string arguments.
    flux.clock.advance(290)
    assert flux.invoke(fire_b) == {"status": "running"}
    assert flux.invoke(fire_b) == {"status": "ignored: run is running"}  # a duplicate fire is a no-op
    glue = boto3.client("glue", region_name=REGION)
    [job_run] = glue.get_job_runs(JobName="job-b")["JobRuns"]
    assert job_run["Arguments"] == {
        "--ano_mes": "202305",
        "--flux_run_id": str(b_run["id"]),
        "--flux_token": stored_token(flux, b_run["id"], "build"),
        "--mes": "202305",
    }
    status, detail = flux.call("GET", f"/runs/{b_run['id']}")
    assert detail["run"]["status"] == "running"
    assert [(t["alias"], t["status"], t["external_id"]) for t in detail["run"]["tasks"]] == [
        ("build", "started", job_run["Id"])
    ]
    assert detail["run"]["triggers"][0]["table_name"] == "tb_a"

    # 4. Glue says SUCCEEDED: B succeeds, B's execution is registered, C's run opens.
    flux.clock.advance(120)
    assert flux.invoke(glue_event("job-b", job_run["Id"], "SUCCEEDED")) == {"status": "run succeeded"}
    assert flux.invoke(glue_event("job-b", job_run["Id"], "SUCCEEDED"))["status"].startswith("ignored")
    status, executions = flux.call("GET", "/executions", query={"table": "tb_b"})
    assert [(e["source"], e["run_id"], e["partitions"]) for e in executions["executions"]] == [
        ("glue", b_run["id"], {"ano_mes": 202305})
    ]
    status, c_runs = flux.call("GET", "/runs", query={"table": "tb_c"})
    [c_run] = c_runs["runs"]
    assert (c_run["status"], c_run["fire_at"]) == ("scheduled", "2026-11-29T12:08:00+00:00")
    fire_c = json.loads(schedule_of(c_run["id"], "tb_c")["Target"]["Input"])

    # 5. C fires: a Step Functions execution with a deterministic name.
    flux.clock.advance(60)
    assert flux.invoke(fire_c) == {"status": "running"}
    sfn = boto3.client("stepfunctions", region_name=REGION)
    [execution] = sfn.list_executions(stateMachineArn=SFN_ARN)["executions"]
    assert execution["name"] == f"flux-{c_run['id']}-1-publish"
    started = sfn.describe_execution(executionArn=execution["executionArn"])
    assert json.loads(started["input"])["mes"] == "202305"
    assert json.loads(started["input"])["flux"]["run_id"] == c_run["id"]

    # 6. The execution succeeds: C succeeds and is registered; the chain ends.
    assert flux.invoke(sfn_event(execution["executionArn"], "SUCCEEDED")) == {"status": "run succeeded"}
    status, finished = flux.call("GET", f"/runs/{c_run['id']}")
    assert finished["run"]["status"] == "succeeded"
    status, c_exec = flux.call("GET", "/executions", query={"table": "tb_c"})
    assert [e["source"] for e in c_exec["executions"]] == ["step_function"]
    status, open_runs = flux.call("GET", "/runs", query={"status": "scheduled"})
    assert open_runs["runs"] == []


def test_a_glue_failure_fails_the_run_and_nothing_cascades(flux: Lambda) -> None:
    run = _approved_b(flux)
    flux.clock.advance(400)
    flux.invoke({"flux_action": "fire", "run_id": run["id"]})
    [job_run] = boto3.client("glue", region_name=REGION).get_job_runs(JobName="job-b")["JobRuns"]
    assert flux.invoke(glue_event("job-b", job_run["Id"], "FAILED")) == {"status": "run failed"}
    status, detail = flux.call("GET", f"/runs/{run['id']}")
    assert detail["run"]["status"] == "failed"
    assert "Job failed" in detail["run"]["error"]
    status, c_runs = flux.call("GET", "/runs", query={"table": "tb_c"})
    assert c_runs["runs"] == []
    # Retry opens a new attempt that starts the job again.
    # tb_b lists approvers and no operators: its approver operates it.
    status, retried = flux.call("POST", f"/runs/{run['id']}/retry", {"reason": "fixed the job"}, user="ana")
    assert status == 200, retried
    assert len(boto3.client("glue", region_name=REGION).get_job_runs(JobName="job-b")["JobRuns"]) == 2


def test_a_task_that_cannot_start_fails_the_run_with_the_aws_message(flux: Lambda) -> None:
    boto3.client("glue", region_name=REGION).delete_job(JobName="job-b")
    run = _approved_b(flux)
    flux.clock.advance(400)
    outcome = flux.invoke({"flux_action": "fire", "run_id": run["id"]})
    assert outcome["status"].startswith(
        "failed: task build did not start: glue job-b: EntityNotFoundException"
    )
    detail = flux.ok("GET", f"/runs/{run['id']}")
    assert detail["run"]["status"] == "failed"
    assert "EntityNotFoundException" in detail["run"]["error"]


def test_rejecting_ends_the_run_and_the_next_trigger_opens_a_new_one(flux: Lambda) -> None:
    status, body = flux.call(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=202306)}]},
    )
    [run] = body["runs"]
    status, rejected = flux.call(
        "POST", "/reject", {"approval_status_id": run["approval_id"], "comment": "bad data"}, user="ana"
    )
    assert status == 200
    assert rejected["run"]["status"] == "rejected"
    status, body = flux.call(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=202306)}]},
    )
    [new_run] = body["runs"]
    assert new_run["id"] != run["id"]
    assert new_run["status"] == "awaiting_approval"


def _approved_b(flux: Lambda) -> dict[str, Any]:
    status, body = flux.call(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=202305)}]},
    )
    [run] = body["runs"]
    status, approved = flux.call("POST", "/approve", {"approval_status_id": run["approval_id"]}, user="ana")
    assert status == 200, approved
    result: dict[str, Any] = approved["run"]
    return result
