"""``flux-control serve`` in a subprocess, driven over real HTTP through the README walkthrough."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from controller.db.engine import make_engine
from controller.local.aws import free_port
from controller.reconciler import apply
from tests.factories import states, table_doc

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


class Server:
    def __init__(self, port: int, aws_port: int, process: subprocess.Popen[str]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.aws = f"http://127.0.0.1:{aws_port}"
        self.process = process

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.request(method, path, body)
        assert status == 200, answer
        return answer


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    engine = make_engine(url)
    apply(engine, desired=states(TABLES), revision="local", actor="test", now=datetime.now(UTC))
    engine.dispose()
    port, aws_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FLUX_"))}
    command = [sys.executable, "-m", "controller", "serve", "--port", str(port), "--aws-port", str(aws_port)]
    command += ["--database-url", url, "--task-delay", "1", "--tick", "0.2"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = Server(port, aws_port, process)
    try:
        wait_for(lambda: _healthy(running), 60, "serve to answer /health")
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)


def _healthy(server: Server) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(f"serve exited: {server.process.communicate()}")
    try:
        return server.request("GET", "/health") == (200, {"status": "ok"})
    except OSError:
        return False


def test_the_walkthrough_over_http(server: Server) -> None:
    # Register A: B's run waits for approval.
    body = server.ok(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_a", "partitions": [{"partition_name": "ano_mes", "value": 202305}]}]},
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
    glue = boto3.client(
        "glue",
        endpoint_url=server.aws,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
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
