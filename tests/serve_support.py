"""``flux-control serve`` in a subprocess on a SQLite file, and a client of its HTTP API and of its
local AWS (moto's server): for the tests that drive serve over real HTTP (the walkthrough, the
console in a browser)."""

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
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from controller.core.plans import TableState
from controller.db.engine import make_engine
from controller.local.aws import free_port
from controller.reconciler import apply


class Server:
    def __init__(self, port: int, aws_port: int, process: subprocess.Popen[str]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.aws = f"http://127.0.0.1:{aws_port}"
        self.process = process
        self._out: list[str] = []

    def client(self, service: str) -> Any:
        """A boto3 client of the local AWS (moto takes any credentials)."""
        return boto3.client(
            service,
            endpoint_url=self.aws,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )

    def banner(self) -> list[str]:
        """The lines serve printed so far (read without blocking once it answers)."""
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        while line := self.process.stdout.readline():
            self._out.append(line.rstrip("\n"))
        return self._out

    def request(
        self, method: str, path: str, body: Any = None, media: str = "application/json"
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": media}
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


@contextmanager
def serving(tmp_path: Path, desired: dict[str, TableState]) -> Iterator[Server]:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    engine = make_engine(url)
    apply(engine, desired=desired, revision="local", actor="test", now=datetime.now(UTC))
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
