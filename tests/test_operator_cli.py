"""The operator CLI (DESIGN §8): ``flux-control runs …`` and ``backfill``, clients of the HTTP API.

Three kinds of server answer them: a real ``flux-control serve`` (trusted mode: the body's ``user``);
the Lambda handler on moto behind a local stand-in of API Gateway that demands and verifies SigV4 and
puts the signer's IAM identity in the event (the body's ``user`` is then ignored); and small stubs for
error answers, refused connections, timeouts and ``POST /backfills``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from controller.cli import main
from controller.cli.api_client import ApiClient, api_gateway_region
from controller.db.engine import make_engine
from controller.lambda_function import lambda_handler
from controller.local.aws import free_port
from controller.local.http import to_event
from controller.reconciler import apply
from tests.factories import states, table_doc
from tests.runtime_support import ACCOUNT, REGION, Lambda, partitions, running_lambda

MONTH = [{"name": "ano_mes", "type": "int"}]
RUN_HEADER = ["ID", "TABLE", "PARTITIONS", "STATUS", "FIRE AT", "APPROVAL"]


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, prog_name="flux-control")


def rows(output: str) -> tuple[list[str], list[dict[str, str]]]:
    """A table's header names and its rows, each cell cut at its header's column: a misaligned
    column reads as a wrong value."""
    header, *lines = output.splitlines()
    names = re.split(r" {2,}", header.strip())
    starts = [header.index(name) for name in names]
    ends = [*starts[1:], None]
    return names, [
        {name: line[start:end].strip() for name, start, end in zip(names, starts, ends, strict=True)}
        for line in lines
    ]


@dataclass
class Done:
    exit_code: int
    output: str
    stderr: str


def command(*args: str) -> Done:
    """The installed command in a process of its own: the Lambda behind the stand-in prints its logs
    and metrics to this process's stdout, which CliRunner would mix into the command's output."""
    done = subprocess.run(
        [sys.executable, "-m", "controller", *args], capture_output=True, text=True, timeout=60, check=False
    )
    return Done(done.returncode, done.stdout, done.stderr)


def http(base: str, method: str, path: str, body: Any = None) -> Any:
    """A plain request to a server under test (not through the CLI); must answer 200."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


# --- (1) against flux-control serve ------------------------------------------------------------------

SERVE_TABLES = [
    table_doc("tb_src", partitions=MONTH),
    table_doc(
        "tb_gated",
        partitions=MONTH,
        requires_approval=True,
        approvers=["ana"],
        debounce_seconds=3600,  # approved runs stay scheduled for the test's lifetime
        dependencies=[{"dependency_name": "tb_src"}],
        tasks=[{"alias": "build", "type": "glue", "target": "job-gated"}],
    ),
    table_doc(
        "tb_slow",
        partitions=MONTH,
        debounce_seconds=3600,
        dependencies=[{"dependency_name": "tb_src"}],
        tasks=[{"alias": "load", "type": "glue", "target": "job-slow"}],
    ),
    table_doc(
        "tb_manual", partitions=MONTH, tasks=[{"alias": "load", "type": "glue", "target": "job-manual"}]
    ),
]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``flux-control serve`` in a subprocess, tasks that stay running (--task-delay 600)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('serve') / 'serve.db'}"
    engine = make_engine(url)
    apply(engine, desired=states(SERVE_TABLES), revision="local", actor="test", now=datetime.now(UTC))
    engine.dispose()
    port, aws_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FLUX_"))}
    command = [sys.executable, "-m", "controller", "serve", "--port", str(port), "--aws-port", str(aws_port)]
    command += ["--database-url", url, "--task-delay", "600", "--tick", "0.2"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"serve exited: {process.communicate()}")
        try:
            return bool(http(base, "GET", "/health") == {"status": "ok"})
        except OSError:
            return False

    try:
        wait_for(healthy, 60, "serve to answer /health")
        yield base
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)


