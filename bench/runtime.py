"""Runtime: registrations through ``lambda_handler`` in-process, AWS mocked by moto.

For each database and fan-out F, the definitions are one upstream ``source`` (partition ``dt``) and a
second required upstream ``reference``, feeding F dependents that need both; ``reference`` already has
an execution for every key registered, so each registration of ``source`` opens F runs. Past
executions of both upstreams are inserted in bulk first. Registrations are then sent one by one, for
distinct days, twice: with the real AWS adapters on moto, and with in-memory ports ("excluding AWS
latency"). Every AWS port is wrapped with a counter, and boto3's own requests are counted too.

Also: PostgreSQL throughput with 1, 2, 4 and 8 concurrent worker threads (fan-out 1, in-memory ports),
against the goal of 500 registrations per second with 4 workers; when it is missed, one worker is
profiled (cProfile) and the top functions by cumulative time go into the table's notes. Worker
processes (each its own interpreter, like Lambda containers) are measured alongside for comparison.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import math
import multiprocessing
import os
import pstats
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import StatementCounter, Table, database
from bench.runtime_floor import floor_throughput

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

FAN_OUTS = (1, 10, 100)
QUICK_FAN_OUTS = (1, 10)
HISTORY = 10_000
QUICK_HISTORY = 1_000
#: Registrations measured per fan-out (each opens F runs; moto makes F=100 slow).
REGISTRATIONS = {1: 200, 10: 100, 100: 40}
QUICK_REGISTRATIONS = 30
WORKERS = (1, 2, 4, 8)
PER_WORKER = 200
QUICK_PER_WORKER = 30
REPEATS = 3
QUICK_REPEATS = 1
GOAL_PER_SECOND = 500
FLOOR = "floor: raw psycopg"
GOAL_WORKERS = 4
PROFILE_TOP = 15

HISTORY_START = date(1990, 1, 1)  # past executions: one per day from here (10,000 days: to 2017)
MEASURED_START = date(2030, 1, 1)  # registered days: from here, never in the history


def run(quick: bool, kinds: list[str], workdir: str) -> list[Table]:
    """The runtime tables: latency per fan-out, statements and AWS calls, PostgreSQL concurrency."""
    history = QUICK_HISTORY if quick else HISTORY
    fan_outs = QUICK_FAN_OUTS if quick else FAN_OUTS
    latency = Table(
        f"Runtime: registrations of `source` through lambda_handler ({history:,} past executions)",
        [
            "database",
            "fan-out",
            "past executions",
            "registrations",
            "moto: reg/s",
            "moto: p50 ms",
            "moto: p99 ms",
            "no AWS: reg/s",
            "no AWS: p50 ms",
            "no AWS: p99 ms",
        ],
    )
    counts = Table(
        "Runtime: SQL statements and AWS calls per registration",
        [
            "database",
            "fan-out",
            "past executions",
            "runs opened",
            "SQL statements",
            "schedule writes",
            "task starts",
            "event publish calls",
            "AWS port calls",
            "AWS API requests",
            "schedule writes = runs",
        ],
    )
    statements: dict[tuple[str, int, int], str] = {}
    load_before = _load()
    with aws_environment():
        for kind in kinds:
            cases = [(f, history, registrations_for(f, quick)) for f in fan_outs]
            cases.append((1, 0, min(30, registrations_for(1, quick))))  # statements must not follow history
            for fan_out, past, registrations in cases:
                with database(kind, workdir) as url:
                    result = measure_fan_out(url, fan_out, past, registrations)
                statements[(kind, fan_out, past)] = result.aws.statements_text()
                latency.rows.append(
                    [
                        kind,
                        fan_out,
                        past,
                        registrations,
                        result.aws.per_second(),
                        result.aws.p50_ms(),
                        result.aws.p99_ms(),
                        result.local.per_second(),
                        result.local.p50_ms(),
                        result.local.p99_ms(),
                    ]
                )
                aws = result.aws
                counts.rows.append(
                    [
                        kind,
                        fan_out,
                        past,
                        aws.constant("runs"),
                        aws.constant("statements"),
                        aws.constant("schedule_writes"),
                        aws.constant("task_starts"),
                        aws.constant("publish_calls"),
                        aws.constant("port_calls"),
                        aws.constant("api_requests"),
                        "yes" if aws.always("schedule_writes", "runs") else "NO",
                    ]
                )
    latency.notes += [
        "Each registration is one `POST /register_execution` event for a new day of `source`, sent to "
        "`lambda_handler` in-process (Powertools routing and validation, the transaction, the AWS calls "
        "after commit, the metrics flush). One warm-up registration per pass is not counted.",
        "moto: the real adapters (EventBridge Scheduler, EventBridge PutEvents) against moto in-process; "
        "no AWS: the same runtime with in-memory ports that do nothing (the database work alone).",
        "reg/s is registrations divided by the sum of their latencies (one client, one at a time); "
        "p99 of a few dozen samples is close to their maximum.",
        "PostgreSQL's bulk-loaded tables (executions, execution_values) are ANALYZEd after the load "
        "(autovacuum would do it within a minute); the others are left to autovacuum: analyzed while "
        "still empty, they make every per-row foreign-key check of the runs opened scan `runs`, and "
        "registrations at fan-out 100 then slow down as runs accumulate (55 ms → 520 ms in 80 of them). "
        "SQLite's tables are not ANALYZEd (nothing does it there); without statistics its plan of the probe "
        "(`value = ? OR value IS NULL`) reads every execution of the probed table: compare the rows with "
        "0 and with many past executions.",
        f"{os.cpu_count()} CPUs; load average before {load_before}, after {_load()} (other work on the "
        "machine shows as latency).",
    ]
    counts.notes += [
        "Per registration, the same for every registration of the pass (a range would show if not).",
        "schedule writes, task starts, event publish calls: calls of the runtime's Scheduler, TaskStarter "
        "and EventPublisher ports. Every run a registration opens gets one schedule write (its debounce "
        "puts it in the future); nothing is started (tasks start when the schedule fires); the run "
        "events of the registration are published in one port call after commit.",
        "AWS API requests: what boto3 sent (CreateSchedule per run, PutEvents per 10 events), so "
        "F + ceil(F/10) for F runs.",
        "SQL statements include the graph-cache version check, the transaction, and the two updates "
        "after commit (schedule synced, events published); they depend on neither fan-out nor history.",
    ]
    same = {kind: {statements[k] for k in statements if k[0] == kind} for kind in {k[0] for k in statements}}
    for kind, texts in sorted(same.items()):
        verdict = "constant" if len(texts) == 1 else "NOT constant"
        counts.notes.append(
            f"{kind}: SQL statements per registration {verdict} ({', '.join(sorted(texts))})."
        )
    tables = [latency, counts]
    if "postgresql" in kinds:
        tables.append(concurrency(quick, history, workdir))
    return tables


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def registrations_for(fan_out: int, quick: bool) -> int:
    return QUICK_REGISTRATIONS if quick else REGISTRATIONS.get(fan_out, 40)


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
    from controller.plans import state_of
    from controller.reconciler import apply
    from controller.specs import TableSpec

    desired = {d["name"]: state_of(TableSpec.model_validate(d)) for d in documents}
    apply(engine, desired=desired, revision="bench", actor="bench", now=datetime.now(UTC))


def add_executions(engine: Any, table: str, days: Sequence[date]) -> None:
    """Executions of ``table`` for ``days`` (and their gate index rows), inserted in bulk."""
    from sqlalchemy import insert, select
    from sqlalchemy.orm import Session

    from controller.db.models import TableRow
    from controller.db.runtime_models import ExecutionRow, ExecutionValueRow
    from controller.keys import key_text

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
        return f"local-{request.token}"


class NullEvents:
    def publish(self, events: Sequence[Any]) -> None:
        pass


def in_memory_runtime(engine: Any, calls: PortCalls | None = None) -> Any:
    from controller.runtime.context import Runtime

    calls = calls or PortCalls()
    return Runtime(
        engine,
        CountingScheduler(NullScheduler(), calls),
        CountingTasks(NullTasks(), calls),
        CountingEvents(NullEvents(), calls),
    )


# --- one fan-out -------------------------------------------------------------------------------------


@dataclass
class Pass:
    """Registrations measured one by one: latencies and, per registration, what each counter moved."""

    latencies: list[float] = field(default_factory=list)
    deltas: list[dict[str, int]] = field(default_factory=list)

    def always(self, left: str, right: str) -> bool:
        """Whether counters ``left`` and ``right`` moved by the same amount in every registration."""
        return all(d[left] == d[right] for d in self.deltas)

    def constant(self, name: str) -> int | str:
        values = sorted({d[name] for d in self.deltas})
        return values[0] if len(values) == 1 else f"{values[0]}–{values[-1]}"

    def statements_text(self) -> str:
        return str(self.constant("statements"))

    def per_second(self) -> float:
        return len(self.latencies) / sum(self.latencies) if self.latencies else 0.0

    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000


@dataclass
class FanOutResult:
    aws: Pass
    local: Pass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def measure_fan_out(url: str, fan_out: int, history: int, registrations: int) -> FanOutResult:
    """Apply the fan-out definitions on ``url``, add history, then measure both passes."""
    from moto import mock_aws

    from controller import wiring
    from controller.aws import clients
    from controller.aws.events import EventBridgePublisher
    from controller.aws.scheduler import EventBridgeScheduler
    from controller.aws.settings import AwsSettings
    from controller.aws.tasks import AwsTaskStarter
    from controller.db.engine import make_engine
    from controller.runtime.context import Runtime

    engine = make_engine(url)
    days = measured_days(0, 2 * (registrations + 1))
    aws_days, local_days = days[: registrations + 1], days[registrations + 1 :]
    try:
        with mock_aws():
            clients.client.cache_clear()
            settings = AwsSettings.from_env()
            scheduler = EventBridgeScheduler(settings)
            scheduler.ensure_group()
            apply_definitions(engine, fan_out_definitions(fan_out))
            load_history(engine, history, days)
            calls = PortCalls()
            _count_api_requests(calls, clients.client)
            runtime = Runtime(
                engine,
                CountingScheduler(scheduler, calls),
                CountingTasks(AwsTaskStarter(), calls),
                CountingEvents(EventBridgePublisher(settings), calls),
            )
            wiring.use(runtime)
            try:
                aws = measure_pass(engine, calls, fan_out, aws_days)
                local_calls = PortCalls()
                wiring.use(in_memory_runtime(engine, local_calls))
                local = measure_pass(engine, local_calls, fan_out, local_days)
            finally:
                wiring.use(None)
                clients.client.cache_clear()
    finally:
        engine.dispose()
    return FanOutResult(aws, local)


def _count_api_requests(calls: PortCalls, client: Callable[[str], Any]) -> None:
    """Count every request boto3 sends through the runtime's cached clients."""

    def count(**_kwargs: Any) -> None:
        calls.api_requests += 1

    for service in ("scheduler", "events", "glue", "stepfunctions", "sqs", "lambda"):
        client(service).meta.events.register("before-call", count)


