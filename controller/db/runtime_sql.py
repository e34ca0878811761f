"""PostgreSQL statements of the registration path, as text for the driver (psycopg placeholders).

A registration is the runtime's hot path: every statement costs a round trip, parsing and planning
on the server, and SQLAlchemy's compilation and parameter processing on the client. On PostgreSQL
its statements are written here and sent on the driver cursor by
:func:`controller.db.runtime_store.send` (still within SQLAlchemy's connection: its transaction,
error wrapping, disconnect detection and events). One statement does the work of two where it can
(an execution and its partition values; a run and what triggered it). Each builder returns the
text for one shape (how many rows), cached, so that psycopg prepares each shape on the server after
a few executions. Rows are spelled out as ``VALUES`` of scalar parameters: arrays (``unnest``) were
measured slower on both sides, and ``= ANY(array)`` made the server plan the open-run lookup again
on every execution.

SQLite keeps SQLAlchemy Core statements (see :mod:`controller.db.runtime_store` and
:mod:`controller.db.run_store`); both are tested alike. ``bench/runtime_floor.py`` sends these same
texts with psycopg alone to measure the floor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TypeVar

T = TypeVar("T")
#: Parameters one statement carries at most. PostgreSQL's protocol allows 65,535; a larger request
#: (a backfill of hundreds of partitions into a wide fan-out) is sent in several statements, as
#: SQLAlchemy's insertmanyvalues pages are. Module-level so that tests can make it small.
MAX_PARAMETERS = 30_000

#: Run states a new trigger may still join (the partial unique index ``uq_runs_open_key``).
_OPEN = "('awaiting_approval', 'scheduled', 'dispatching', 'running')"
_GATE_NAMESPACE = "hashtext(current_schema() || '/flux-control/gate')"
#: Lock modes: the table's lock shared, the table's lock exclusive, the lock of one key of a table.
SHARED, EXCLUSIVE, KEY = 0, 1, 2
_LOCK_TERMS = {
    SHARED: f"pg_advisory_xact_lock_shared({_GATE_NAMESPACE}, %s::int)",
    EXCLUSIVE: f"pg_advisory_xact_lock({_GATE_NAMESPACE}, %s::int)",
    KEY: (
        "pg_advisory_xact_lock(hashtextextended("
        "current_schema() || '/flux-control/gate/' || %s::bigint || '/' || %s::text, 0))"
    ),
}
#: What the runtime reads of a run to open, push and schedule it.
RUN_COLUMNS = (
    "id",
    "table_id",
    "partition_key",
    "partitions",
    "status",
    "attempt",
    "first_trigger_at",
    "last_trigger_at",
    "fire_at",
    "scheduled_fire_at",
    "schedule_name",
)
_RUN_LIST = ", ".join(RUN_COLUMNS)
#: An open run as a registration reads it: :data:`RUN_COLUMNS` and its newest approval's id (pending
#: or decided; every run summary carries it).
OPEN_RUN_COLUMNS = (*RUN_COLUMNS, "approval_id")
_NEWEST_APPROVAL = "(SELECT max(a.id) FROM approvals a WHERE a.run_id = runs.id) AS approval_id"
#: Parameters of one execution row of :func:`insert_executions`, in order.
EXECUTION_FIELDS = ("table_id", "partition_key", "partitions", "source", "run_id", "idempotency_key")
_EXECUTION_CASTS = ("bigint", "text", "jsonb", "text", "bigint", "text")
#: Parameters of one run row of :func:`insert_runs_and_triggers`, in order.
RUN_FIELDS = ("table_id", "partition_key", "partitions", "status", "manual", "reason", "now", "fire_at")
_RUN_CASTS = ("bigint", "text", "jsonb", "text", "boolean", "text", "timestamptz", "timestamptz")
#: Parameters of one trigger row: an existing run's id (or NULL), the table and key of a new one.
TRIGGER_FIELDS = ("run_id", "table_id", "partition_key", "execution_id")
_TRIGGER_CASTS = ("bigint", "bigint", "text", "bigint")


def batched(items: Sequence[T], cost: Callable[[T], int], reserved: int = 0) -> list[list[T]]:
    """``items`` in order, cut into batches whose parameters (``cost`` of each, plus ``reserved`` per
    statement) stay within :data:`MAX_PARAMETERS`; one batch for a usual request, none for no items."""
    batches: list[list[T]] = []
    current: list[T] = []
    used = reserved
    for item in items:
        needed = cost(item)
        if current and used + needed > MAX_PARAMETERS:
            batches.append(current)
            current, used = [], reserved
        current.append(item)
        used += needed
    if current:
        batches.append(current)
    return batches


def _rows(count: int, casts: tuple[str, ...], numbered: bool = False) -> str:
    """``count`` rows of typed placeholders for a VALUES list (numbered 1… first when asked)."""
    row = ", ".join(f"%s::{cast}" for cast in casts)
    return ", ".join(f"({n}, {row})" if numbered else f"({row})" for n in range(1, count + 1))


@lru_cache(maxsize=64)
def lock_statement(modes: tuple[int, ...]) -> str:
    """The newest reconcile revision, then one advisory lock per mode, in the order given.

    PostgreSQL evaluates a select list left to right, so the locks are taken in that order (callers
    sort them: tables by id, then keys). The revision is read in the same statement, so checking the
    cached definitions costs no round trip of its own. Parameters: a table id per lock, then the key
    text after each key lock's table id.
    """
    return ", ".join(["SELECT (SELECT max(id) FROM reconcile_revisions)", *(_LOCK_TERMS[m] for m in modes)])


@lru_cache(maxsize=256)
def insert_executions(values_per_item: tuple[int, ...]) -> str:
    """Executions and their partition values in one statement; returns the new ids in the order given.

    Parameters: :data:`EXECUTION_FIELDS` of each execution, then registered_at and registered_by,
    then (name, value) of each partition value, execution by execution. Ids are drawn from the
    table's sequence first so that each value row names its execution (INSERT … RETURNING does not
    promise the order of its rows); the sequence is the one the initial migration's BIGSERIAL made
    (named: looking it up on every execution cost more than the insert).
    """
    values = ", ".join(
        f"({n}, %s::text, %s::text)" for n, count in enumerate(values_per_item, 1) for _ in range(count)
    )
    valued = (
        f""", valued AS (
    INSERT INTO execution_values (execution_id, name, table_id, value)
    SELECT item.id, v.name, item.table_id, v.value
    FROM item JOIN (VALUES {values}) AS v(n, name, value) USING (n)
)"""
        if values
        else ""
    )
    return f"""
