"""Runtime benchmark: where a registration's CPU goes, client and server, against the floor.

One process registers in interleaved rounds through four paths on one PostgreSQL database: the floor
(the PostgreSQL store's statements from raw psycopg, :mod:`bench.runtime_floor`), ``register_executions``
(the runtime without the HTTP layer), ``lambda_handler`` (the whole request), and ``lambda_handler``
with the runtime replaced by a stub (Powertools routing, validation, logging and metrics alone).
Client CPU is this process's; server CPU is that of the PostgreSQL backends serving it, read from
``/proc`` (so only when the server runs on this machine, as here). With the workers and the server
sharing the machine's CPUs, total CPU per registration bounds the throughput any number of workers
can reach: CPUs / total CPU.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

from bench.common import Table, database
from bench.runtime_floor import DEPENDENT, connect, dbapi_url, table_ids
from bench.runtime_floor import register as floor_register
from bench.runtime_setup import (
    OpenedConnections,
    apply_definitions,
    fan_out_definitions,
    in_memory_runtime,
    load_history,
    measured_days,
    register_event,
)

ROUNDS, QUICK_ROUNDS = 5, 1
PER_ROUND, QUICK_PER_ROUND = 150, 20
_APPLICATION = "flux-bench-cpu"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_split(quick: bool, history: int, workdir: str) -> Table:
    """Client and server CPU per registration of each path (medians of interleaved rounds)."""
    rounds = QUICK_ROUNDS if quick else ROUNDS
    per_round = QUICK_PER_ROUND if quick else PER_ROUND
    table = Table(
        "Runtime: CPU per registration on PostgreSQL, client and server, against the floor (one process)",
        ["path", "wall ms", "client CPU ms", "server CPU ms", "total CPU ms", "CPU-bound ceiling reg/s"],
    )
    with database("postgresql", workdir) as url:
        samples = _measure(url, history, rounds, per_round)
    cpus = os.cpu_count() or 1
    for name, rows in samples.items():
        wall, client, server = (statistics.median(r[i] for r in rows) * 1000 for i in range(3))
        known = server >= 0
        total = client + server if known else None
        table.rows.append(
            [
                name,
                wall,
                client,
                server if known else "n/a",
                total if total is not None else "n/a",
                f"{cpus / total * 1000:,.0f}" if total else "n/a",
            ]
        )
    table.notes += [
        f"{rounds} rounds of {per_round} registrations per path, interleaved (floor, runtime, handler, "
        "handler with a stub runtime, then again), fan-out 1, medians shown. Client CPU: this process "
        "(`time.process_time`); server CPU: its PostgreSQL backends (`/proc/<pid>/stat`, user + system; "
        "n/a when the server is not on this machine). Both exclude waiting.",
        f"CPU-bound ceiling: {cpus} CPUs / total CPU per registration, what workers sharing this machine "
        "with the server could reach at best (the throughput table shows what they reach: context "
        "switches and lock waits cost more).",
        "The floor sends the PostgreSQL store's exact statements (`controller/db/postgresql_statements.py`, "
        "the same explicit BEGIN/COMMIT on an autocommit connection and `record_done` statement after "
        "commit) from raw psycopg; the runtime adds the store (psycopg directly, on its own pooled "
        "connections, no pre-ping: a dead connection is replaced and the transaction run again before "
        "COMMIT; the unit of work and its retries), the services' gate logic, keys, events and results; "
        "the handler adds Powertools (routing, request validation, response serialisation, structured "
        "logs, EMF metrics).",
    ]
    return table


def _measure(
    url: str, history: int, rounds: int, per_round: int
) -> dict[str, list[tuple[float, float, float]]]:
    from controller import wiring
    from controller.db.engine import make_engine
    from controller.lambda_function import lambda_handler
    from controller.services.registration import ExecutionInput, register_executions

    engine = make_engine(url, pool_size=1, max_overflow=2, connect_args={"application_name": _APPLICATION})
    days = iter(measured_days(0, 3 * rounds * per_round + 10))
    try:
        apply_definitions(engine, fan_out_definitions(1))
        load_history(engine, history, measured_days(0, 3 * rounds * per_round + 10))
        # The store's own connections carry the application name too: their backends are measured.
        own = OpenedConnections(url, f"application_name={_APPLICATION}")
        runtime = in_memory_runtime(engine, connections=own)
        found = table_ids(url, ["source", "reference", DEPENDENT])
        ids = {"source": found["source"], "reference": found["reference"], "dependent": found[DEPENDENT]}
        floor = connect(url, application_name=f"{_APPLICATION}-floor")

        def by_floor() -> None:
            floor_register(floor, ids, next(days), 0)

        def by_runtime() -> None:
            items = [ExecutionInput("source", {"dt": next(days).isoformat()}, "bench")]
            register_executions(runtime, items, None)

        counter = iter(range(10**9))

        def by_handler() -> None:
            answer = lambda_handler(register_event("source", next(days), next(counter)), None)
            if answer["statusCode"] != 200:
                raise RuntimeError(answer["body"])

        paths: dict[str, tuple[Callable[[], None], str | None]] = {
            "floor: raw psycopg, same statements": (by_floor, f"{_APPLICATION}-floor"),
            "register_executions (runtime, no HTTP layer)": (by_runtime, _APPLICATION),
            "lambda_handler (whole request)": (by_handler, _APPLICATION),
            "lambda_handler, runtime stubbed (Powertools alone)": (_stubbed_handler(), None),
        }
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in paths}
        wiring.use(runtime)
        with Path(os.devnull).open("w") as sink, contextlib.redirect_stdout(sink):
            for step, _ in paths.values():
                step()  # warm-up: prepared statements, caches, the pool
            for _ in range(rounds):
                for name, (step, application) in paths.items():
                    samples[name].append(_round(url, step, per_round, application))
        floor.close()
        runtime.store.close()
    finally:
        wiring.use(None)
        engine.dispose()
    return samples


def _round(
    url: str, step: Callable[[], None], count: int, application: str | None
) -> tuple[float, float, float]:
    """(wall, client CPU, server CPU) per call of ``step``; server -1 when it cannot be read."""
    pids = _backends(url, application) if application else []
    server = _server_cpu(pids)
    wall, client = time.perf_counter(), time.process_time()
    for _ in range(count):
        step()
    wall, client = time.perf_counter() - wall, time.process_time() - client
    after = _server_cpu(pids)
    spent = -count if server is None or after is None else after - server  # -1 per call: unknown
    return wall / count, client / count, spent / count if application else 0.0


def _backends(url: str, application: str) -> list[int]:
    import psycopg

    with psycopg.connect(dbapi_url(url)) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchall()
    return [pid for (pid,) in rows]


def _server_cpu(pids: list[int]) -> float | None:
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        if not stat.exists():
            return None
        fields = stat.read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / _TICKS


def _stubbed_handler() -> Callable[[], None]:
    """``lambda_handler`` with ``register_executions`` answering a fixed result: no database at all."""
    from controller.lambda_function import lambda_handler
    from controller.services import registration

    answer = {
        "executions": [{"id": 1, "table_name": "source", "partitions": {"dt": "2031-01-01"}}],
        "runs": [
            {
                "id": 2,
                "table_name": "dep_000",
                "partitions": {"dt": "2031-01-01"},
                "status": "scheduled",
                "fire_at": "2031-01-01T00:05:00+00:00",
                "approval_id": None,
            }
        ],
    }
    day = date(2031, 1, 1)

    def step() -> None:
        with _replaced(registration, "register_executions", lambda *_: answer):
            lambda_handler(register_event("source", day, 0), None)

    return step


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