def measure_pass(engine: Any, calls: PortCalls, fan_out: int, days: Sequence[date]) -> Pass:
    """One warm-up registration, then one per remaining day, each timed and counted alone."""
    from controller.lambda_function import lambda_handler

    result = Pass()
    with StatementCounter(engine) as statements, Path(os.devnull).open("w") as sink:
        for index, day in enumerate(days):
            event = register_event("source", day, index)
            before = {**calls.snapshot(), "statements": statements.count}
            with contextlib.redirect_stdout(sink):  # the metrics flush prints EMF JSON per request
                started = time.perf_counter()
                response = lambda_handler(event, None)
                elapsed = time.perf_counter() - started
            if response["statusCode"] != 200:
                raise RuntimeError(f"registration failed: {response['body']}")
            opened = len(json.loads(response["body"])["runs"])
            if opened != fan_out:
                raise RuntimeError(f"registration opened {opened} runs, expected {fan_out}")
            if index == 0:
                continue  # warm-up: loads the graph cache, builds the boto3 clients
            after = {**calls.snapshot(), "statements": statements.count}
            delta = {k: after[k] - before[k] for k in after}
            delta["runs"] = opened
            delta["port_calls"] = (
                delta["schedule_writes"]
                + delta["schedule_deletes"]
                + delta["task_starts"]
                + delta["publish_calls"]
            )
            result.latencies.append(elapsed)
            result.deltas.append(delta)
    return result