def _register_src(base: str, month: int) -> dict[str, dict[str, Any]]:
    """Register tb_src for ``month``: the runs it opened, by table."""
    item = {"table_name": "tb_src", "partitions": partitions(ano_mes=month)}
    answer = http(base, "POST", "/register_execution", {"data": [item], "user": "etl"})
    return {run["table_name"]: run for run in answer["runs"]}


def test_runs_list_prints_aligned_columns_and_json_is_the_apis_answer(serve: str) -> None:
    opened = _register_src(serve, 202301)
    gated = opened["tb_gated"]
    listed = cli("runs", "list", "--table", "tb_gated", "--api-url", serve)
    assert listed.exit_code == 0, listed.output
    names, [row] = rows(listed.output)
    assert names == RUN_HEADER
    assert row == {
        "ID": str(gated["id"]),
        "TABLE": "tb_gated",
        "PARTITIONS": "ano_mes=202301",
        "STATUS": "awaiting_approval",
        "FIRE AT": "-",
        "APPROVAL": str(gated["approval_id"]),
    }
    as_json = cli("runs", "list", "--table", "tb_gated", "--format", "json", env={"FLUX_API_URL": serve})
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == http(serve, "GET", "/runs?table=tb_gated")
    # Filters reach the API: a state no run of tb_gated is in lists nothing.
    none = cli("runs", "list", "--table", "tb_gated", "--status", "succeeded", "--api-url", serve)
    assert (none.exit_code, none.output) == (0, "No runs found.\n")


def test_approve_schedules_the_run_as_the_given_user_and_a_second_approve_is_refused(serve: str) -> None:
    run = _register_src(serve, 202302)["tb_gated"]
    refused = cli("runs", "approve", str(run["id"]), "--user", "bob", "--api-url", serve)
    assert refused.exit_code == 1
    assert re.fullmatch(r"Error: .*bob.* \(HTTP 403\)\n", refused.stderr), refused.stderr
    approved = cli(
        "runs",
        "approve",
        str(run["id"]),
        "--comment",
        "checked",
        "--api-url",
        serve,
        env={"FLUX_USER": "ana"},
    )
    assert approved.exit_code == 0, approved.output
    _, [row] = rows(approved.stdout)
    assert (row["ID"], row["STATUS"], row["APPROVAL"]) == (
        str(run["id"]),
        "scheduled",
        str(run["approval_id"]),
    )
    assert row["FIRE AT"].endswith("Z")
    detail = http(serve, "GET", f"/runs/{run['id']}")["run"]
    assert detail["status"] == "scheduled"
    assert (detail["approval"]["status"], detail["approval"]["decided_by"]) == ("approved", "ana")
    assert detail["approval"]["comment"] == "checked"
    again = cli("runs", "approve", str(run["id"]), "--user", "ana", "--api-url", serve)
    assert again.exit_code == 1
    assert again.stderr == (
        f"Error: run {run['id']} has no pending approval: its approval {run['approval_id']} is approved "
        "(run status: scheduled)\n"
    )


def test_reject_and_cancel(serve: str) -> None:
    opened = _register_src(serve, 202303)
    rejected = cli(
        "runs",
        "reject",
        str(opened["tb_gated"]["id"]),
        "--user",
        "ana",
        "--format",
        "json",
        "--api-url",
        serve,
    )
    assert rejected.exit_code == 0, rejected.output
    answer = json.loads(rejected.output)
    assert answer["approval"] == {"id": opened["tb_gated"]["approval_id"], "status": "rejected"}
    assert answer["run"]["status"] == "rejected"
    assert http(serve, "GET", f"/runs/{opened['tb_gated']['id']}")["run"]["status"] == "rejected"

    slow = opened["tb_slow"]
    assert slow["status"] == "scheduled"
    cancelled = cli(
        "runs", "cancel", str(slow["id"]), "--reason", "wrong data", "--user", "op", "--api-url", serve
    )
    assert cancelled.exit_code == 0, cancelled.output
    _, [row] = rows(cancelled.output)
    assert (row["ID"], row["STATUS"]) == (str(slow["id"]), "cancelled")
    detail = http(serve, "GET", f"/runs/{slow['id']}")["run"]
    assert detail["status"] == "cancelled"
    assert (detail["events"][-1]["actor"], detail["events"][-1]["reason"]) == ("op", "wrong data")
    # A cancelled run cannot be cancelled again: the API's 409, as one line.
    twice = cli("runs", "cancel", str(slow["id"]), "--user", "op", "--api-url", serve)
    assert twice.exit_code == 1
    assert re.fullmatch(r"Error: .+ \(HTTP 409\)\n", twice.stderr), twice.stderr
    assert "Traceback" not in twice.output


