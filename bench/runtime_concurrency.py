"""Runtime benchmark: PostgreSQL throughput with concurrent workers, its floor, one worker profiled."""

from __future__ import annotations

import contextlib
import cProfile
import io
import multiprocessing
import os
import pstats
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from controller.services.dependencies import Dependencies

from bench.common import Listened, StatementCounter, Table, database
from bench.runtime_floor import floor_throughput
from bench.runtime_setup import (
    OpenedConnections,
    apply_definitions,
    closing_store,
    fan_out_definitions,
    in_memory_runtime,
    load_average,
    load_history,
    measured_days,
    percentile,
    register_event,
)

WORKERS = (1, 2, 4, 8)
PER_WORKER = 200
QUICK_PER_WORKER = 30
#: Registrations each worker sends before the start barrier, unmeasured: a Lambda container serves
#: many requests, and a fresh process's first hundred cost about 40% more client CPU each (caches,
#: prepared statements, the interpreter's specialisation), which the floor's few Python lines do not.
WARM_UP = 100
QUICK_WARM_UP = 1
REPEATS = 3
QUICK_REPEATS = 1
GOAL_PER_SECOND = 500
FLOOR = "floor: raw psycopg"
#: Forked processes calling ``register_executions`` (no handler): what the HTTP layer costs.
SERVICES_ONLY = "processes, no HTTP layer"
GOAL_WORKERS = 4
PROFILE_TOP = 15


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
    warm = QUICK_WARM_UP if quick else WARM_UP
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
    medians: dict[str, dict[int, float]] = {"threads": {}, "processes": {}, SERVICES_ONLY: {}, FLOOR: {}}
    for mode, by_workers in medians.items():
        for workers in WORKERS:
            with database("postgresql", workdir) as url:
                results = throughput(url, workers, per_worker, history, mode, repeats, warm)
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
    bare = medians[SERVICES_ONLY][GOAL_WORKERS]
    load = load_average()
    table.notes += [
        f"Goal ≥ {GOAL_PER_SECOND} registrations/s with {GOAL_WORKERS} workers (processes, like Lambda "
        f"containers): {'met' if met else 'NOT met'} ({goal:,.0f}/s; "
        f"{GOAL_WORKERS} threads: {threads:,.0f}/s). "
        f"The floor, the same SQL from raw psycopg in {GOAL_WORKERS} processes: {floor:,.0f}/s, so Flux "
        f"Control reaches {goal / floor:.0%} of what this machine's PostgreSQL allows for these statements. "
        f"{os.cpu_count()} CPUs shared with PostgreSQL; load average at the end {load}.",
        f"{SERVICES_ONLY}: the same forked processes calling `register_executions` (the services and the "
        f"store, no Powertools resolver, request validation, access log or metrics): {bare:,.0f}/s with "
        f"{GOAL_WORKERS}, {bare / floor:.2f}× the floor, against {goal / floor:.2f}× through "
        "`lambda_handler`: the difference is what the HTTP layer costs on CPUs shared with the server.",
        f"{FLOOR}: `bench/runtime_floor.py` sends, per registration, the statements the PostgreSQL store "
        "sends (the texts of `controller/db/postgresql_statements.py`, the same explicit BEGIN/COMMIT on an "
        "autocommit connection, the same `record_done` statement after commit; schema and data alike; "
        "checked equal by `tests/test_bench_runtime.py`) with psycopg alone: no store, no services, no "
        "handler.",
        f"Each worker registers its own stream of {per_worker} distinct days of `source` per run ({repeats} "
        f"runs, median shown), after {warm} unmeasured ones before the start barrier (the floor's workers "
        "alike: a Lambda container serves many requests, and a fresh process's first hundred cost about "
        "40% more client CPU each), one dependent so one run each, "
        f"{history:,} past executions of both upstreams "
        "(ANALYZEd as autovacuum would), in-memory AWS ports. The PostgreSQL store opens its own psycopg "
        "connections (not SQLAlchemy's; the engine only loads the definitions once): threads share one "
        "store whose pool keeps up to workers + 2 idle; each process has its own store, keeping at most "
        "2 (the default, as in Lambda). reg/s = registrations / wall time from the start barrier to the "
        "last worker's end.",
        "threads call `register_executions` (the handler's runtime entry) directly: Powertools' resolver "
        "keeps the current event on the class (`BaseRouter.current_event`), so `lambda_handler` cannot be "
        "shared by threads, and they share one GIL (their ceiling is one CPU of Python). processes (forked, "
        "one engine and store each, like Lambda containers) go through `lambda_handler`.",
    ]
    if floor < GOAL_PER_SECOND:
        table.notes.append(
            f"The floor itself ({floor:,.0f}/s) is below the goal on this machine: no client sending these "
            "statements reaches it here (the CPU table below shows the server's share of each registration)."
        )
    if not met:
        table.notes += profile_one_worker(per_worker, history, workdir)
    return table


def throughput(
    url: str, workers: int, per_worker: int, history: int, mode: str, repeats: int, warm: int = 1
) -> list[Throughput]:
    """``repeats`` runs of ``workers`` concurrent streams on one database (fresh days each run), each
    stream's first ``warm`` registrations sent before the start and not measured."""
    from controller.db.engine import make_engine

    stream = warm + per_worker
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
            seconds, latencies = floor_throughput(url, streams, fan_out_definitions(1)[-1]["name"], warm)
            results.append(Throughput(len(streams), len(latencies), seconds, latencies))
        elif mode == "threads":
            engine = make_engine(url, pool_size=workers + 2, max_overflow=4)
            try:
                with closing_store(in_memory_runtime(engine, max_idle=workers + 2)) as deps:
                    results.append(_threads(deps, streams, warm))
            finally:
                engine.dispose()
        else:
            results.append(_processes(url, streams, warm, through_handler=mode != SERVICES_ONLY))
    return results