# --- PostgreSQL concurrency --------------------------------------------------------------------------


@dataclass
class Throughput:
    workers: int
    registrations: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.registrations / self.seconds if self.seconds else 0.0


def concurrency(quick: bool, history: int, workdir: str) -> Table:
    """Registrations per second on PostgreSQL with 1, 2, 4, 8 workers (threads, then processes)."""
    per_worker = QUICK_PER_WORKER if quick else PER_WORKER
    repeats = QUICK_REPEATS if quick else REPEATS
    table = Table(
        "Runtime: PostgreSQL throughput with concurrent workers (fan-out 1, no AWS latency)",
        [
            "workers",
            "kind",
            "registrations",
            "reg/s (median)",
            "reg/s (runs)",
            "p50 ms",
            "p99 ms",
            "vs 1 worker",
        ],
    )
    medians: dict[str, dict[int, float]] = {"threads": {}, "processes": {}, FLOOR: {}}
    for mode, by_workers in medians.items():
        for workers in WORKERS:
            with database("postgresql", workdir) as url:
                results = throughput(url, workers, per_worker, history, mode, repeats)
            rates = [r.per_second for r in results]
            by_workers[workers] = statistics.median(rates)
            latencies = [x for r in results for x in r.latencies]
            base = by_workers[WORKERS[0]]
            table.rows.append(
                [
                    workers,
                    mode,
                    sum(r.registrations for r in results),
                    by_workers[workers],
                    " / ".join(f"{rate:,.0f}" for rate in rates),
                    percentile(latencies, 50) * 1000,
                    percentile(latencies, 99) * 1000,
                    f"{by_workers[workers] / base:.2f}×" if base else "",
                ]
            )
    goal = medians["processes"][GOAL_WORKERS]
    met = goal >= GOAL_PER_SECOND
    threads = medians["threads"][GOAL_WORKERS]
    floor = medians[FLOOR][GOAL_WORKERS]
    load = _load()
    table.notes += [
        f"Goal ≥ {GOAL_PER_SECOND} registrations/s with {GOAL_WORKERS} workers (processes, like Lambda "
        f"containers): {'met' if met else 'NOT met'} ({goal:,.0f}/s; "
        f"{GOAL_WORKERS} threads: {threads:,.0f}/s). "
        f"The floor, the same SQL from raw psycopg in {GOAL_WORKERS} processes: {floor:,.0f}/s, so Flux "
        f"Control reaches {goal / floor:.0%} of what this machine's PostgreSQL allows for these statements. "
        f"{os.cpu_count()} CPUs shared with PostgreSQL; load average at the end {load}.",
        f"{FLOOR}: `bench/runtime_floor.py` sends, per registration, the statements the runtime sends (same "
        "two transactions, same schema and data) with psycopg alone: no SQLAlchemy, no runtime, no handler.",
        f"Each worker registers its own stream of {per_worker} distinct days of `source` per run ({repeats} "
        f"runs, median shown), one dependent so one run each, {history:,} past executions of both upstreams "
        "(ANALYZEd as autovacuum would), in-memory AWS ports, a pool of workers + 2 connections. reg/s = "
        "registrations / wall time from the start barrier to the last worker's end.",
        "threads call `register_executions` (the handler's runtime entry) directly: Powertools' resolver "
        "keeps the current event on the class (`BaseRouter.current_event`), so `lambda_handler` cannot be "
        "shared by threads, and they share one GIL (their ceiling is one CPU of Python). processes (forked, "
        "one engine each, like Lambda containers) go through `lambda_handler`.",
    ]
    if not met:
        table.notes += profile_one_worker(per_worker, history, workdir)
    return table


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


