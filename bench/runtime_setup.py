"""The runtime benchmarks' world: AWS environment, definitions, past executions, counting ports."""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from controller.services.dependencies import Dependencies

REGION = "us-east-1"
ACCOUNT = "123456789012"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "FLUX_FUNCTION_ARN": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:flux-control",
    "FLUX_SCHEDULER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/flux-scheduler",
    "FLUX_SCHEDULE_GROUP": "flux-control-bench",
    "POWERTOOLS_METRICS_NAMESPACE": "FluxControlBench",
}
#: Unset while the benchmark runs: they would send boto3 (and so moto's interception) elsewhere.
AWS_UNSET = ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")

HISTORY_START = date(1990, 1, 1)  # past executions: one per day from here (10,000 days: to 2017)
MEASURED_START = date(2030, 1, 1)  # registered days: from here, never in the history


# --- environment and definitions ---------------------------------------------------------------------


@contextlib.contextmanager
def aws_environment() -> Iterator[None]:
    """Fake credentials and the runtime's AWS settings in ``os.environ``, restored afterwards."""
    saved = {name: os.environ.get(name) for name in (*AWS_ENV, *AWS_UNSET)}
    os.environ.update(AWS_ENV)
    for name in AWS_UNSET:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def table_doc(name: str, **fields: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"version": 1, "name": name, "partitions": [{"name": "dt", "type": "date"}]}
    document.update(fields)
    return document


def fan_out_definitions(dependents: int) -> list[dict[str, Any]]:
    """``source`` and ``reference`` feeding ``dependents`` tables that require both."""
    needs = [{"dependency_name": "source"}, {"dependency_name": "reference"}]
    return [
        table_doc("source"),
        table_doc("reference"),
        *(table_doc(f"dep_{i:03d}", dependencies=needs) for i in range(dependents)),
    ]


def apply_definitions(engine: Any, documents: list[dict[str, Any]]) -> None:
    from controller.core.plans import state_of
    from controller.core.specs import TableSpec
    from controller.reconciler import apply

    desired = {d["name"]: state_of(TableSpec.model_validate(d)) for d in documents}
    apply(engine, desired=desired, revision="bench", actor="bench", now=datetime.now(UTC))


def add_executions(engine: Any, table: str, days: Sequence[date]) -> None:
    """Executions of ``table`` for ``days`` (and their gate index rows), inserted in bulk."""
    from sqlalchemy import insert, select
    from sqlalchemy.orm import Session

    from controller.core.keys import key_text
    from controller.db.definition_models import TableRow
    from controller.db.run_models import ExecutionRow, ExecutionValueRow

    if not days:
        return
    tag = f"bench-{uuid.uuid4().hex[:12]}"
    with Session(engine) as session, session.begin():
        table_id = session.execute(select(TableRow.id).where(TableRow.name == table)).scalar_one()
        rows = [
            {
                "table_id": table_id,
                "partition_key": key_text({"dt": day.isoformat()}),
                "partitions": {"dt": day.isoformat()},
                "source": tag,
            }
            for day in days
        ]
        session.execute(insert(ExecutionRow), rows)
        inserted = session.execute(
            select(ExecutionRow.id, ExecutionRow.partitions).where(
                ExecutionRow.table_id == table_id, ExecutionRow.source == tag
            )
        )
        values = [
            {"execution_id": i, "name": "dt", "table_id": table_id, "value": p["dt"]} for i, p in inserted
        ]
        session.execute(insert(ExecutionValueRow), values)


def past_days(count: int) -> list[date]:
    return [HISTORY_START + timedelta(days=n) for n in range(count)]


def measured_days(start: int, count: int) -> list[date]:
    return [MEASURED_START + timedelta(days=start + n) for n in range(count)]


def register_event(table: str, day: date, request: int) -> dict[str, Any]:
    """An API Gateway REST proxy event of ``POST /register_execution`` for one day of ``table``."""
    body = {
        "data": [{"table_name": table, "partitions": [{"partition_name": "dt", "value": day.isoformat()}]}]
    }
    from controller.local.http import to_event

    return to_event(
        "POST",
        "/register_execution",
        {"content-type": "application/json"},
        json.dumps(body).encode(),
        "127.0.0.1",
        authorizer={"claims": {"cognito:username": "bench"}},
        request_id=f"bench-{request}",
    )


# --- ports: counting wrappers and in-memory fakes ----------------------------------------------------


