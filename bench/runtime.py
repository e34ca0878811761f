"""Runtime: registrations through ``lambda_handler`` in-process, AWS mocked by moto.

For each database and fan-out F, the definitions are one upstream ``source`` (partition ``dt``) and a
second required upstream ``reference``, feeding F dependents that need both; ``reference`` already has
an execution for every key registered, so each registration of ``source`` opens F runs. Past
executions of both upstreams are inserted in bulk first. Registrations are then sent one by one, for
distinct days, twice: with the real AWS adapters on moto, and with in-memory ports ("excluding AWS
latency"). Every AWS port is wrapped with a counter, and boto3's own requests are counted too.

Also, on PostgreSQL, throughput with concurrent workers against its floor
(:mod:`bench.runtime_concurrency`) and where a registration's CPU goes (:mod:`bench.runtime_cpu`).
The definitions, past executions and counting ports are in :mod:`bench.runtime_setup`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from bench.common import Listened, StatementCounter, Table, database
from bench.runtime_concurrency import concurrency
from bench.runtime_cpu import cpu_split
from bench.runtime_setup import (
    CountingEvents,
    CountingScheduler,
    CountingTasks,
    PortCalls,
    apply_definitions,
    aws_environment,
    closing_store,
    fan_out_definitions,
    in_memory_runtime,
    load_average,
    load_history,
    measured_days,
    percentile,
    register_event,
    runtime_dependencies,
)

FAN_OUTS = (1, 10, 100)
QUICK_FAN_OUTS = (1, 10)
HISTORY = 10_000
QUICK_HISTORY = 1_000
#: Registrations measured per fan-out (each opens F runs; moto makes F=100 slow).
REGISTRATIONS = {1: 200, 10: 100, 100: 40}
QUICK_REGISTRATIONS = 30


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
    load_before = load_average()
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
        f"{os.cpu_count()} CPUs; load average before {load_before}, after {load_average()} (other work "
        "on the machine shows as latency).",
    ]
    counts.notes += [
        "Per registration, the same for every registration of the pass (a range would show if not).",
        "schedule writes, task starts, event publish calls: calls of the runtime's Scheduler, TaskStarter "
        "and EventPublisher ports. Every run a registration opens gets one schedule write (its debounce "
        "puts it in the future); nothing is started (tasks start when the schedule fires); the run "
        "events of the registration are published in one port call after commit.",
        "AWS API requests: what boto3 sent (CreateSchedule per run, PutEvents per 10 events), so "
        "F + ceil(F/10) for F runs.",
        "SQL statements: what the runtime's store sent, as its `listeners` saw them, BEGIN and COMMIT not "
        "counted (nor SQLite's `BEGIN IMMEDIATE`): the check of the cached definitions (on PostgreSQL "
        "read by the gate-lock statement), the transaction's statements, and after commit the record of "
        "the schedules synced and the events published (`record_done`: one statement outside any "
        "transaction on PostgreSQL, two in a transaction of their own on SQLite); they depend on neither "
        "fan-out nor history. On PostgreSQL the store is psycopg directly, on connections of its own "
        "(explicit BEGIN and COMMIT on autocommit connections), and the registration's statements are "
        "those of `controller/db/postgresql_statements.py`: an execution and its partition values in "
        "one, a run and its triggers in one.",
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
        tables.append(cpu_split(quick, history, workdir))
    return tables


def registrations_for(fan_out: int, quick: bool) -> int:
    return QUICK_REGISTRATIONS if quick else REGISTRATIONS.get(fan_out, 40)


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
    from controller.local.aws import ensure_schedule_group

    engine = make_engine(url)
    days = measured_days(0, 2 * (registrations + 1))
    aws_days, local_days = days[: registrations + 1], days[registrations + 1 :]
    try:
        with mock_aws():
            clients.client.cache_clear()
            settings = AwsSettings.from_env()
            scheduler = EventBridgeScheduler(settings)
            ensure_schedule_group(scheduler.client, settings.schedule_group)
            apply_definitions(engine, fan_out_definitions(fan_out))
            load_history(engine, history, days)
            calls = PortCalls()
            _count_api_requests(calls, clients.client)
            deps = runtime_dependencies(
                engine,
                CountingScheduler(scheduler, calls),
                CountingTasks(AwsTaskStarter(), calls),
                CountingEvents(EventBridgePublisher(settings), calls),
            )
            try:
                with closing_store(deps):
                    wiring.use(deps)
                    aws = measure_pass(deps.store, calls, fan_out, aws_days)
                local_calls = PortCalls()
                with closing_store(in_memory_runtime(engine, local_calls)) as local_deps:
                    wiring.use(local_deps)
                    local = measure_pass(local_deps.store, local_calls, fan_out, local_days)
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


def measure_pass(store: Listened, calls: PortCalls, fan_out: int, days: Sequence[date]) -> Pass:
    """One warm-up registration, then one per remaining day, each timed and counted alone (the
    statements: those ``store`` sends, BEGIN and COMMIT left out)."""
    from controller.lambda_function import lambda_handler

    result = Pass()
    with StatementCounter(store) as statements, Path(os.devnull).open("w") as sink:
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


__all__ = ["run"]


if __name__ == "__main__":  # python -m bench.runtime [--quick] [kinds…]
    import sys
    import tempfile

    quick_mode = "--quick" in sys.argv
    chosen = [a for a in sys.argv[1:] if not a.startswith("--")] or ["sqlite", "postgresql"]
    with tempfile.TemporaryDirectory() as scratch:
        for result_table in run(quick_mode, chosen, scratch):
            print(result_table.markdown())
