"""The floor of a registration on this machine: the PostgreSQL store's SQL, sent by raw psycopg alone.

Each worker process sends, per registration, exactly the statements Flux Control's PostgreSQL store
(:mod:`controller.db.postgresql_store`) sends for a fan-out-1 registration, with the very texts of
:mod:`controller.db.postgresql_statements`, framed the same way on an autocommit connection: an explicit
``BEGIN``; the gate locks with the revision check, the execution with its partition values, the probe,
the open-run lookup, the run with its triggers, its outbox event; ``COMMIT``; then, after commit, the
schedule-synced and published marks in one statement outside any transaction (``record_done``). The
same schema and data, the same prepare threshold. ``tests/test_bench_runtime.py`` checks that the
texts sent are the store's, in order. What it cannot go faster than is the database server's work plus
psycopg's: the difference to the real path is what the store, the services and the handler add.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from controller.db import postgresql_statements as sql
from controller.db.postgresql_connections import PREPARE_THRESHOLD

#: The debounce of the fan-out definitions (the default): the new run fires this long after now.
DEBOUNCE = timedelta(seconds=60)
#: The one dependent of ``bench.runtime_setup.fan_out_definitions(1)`` (named in its run's event).
DEPENDENT = "dep_000"


def dbapi_url(url: str) -> str:
    """The SQLAlchemy URL as libpq takes it (``postgresql+psycopg://`` → ``postgresql://``)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def connect(url: str, **options: Any) -> Any:
    """A psycopg connection as the store opens its own: autocommit (``BEGIN`` and ``COMMIT`` are sent
    as statements), statements prepared on the server after :data:`PREPARE_THRESHOLD` executions."""
    import psycopg

    return psycopg.connect(dbapi_url(url), autocommit=True, prepare_threshold=PREPARE_THRESHOLD, **options)


def register(connection: Any, ids: dict[str, int], day: date, worker: int) -> None:
    """One registration of ``source`` for ``day``: the store's statements, from psycopg alone.

    ``connection``: from :func:`connect` (autocommit). Parameters are those the store sends for the
    same registration (the run's full event detail, a schedule name of the same form); transaction
    control is not prepared, as in the store.
    """
    now = datetime.now(UTC)
    text = day.isoformat()
    key = json.dumps([["dt", text]], separators=(",", ":"))
    partitions = json.dumps({"dt": text})
    source, reference, dependent = ids["source"], ids["reference"], ids["dependent"]
    fire_at = now + DEBOUNCE
    batch = f"floor-{worker}-{text}"
    connection.execute("BEGIN", prepare=False)
    try:
        lock = sql.lock_statement((sql.SHARED, sql.KEY))
        connection.execute(lock, (dependent, dependent, key)).fetchall()
        parameters = (source, key, partitions, "floor", None, None, now, None, "dt", text)
        execution = connection.execute(sql.insert_executions((1,)), parameters).fetchall()[0][0]
        probed = connection.execute(sql.probe_statement(1, 0), (reference, "dt", text)).fetchall()
        connection.execute(sql.open_runs_for_update(1, 1), (dependent, key)).fetchall()
        run_row = (dependent, key, partitions, "scheduled", False, None, now, fire_at)
        triggers = (None, dependent, key, execution, None, dependent, key, probed[0][0])
        statement = sql.insert_runs_and_triggers(1, 2)
        run = connection.execute(statement, run_row + triggers).fetchall()[0][0]
        detail = {
            "run_id": run,
            "table": DEPENDENT,
            "partitions": {"dt": text},
            "old_state": None,
            "new_state": "scheduled",
            "approval_id": None,
            "reason": None,
            "at": now.isoformat(),
        }
        connection.execute(sql.insert_events(1), (run, now, batch, json.dumps(detail)))
        connection.execute("COMMIT", prepare=False)
    except BaseException:
        if not connection.closed:
            connection.execute("ROLLBACK", prepare=False)
        raise
    # After commit, one statement in autocommit records the AWS side, as the store's record_done does.
    done = (run, fire_at, f"flux-run-{run}-{DEPENDENT}", datetime.now(UTC), batch)
    connection.execute(sql.record_done(1, True), done)


def _worker(
    url: str, ids: dict[str, int], days: list[date], warm: int, index: int, barrier: Any, out: Any
) -> None:
    with connect(url) as connection:
        for day in days[:warm]:  # warm-up, as the runtime's workers: prepared statements, caches
            register(connection, ids, day, index)
        barrier.wait()
        first = time.perf_counter()
        latencies = []
        for day in days[warm:]:
            started = time.perf_counter()
            register(connection, ids, day, index)
            latencies.append(time.perf_counter() - started)
        out.put((first, time.perf_counter(), latencies))


def table_ids(url: str, names: Sequence[str]) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dbapi_url(url)) as connection:
        rows = connection.execute("SELECT name, id FROM tables WHERE name = ANY(%s)", (list(names),))
        return dict(rows.fetchall())


def floor_throughput(
    url: str, streams: list[list[date]], dependent: str, warm: int = 1
) -> tuple[float, list[float]]:
    """(seconds from the start barrier to the last worker's end, latencies) for these streams of days,
    the first ``warm`` of each registered before the barrier."""
    found = table_ids(url, ["source", "reference", dependent])
    ids = {"source": found["source"], "reference": found["reference"], "dependent": found[dependent]}
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(streams))
    out = context.Queue()
    processes = [
        context.Process(target=_worker, args=(url, ids, s, warm, i, barrier, out))
        for i, s in enumerate(streams)
    ]
    for process in processes:
        process.start()
    results = [out.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    seconds = max(r[1] for r in results) - min(r[0] for r in results)
    return seconds, [x for r in results for x in r[2]]