def throughput(
    url: str, workers: int, per_worker: int, history: int, mode: str, repeats: int
) -> list[Throughput]:
    """``repeats`` runs of ``workers`` concurrent streams on one database (fresh days each run)."""
    from controller.db.engine import make_engine

    stream = per_worker + 1  # the first registration of each stream is a warm-up
    days = measured_days(0, repeats * workers * stream)
    engine = make_engine(url, pool_size=workers + 2, max_overflow=4)
    try:
        apply_definitions(engine, fan_out_definitions(1))
        load_history(engine, history, days)
    finally:
        engine.dispose()
    results = []
    for repeat in range(repeats):
        mine = days[repeat * workers * stream : (repeat + 1) * workers * stream]
        streams = [mine[w * stream : (w + 1) * stream] for w in range(workers)]
        if mode == FLOOR:
            seconds, latencies = floor_throughput(url, streams, fan_out_definitions(1)[-1]["name"])
            results.append(Throughput(len(streams), len(latencies), seconds, latencies))
        elif mode == "threads":
            engine = make_engine(url, pool_size=workers + 2, max_overflow=4)
            try:
                results.append(_threads(engine, streams))
            finally:
                engine.dispose()
        else:
            results.append(_processes(url, streams))
    return results


def _register_directly(runtime: Any, day: date) -> None:
    from controller.runtime.registration import ExecutionInput, register_executions

    result = register_executions(runtime, [ExecutionInput("source", {"dt": day.isoformat()}, "bench")], None)
    if len(result["runs"]) != 1:
        raise RuntimeError(f"expected one run, got {result['runs']}")


