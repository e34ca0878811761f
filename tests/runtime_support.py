"""Driving the Lambda in tests: moto for AWS, a settable clock, API Gateway events, definitions applied."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from moto import mock_aws
from moto.core.config import default_user_config
from moto.moto_api import state_manager
from sqlalchemy import Engine

from controller import wiring
from controller.aws.events import EventBridgePublisher
from controller.aws.scheduler import EventBridgeScheduler
from controller.aws.settings import AwsSettings
from controller.aws.tasks import AwsTaskStarter
from controller.lambda_function import lambda_handler
from controller.local.aws import ensure_schedule_group
from controller.local.http import to_event
from controller.reconciler import apply
from controller.services.dependencies import Dependencies
from tests.factories import states

ACCOUNT = "123456789012"
REGION = "us-east-1"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:flux-control"
SCHEDULER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/flux-scheduler"
GROUP = "flux-control"
START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


#: Who the tests' requests come from unless they say otherwise (``user=None``: no identity at all);
#: every write needs an identified caller (DESIGN §7).
TESTER = "tester"


@dataclass
class Lambda:
    """The handler with moto behind it; ``call`` sends API Gateway REST proxy events."""

    deps: Dependencies
    clock: Clock
    requests: int = field(default=0)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        user: str | None = TESTER,
        raw_body: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        self.requests += 1
        authorizer = {"claims": {"cognito:username": user}} if user else {}
        text = raw_body if raw_body is not None else (json.dumps(body) if body is not None else "")
        target = f"{path}?{urlencode(query)}" if query else path
        event = to_event(
            method,
            target,
            {"content-type": "application/json"},
            text.encode(),
            "127.0.0.1",
            authorizer=authorizer,
            request_id=f"req-{self.requests}",
        )
        response = lambda_handler(event, None)
        return response["statusCode"], json.loads(response["body"])

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        """``call`` that must answer 200."""
        status, answer = self.call(method, path, body, **kwargs)
        assert status == 200, answer
        return answer

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        """A non-HTTP event (a schedule's input, an EventBridge state change)."""
        result: dict[str, Any] = lambda_handler(event, None)
        return result


def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "FLUX_FUNCTION_ARN": FUNCTION_ARN,
        "FLUX_SCHEDULER_ROLE_ARN": SCHEDULER_ROLE,
        "FLUX_SCHEDULE_GROUP": GROUP,
        "POWERTOOLS_METRICS_NAMESPACE": "FluxControlTest",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@contextmanager
def glue_runs_kept_running() -> Iterator[None]:
    """moto's Glue job runs stay STARTING (moto would end them as they are read) until the block
    ends, or a test calls ``state_manager.unset_transition("glue::job_run")``: for the sweep to ask
    about them and stop them."""
    state_manager.set_transition(
        model_name="glue::job_run", transition={"progression": "manual", "times": 10**6}
    )
    try:
        yield
    finally:
        state_manager.unset_transition("glue::job_run")


@contextmanager
def running_lambda(
    engine: Engine, definitions: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Lambda]:
    """Definitions applied, moto started (schedule group, Glue jobs, state machines), runtime installed."""
    aws_environment(monkeypatch)
    with mock_aws():
        from controller.aws import clients

        clients.client.cache_clear()
        settings = AwsSettings.from_env()
        scheduler = EventBridgeScheduler(settings)
        ensure_schedule_group(scheduler.client, GROUP)
        _create_targets(definitions)
        apply(engine, desired=states(definitions), revision="test", actor="test", now=START)
        clock = Clock()
        deps = wiring.dependencies_for(
            engine, scheduler, AwsTaskStarter(), EventBridgePublisher(settings), clock=clock
        )
        wiring.use(deps)
        try:
            yield Lambda(deps, clock)
        finally:
            wiring.use(None)
            deps.store.close()
            clients.client.cache_clear()


def _create_targets(definitions: list[dict[str, Any]]) -> None:
    glue = boto3.client("glue", region_name=REGION)
    sfn = boto3.client("stepfunctions", region_name=REGION)
    for table in definitions:
        for task in table.get("tasks", []):
            if task["type"] == "glue":
                glue.create_job(
                    Name=task["target"],
                    Role=f"arn:aws:iam::{ACCOUNT}:role/glue",
                    Command={"Name": "glueetl", "ScriptLocation": "s3://scripts/job.py"},
                )
            elif task["type"] == "step_function":
                sfn.create_state_machine(
                    name=task["target"].rsplit(":", 1)[-1],
                    definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
                    roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn",
                )


def schedule_of(run_id: int, table: str) -> dict[str, Any]:
    scheduler = boto3.client("scheduler", region_name=REGION)
    name = f"flux-run-{run_id}-{table}"[:64]
    result: dict[str, Any] = scheduler.get_schedule(Name=name, GroupName=GROUP)
    return result


def schedules() -> list[str]:
    scheduler = boto3.client("scheduler", region_name=REGION)
    return [s["Name"] for s in scheduler.list_schedules(GroupName=GROUP)["Schedules"]]


def glue_event(job: str, run_id: str, state: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": f"evt-{run_id}-{state}",
        "source": "aws.glue",
        "detail-type": "Glue Job State Change",
        "detail": {"jobName": job, "jobRunId": run_id, "state": state, "message": f"Job {state.lower()}"},
    }


def sfn_event(execution_arn: str, status: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": f"evt-{execution_arn[-8:]}-{status}",
        "source": "aws.states",
        "detail-type": "Step Functions Execution Status Change",
        "detail": {"executionArn": execution_arn, "status": status},
    }


def stored_token(flux: Lambda, run_id: int, alias: str, attempt: int = 1) -> str | None:
    """The token task ``alias`` of the run's ``attempt`` was recorded (and started) with."""
    with flux.deps.store.session() as session:
        tasks, _ = session.transact(lambda tx, _after: tx.tasks_of(run_id, attempt))
    [task] = [t for t in tasks if t.alias == alias]
    return task.token


def partitions(**values: Any) -> list[dict[str, Any]]:
    return [{"partition_name": k, "value": v} for k, v in values.items()]


def create_lambda_function(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A Lambda function in moto that echoes its event (run in-process, without Docker)."""
    monkeypatch.setitem(default_user_config, "lambda", {"use_docker": False})
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = boto3.client("iam", region_name=REGION).create_role(
        RoleName="consumer", AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return event\n")
    boto3.client("lambda", region_name=REGION).create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role=role,
        Handler="index.handler",
        Code={"ZipFile": code.getvalue()},
    )
