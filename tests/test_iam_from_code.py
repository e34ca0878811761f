"""IAM from the code (issue 14): the function's role grants every AWS call the code can make, and nothing
else. The calls come from the code itself, two ways (``tests/aws_calls.py``): a scan of its boto3 client
calls, and the calls recorded while ``lambda_handler`` serves one event of every kind. Each must find the
other's (the scenario below exercises every call site), and the policy must grant exactly those, plus
what AWS itself requires around them (:data:`IMPLIED`).

``glue:GetJobRuns`` was missing: the lookup of the run a Glue start that failed ambiguously may have made
was AccessDenied in AWS, invisible under moto. ``scheduler:GetSchedule`` was granted and never called.
IAM checks ``states:DescribeExecution`` and ``states:StopExecution`` against the execution, not the state
machine: granted on the listed state machines they would be AccessDenied in AWS, and invisible under
moto too, so the resources the policy names are evaluated here for listed targets and matched against
the ARNs the code calls with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import ReadTimeoutError
from moto.core.responses import ActionResult
from moto.glue.responses import GlueResponse
from sqlalchemy import Engine

from controller import wiring
from controller.aws import clients, tasks
from controller.lambda_function import lambda_handler
from tests.api_support import api_event
from tests.aws_calls import calls_in_code, recorded
from tests.deploy_support import as_list, load_template, statements
from tests.factories import table_doc
from tests.runtime_support import (
    ACCOUNT,
    REGION,
    Lambda,
    create_lambda_function,
    glue_runs_kept_running,
    partitions,
    running_lambda,
)

MONTH = [{"name": "mes", "type": "int"}]
QUEUE = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/flux-tasks"
STATE_MACHINE = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:flow"
#: Past FLUX_POLL_AFTER_SECONDS (900, the default) the sweep asks AWS about a running task; past its
#: timeout_seconds it stops it.
POLL_AFTER = 900
TIMEOUT = 3600
TABLES = [
    table_doc("up", partitions=MONTH),
    table_doc(
        "glued",
        partitions=MONTH,
        debounce_seconds=300,
        dependencies=[{"dependency_name": "up"}],
        tasks=[{"alias": "load", "type": "glue", "target": "job-load", "timeout_seconds": TIMEOUT}],
    ),
    table_doc(
        "everything",
        partitions=MONTH,
        tasks=[
            {"alias": "flow", "type": "step_function", "target": STATE_MACHINE, "timeout_seconds": TIMEOUT},
            {"alias": "notify", "type": "sqs", "target": QUEUE},
            {"alias": "consume", "type": "lambda", "target": "fn-consumer"},
            {"alias": "announce", "type": "eventbridge", "target": "flux-task-bus"},
        ],
    ),
]
#: What AWS requires around the code's calls, which no client call names. Each with its condition.
IMPLIED = {
    # The Lambda service writes the function's logs with the function's role.
    "logs:CreateLogStream": None,
    "logs:PutLogEvents": None,
    # CreateSchedule and UpdateSchedule hand the scheduler role to EventBridge Scheduler.
    "iam:PassRole": None,
    # GetSecretValue of a secret under a customer managed key decrypts it through Secrets Manager.
    "kms:Decrypt": "HasSecretKmsKey",
    # Lambda sends an asynchronous invocation that failed every retry to the dead-letter queue.
    "sqs:SendMessage": None,
    # The X-Ray daemon sends the traces, when tracing is on (the Tracing parameter).
    "xray:PutTraceSegments": "UseTracing",
    "xray:PutTelemetryRecords": "UseTracing",
    # Lambda attaches the function to the VPC with these (no resource-level permissions).
    "ec2:CreateNetworkInterface": "InVpc",
    "ec2:DescribeNetworkInterfaces": "InVpc",
    "ec2:DescribeSubnets": "InVpc",
    "ec2:DeleteNetworkInterface": "InVpc",
    "ec2:AssignPrivateIpAddresses": "InVpc",
    "ec2:UnassignPrivateIpAddresses": "InVpc",
}


def granted() -> dict[str, set[str | None]]:
    """Every action the function's role allows, with the conditions of the statements granting it."""
    (policy,) = load_template()["Resources"]["FunctionRole"]["Properties"]["Policies"]
    found: dict[str, set[str | None]] = {}
    for condition, statement in statements(policy["PolicyDocument"]):
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            found.setdefault(action, set()).add(condition)
    return found


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    """The function, and moto's Glue job runs kept running (STARTING), for the sweep to ask about and
    stop them."""
    with glue_runs_kept_running(), running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def _fail_the_first_start_ambiguously() -> None:
    """The first StartJobRun times out after it was sent: the code then looks for the run it may have
    started (GetJobRuns) before it starts the job again."""
    failed: list[bool] = []

    def fail_once(**_: Any) -> None:
        if not failed:
            failed.append(True)
            raise ReadTimeoutError(endpoint_url="https://glue.amazonaws.com")

    clients.client("glue").meta.events.register_first("before-send.glue.StartJobRun", fail_once)


