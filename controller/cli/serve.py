"""``flux-control serve``: the Lambda's routes over local HTTP, with a local AWS and local schedules."""

from __future__ import annotations

import os
import signal
import sys
import threading
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click

from controller.cli.common import database_option, friendly_errors

#: Where serve's http tasks may post unless FLUX_HTTP_ALLOWED_HOSTS says otherwise: this machine.
LOCAL_HTTP_HOSTS = "localhost,127.0.0.1,::1"


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="HTTP port of the API.")
@database_option
@click.option("--aws-port", type=int, default=0, help="Port of the local AWS (moto); default: a free one.")
@click.option(
    "--task-delay",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds after which a started task succeeds locally (Glue and Step Functions send their "
    "event; SQS, Lambda, EventBridge and HTTP consumers report back with the task's token).",
)
@click.option(
    "--tick", type=click.FloatRange(min=0.05), default=0.5, show_default=True, help="Loop interval (s)."
)
@friendly_errors
def serve_command(
    host: str, port: int, database_url: str, aws_port: int, task_delay: float, tick: float
) -> None:
    """Run the API locally: every route of the Lambda, a local AWS, schedules that fire.

    Requests go through the real Lambda handler. AWS calls go to an in-process moto server where
    the Glue jobs, state machines, queues and functions of the applied definitions are created;
    due schedules fire with their own input; started tasks succeed after --task-delay seconds: Glue
    and Step Functions state-change events reach the handler, and SQS messages, Lambda invocations,
    EventBridge task events and HTTP posts are answered by a local consumer that reports back with
    the task's token, as a real one would. HTTP tasks are posted for real, to local hosts only
    (FLUX_HTTP_ALLOWED_HOSTS defaults to localhost,127.0.0.1,::1 here: set it to reach another
    host); a task for another host fails its run, nothing leaves the machine unasked. Approvals take
    the body's "user" (FLUX_TRUST_BODY_USER is on). Apply definitions first; Ctrl-C stops.

    \b
    Examples:
      flux-control apply definitions && flux-control serve
      flux-control serve --port 9000 --task-delay 2
    """
    from controller.local.aws import LocalAws, free_port  # moto and boto3: only serve needs them

    local = LocalAws(aws_port or free_port())
    local.start()
    os.environ.update({"FLUX_DATABASE_URL": database_url, "FLUX_TRUST_BODY_USER": "true"})
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")  # EMF lines only matter in CloudWatch
    # The stand-in fires a schedule at its second (EventBridge Scheduler: within its minute).
    os.environ.setdefault("FLUX_SCHEDULE_PRECISION_SECONDS", "1")
    # AWS calls go to moto; http tasks would go to the real endpoints: only local ones, unless asked.
    os.environ.setdefault("FLUX_HTTP_ALLOWED_HOSTS", LOCAL_HTTP_HOSTS)
    # Run events link to the local console (DESIGN §9), as a deployment's link to its own.
    os.environ.setdefault("FLUX_CONSOLE_URL", f"http://{host}:{port}/console")
    try:
        _run(local, host, port, task_delay, tick)
    finally:
        local.stop()
    click.echo("flux-control serve stopped.")


def _run(local: Any, host: str, port: int, task_delay: float, tick: float) -> None:
    # The database and the handler load here, not for every flux-control command.
    from sqlalchemy.orm import Session

    from controller import wiring
    from controller.db.definitions_store import read_state
    from controller.db.engine import database_url, make_engine
    from controller.db.migrate import schema_status, upgrade
    from controller.lambda_function import lambda_handler
    from controller.local.http import make_server
    from controller.local.loops import (
        consume_queues,
        every,
        finish_started_tasks,
        fire_due_schedules,
        receive_invocations,
    )

    wiring.use(None)
    # serve's own engine for the schema and its stand-ins; the handler builds its dependencies itself.
    engine = make_engine(database_url())
    with engine.connect() as connection:
        empty = schema_status(connection).empty
    if empty:
        upgrade(engine)
    with Session(engine) as session:
        tables = read_state(session).tables
    group = os.environ.get("FLUX_SCHEDULE_GROUP") or "flux-control"
    created = local.create_resources(group, tables.values())
    # One invocation at a time, like one Lambda container (the resolver holds the current request).
    lock = threading.Lock()

    def invoke(event: dict[str, Any]) -> Any:
        with lock:
            return lambda_handler(event, None)

    stop = threading.Event()
    scheduler = local.client("scheduler")
    every(tick, stop, "scheduler", lambda: fire_due_schedules(scheduler, group, invoke, datetime.now(UTC)))
    every(
        tick,
        stop,
        "completion",
        lambda: finish_started_tasks(engine, invoke, task_delay, datetime.now(UTC)),
    )
    sqs = local.client("sqs")
    queues = sorted({t["target"] for table in tables.values() for t in table["tasks"] if t["type"] == "sqs"})
    every(tick, stop, "queues", lambda: consume_queues(sqs, queues, invoke, task_delay, datetime.now(UTC)))
    invoked: set[str] = set()
    every(
        tick,
        stop,
        "functions",
        lambda: receive_invocations(engine, invoke, task_delay, datetime.now(UTC), invoked),
    )
    every(30.0, stop, "sweep", lambda: invoke({"flux_action": "sweep"}))
    server = make_server(host, port, invoke)
    jobs = sorted(t["target"] for table in tables.values() for t in table["tasks"] if t["type"] == "glue")
    _print_banner(host, server.server_address[1], local, len(tables), created, jobs[0] if jobs else "NAME")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        click.echo("\nStopping…")
    finally:
        stop.set()
        server.server_close()


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def aws_command(local: Any, job: str) -> str:
    """An ``aws`` command that works on a clean machine: the local endpoint, a region and dummy
    credentials (moto accepts any) in the command itself."""
    env = local.environment()
    credentials = " ".join(
        f"{name}={env[name]}" for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    )
    return f"{credentials} aws --endpoint-url {local.endpoint} glue get-job-runs --job-name {job}"


def _print_banner(host: str, port: int, local: Any, tables: int, created: list[str], job: str) -> None:
    click.echo(f"Flux Control is serving http://{host}:{port} (Ctrl-C stops)")
    click.echo(f"  local AWS (moto): {local.endpoint}")
    click.echo(f"    e.g. {aws_command(local, job)}")
    if tables == 0:
        click.echo(
            "  no table definitions in the database: run `flux-control apply definitions` first", err=True
        )
    else:
        click.echo(f"  {tables} tables; created locally: {', '.join(created) or 'nothing'}")
    click.echo(f"  try: curl -s http://{host}:{port}/health")
    click.echo(f"  console: http://{host}:{port}/console/ (sign in with any user name)")
    sys.stdout.flush()
