"""``flux-control serve`` in a subprocess, driven over real HTTP through the README walkthrough."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.factories import desired_from, states, table_doc
from tests.serve_support import Server, serving, wait_for

MONTH = [{"name": "ano_mes", "type": "int"}]
TABLES = [
    table_doc("tb_a", partitions=MONTH),
    table_doc(
        "tb_b",
        partitions=MONTH,
        requires_approval=True,
        approvers=["ana"],
        debounce_seconds=2,
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
        debounce_seconds=1,
        dependencies=[{"dependency_name": "tb_b"}],
        tasks=[{"alias": "load", "type": "glue", "target": "job-c"}],
    ),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path, states(TABLES)) as running:
        yield running


def test_the_walkthrough_over_http(server: Server) -> None:
    # Register A: B's run waits for approval.
    body = server.ok(
        "POST",
        "/register_execution",
        {
            "data": [{"table_name": "tb_a", "partitions": [{"partition_name": "ano_mes", "value": 202305}]}],
            "user": "etl",  # serve trusts the body's user; a write needs one (DESIGN §7)
        },
    )
    [b_run] = body["runs"]
    assert (b_run["table_name"], b_run["status"]) == ("tb_b", "awaiting_approval")
    # Approve it with the body's user (trusted locally).
    approved = server.ok("POST", "/approve", {"approval_status_id": b_run["approval_id"], "user": "ana"})
    assert approved["run"]["status"] == "scheduled"
    # The local scheduler fires it within the debounce; the Glue job run appears in the local AWS.
    running = wait_for(
        lambda: (
            (r := server.ok("GET", f"/runs/{b_run['id']}")["run"])["status"] in ("running", "succeeded") and r
        ),
        30,
        "B to start",
    )
    glue = server.client("glue")
    [job_run] = glue.get_job_runs(JobName="job-b")["JobRuns"]
    assert job_run["Id"] == running["tasks"][0]["external_id"]
    assert job_run["Arguments"]["--mes"] == "202305"
    # The local completion stand-in finishes it: B is registered, C's run appears and runs too.
    wait_for(
        lambda: server.ok("GET", f"/runs/{b_run['id']}")["run"]["status"] == "succeeded", 30, "B to succeed"
    )
    executions = server.ok("GET", "/executions?table=tb_b")["executions"]
    assert [(e["source"], e["run_id"]) for e in executions] == [("glue", b_run["id"])]
    c_runs = wait_for(lambda: server.ok("GET", "/runs?table=tb_c")["runs"], 10, "C's run")
    wait_for(
        lambda: server.ok("GET", f"/runs/{c_runs[0]['id']}")["run"]["status"] == "succeeded",
        30,
        "C to succeed",
    )
    assert len(glue.get_job_runs(JobName="job-c")["JobRuns"]) == 1


def test_ctrl_c_stops_cleanly(server: Server) -> None:
    server.process.send_signal(signal.SIGINT)
    out, err = server.process.communicate(timeout=20)
    assert server.process.returncode == 0, err
    assert "flux-control serve stopped." in out
    assert "Traceback" not in err


# --- the README's tour with the example definitions (debounces cut to a second) ----------------------

REQUESTS: dict[str, Any] = json.loads(
    (REPO_ROOT / "tests" / "fixtures" / "original_requests.json").read_text("utf-8")
)


@pytest.fixture
def tour(tmp_path: Path) -> Iterator[Server]:
    desired = desired_from(REPO_ROOT / "definitions")
    for state in desired.values():
        state.update(debounce_seconds=1, max_wait_seconds=None)
    with serving(tmp_path, desired) as running:
        yield running


def _settled(server: Server, run_id: int, seconds: float = 40) -> dict[str, Any]:
    run: dict[str, Any] = wait_for(
        lambda: (r := server.ok("GET", f"/runs/{run_id}")["run"])["status"] in ("succeeded", "failed") and r,
        seconds,
        f"run {run_id} to end",
    )
    return run


def test_every_run_of_the_tour_succeeds_sqs_and_lambda_tasks_included(tour: Server) -> None:
    # The old system's requests, verbatim: the table payload is checked (never written) ...
    checked = tour.ok("POST", "/tables", REQUESTS["tables"])
    assert checked["valid"] is True, checked
    # ... then register and approve.
    [enriched] = tour.ok("POST", "/register_execution", REQUESTS["register_execution"])["runs"]
    assert (enriched["table_name"], enriched["status"]) == ("tb_op_enriquecido", "awaiting_approval")
    approved = tour.ok(
        "POST", "/approve", {**REQUESTS["approve"], "approval_status_id": enriched["approval_id"]}
    )
    assert approved["run"]["status"] == "scheduled"
    assert _settled(tour, enriched["id"])["status"] == "succeeded"
    # The cascade: tb_indicadores_mensais runs its Lambda task; the local function reports back.
    [indicators] = wait_for(
        lambda: tour.ok("GET", "/runs?table=tb_indicadores_mensais")["runs"], 20, "the cascade"
    )
    run = _settled(tour, indicators["id"])
    assert run["status"] == "succeeded", run
    assert [(t["type"], t["status"]) for t in run["tasks"]] == [("lambda", "succeeded")]
    executions = tour.ok("GET", "/executions?table=tb_indicadores_mensais")["executions"]
    assert [(e["source"], e["run_id"]) for e in executions] == [("lambda", indicators["id"])]

    # Sales: a Step Functions task and an SQS task; the local consumer takes the message and reports.
    day = [
        {"partition_name": "data_venda", "value": "2024-05-01"},
        {"partition_name": "regiao", "value": "sul"},
    ]
    tour.ok(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_vendas_diarias", "partitions": day}], "user": "ana"},
    )
    rate = [{"partition_name": "dt_cotacao", "value": "2024-05-01"}]
    [sales] = tour.ok(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_cambio_diario", "partitions": rate}], "user": "ana"},
    )["runs"]
    run = _settled(tour, sales["id"])
    assert run["status"] == "succeeded", run
    assert sorted(t["type"] for t in run["tasks"]) == ["sqs", "step_function"]
    sqs = tour.client("sqs")
    url = sqs.get_queue_url(QueueName="vendas-consolidadas.fifo")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"  # consumed


def test_the_banner_aws_command_works_on_a_clean_machine(server: Server) -> None:
    """The banner's command carries the region and dummy credentials; run here with boto3 alone, in an
    environment without any AWS setting (no ~/.aws, no AWS_ variable)."""
    banner = wait_for(lambda: _banner_line(server), 10, "the banner")
    command = banner.split("e.g. ", 1)[1]
    assignments, _, rest = command.partition(" aws ")
    env = dict(pair.split("=", 1) for pair in assignments.split())
    assert set(env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
    assert rest.startswith(f"--endpoint-url {server.aws} glue get-job-runs --job-name job-b")
    script = (
        "import boto3, sys; "
        f"print(boto3.client('glue', endpoint_url='{server.aws}').get_job_runs(JobName='job-b')['JobRuns'])"
    )
    clean = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", **env}
    done = subprocess.run(
        [sys.executable, "-c", script], env=clean, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _banner_line(server: Server) -> str | None:
    return next((line for line in server.banner() if "e.g. " in line), None)


def test_a_form_body_is_415_as_in_aws(server: Server) -> None:
    """``curl -d`` without a Content-Type: serve rewrote it to JSON, API Gateway does not."""
    status, answer = server.request(
        "POST", "/register_execution", {"data": []}, media="application/x-www-form-urlencoded"
    )
    assert (status, answer["error"]["code"]) == (415, "unsupported_media_type")