WITH item AS MATERIALIZED (
    SELECT nextval('executions_id_seq') AS id, u.*
    FROM (VALUES {_rows(len(values_per_item), _EXECUTION_CASTS, numbered=True)})
        AS u(n, {", ".join(EXECUTION_FIELDS)})
), inserted AS (
    INSERT INTO executions (id, {", ".join(EXECUTION_FIELDS)}, registered_at, registered_by)
    SELECT id, {", ".join(EXECUTION_FIELDS)}, %s::timestamptz, %s::text FROM item
){valued}
SELECT id FROM item ORDER BY n
"""


@lru_cache(maxsize=64)
def open_runs_for_update(tables: int, keys: int) -> str:
    """The open runs of some tables and keys as :data:`OPEN_RUN_COLUMNS`, locked until commit (callers
    keep the pairs they asked for). Parameters: the table ids, then the key texts."""
    return f"""
SELECT {_RUN_LIST}, {_NEWEST_APPROVAL} FROM runs
WHERE table_id IN ({", ".join(["%s"] * tables)}) AND partition_key IN ({", ".join(["%s"] * keys)})
  AND status IN {_OPEN}
FOR UPDATE
"""


@lru_cache(maxsize=64)
def insert_runs_and_triggers(runs: int, triggers: int) -> str:
    """New runs and the executions that triggered runs in one statement; returns the new runs'
    :data:`RUN_COLUMNS`. Parameters: :data:`RUN_FIELDS` of each new run, then
    :data:`TRIGGER_FIELDS` of each trigger: an existing run by id, a new one by table and key
    (unique among open runs)."""
    trigger_rows = _rows(triggers, _TRIGGER_CASTS)
    if not runs:
        return f"""