def test_show_prints_the_run_in_full(serve: str) -> None:
    slow = _register_src(serve, 202304)["tb_slow"]
    cli("runs", "cancel", str(slow["id"]), "--reason", "not needed", "--user", "op", "--api-url", serve)
    shown = cli("runs", "show", str(slow["id"]), "--api-url", serve)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert f"Run:           {slow['id']}" in lines
    assert "Table:         tb_slow" in lines
    assert "Partitions:    ano_mes=202304" in lines
    assert "Status:        cancelled" in lines
    assert "Approval:      -" in lines
    triggers = lines.index("Triggers:")
    assert re.split(r" {2,}", lines[triggers + 1].strip()) == ["EXECUTION", "TABLE", "PARTITIONS"]
    assert re.split(r" {2,}", lines[triggers + 2].strip())[1:] == ["tb_src", "ano_mes=202304"]
    events = lines.index("Events:")
    assert re.split(r" {2,}", lines[events + 1].strip()) == ["AT", "FROM", "TO", "ACTOR", "REASON"]
    assert re.split(r" {2,}", lines[-1].strip())[1:] == ["scheduled", "cancelled", "op", "not needed"]
    as_json = cli("runs", "show", str(slow["id"]), "--format", "json", "--api-url", serve)
    assert json.loads(as_json.output) == http(serve, "GET", f"/runs/{slow['id']}")
    unknown = cli("runs", "show", "999999", "--api-url", serve)
    assert (unknown.exit_code, unknown.stderr) == (1, "Error: unknown run 999999 (HTTP 404)\n")


def test_retry_reopens_a_failed_run_as_its_next_attempt(serve: str) -> None:
    body = {
        "table_name": "tb_manual",
        "partitions": partitions(ano_mes=202301),
        "reason": "test",
        "user": "op",
    }
    run = http(serve, "POST", "/runs", body)["run"]
    wait_for(lambda: http(serve, "GET", f"/runs/{run['id']}")["run"]["status"] == "running", 30, "the run")
    http(serve, "POST", f"/runs/{run['id']}/fail", {"reason": "boom", "user": "op"})
    retried = cli(
        "runs", "retry", str(run["id"]), "--reason", "source fixed", "--user", "op", "--api-url", serve
    )
    assert retried.exit_code == 0, retried.output
    _, [row] = rows(retried.output)
    # Re-opened as attempt 2, and due at once (the local scheduler may have started it already).
    assert (row["ID"], row["TABLE"]) == (str(run["id"]), "tb_manual")
    assert row["STATUS"] in ("scheduled", "dispatching", "running")
    detail = http(serve, "GET", f"/runs/{run['id']}")["run"]
    assert detail["attempt"] == 2
    reopened = [
        (e["new_state"], e["actor"], e["reason"]) for e in detail["events"] if e["old_state"] == "failed"
    ]
    assert reopened == [("scheduled", "op", "source fixed")]


# --- (2) the Lambda on moto behind a stand-in of API Gateway that demands SigV4 ----------------------