def _glue_stops_job_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """BatchStopJobRun, which moto does not implement: each run asked to stop is STOPPED."""

    def batch_stop_job_run(self: GlueResponse) -> ActionResult:
        name, asked = self._get_param("JobName"), self._get_param("JobRunIds")
        stopped = [run for run in self.glue_backend.get_job(name).job_runs if run.job_run_id in asked]
        for run in stopped:
            run.status = "STOPPED"
        submitted = [{"JobName": name, "JobRunId": run.job_run_id} for run in stopped]
        return ActionResult({"SuccessfulSubmissions": submitted, "Errors": []})

    monkeypatch.setattr(GlueResponse, "batch_stop_job_run", batch_stop_job_run, raising=False)


def every_kind_of_event(flux: Lambda, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """One event of every kind the function serves, reaching every AWS call site of the code."""
    boto3.client("sqs", region_name=REGION).create_queue(QueueName="flux-tasks")
    boto3.client("events", region_name=REGION).create_event_bus(Name="flux-task-bus")
    create_lambda_function(monkeypatch, "fn-consumer")
    monkeypatch.setattr(tasks, "GLUE_LOOKUP_DELAY", 0)
    # A cold start in AWS: the database URL from the secret.
    secret = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="flux/database", SecretString=engine.url.render_as_string(hide_password=False)
    )
    monkeypatch.delenv("FLUX_DATABASE_URL", raising=False)
    monkeypatch.setenv("FLUX_DATABASE_SECRET_ARN", secret["ARN"])
    wiring.use(None)
    assert lambda_handler(api_event("GET", "/runs"), None)["statusCode"] == 200
    wiring.use(flux.deps)
    # Registrations open (CreateSchedule) and push (UpdateSchedule) a run; events go out (PutEvents).
    item = {"table_name": "up", "partitions": partitions(mes=202305)}
    [run] = flux.ok("POST", "/register_execution", {"data": [item]})["runs"]
    flux.clock.advance(10)
    flux.ok("POST", "/register_execution", {"data": [item]})
    flux.ok("POST", f"/runs/{run['id']}/cancel", {"reason": "iam"})  # DeleteSchedule
    # Every kind of task starts; the Glue start fails ambiguously once (GetJobRuns).
    _fail_the_first_start_ambiguously()
    glued = flux.ok("POST", "/runs", {"table_name": "glued", "partitions": partitions(mes=202306)})["run"]
    assert flux.ok("GET", f"/runs/{glued['id']}")["run"]["status"] == "running"
    everything = flux.ok("POST", "/runs", {"table_name": "everything", "partitions": partitions(mes=1)})
    assert flux.ok("GET", f"/runs/{everything['run']['id']}")["run"]["status"] == "running"
    assert flux.invoke({"flux_action": "sweep"})["status"] == "swept"
    # Their completion events are lost: the sweep asks (GetJobRun, DescribeExecution), then, past their
    # timeout, stops them (BatchStopJobRun, StopExecution).
    flux.clock.advance(POLL_AFTER + 100)
    assert flux.invoke({"flux_action": "sweep"})["status"] == "swept"
    assert flux.ok("GET", f"/runs/{glued['id']}")["run"]["status"] == "running"
    _glue_stops_job_runs(monkeypatch)
    flux.clock.advance(TIMEOUT)
    assert flux.invoke({"flux_action": "sweep"})["status"] == "swept"
    for run in (glued, everything["run"]):
        assert flux.ok("GET", f"/runs/{run['id']}")["run"]["status"] == "failed"


def test_the_function_role_grants_exactly_the_calls_the_code_makes(
    flux: Lambda,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_code = calls_in_code()
    with recorded() as made:
        clients.client.cache_clear()  # clients made from here on carry the recorder
        parameters.clear_caches()  # type: ignore[no-untyped-call]  # so does Powertools' secrets client
        every_kind_of_event(flux, engine, monkeypatch)
    assert made == set(in_code), (
        f"called but not found in the code: {sorted(made - set(in_code))}; "
        f"in the code but not exercised here: {json.dumps({a: in_code[a] for a in set(in_code) - made})}"
    )
    policy = granted()
    expected = set(in_code) | set(IMPLIED)
    assert set(policy) == expected, (
        f"not granted: {sorted(expected - set(policy))}; granted but never needed: {sorted(set(policy) - expected)}"
    )
    for action, condition in IMPLIED.items():
        assert condition in policy[action], action


def test_the_scan_finds_a_new_call(tmp_path: Any) -> None:
    """The scan is not vacuous: a module that makes a client and calls one of its operations counts."""
    package = tmp_path / "controller"
    package.mkdir()
    (package / "new.py").write_text(
        'from controller.aws.clients import client\n\ndef f():\n    client("sqs").delete_queue(QueueUrl="x")\n',
        encoding="utf-8",
    )
    (package / "local").mkdir()
    (package / "local" / "ignored.py").write_text(
        'client("glue").delete_job(JobName="x")\n', encoding="utf-8"
    )
    from tests import aws_calls

    found = aws_calls.calls_in_code(package)
    assert set(found) == {"sqs:DeleteQueue"}


#: The pseudo parameters ``Fn::Sub`` names in the function's policy, as in the tests' account.
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT}


