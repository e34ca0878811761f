"""A local AWS: moto's server in this process, with the resources the definitions name."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import zipfile
from collections.abc import Iterable
from typing import Any

import boto3
from botocore.exceptions import ClientError

from controller.aws.scheduler import error_code
from controller.core.plans import TableState

ACCOUNT = "123456789012"
REGION = "us-east-1"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:flux-control-local"
SCHEDULER_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/flux-control-scheduler"
TASK_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/flux-control-task"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LocalAws:
    """moto's threaded server on ``port``; :meth:`environment` points boto3 at it."""

    def __init__(self, port: int) -> None:
        # moto is a dev dependency: only serve's local AWS loads it.
        from moto.core.config import default_user_config
        from moto.server import ThreadedMotoServer

        # Lambda tasks are accepted without Docker: the invocation is recorded, not executed.
        default_user_config["lambda"]["use_docker"] = False
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log drowns ours
        self.port = port
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": REGION,
            "FLUX_FUNCTION_ARN": FUNCTION_ARN,
            "FLUX_SCHEDULER_ROLE_ARN": SCHEDULER_ROLE_ARN,
        }

    def start(self) -> None:
        self._server.start()
        os.environ.update(self.environment())

    def stop(self) -> None:
        self._server.stop()

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION)

    def create_resources(self, group: str, tables: Iterable[TableState]) -> list[str]:
        """The schedule group, and every Glue job, state machine, queue, function and event bus the tasks
        name (http tasks need none)."""
        created = []
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "lambda.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        iam = self.client("iam")
        if "flux-control-task" not in {r["RoleName"] for r in iam.list_roles()["Roles"]}:
            iam.create_role(RoleName="flux-control-task", AssumeRolePolicyDocument=json.dumps(trust))
        if ensure_schedule_group(self.client("scheduler"), group):
            created.append(f"schedule group {group}")
        for table in tables:
            for task in table["tasks"]:
                made = self._create(task["type"], task["target"])
                if made is not None:
                    created.append(made)
        return created

    def _create(self, kind: str, target: str) -> str | None:
        if kind == "http":
            return None  # no AWS resource: serve posts to a local endpoint for real (see serve)
        if kind == "eventbridge":
            name = target.rsplit("event-bus/", 1)[-1]
            events = self.client("events")
            if name == "default" or name in {b["Name"] for b in events.list_event_buses()["EventBuses"]}:
                return None
            events.create_event_bus(Name=name)
            return f"event bus {name}"
        if kind == "glue":
            self.client("glue").create_job(
                Name=target,
                Role=TASK_ROLE_ARN,
                Command={"Name": "glueetl", "ScriptLocation": "s3://local/job.py"},
            )
            return f"glue job {target}"
        if kind == "step_function":
            name = target.rsplit(":", 1)[-1]
            definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
            self.client("stepfunctions").create_state_machine(
                name=name, definition=json.dumps(definition), roleArn=TASK_ROLE_ARN
            )
            return f"state machine {name}"
        if kind == "sqs":
            name = target.rstrip("/").rsplit("/", 1)[-1]
            attributes = (
                {"FifoQueue": "true", "ContentBasedDeduplication": "false"} if name.endswith(".fifo") else {}
            )
            self.client("sqs").create_queue(QueueName=name, Attributes=attributes)
            return f"queue {name}"
        name = target.rsplit(":", 1)[-1] if target.startswith("arn:") else target
        self.client("lambda").create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=TASK_ROLE_ARN,
            Handler="index.handler",
            Code={"ZipFile": _stub_function()},
        )
        return f"function {name}"


def ensure_schedule_group(scheduler: Any, group: str) -> bool:
    """Create the schedule group unless it exists; True when it was created. (Deployed, the stack
    creates the group: the function never does, so its role may not.)"""
    try:
        scheduler.get_schedule_group(Name=group)
        return False
    except ClientError as error:
        if error_code(error) != "ResourceNotFoundException":
            raise
    try:
        scheduler.create_schedule_group(Name=group)
    except ClientError as error:
        # Another process created it between the two calls.
        if error_code(error) != "ConflictException":
            raise
        return False
    return True


def _stub_function() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return event\n")
    return buffer.getvalue()