def _threads(engine: Any, streams: list[list[date]]) -> Throughput:
    runtime = in_memory_runtime(engine)
    _register_directly(runtime, streams[0][0])  # warm-up: graph cache, pool
    barrier = threading.Barrier(len(streams) + 1)
    latencies: list[list[float]] = [[] for _ in streams]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            for day in streams[index][1:]:
                started = time.perf_counter()
                _register_directly(runtime, day)
                latencies[index].append(time.perf_counter() - started)
        except BaseException as exc:  # reported after join
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(streams))]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    flat = [x for worker_latencies in latencies for x in worker_latencies]
    return Throughput(len(streams), len(flat), seconds, flat)


def _process_worker(url: str, days: list[date], barrier: Any, out: Any) -> None:
    """One worker process: its own engine and runtime, registrations through ``lambda_handler``."""
    from controller import wiring
    from controller.db.engine import make_engine
    from controller.lambda_function import lambda_handler

    engine = make_engine(url, pool_size=1, max_overflow=1)
    wiring.use(in_memory_runtime(engine))
    latencies = []
    with Path(os.devnull).open("w") as sink, contextlib.redirect_stdout(sink):
        lambda_handler(register_event("source", days[0], 0), None)  # warm-up
        barrier.wait()
        first = time.perf_counter()
        for index, day in enumerate(days[1:], 1):
            started = time.perf_counter()
            response = lambda_handler(register_event("source", day, index), None)
            latencies.append(time.perf_counter() - started)
            if response["statusCode"] != 200:
                out.put(("error", response["body"]))
                return
        last = time.perf_counter()
    engine.dispose()
    out.put(("ok", (first, last, latencies)))