INSERT INTO run_triggers (run_id, execution_id)
SELECT t.run_id, t.execution_id FROM (VALUES {trigger_rows}) AS t({", ".join(TRIGGER_FIELDS)})
ON CONFLICT DO NOTHING
"""
    triggered = (
        f""", triggered AS (
    INSERT INTO run_triggers (run_id, execution_id)
    SELECT coalesce(t.run_id, created.id), t.execution_id
    FROM (VALUES {trigger_rows}) AS t({", ".join(TRIGGER_FIELDS)})
    LEFT JOIN created ON t.run_id IS NULL
        AND created.table_id = t.table_id AND created.partition_key = t.partition_key
    ON CONFLICT DO NOTHING
)"""
        if triggers
        else ""
    )
    return f"""
WITH created AS (
    INSERT INTO runs (table_id, partition_key, partitions, status, attempt, manual, rerun_requested,
                      reason, first_trigger_at, last_trigger_at, fire_at, created_at, updated_at)
    SELECT table_id, partition_key, partitions, status, 1, manual, false, reason, now, now, fire_at,
           now, now
    FROM (VALUES {_rows(runs, _RUN_CASTS)}) AS u({", ".join(RUN_FIELDS)})
    RETURNING {_RUN_LIST}
){triggered}
SELECT * FROM created
"""


@lru_cache(maxsize=64)
def insert_events(count: int) -> str:
    """Outbox rows. Parameters: (run id, created at, batch, detail as JSON text) per event."""
    rows = _rows(count, ("bigint", "timestamptz", "text", "jsonb"))
    return f"INSERT INTO run_events (run_id, created_at, batch, detail) VALUES {rows}"


@lru_cache(maxsize=64)
def record_done(synced: int, published: bool) -> str:
    """After commit, what the AWS side did, in one statement (so it needs no transaction of its own):
    the runs whose schedule was written at their fire time (only where that is still the run's fire
    time), and the outbox batch that was published. Parameters: (run id, fire time, schedule name)
    per synced run, then the time published and the batch."""
    mark = "UPDATE run_events SET published_at = %s WHERE batch = %s"
    if not synced:
        return mark
    update = f"""UPDATE runs SET scheduled_fire_at = u.fire_at, schedule_name = u.name
FROM (VALUES {_rows(synced, ("bigint", "timestamptz", "text"))}) AS u(id, fire_at, name)
WHERE runs.id = u.id AND runs.fire_at = u.fire_at"""
    if not published:
        return update
    return f"WITH synced AS ({update} RETURNING runs.id)\n{mark}"


@lru_cache(maxsize=64)
def probe_statement(values: int, whole_tables: int) -> str:
    """Executions answering ``values`` probes (table, partition, value: NULL agrees with any value)
    and every execution of ``whole_tables`` tables. Parameters: table id, name, value per probe,
    then the tables.

    One OR term per probe (not a join on arrays): PostgreSQL turns each into two index scans on
    (table_id, name, value), for the value and for NULL, whatever the history.
    """
    terms = ["(table_id = %s AND name = %s AND (value = %s OR value IS NULL))"] * values
    conditions = []
    if terms:
        conditions.append(f"id IN (SELECT execution_id FROM execution_values WHERE {' OR '.join(terms)})")
    if whole_tables:
        conditions.append(f"table_id IN ({', '.join(['%s'] * whole_tables)})")
    return f"SELECT id, table_id, partition_key FROM executions WHERE {' OR '.join(conditions)}"