@dataclass
class PortCalls:
    schedule_writes: int = 0
    schedule_deletes: int = 0
    task_starts: int = 0
    publish_calls: int = 0
    events_published: int = 0
    api_requests: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class CountingScheduler:
    def __init__(self, inner: Any, calls: PortCalls) -> None:
        self.inner, self.calls = inner, calls

    def put(self, request: Any) -> None:
        self.calls.schedule_writes += 1
        self.inner.put(request)

    def delete(self, name: str) -> None:
        self.calls.schedule_deletes += 1
        self.inner.delete(name)


class CountingTasks:
    def __init__(self, inner: Any, calls: PortCalls) -> None:
        self.inner, self.calls = inner, calls

    def start(self, request: Any) -> str:
        self.calls.task_starts += 1
        return str(self.inner.start(request))


class CountingEvents:
    def __init__(self, inner: Any, calls: PortCalls) -> None:
        self.inner, self.calls = inner, calls

    def publish(self, events: Sequence[Any]) -> None:
        self.calls.publish_calls += 1
        self.calls.events_published += len(events)
        self.inner.publish(events)


class NullScheduler:
    def put(self, request: Any) -> None:
        pass

    def delete(self, name: str) -> None:
        pass


class NullTasks:
    def start(self, request: Any) -> str:
        return f"local-{request.dispatch_id}"


class NullEvents:
    def publish(self, events: Sequence[Any]) -> None:
        pass


class OpenedConnections:
    """The URL the PostgreSQL store opens each new connection with, counting how often it is asked:
    its pool calls it once per connection it opens (a SQLite store never does). ``extra`` is added to
    the URL's query (such as ``application_name=…``)."""

    def __init__(self, url: str, extra: str = "") -> None:
        separator = "&" if "?" in url else "?"
        self.url = f"{url}{separator}{extra}" if extra else url
        self.opened = 0

    def __call__(self) -> str:
        self.opened += 1
        return self.url


def runtime_dependencies(
    engine: Engine,
    scheduler: Any,
    tasks: Any,
    events: Any,
    *,
    connections: OpenedConnections | None = None,
    max_idle: int | None = None,
) -> Dependencies:
    """The services' dependencies on ``engine``'s database, as :func:`controller.wiring.dependencies_for`
    builds them (the store chosen by the database), with these ports. ``connections``: the URL the
    PostgreSQL store's new connections open (counted); ``max_idle``: how many idle connections its pool
    keeps (default 2, for one request at a time; threads sharing the store need one each). Close the
    store when done (``deps.store.close()``)."""
    from controller import wiring

    url = engine.url.render_as_string(hide_password=False)
    deps = wiring.dependencies_for(
        engine, scheduler, tasks, events, current_url=connections or OpenedConnections(url)
    )
    pool = getattr(deps.store, "pool", None)  # the PostgreSQL store's; SQLite's pool is the engine's
    if max_idle is not None and pool is not None:
        pool.max_idle = max_idle
    return deps


def in_memory_runtime(
    engine: Engine,
    calls: PortCalls | None = None,
    *,
    connections: OpenedConnections | None = None,
    max_idle: int | None = None,
) -> Dependencies:
    """Dependencies with in-memory AWS ports that do nothing (counted in ``calls``)."""
    calls = calls or PortCalls()
    return runtime_dependencies(
        engine,
        CountingScheduler(NullScheduler(), calls),
        CountingTasks(NullTasks(), calls),
        CountingEvents(NullEvents(), calls),
        connections=connections,
        max_idle=max_idle,
    )


@contextlib.contextmanager
def closing_store(deps: Dependencies) -> Iterator[Dependencies]:
    """``deps``, its store closed afterwards (the PostgreSQL store holds connections of its own)."""
    try:
        yield deps
    finally:
        deps.store.close()


def load_history(engine: Any, history: int, days: Sequence[date]) -> None:
    """Past executions of both upstreams, and ``reference`` for every day to register; then ANALYZE.

    On PostgreSQL autovacuum analyzes a table soon after a bulk load; the benchmark does it at once so
    that it measures the steady state (see the notes of the latency table for SQLite, which never does).
    """
    from sqlalchemy import text

    add_executions(engine, "source", past_days(history))
    add_executions(engine, "reference", past_days(history) + list(days))
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            # Only what was loaded: tables analyzed while empty (runs, run_triggers, run_events) make
            # PostgreSQL plan their foreign-key checks and prepared statements as for empty tables.
            connection.execute(text("ANALYZE executions, execution_values"))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())
