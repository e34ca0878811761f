"""The floor of a registration on this machine: the runtime's SQL, sent by raw psycopg, no Python layers.

Each worker process sends, per registration, the statements Flux Control's runtime sends on PostgreSQL
for a fan-out-1 registration, with the very texts of :mod:`controller.db.runtime_sql` (the gate locks
with the revision check, the execution with its partition values, the probe, the open-run lookup,
the run with its triggers, its outbox event, in one transaction; then, after commit, the
schedule-synced and published marks in one autocommit statement), on the same schema and data.
What it cannot go faster than is the database server's work plus psycopg's: the difference to the
real path is what SQLAlchemy, the runtime and the handler add.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from controller.db import runtime_sql as sql


def dbapi_url(url: str) -> str:
    """The SQLAlchemy URL as libpq takes it (``postgresql+psycopg://`` → ``postgresql://``)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def register(connection: Any, ids: dict[str, int], day: date, worker: int) -> None:
    """One registration of ``source`` for ``day``: the runtime's statements, from psycopg alone."""
    now = datetime.now(UTC)
    text = day.isoformat()
    key = json.dumps([["dt", text]], separators=(",", ":"))
    partitions = json.dumps({"dt": text})
    source, reference, dependent = ids["source"], ids["reference"], ids["dependent"]
    fire_at = now + timedelta(minutes=5)
    batch = f"floor-{worker}-{text}"
    with connection.transaction():
        lock = sql.lock_statement((sql.SHARED, sql.KEY))
        connection.execute(lock, (dependent, dependent, key)).fetchone()
        parameters = (source, key, partitions, "floor", None, None, now, "floor", "dt", text)
        execution = connection.execute(sql.insert_executions((1,)), parameters).fetchone()[0]
        probed = connection.execute(sql.probe_statement(1, 0), (reference, "dt", text)).fetchall()
        connection.execute(sql.open_runs_for_update(1, 1), (dependent, key)).fetchall()
        run_row = (dependent, key, partitions, "scheduled", False, None, now, fire_at)
        triggers = (None, dependent, key, execution, None, dependent, key, probed[0][0])
        statement = sql.insert_runs_and_triggers(1, 2)
        run = connection.execute(statement, run_row + triggers).fetchone()[0]
        detail = json.dumps({"run_id": run, "new_state": "scheduled"})
        connection.execute(sql.insert_events(1), (run, now, batch, detail))
    connection.autocommit = True  # after commit, one statement records the AWS side, as the runtime does
    try:
        connection.execute(sql.record_done(1, True), (run, fire_at, f"flux-{run}", now, batch))
    finally:
        connection.autocommit = False


def _worker(url: str, ids: dict[str, int], days: list[date], index: int, barrier: Any, out: Any) -> None:
    import psycopg

    with psycopg.connect(dbapi_url(url)) as connection:
        register(connection, ids, days[0], index)  # warm-up: prepared statements, caches
        barrier.wait()
        first = time.perf_counter()
        latencies = []
        for day in days[1:]:
            started = time.perf_counter()
            register(connection, ids, day, index)
            latencies.append(time.perf_counter() - started)
        out.put((first, time.perf_counter(), latencies))


def table_ids(url: str, names: Sequence[str]) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dbapi_url(url)) as connection:
        rows = connection.execute("SELECT name, id FROM tables WHERE name = ANY(%s)", (list(names),))
        return dict(rows.fetchall())


def floor_throughput(url: str, streams: list[list[date]], dependent: str) -> tuple[float, list[float]]:
    """(seconds from the start barrier to the last worker's end, latencies) for these streams of days."""
    found = table_ids(url, ["source", "reference", dependent])
    ids = {"source": found["source"], "reference": found["reference"], "dependent": found[dependent]}
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(streams))
    out = context.Queue()
    processes = [
        context.Process(target=_worker, args=(url, ids, s, i, barrier, out)) for i, s in enumerate(streams)
    ]
    for process in processes:
        process.start()
    results = [out.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    seconds = max(r[1] for r in results) - min(r[0] for r in results)
    return seconds, [x for r in results for x in r[2]]