OPS = f"arn:aws:iam::{ACCOUNT}:user/ops"
GATEWAY_TABLES = [
    table_doc("tb_src", partitions=MONTH),
    table_doc(
        "tb_gated",
        partitions=MONTH,
        requires_approval=True,
        approvers=[OPS],
        debounce_seconds=3600,
        dependencies=[{"dependency_name": "tb_src"}],
    ),
]
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<day>\d{8})/(?P<region>[a-z0-9-]+)/execute-api/"
    r"aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)


def signature_problem(method: str, url: str, headers: dict[str, str], body: bytes) -> str | None:
    """What is wrong with the request's SigV4 signature (None: it is the one the environment's
    credentials make for execute-api), recomputed with botocore from the bytes received."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    found = _AUTHORIZATION.fullmatch(headers.get("authorization", ""))
    if found is None:
        return f"no well-formed SigV4 Authorization header: {headers.get('authorization')!r}"
    credentials = ReadOnlyCredentials(
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], None
    )
    if found["key"] != credentials.access_key or found["region"] != REGION:
        return f"signed for {found['key']} in {found['region']}"
    signed = found["signed"].split(";")
    if not {"host", "x-amz-date"} <= set(signed) or found["day"] != headers["x-amz-date"][:8]:
        return f"signed headers {signed}"
    request = AWSRequest(method=method, url=url, data=body or None, headers={h: headers[h] for h in signed})
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(credentials, "execute-api", REGION)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return None if expected == found["signature"] else "signature mismatch"


@dataclass
class Gateway:
    """API Gateway in front of the handler: stage ``prod``, IAM authorization (SigV4 required)."""

    url: str = ""
    caller_arn: str = OPS
    seen: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def api_gateway(flux: Lambda) -> Iterator[Gateway]:
    gateway = Gateway()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            problem = signature_problem(self.command, f"http://{headers['host']}{self.path}", headers, body)
            gateway.seen.append({"method": self.command, "path": self.path, "body": body, "problem": problem})
            if problem is not None:
                status, payload = 403, json.dumps({"message": "Missing Authentication Token"}).encode()
            else:
                identity = {"userArn": gateway.caller_arn, "accountId": ACCOUNT, "accessKey": "AKIDEXAMPLE"}
                target = self.path.removeprefix("/prod")  # the event's path has no stage
                event = to_event(self.command, target, headers, body, "127.0.0.1", identity=identity)
                with lock:
                    response = lambda_handler(event, None)
                status, payload = response["statusCode"], str(response["body"]).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    gateway.url = f"http://127.0.0.1:{server.server_address[1]}/prod"
    try:
        yield gateway
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Lambda, Gateway]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'flux.db'}")
    with running_lambda(engine, GATEWAY_TABLES, monkeypatch) as flux, api_gateway(flux) as stand_in:
        yield flux, stand_in
    engine.dispose()


def test_signed_requests_reach_the_lambda_and_the_identity_is_the_signers(
    gateway: tuple[Lambda, Gateway],
) -> None:
    flux, stand_in = gateway
    item = {"table_name": "tb_src", "partitions": partitions(ano_mes=202305)}
    [run] = flux.ok("POST", "/register_execution", {"data": [item]})["runs"]
    listed = command("runs", "list", "--sigv4", "--api-url", stand_in.url)
    assert listed.exit_code == 0, listed.output
    assert [(r["ID"], r["STATUS"]) for r in rows(listed.output)[1]] == [(str(run["id"]), "awaiting_approval")]
    # --user is sent, and ignored outside trusted mode: the approver is the signer's IAM identity.
    approved = command(
        "runs", "approve", str(run["id"]), "--user", "mallory", "--sigv4", "--api-url", stand_in.url
    )
    assert approved.exit_code == 0, approved.output
    assert rows(approved.output)[1][0]["STATUS"] == "scheduled"
    decision = flux.ok("GET", f"/runs/{run['id']}")["run"]["approval"]
    assert (decision["status"], decision["decided_by"]) == ("approved", OPS)
    assert [(s["method"], s["path"], s["problem"]) for s in stand_in.seen] == [
        ("GET", "/prod/runs?limit=100", None),
        ("GET", f"/prod/runs/{run['id']}", None),
        ("POST", "/prod/approve", None),
    ]
    assert json.loads(stand_in.seen[-1]["body"]) == {
        "approval_status_id": run["approval_id"],
        "user": "mallory",
    }


def test_unsigned_and_unauthorised_requests_print_the_refusal(gateway: tuple[Lambda, Gateway]) -> None:
    flux, stand_in = gateway
    item = {"table_name": "tb_src", "partitions": partitions(ano_mes=202306)}
    [run] = flux.ok("POST", "/register_execution", {"data": [item]})["runs"]
    # A local URL is not signed unless --sigv4 says so: API Gateway's own 403.
    unsigned = command("runs", "reject", str(run["id"]), "--api-url", stand_in.url)
    assert (unsigned.exit_code, unsigned.stderr) == (1, "Error: Missing Authentication Token (HTTP 403)\n")
    assert stand_in.seen[-1]["problem"].startswith("no well-formed SigV4 Authorization header")
    # Signed, by someone who is not an approver: the API's error model.
    stand_in.caller_arn = f"arn:aws:iam::{ACCOUNT}:user/intern"
    refused = command("runs", "reject", str(run["id"]), "--sigv4", "--api-url", stand_in.url)
    assert refused.exit_code == 1
    assert re.fullmatch(r"Error: .*intern.* \(HTTP 403\)\n", refused.stderr), refused.stderr
    assert flux.ok("GET", f"/runs/{run['id']}")["run"]["status"] == "awaiting_approval"


def test_backfill_against_the_real_route(gateway: tuple[Lambda, Gateway]) -> None:
    flux, stand_in = gateway
    done = command(
        "backfill",
        "tb_src",
        "-p",
        "ano_mes=202301..202303",
        "--sigv4",
        "--format",
        "json",
        "--api-url",
        stand_in.url,
    )
    assert done.exit_code == 0, done.output
    backfill = json.loads(done.output)["backfill"]
    assert backfill["table_name"] == "tb_src"
    assert sorted(r["partitions"]["ano_mes"] for r in backfill["runs"]) == [202301, 202302, 202303]
    summary = flux.ok("GET", f"/backfills/{backfill['id']}")["backfill"]
    assert (summary["total_runs"], summary["requested_by"]) == (3, stand_in.caller_arn)


# --- (3) the client on its own: signing, errors, -p parsing -----------------------------------------


@pytest.fixture
def aws_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials from the environment only (no profile files of the machine)."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNITTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


@pytest.mark.parametrize(
    ("url", "sigv4", "signed", "region"),
    [
        ("https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod", None, True, "eu-west-1"),
        (
            "https://a1b2c3d4e5-vpce-0123abc.execute-api.sa-east-1.vpce.amazonaws.com/v1",
            None,
            True,
            "sa-east-1",
        ),
        ("https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod", False, False, None),
        ("http://localhost:8080", None, False, None),
        ("http://127.0.0.1:8080", None, False, None),
        ("https://flux.example.com", None, False, None),
        ("https://flux.example.com", True, True, "us-west-2"),  # a custom domain: the region from AWS_REGION
        ("https://execute-api.eu-west-1.amazonaws.com.evil.example", None, False, None),
    ],
)
def test_which_requests_are_signed(
    aws_keys: None,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    sigv4: bool | None,
    signed: bool,
    region: str | None,
) -> None:
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    client = ApiClient.for_url(url, sigv4)
    assert (client.sign, client.region) == (signed, region)
    request = client.build("POST", "/approve", body={"approval_status_id": 3, "user": None})
    authorization = request.get_header("Authorization")
    if signed:
        assert authorization is not None
        found = _AUTHORIZATION.fullmatch(authorization)
        assert found is not None, authorization
        assert (found["key"], found["region"], found["day"]) == (
            "AKIDUNITTEST",
            region,
            datetime.now(UTC).strftime("%Y%m%d"),
        )
        assert "content-type" in found["signed"].split(";")
    else:
        assert authorization is None
        assert request.get_header("X-amz-date") is None
    assert request.data == b'{"approval_status_id": 3}'
    assert request.full_url == url.rstrip("/") + "/approve"


def test_api_gateway_hosts() -> None:
    assert api_gateway_region("abc123.execute-api.us-east-1.amazonaws.com") == "us-east-1"
    assert api_gateway_region("abc123.execute-api.cn-north-1.amazonaws.com.cn") == "cn-north-1"
    assert api_gateway_region("abc123.execute-api.us-east-1.amazonaws.com.attacker.net") is None
    assert api_gateway_region("localhost") is None


def test_signing_without_credentials_or_region_says_what_to_set(
    aws_keys: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_region = cli("runs", "list", "--sigv4", "--api-url", "https://flux.example.com")
    assert no_region.exit_code == 1
    assert no_region.stderr.startswith(
        "Error: cannot sign the request (SigV4): no AWS region; set AWS_REGION"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role either
    no_keys = cli("runs", "list", "--api-url", "https://abc.execute-api.eu-west-1.amazonaws.com/prod")
    assert no_keys.exit_code == 1
    assert no_keys.stderr.startswith("Error: cannot sign the request (SigV4): no AWS credentials found")
    assert "Traceback" not in no_keys.output


@dataclass
class Stub:
    url: str
    seen: list[tuple[str, str, Any]] = field(default_factory=list)


Answer = Callable[[str, str, Any], tuple[Any, ...]]


@contextmanager
def stub_api(answer: Answer) -> Iterator[Stub]:
    """A local server answering ``answer(method, path, body)`` (bytes as they are, else JSON)."""
    stub = Stub("")

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.loads(raw) if raw else None
            stub.seen.append((self.command, self.path, body))
            status, payload, *headers = answer(self.command, self.path, body)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for name, value in (headers[0] if headers else {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()


def test_an_error_answer_is_one_line_with_the_apis_message_and_status() -> None:
    error = {
        "error": {"code": "forbidden", "message": "ana is not an approver of tb_x\x1b[2K", "details": {}}
    }
    with stub_api(lambda *_: (403, error)) as stub:
        result = cli("runs", "cancel", "7", "--user", "ana", "--api-url", stub.url)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "Error: ana is not an approver of tb_x\\x1b[2K (HTTP 403)\n"
    assert stub.seen == [("POST", "/runs/7/cancel", {"user": "ana"})]


def test_an_answer_that_is_not_json_is_shown_as_an_excerpt() -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    with stub_api(lambda *_: (502, page)) as stub:
        failed = cli("runs", "show", "1", "--api-url", stub.url)
    assert (failed.exit_code, failed.stderr) == (
        1,
        "Error: <html><body><h1>502 Bad Gateway</h1></body></html> (HTTP 502)\n",
    )
    with stub_api(lambda *_: (200, b"OK")) as stub:
        odd = cli("runs", "list", "--api-url", stub.url)
    assert odd.exit_code == 1
    assert odd.stderr == f"Error: the API at {stub.url}/runs answered something that is not JSON: OK\n"


def test_a_redirect_is_not_followed() -> None:
    moved = (301, b"", {"Location": "https://elsewhere.example/runs/1"})
    with stub_api(lambda *_: moved) as stub:
        result = cli("runs", "cancel", "1", "--api-url", stub.url)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: the API at {stub.url}/runs/1/cancel redirects to https://elsewhere.example/runs/1: give the "
        "final URL as --api-url (HTTP 301)\n"
    )
    assert len(stub.seen) == 1


def test_a_refused_connection_names_the_url() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = cli("runs", "list", "--api-url", f"http://127.0.0.1:{port}/")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: cannot reach the API at http://127.0.0.1:{port}/runs: connection refused "
        "(is the API running there?)\n"
    )


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # connections complete, nobody ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = cli("runs", "show", "3", "--timeout", "0.5", "--api-url", url)
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    assert result.stderr == f"Error: the API at {url}/runs/3 did not answer within 0.5 s\n"


def test_the_api_url_is_required_and_must_be_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUX_API_URL", raising=False)
    missing = cli("runs", "list")
    assert missing.exit_code == 1
    assert "Error: no API URL: pass --api-url URL or set FLUX_API_URL" in missing.stderr
    wrong = cli("runs", "show", "1", "--api-url", "ftp://host")
    assert wrong.exit_code == 1
    assert "Invalid value for '--api-url': 'ftp://host' is not an http(s):// URL" in wrong.stderr


def test_approve_without_a_pending_approval_sends_no_decision() -> None:
    run = {"id": 5, "table_name": "tb", "partitions": {}, "status": "scheduled", "approval_id": None}
    with stub_api(lambda *_: (200, {"run": {**run, "approval": None}})) as stub:
        result = cli("runs", "approve", "5", "--api-url", stub.url)
    assert result.exit_code == 1
    assert (
        result.stderr == "Error: run 5 has no pending approval: it has no approval (run status: scheduled)\n"
    )
    assert [(method, path) for method, path, _ in stub.seen] == [("GET", "/runs/5")]


def test_the_user_defaults_to_flux_user_then_the_login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUX_USER", raising=False)
    monkeypatch.setattr("getpass.getuser", lambda: "login-name")
    answer = {"run": {"id": 9, "table_name": "tb", "partitions": {"m": 1}, "status": "cancelled"}}
    with stub_api(lambda *_: (200, answer)) as stub:
        assert cli("runs", "cancel", "9", "--api-url", stub.url).exit_code == 0
        assert cli("runs", "retry", "9", "--api-url", stub.url, env={"FLUX_USER": "env-user"}).exit_code == 0
    assert [body for _, _, body in stub.seen] == [{"user": "login-name"}, {"user": "env-user"}]


def _backfill_stand_in(method: str, path: str, body: Any) -> tuple[int, Any]:
    """``POST /backfills`` as DESIGN §8 has it: every key of the product, one run each."""
    assert (method, path) == ("POST", "/backfills")
    axes: list[list[tuple[str, Any]]] = []
    for name, spec in body["partitions"].items():
        if isinstance(spec, list):
            values = spec
        elif isinstance(spec["from"], int):
            values = list(range(spec["from"], spec["to"] + 1))
        else:
            start, end = date.fromisoformat(spec["from"]), date.fromisoformat(spec["to"])
            values = [d.isoformat() for d in _days(start, end, spec.get("step", "day"))]
        axes.append([(name, v) for v in values])
    keys: list[dict[str, Any]] = [{}]
    for axis in axes:
        keys = [{**key, name: value} for key in keys for name, value in axis]
    if len(keys) > 1000:
        return 422, {
            "error": {"code": "invalid", "message": f"{len(keys)} keys: at most 1,000", "details": {}}
        }
    runs = [
        {
            "id": i,
            "table_name": body["table_name"],
            "partitions": k,
            "status": "scheduled",
            "fire_at": None,
            "approval_id": None,
        }
        for i, k in enumerate(keys, 1)
    ]
    return 200, {"backfill": {"id": 1, "table_name": body["table_name"], "keys": keys, "runs": runs}}


def _days(start: date, end: date, step: str) -> Iterator[date]:
    while start <= end:
        yield start
        if step == "month":
            start = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
        else:
            start = date.fromordinal(start.toordinal() + 1)


def test_backfill_sends_ranges_and_lists_and_prints_the_runs() -> None:
    with stub_api(_backfill_stand_in) as stub:
        done = cli(
            "backfill",
            "tb_vendas",
            "-p",
            "dt=2024-01-30..2024-02-02",
            "-p",
            "regiao=sul,norte",
            "-p",
            "n=1..2",
            "--reason",
            "restated",
            "--user",
            "ops",
            "--api-url",
            stub.url,
        )
        monthly = cli(
            "backfill",
            "tb_m",
            "-p",
            "dt=2024-01-01..2024-03-01",
            "-p",
            "code=007",
            "--step",
            "month",
            "--format",
            "json",
            "--api-url",
            stub.url,
        )
    assert done.exit_code == 0, done.output
    assert stub.seen[0][2] == {
        "table_name": "tb_vendas",
        "partitions": {
            "dt": {"from": "2024-01-30", "to": "2024-02-02"},
            "regiao": ["sul", "norte"],
            "n": {"from": 1, "to": 2},
        },
        "reason": "restated",
        "user": "ops",
    }
    summary, *table = done.output.splitlines()
    assert summary == "Backfill 1 of tb_vendas: 16 keys, 16 runs."
    names, listed = rows("\n".join(table))
    assert names == RUN_HEADER
    assert listed[0]["PARTITIONS"] == "dt=2024-01-30,regiao=sul,n=1"
    assert len(listed) == 16
    assert monthly.exit_code == 0, monthly.output
    # --step goes on date ranges only; an integer with a leading zero stays a string.
    assert stub.seen[1][2]["partitions"] == {
        "dt": {"from": "2024-01-01", "to": "2024-03-01", "step": "month"},
        "code": ["007"],
    }
    assert [r["partitions"]["dt"] for r in json.loads(monthly.output)["backfill"]["runs"]] == [
        "2024-01-01",
        "2024-02-01",
        "2024-03-01",
    ]


def test_backfill_too_many_keys_is_the_apis_422() -> None:
    with stub_api(_backfill_stand_in) as stub:
        result = cli("backfill", "tb", "-p", "n=1..1001", "--api-url", stub.url)
    assert (result.exit_code, result.stderr) == (1, "Error: 1001 keys: at most 1,000 (HTTP 422)\n")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ano_mes", "'ano_mes' is not NAME=FROM..TO, NAME=V,V,… or NAME=V"),
        ("=1..2", "'=1..2' is not NAME=FROM..TO"),
        ("n=", "'n=' is not NAME=FROM..TO"),
        ("n=1..", "'n=1..': a range is NAME=FROM..TO"),
        ("n=..5", "'n=..5': a range is NAME=FROM..TO"),
        ("n=1..2..3", "'n=1..2..3': a range is NAME=FROM..TO"),
        ("n=1..3,5", "'n=1..3,5': a range is NAME=FROM..TO"),
        ("n=a,,b", "'n=a,,b' has an empty value"),
    ],
)
def test_bad_partition_forms_are_usage_errors_naming_the_option(value: str, message: str) -> None:
    result = cli("backfill", "tb", "-p", value, "--api-url", "http://127.0.0.1:9")
    assert result.exit_code == 1
    assert "Invalid value for '--partition' / '-p': " + message in result.stderr, result.stderr
    assert "cannot reach" not in result.stderr  # refused before any request


def test_a_partition_given_twice_and_a_step_without_dates_are_refused() -> None:
    twice = cli("backfill", "tb", "-p", "n=1", "-p", "n=2", "--api-url", "http://127.0.0.1:9")
    assert "Invalid value for '--partition' / '-p': partition 'n' is given more than once" in twice.stderr
    step = cli("backfill", "tb", "-p", "n=1..3", "--step", "month", "--api-url", "http://127.0.0.1:9")
    assert step.exit_code == 1
    assert "Invalid value for '--step': applies to date ranges only" in step.stderr


def test_the_cli_imports_no_botocore_until_it_signs() -> None:
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom controller.cli import main\n"
        "CliRunner().invoke(main, ['runs', 'list', '--api-url', 'http://127.0.0.1:9'])\n"
        "print('botocore' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


def test_help_says_api_gateway_ignores_the_user() -> None:
    for command in (["runs", "approve"], ["runs", "cancel"], ["backfill"]):
        text = " ".join(cli(*command, "--help").output.split())
        assert "API Gateway ignores it" in text, command
        assert "FLUX_API_URL" in text