def _register_directly(runtime: Dependencies, day: date) -> None:
    from controller.services.registration import ExecutionInput, register_executions

    result = register_executions(runtime, [ExecutionInput("source", {"dt": day.isoformat()}, "bench")], None)
    if len(result["runs"]) != 1:
        raise RuntimeError(f"expected one run, got {result['runs']}")


def _threads(runtime: Dependencies, streams: list[list[date]], warm: int) -> Throughput:
    barrier = threading.Barrier(len(streams) + 1)
    latencies: list[list[float]] = [[] for _ in streams]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for day in streams[index][:warm]:  # warm-up: definitions cached, pool, prepared statements
                _register_directly(runtime, day)
            barrier.wait()
            for day in streams[index][warm:]:
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


def _process_worker(
    url: str, days: list[date], warm: int, barrier: Any, out: Any, through_handler: bool
) -> None:
    """One worker process: its own engine, store (its own connections) and dependencies, registrations
    through ``lambda_handler`` (or ``register_executions`` directly, without ``through_handler``)."""
    from controller import wiring
    from controller.db.engine import make_engine
    from controller.lambda_function import lambda_handler

    engine = make_engine(url, pool_size=1, max_overflow=1)
    deps = in_memory_runtime(engine)
    wiring.use(deps)
    latencies = []

    def register(index: int, day: date) -> dict[str, Any]:
        if through_handler:
            answer: dict[str, Any] = lambda_handler(register_event("source", day, index), None)
            return answer
        _register_directly(deps, day)
        return {"statusCode": 200}

    with (
        closing_store(deps),
        Path(os.devnull).open("w") as sink,
        contextlib.redirect_stdout(sink),
    ):
        for index, day in enumerate(days[:warm]):  # warm-up (see WARM_UP)
            register(index, day)
        barrier.wait()
        first = time.perf_counter()
        for index, day in enumerate(days[warm:], warm):
            started = time.perf_counter()
            response = register(index, day)
            latencies.append(time.perf_counter() - started)
            if response["statusCode"] != 200:
                out.put(("error", response["body"]))
                return
        last = time.perf_counter()
    engine.dispose()
    out.put(("ok", (first, last, latencies)))


def _processes(url: str, streams: list[list[date]], warm: int, *, through_handler: bool) -> Throughput:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(streams))
    out = context.Queue()
    processes = [
        context.Process(target=_process_worker, args=(url, s, warm, barrier, out, through_handler))
        for s in streams
    ]
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
            connections = OpenedConnections(engine.url.render_as_string(hide_password=False))
            with closing_store(in_memory_runtime(engine, connections=connections)) as runtime:
                _register_directly(runtime, days[0])
                with Watch(runtime.store, connections) as watch:
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
    trips = (watch.count + watch.begins + watch.commits) / n
    notes = [
        f"One worker alone (no profiler): {wall / n * 1000:.2f} ms per registration, of which "
        f"{cpu / n * 1000:.2f} ms of this process's CPU; the rest is waiting for PostgreSQL (which "
        f"shares the {os.cpu_count()} CPUs) over {trips:g} round trips, as the PostgreSQL store's "
        f"listeners saw them: {watch.count / n:g} statements, {watch.begins / n:g} BEGIN and "
        f"{watch.commits / n:g} COMMIT (explicit statements on an autocommit connection), and "
        f"{watch.opened / n:g} connections opened ({watch.opened} in {n} registrations): the store "
        "keeps its psycopg connections (its own, not SQLAlchemy's) and sends no pre-ping (a connection "
        "found dead is replaced and the transaction run again, which is safe before COMMIT).",
        f"The gate locks (`lock_gates`: transaction-scoped advisory locks, one per dependent and key of "
        f"the lock partitions, the dependent's own in shared mode) are held {held * 1000:.2f} ms per "
        f"registration, from sending the lock statement to sending COMMIT on that connection: "
        f"registrations that could open one gate together wait for each other (at most about "
        f"{1 / held if held else 0:,.0f}/s for one key); those for other keys, like the workers' "
        "streams of distinct days here, do not.",
    ]
    return notes + profile_notes(profiler, n)


class Watch(StatementCounter):
    """What a store sends (statements, BEGINs, COMMITs: :class:`~bench.common.StatementCounter`), the
    connections it opens, and the time from each gate-lock statement to the COMMIT that follows it on
    the same connection (the listeners are called before each is sent)."""

    def __init__(self, store: Listened, connections: OpenedConnections) -> None:
        super().__init__(store)
        self.connections = connections
        self.held = 0.0
        self._locked_at: dict[int, float] = {}  # by id() of the connection
        self._opened_before = 0

    def __enter__(self) -> Self:
        self._opened_before = self.connections.opened
        return super().__enter__()

    @property
    def opened(self) -> int:
        """Connections the store opened while attached."""
        return self.connections.opened - self._opened_before

    def sending(self, statement: str, connection: Any) -> None:
        if "pg_advisory_xact_lock" in statement:
            self._locked_at.setdefault(id(connection), time.perf_counter())
        elif statement.strip().upper() == "ROLLBACK":
            self._locked_at.pop(id(connection), None)  # released without a COMMIT: not counted

    def committing(self, connection: Any) -> None:
        locked = self._locked_at.pop(id(connection), None)
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
