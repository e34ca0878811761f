"""The floor of a registration on this machine: the runtime's SQL, sent by raw psycopg, no Python layers.

Each worker process sends, per registration, the statements Flux Control's runtime sends on PostgreSQL
for a fan-out-1 registration (the graph version check, the gate locks, the execution and its gate
index row, the probe, the open-run lookup, the run, its trigger, its outbox event in one transaction;
then, after commit, the schedule-synced and published marks in one autocommit statement), on the same
schema and data.
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

_OPEN = "('awaiting_approval', 'scheduled', 'dispatching', 'running')"
_NAMESPACE = "hashtext(current_schema() || '/flux-control/gate')"

STATEMENTS = {
    "version": "SELECT max(id) FROM reconcile_revisions",
    "locks": (
        f"SELECT pg_advisory_xact_lock_shared({_NAMESPACE}, %(dependent)s), "
        "pg_advisory_xact_lock(hashtextextended(current_schema() || '/flux-control/gate/' "
        "|| %(dependent)s || '/' || %(lock_key)s, 0))"
    ),
    "execution": (
        "INSERT INTO executions (table_id, partition_key, partitions, source, registered_at) "
        "VALUES (%(source)s, %(key)s, %(partitions)s, 'floor', %(now)s) RETURNING id"
    ),
    "value": (
        "INSERT INTO execution_values (execution_id, name, table_id, value) "
        "VALUES (%(execution)s, 'dt', %(source)s, %(day)s)"
    ),
    "probe": (
        "SELECT id, table_id, partition_key FROM executions WHERE id IN (SELECT execution_id "
        "FROM execution_values WHERE table_id = %(reference)s AND name = 'dt' "
        "AND (value = %(day)s OR value IS NULL))"
    ),
    "open runs": (
        "SELECT id, table_id, partition_key, partitions, status, attempt, first_trigger_at, "
        "last_trigger_at, fire_at, scheduled_fire_at, schedule_name FROM runs "
        f"WHERE table_id IN (%(dependent)s) AND partition_key IN (%(key)s) AND status IN {_OPEN} FOR UPDATE"
    ),
    "run": (
        "INSERT INTO runs (table_id, partition_key, partitions, status, attempt, manual, rerun_requested, "
        "first_trigger_at, last_trigger_at, fire_at, created_at, updated_at) VALUES (%(dependent)s, "
        "%(key)s, %(partitions)s, 'scheduled', 1, false, false, %(now)s, %(now)s, %(fire_at)s, %(now)s, "
        "%(now)s) RETURNING id, table_id, partition_key, partitions, status, attempt, first_trigger_at, "
        "last_trigger_at, fire_at, scheduled_fire_at, schedule_name"
    ),
    "trigger": (
        "INSERT INTO run_triggers (run_id, execution_id) VALUES (%(run)s, %(execution)s) "
        "ON CONFLICT DO NOTHING"
    ),
    "event": (
        "INSERT INTO run_events (run_id, created_at, batch, detail) "
        "VALUES (%(run)s, %(now)s, %(batch)s, %(detail)s)"
    ),
    "done": (
        "WITH synced AS (UPDATE runs SET scheduled_fire_at = %(fire_at)s, schedule_name = %(name)s "
        "WHERE id = %(run)s AND fire_at = %(fire_at)s RETURNING runs.id) "
        "UPDATE run_events SET published_at = %(now)s WHERE batch = %(batch)s"
    ),
}


def dbapi_url(url: str) -> str:
    """The SQLAlchemy URL as libpq takes it (``postgresql+psycopg://`` → ``postgresql://``)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _register(connection: Any, ids: dict[str, int], day: date, worker: int) -> None:
    now = datetime.now(UTC)
    text = day.isoformat()
    key = json.dumps([["dt", text]], separators=(",", ":"))
    params: dict[str, Any] = {
        **ids,
        "day": text,
        "key": key,
        "lock_key": key,
        "partitions": json.dumps({"dt": text}),
        "now": now,
        "fire_at": now + timedelta(minutes=5),
        "batch": f"floor-{worker}-{text}",
        "detail": json.dumps({"status": "scheduled"}),
        "name": f"flux-floor-{worker}-{text}",
    }
    with connection.transaction():
        connection.execute(STATEMENTS["version"])
        connection.execute(STATEMENTS["locks"], params)
        params["execution"] = connection.execute(STATEMENTS["execution"], params).fetchone()[0]
        connection.execute(STATEMENTS["value"], params)
        connection.execute(STATEMENTS["probe"], params).fetchall()
        connection.execute(STATEMENTS["open runs"], params).fetchall()
        params["run"] = connection.execute(STATEMENTS["run"], params).fetchone()[0]
        connection.execute(STATEMENTS["trigger"], params)
        connection.execute(STATEMENTS["event"], params)
    connection.autocommit = True  # after commit, one statement records the AWS side, as the runtime does
    try:
        connection.execute(STATEMENTS["done"], params)
    finally:
        connection.autocommit = False


def _worker(url: str, ids: dict[str, int], days: list[date], index: int, barrier: Any, out: Any) -> None:
    import psycopg

    with psycopg.connect(dbapi_url(url)) as connection:
        _register(connection, ids, days[0], index)  # warm-up: prepared statements, caches
        barrier.wait()
        first = time.perf_counter()
        latencies = []
        for day in days[1:]:
            started = time.perf_counter()
            _register(connection, ids, day, index)
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