def _evaluated(node: Any, parameters: dict[str, Any]) -> Any:
    """A policy's ``Resource`` with the stack's parameters: ``Ref``, ``Fn::Join``, ``Fn::Split``,
    ``Fn::Sub`` (of parameters and pseudo parameters)."""
    if isinstance(node, list):
        return [_evaluated(item, parameters) for item in node]
    if not isinstance(node, dict):
        return node
    ((function, argument),) = node.items()
    if function == "Ref":
        return parameters[argument]
    if function == "Fn::Sub":
        return re.sub(r"\$\{([^}]+)\}", lambda m: str({**PSEUDO, **parameters}[m.group(1)]), argument)
    delimiter, values = argument
    if function == "Fn::Join":
        return str(delimiter).join(_evaluated(values, parameters))
    assert function == "Fn::Split", f"no evaluation of {function} here"
    return str(_evaluated(values, parameters)).split(delimiter)


def test_the_task_calls_are_granted_on_the_arns_the_code_calls_them_with() -> None:
    """Each listed target's ARN, as AWS checks it for each call the code makes, matches a resource the
    policy names for that call; an unlisted target's matches none."""
    (policy,) = load_template()["Resources"]["FunctionRole"]["Properties"]["Policies"]
    other = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:other-flow"
    parameters = {"GlueJobNames": ["job-load", "job-other"], "StateMachineArns": [STATE_MACHINE, other]}

    def granted_on(arn: str, action: str) -> bool:
        return any(
            fnmatchcase(arn, resource)
            for _, statement in statements(policy["PolicyDocument"])
            if action in as_list(statement["Action"])
            for resource in as_list(_evaluated(statement["Resource"], parameters))
        )

    for job in [*parameters["GlueJobNames"], "job-unlisted"]:
        job_arn = f"arn:aws:glue:{REGION}:{ACCOUNT}:job/{job}"
        for action in ("glue:StartJobRun", "glue:GetJobRuns", "glue:GetJobRun", "glue:BatchStopJobRun"):
            assert granted_on(job_arn, action) == (job != "job-unlisted"), (action, job_arn)
    unlisted = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:unlisted"
    for machine in [*parameters["StateMachineArns"], unlisted]:
        listed = machine != unlisted
        assert granted_on(machine, "states:StartExecution") == listed, machine
        execution = tasks.execution_arn(machine, tasks.execution_name("flux-7-1-flow"))
        for action in ("states:DescribeExecution", "states:StopExecution"):
            assert granted_on(execution, action) == listed, (action, execution)
            assert not granted_on(machine, action), (action, machine)


def test_the_task_events_and_http_secrets_are_granted_on_the_listed_arns_only() -> None:
    """``PutEvents`` on a task bus (named by name or ARN: IAM checks the bus's ARN) and
    ``GetSecretValue`` of an http task's ``auth_secret`` (its ARN ends with a random suffix, which the
    listed pattern covers) are granted for the listed ones, the run events' bus and the database secret
    only."""
    (policy,) = load_template()["Resources"]["FunctionRole"]["Properties"]["Policies"]
    bus = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus"
    secret = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret"
    parameters: dict[str, Any] = {
        "TaskEventBusArns": [f"{bus}/flux-task-bus", f"{bus}/other-tasks"],
        "HttpTaskSecretArns": [f"{secret}:flux/http/*"],
        "DatabaseSecretArn": f"{secret}:flux/database-AbCdEf",
        "EventBusName": "default",
    }

    def granted_on(arn: str, action: str) -> bool:
        return any(
            fnmatchcase(arn, resource)
            for _, statement in statements(policy["PolicyDocument"])
            if action in as_list(statement["Action"])
            for resource in as_list(_evaluated(statement["Resource"], parameters))
        )

    for name, listed in [("flux-task-bus", True), ("other-tasks", True), ("default", True), ("nope", False)]:
        assert granted_on(f"{bus}/{name}", "events:PutEvents") == listed, name
    for name, listed in [
        ("flux/http/api-Xy12Zq", True),
        ("flux/database-AbCdEf", True),
        ("other-Xy12Zq", False),
    ]:
        assert granted_on(f"{secret}:{name}", "secretsmanager:GetSecretValue") == listed, name