def _processes(url: str, streams: list[list[date]]) -> Throughput:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(streams))
    out = context.Queue()
    processes = [context.Process(target=_process_worker, args=(url, s, barrier, out)) for s in streams]
    for process in processes:
        process.start()
    results = [out.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    errors = [detail for status, detail in results if status != "ok"]
    if errors:
        raise RuntimeError(f"worker process failed: {errors[0]}")
    spans = [detail for _, detail in results]
    seconds = max(s[1] for s in spans) - min(s[0] for s in spans)
    flat = [x for s in spans for x in s[2]]
    return Throughput(len(streams), len(flat), seconds, flat)


def profile_one_worker(per_worker: int, history: int, workdir: str) -> list[str]:
    """One worker thread alone: CPU, round trips and gate-lock time per registration, then cProfile."""
    from controller.db.engine import make_engine

    with database("postgresql", workdir) as url:
        engine = make_engine(url, pool_size=2, max_overflow=2)
        try:
            apply_definitions(engine, fan_out_definitions(1))
            days = measured_days(0, 2 * per_worker + 1)
            load_history(engine, history, days)
            runtime = in_memory_runtime(engine)
            _register_directly(runtime, days[0])
            with Watch(engine) as watch:
                wall, cpu = time.perf_counter(), time.process_time()
                for day in days[1 : per_worker + 1]:
                    _register_directly(runtime, day)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            profiler = cProfile.Profile()
            profiler.enable()
            for day in days[per_worker + 1 :]:
                _register_directly(runtime, day)
            profiler.disable()
        finally:
            engine.dispose()
    n = per_worker
    held = watch.held / n
    trips = (watch.statements + watch.checkouts + watch.begins + watch.commits) / n
    notes = [
        f"One worker alone (no profiler): {wall / n * 1000:.2f} ms per registration, of which "
        f"{cpu / n * 1000:.2f} ms of this process's CPU; the rest is waiting for PostgreSQL (which "
        f"shares the {os.cpu_count()} CPUs) over {trips:g} round trips: {watch.statements / n:g} "
        f"statements, {watch.begins / n:g} transactions (BEGIN and COMMIT each) and "
        f"{watch.checkouts / n:g} pool checkouts, each pinged first (`pool_pre_ping`).",
        f"The gate locks (`lock_gates`: transaction-scoped advisory locks, one per dependent and key of "
        f"the lock partitions, the dependent's own in shared mode) are held {held * 1000:.2f} ms per "
        f"registration, from the lock statement to COMMIT: registrations that could open one gate "
        f"together wait for each other (at most about {1 / held if held else 0:,.0f}/s for one key); "
        "those for other keys, like the workers' streams of distinct days here, do not.",
    ]
    return notes + profile_notes(profiler, n)


class Watch:
    """Statements, transactions, pool checkouts, and time from each gate lock to its COMMIT."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.held = 0.0
        self.statements = self.begins = self.commits = self.checkouts = 0

    def _listeners(self) -> list[tuple[Any, str, Callable[..., None]]]:
        return [
            (self.engine, "after_cursor_execute", self._executed),
            (self.engine, "begin", self._begin),
            (self.engine, "commit", self._commit),
            (self.engine.pool, "checkout", self._checkout),
        ]

    def __enter__(self) -> Watch:
        from sqlalchemy import event

        for target, name, function in self._listeners():
            event.listen(target, name, function)
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import event

        for target, name, function in self._listeners():
            event.remove(target, name, function)

    def _executed(self, connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements += 1
        if "pg_advisory_xact_lock" in statement:
            connection.info["bench_locked_at"] = time.perf_counter()

    def _begin(self, _connection: Any) -> None:
        self.begins += 1

    def _checkout(self, *_args: Any) -> None:
        self.checkouts += 1

    def _commit(self, connection: Any) -> None:
        self.commits += 1
        locked = connection.info.pop("bench_locked_at", None)
        if locked is not None:
            self.held += time.perf_counter() - locked


def profile_notes(profiler: cProfile.Profile, registrations: int) -> list[str]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _cc, _nc, tt, _ct, _callers in entries.values())
    ranked = sorted(entries.items(), key=lambda item: item[1][3], reverse=True)
    per = 1000 / registrations
    notes = [
        f"Profile of one worker (cProfile, {registrations} more registrations, "
        f"{total / registrations * 1000:.2f} ms each under the profiler), top {PROFILE_TOP} functions by "
        "cumulative time, in ms per registration:"
    ]
    shown = 0
    for (filename, line, name), (_cc, calls, _tt, cumulative, _callers) in ranked:
        if name in ("<module>", "run") and filename.endswith("cProfile.py"):
            continue
        location = _short(filename)
        notes.append(
            f"{cumulative * per:7.3f} ms cumulative, {calls / registrations:g} calls — "
            f"`{location}:{line} {name}`"
        )
        shown += 1
        if shown == PROFILE_TOP:
            break
    mine = [
        (f"`{_short(f)}:{ln} {n}`", ct * per)
        for (f, ln, n), (_c, _n, _tt, ct, _cl) in ranked
        if "/controller/" in f and ct * per >= 0.2
    ]
    notes.append(
        "Flux Control's own functions (cumulative ms per registration): "
        + "; ".join(f"{label} {ms:.2f}" for label, ms in mine)
    )
    own = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:8]
    notes.append(
        "Largest own times (ms per registration): "
        + "; ".join(f"`{_short(f)}:{ln} {n}` {tt * per:.3f}" for (f, ln, n), (_c, _n, tt, _ct, _cl) in own)
    )
    by_package: dict[str, float] = {}
    for (filename, _line, _name), (_c, _n, own_time, _ct, _cl) in entries.items():
        package = _package(filename)
        by_package[package] = by_package.get(package, 0.0) + own_time
    notes.append(
        "Own time by package (ms per registration; waiting for PostgreSQL is psycopg's): "
        + "; ".join(
            f"{package} {seconds * per:.2f}"
            for package, seconds in sorted(by_package.items(), key=lambda item: -item[1])
            if seconds * per >= 0.05
        )
    )
    return notes


def _package(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/controller/" in filename:
        return "controller"
    if filename.startswith("~") or filename.startswith("<"):
        return "built-ins"
    return "standard library" if "/lib/python3" in filename else "other"


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/controller/", "/bench/"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return (marker.strip("/") + "/" + tail) if marker != "site-packages/" else tail
    return filename


__all__ = ["run"]


if __name__ == "__main__":  # python -m bench.runtime [--quick] [kinds…]
    import sys
    import tempfile

    quick_mode = "--quick" in sys.argv
    chosen = [a for a in sys.argv[1:] if not a.startswith("--")] or ["sqlite", "postgresql"]
    with tempfile.TemporaryDirectory() as scratch:
        for result_table in run(quick_mode, chosen, scratch):
            print(result_table.markdown())
