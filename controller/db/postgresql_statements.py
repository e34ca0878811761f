"""Every SQL text :mod:`controller.db.postgresql_store` sends, for psycopg (``%s`` placeholders).

Each builder returns the text for one shape (how many rows), cached, so that psycopg prepares each
shape on the server after a few executions. Rows of the hot path (a registration) are spelled out as
``VALUES`` of scalar parameters: arrays (``unnest``) were measured slower on both sides, and
``= ANY(array)`` made the server plan the open-run lookup again on every execution. Statements off the
hot path take arrays (``= ANY(%s::bigint[])``): one shape, one prepared statement, whatever the count.

No state name is copied into a text: the states are rendered from :mod:`controller.core.runs`. The
open states, and the states the sweep's searches filter on, are literals: in a generic plan (psycopg
prepares a statement after a few executions, and the server may then plan it once for any
parameters) the planner can use the partial index ``uq_runs_open_key`` only for a literal predicate,
and knows only from a literal that a state is rare (a parameter makes ``… ORDER BY id LIMIT n`` walk
the primary key, filtering every run). Other states are parameters. A run is always read whole
(:data:`controller.core.runs.RUN_FIELDS`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TypeVar

from controller.core.records import Approval, Task
from controller.core.runs import DISPATCHING, OPEN_STATES, RUN_FIELDS, SCHEDULED

T = TypeVar("T")
#: Parameters one statement carries at most. PostgreSQL's protocol allows 65,535; a larger request
#: (a backfill of hundreds of partitions into a wide fan-out) is sent in several statements.
#: Module-level (read at each call) so that tests can make it small.
MAX_PARAMETERS = 30_000

#: The unique index whose violation means a concurrent registration with the same idempotency key won.
IDEMPOTENCY_INDEX = "uq_executions_idempotency"

#: Each column of ``runs`` with its SQL type: the casts of VALUES rows and SET parameters.
RUN_TYPES = {
    "id": "bigint",
    "table_id": "bigint",
    "partition_key": "text",
    "partitions": "jsonb",
    "status": "text",
    "attempt": "integer",
    "manual": "boolean",
    "rerun_requested": "boolean",
    "reason": "text",
    "error": "text",
    "first_trigger_at": "timestamptz",
    "last_trigger_at": "timestamptz",
    "fire_at": "timestamptz",
    "scheduled_fire_at": "timestamptz",
    "schedule_name": "text",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "finished_at": "timestamptz",
}
assert tuple(RUN_TYPES) == RUN_FIELDS, "a field of Run has no column type here"


def _columns(fields: Sequence[str], alias: str = "") -> str:
    return ", ".join(f"{alias}.{name}" if alias else name for name in fields)


def literal(word: str) -> str:
    """A state name as an SQL literal, for a search that must use its index in a generic plan too
    (names are plain words: nothing to escape, checked)."""
    if not re.fullmatch(r"[a-z_]+", word):
        raise ValueError(f"not a state name: {word!r}")
    return f"'{word}'"


RUNS = _columns(RUN_FIELDS)
TASKS = _columns(tuple(Task.__dataclass_fields__))
APPROVALS = _columns(tuple(Approval.__dataclass_fields__))
#: The predicate of the partial unique index ``uq_runs_open_key``: at most one open run per key.
OPEN = f"status IN ({', '.join(literal(state) for state in OPEN_STATES)})"
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
_NEWEST_APPROVAL = "(SELECT max(a.id) FROM approvals a WHERE a.run_id = runs.id)"
#: Parameters of one execution row of :func:`insert_executions`, in order.
EXECUTION_FIELDS = ("table_id", "partition_key", "partitions", "source", "run_id", "idempotency_key")
_EXECUTION_CASTS = ("bigint", "text", "jsonb", "text", "bigint", "text")
#: Parameters of one new run of :func:`insert_runs_and_triggers`, in order.
NEW_RUN_FIELDS = ("table_id", "partition_key", "partitions", "status", "manual", "reason", "now", "fire_at")
_NEW_RUN_CASTS = ("bigint", "text", "jsonb", "text", "boolean", "text", "timestamptz", "timestamptz")
#: Parameters of one trigger row: an existing run's id (or NULL), the table and key of a new one.
TRIGGER_FIELDS = ("run_id", "table_id", "partition_key", "execution_id")
_TRIGGER_CASTS = ("bigint", "bigint", "text", "bigint")
#: The executions' id sequence, looked up from the table (serial or identity alike) rather than named:
#: the uncorrelated scalar subquery is an InitPlan, evaluated once per statement. Measured on the
#: server (PostgreSQL 15, cached plans, 3 rounds): one execution 25-35 µs with the named sequence,
#: at most 3 µs more; 20 and 200 executions at most 4% more (noise: -0.3% to +4%). Calling
#: pg_get_serial_sequence per row instead cost 2-3 µs a row (+12-18% for 20 and 200 executions).
_EXECUTION_ID = "nextval((SELECT pg_get_serial_sequence('executions', 'id')::regclass))"


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


def _rows(count: int, casts: Sequence[str], numbered: bool = False) -> str:
    """``count`` rows of typed placeholders for a VALUES list (numbered 1… first when asked)."""
    row = ", ".join(f"%s::{cast}" for cast in casts)
    return ", ".join(f"({n}, {row})" if numbered else f"({row})" for n in range(1, count + 1))


def _placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


# --- definitions and gates ------------------------------------------------------------------------

NEWEST_REVISION = "SELECT max(id) FROM reconcile_revisions"
TABLE_NAME = "SELECT name FROM tables WHERE id = %s"


@lru_cache(maxsize=64)
def lock_statement(modes: tuple[int, ...]) -> str:
    """The newest reconcile revision, then one advisory lock per mode, in the order given.

    PostgreSQL evaluates a select list left to right, so the locks are taken in that order (callers
    sort them: tables by id, then keys). The revision is read in the same statement, so checking the
    cached definitions costs no round trip of its own. Locks are namespaced by ``current_schema()``:
    schemas sharing a database do not wait for each other. Parameters: a table id per lock, then the
    key text after each key lock's table id.
    """
    return ", ".join([f"SELECT ({NEWEST_REVISION})", *(_LOCK_TERMS[m] for m in modes)])


# --- executions -----------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def insert_executions(values_per_item: tuple[int, ...]) -> str:
    """Executions and their partition values in one statement; returns the new ids in the order given.

    Parameters: :data:`EXECUTION_FIELDS` of each execution, then registered_at and registered_by,
    then (name, value) of each partition value, execution by execution. Ids are drawn from the
    table's sequence first so that each value row names its execution (INSERT … RETURNING does not
    promise the order of its rows).
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
    fields = _columns(EXECUTION_FIELDS)
    return f"""
WITH item AS MATERIALIZED (
    SELECT {_EXECUTION_ID} AS id, u.*
    FROM (VALUES {_rows(len(values_per_item), _EXECUTION_CASTS, numbered=True)}) AS u(n, {fields})
), inserted AS (
    INSERT INTO executions (id, {fields}, registered_at, registered_by)
    SELECT id, {fields}, %s::timestamptz, %s::text FROM item
){valued}
SELECT id FROM item ORDER BY n
"""


@lru_cache(maxsize=64)
def probe_statement(values: int, whole_tables: int) -> str:
    """(id, table id, key text) of executions answering ``values`` probes (table, partition, value:
    NULL agrees with any value) and of every execution of ``whole_tables`` tables. Parameters: table
    id, name, value per probe, then the tables.

    One OR term per probe (not a join on arrays): PostgreSQL turns each into two index scans on
    (table_id, name, value), for the value and for NULL, whatever the history.
    """
    terms = ["(table_id = %s AND name = %s AND (value = %s OR value IS NULL))"] * values
    conditions = []
    if terms:
        conditions.append(f"id IN (SELECT execution_id FROM execution_values WHERE {' OR '.join(terms)})")
    if whole_tables:
        conditions.append(f"table_id IN ({_placeholders(whole_tables)})")
    return f"SELECT id, table_id, partition_key FROM executions WHERE {' OR '.join(conditions)}"


@lru_cache(maxsize=64)
def executions_by_idempotency_key(keys: int) -> str:
    """Executions carrying ``keys`` idempotency keys, whatever their table (the unique index
    ``uq_executions_idempotency`` on the key alone; its ``IS NOT NULL`` predicate is implied by the
    equality, so generic plans use it too). Parameters: the keys."""
    return (
        "SELECT id, table_id, idempotency_key, partitions FROM executions"
        f" WHERE idempotency_key IN ({', '.join(['%s::text'] * keys)})"
    )


RUNS_TRIGGERED_BY = f"""
SELECT t.execution_id, {_columns(RUN_FIELDS, "r")}
FROM run_triggers t JOIN runs r ON r.id = t.run_id
WHERE t.execution_id = ANY(%s::bigint[]) ORDER BY t.execution_id, r.id
"""
TRIGGER_PARTITIONS = """
SELECT tb.name, e.partitions
FROM run_triggers t JOIN executions e ON e.id = t.execution_id JOIN tables tb ON tb.id = e.table_id
WHERE t.run_id = %s ORDER BY e.id
"""

# --- runs -----------------------------------------------------------------------------------------

LOCK_RUN = f"SELECT {RUNS} FROM runs WHERE id = %s FOR UPDATE"
#: In id order: two transactions locking overlapping sets wait for each other instead of deadlocking.
LOCK_RUNS = f"SELECT {RUNS} FROM runs WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE"
RUN_STATE = "SELECT status, fire_at FROM runs WHERE id = %s"


@lru_cache(maxsize=64)
def open_runs_for_update(tables: int, keys: int) -> str:
    """The open runs of some tables and keys, each with its newest approval's id (pending or decided),
    locked until commit (callers keep the pairs they asked for). Parameters: the table ids, then the
    key texts."""
    return f"""
SELECT {RUNS}, {_NEWEST_APPROVAL} FROM runs
WHERE table_id IN ({_placeholders(tables)}) AND partition_key IN ({_placeholders(keys)}) AND {OPEN}
FOR UPDATE
"""


@lru_cache(maxsize=4)
def run_of_key(only_open: bool) -> str:
    """The first run of a table and key in some states. Parameters: table id, key text, the states.
    ``only_open``: every state asked is open, and saying so lets the planner use ``uq_runs_open_key``."""
    extra = f" AND {OPEN}" if only_open else ""
    return (
        f"SELECT {RUNS} FROM runs WHERE table_id = %s AND partition_key = %s"
        f" AND status = ANY(%s::text[]){extra} ORDER BY id LIMIT 1"
    )


@lru_cache(maxsize=64)
def insert_runs_and_triggers(runs: int, triggers: int) -> str:
    """New runs and the executions that triggered runs in one statement; returns the new runs whole.
    Parameters: :data:`NEW_RUN_FIELDS` of each new run, then :data:`TRIGGER_FIELDS` of each trigger:
    an existing run by id, a new one by table and key (unique among open runs)."""
    trigger_rows = _rows(triggers, _TRIGGER_CASTS)
    trigger_fields = _columns(TRIGGER_FIELDS)
    if not runs:
        return f"""
INSERT INTO run_triggers (run_id, execution_id)
SELECT t.run_id, t.execution_id FROM (VALUES {trigger_rows}) AS t({trigger_fields})
ON CONFLICT DO NOTHING
"""
    triggered = (
        f""", triggered AS (
    INSERT INTO run_triggers (run_id, execution_id)
    SELECT coalesce(t.run_id, created.id), t.execution_id
    FROM (VALUES {trigger_rows}) AS t({trigger_fields})
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
    FROM (VALUES {_rows(runs, _NEW_RUN_CASTS)}) AS u({_columns(NEW_RUN_FIELDS)})
    RETURNING {RUNS}
){triggered}
SELECT {RUNS} FROM created
"""


def _check_columns(columns: Sequence[str], *, state: bool) -> None:
    """Refuse what is not a column of a run to set (the state only with compare-and-set)."""
    fixed = {"id"} if state else {"id", "status"}
    unknown = [c for c in columns if c not in RUN_TYPES or c in fixed]
    if unknown:
        raise ValueError(f"not columns of a run to set here: {', '.join(unknown)}")


@lru_cache(maxsize=64)
def push_runs(columns: tuple[str, ...], count: int) -> str:
    """Set ``columns`` of ``count`` runs, each to its own values. Parameters: the id, then the value
    of each column, per run. The state is not one of them: it changes only by :func:`apply_change`."""
    _check_columns(columns, state=False)
    rows = _rows(count, [RUN_TYPES["id"], *(RUN_TYPES[c] for c in columns)])
    return (
        f"UPDATE runs SET {', '.join(f'{c} = u.{c}' for c in columns)}"
        f" FROM (VALUES {rows}) AS u(id, {_columns(columns)}) WHERE runs.id = u.id"
    )


@lru_cache(maxsize=64)
def apply_change(columns: tuple[str, ...]) -> str:
    """Compare-and-set a run's state: set ``columns`` where the run is still in the expected state.
    Parameters: the value of each column, then the run id and the expected state."""
    _check_columns(columns, state=True)
    assignments = ", ".join(f"{c} = %s::{RUN_TYPES[c]}" for c in columns)
    return f"UPDATE runs SET {assignments} WHERE id = %s AND status = %s"


STUCK_DISPATCHING = (
    f"SELECT {RUNS} FROM runs WHERE status = {literal(DISPATCHING)} AND updated_at <= %s ORDER BY id LIMIT %s"
)

# --- task dispatches ------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def add_tasks(count: int) -> str:
    """Task dispatches. Parameters: run id, attempt, alias, type, target, status, request (JSON text),
    token."""
    rows = _rows(count, ("bigint", "integer", "text", "text", "text", "text", "jsonb", "text"))
    columns = "run_id, attempt, alias, type, target, status, request, token"
    return f"INSERT INTO task_dispatches ({columns}) VALUES {rows}"


#: The unfinished last, then in the order recorded.
TASKS_OF = (
    f"SELECT {TASKS} FROM task_dispatches WHERE run_id = %s AND attempt = %s"
    " ORDER BY finished_at NULLS LAST, id"
)
_ONE_TASK = "run_id = %s AND attempt = %s AND alias = %s AND status = %s"
#: Parameters: the new status, external id, start time, check time, deadline, then run id, attempt,
#: alias and old status.
TASK_STARTED = (
    "UPDATE task_dispatches SET status = %s, external_id = %s, started_at = %s, check_at = %s,"
    f" deadline_at = %s WHERE {_ONE_TASK}"
)
#: Parameters: the new status, error, end time, then run id, attempt, alias and old status.
TASK_NOT_STARTED = f"UPDATE task_dispatches SET status = %s, error = %s, finished_at = %s WHERE {_ONE_TASK}"
LOCK_TASK = f"SELECT {TASKS} FROM task_dispatches WHERE external_id = %s ORDER BY id LIMIT 1 FOR UPDATE"
#: Parameters: the new status, end time, error, then the task id and the status it must have.
SETTLE_TASK = (
    "UPDATE task_dispatches SET status = %s, finished_at = %s, error = %s WHERE id = %s AND status = %s"
)


@lru_cache(maxsize=2)
def settle_unfinished_tasks(with_error: bool) -> str:
    """Parameters: the status, end time (and error when ``with_error``), the run ids, the unfinished
    statuses."""
    error = ", error = %s" if with_error else ""
    return (
        f"UPDATE task_dispatches SET status = %s, finished_at = %s{error}"
        " WHERE run_id = ANY(%s::bigint[]) AND status = ANY(%s::text[])"
    )


# --- approvals ------------------------------------------------------------------------------------

#: New approvals (none where one is pending: ``uq_approvals_pending_run``), then each run's newest.
#: The statement's snapshot does not see its own inserts, so the new ids come from RETURNING.
#: Parameters: the status, request time, the run ids, the run ids again.
REQUEST_APPROVALS = """
WITH requested AS (
    INSERT INTO approvals (run_id, status, requested_at)
    SELECT run_id, %s::text, %s::timestamptz FROM unnest(%s::bigint[]) AS run_id
    ON CONFLICT DO NOTHING
    RETURNING run_id, id
)
SELECT run_id, max(id) FROM (
    SELECT run_id, id FROM requested
    UNION ALL SELECT run_id, id FROM approvals WHERE run_id = ANY(%s::bigint[])
) AS known GROUP BY run_id
"""
NEWEST_APPROVALS = "SELECT run_id, max(id) FROM approvals WHERE run_id = ANY(%s::bigint[]) GROUP BY run_id"
LOCK_APPROVAL = f"SELECT {APPROVALS} FROM approvals WHERE id = %s FOR UPDATE"
#: Parameters: the decision, by, at, comment, then the approval id and the status it must have.
DECIDE_APPROVAL = (
    "UPDATE approvals SET status = %s, decided_by = %s, decided_at = %s, comment = %s"
    " WHERE id = %s AND status = %s"
)
#: Parameters: the new status, at, then the run id and the status it must have.
CANCEL_PENDING_APPROVALS = (
    "UPDATE approvals SET status = %s, decided_at = %s WHERE run_id = %s AND status = %s"
)

# --- outbox and what AWS did ----------------------------------------------------------------------


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


# --- the sweep ------------------------------------------------------------------------------------

#: Scheduled runs (the state is a parameter) firing after a time whose schedule is not written at
#: their fire time, by id (as every store orders them).
UNSYNCED_RUNS = f"""
SELECT id, table_id, fire_at FROM runs
WHERE status = {literal(SCHEDULED)} AND fire_at > %s
AND (scheduled_fire_at IS NULL OR scheduled_fire_at <> fire_at)
ORDER BY id LIMIT %s
"""
OVERDUE_RUNS = (
    f"SELECT id FROM runs WHERE status = {literal(SCHEDULED)} AND fire_at <= %s ORDER BY id LIMIT %s"
)
UNPUBLISHED_EVENTS = (
    "SELECT id, detail FROM run_events WHERE published_at IS NULL AND created_at <= %s ORDER BY id LIMIT %s"
)
MARK_PUBLISHED = "UPDATE run_events SET published_at = %s WHERE id = ANY(%s::bigint[])"
#: Runs not in the given state (``scheduled``) holding a written schedule (the partial index
#: ``ix_runs_schedule_written``).
LEFTOVER_SCHEDULES = """
SELECT id, schedule_name, scheduled_fire_at FROM runs
WHERE scheduled_fire_at IS NOT NULL AND status <> %s AND schedule_name IS NOT NULL
ORDER BY id LIMIT %s
"""
#: Compare-and-set on the fire time written: a schedule written again meanwhile stays a leftover.
#: Parameters: the run ids, their fire times written, the state (``scheduled``).
FORGET_SCHEDULES = """
UPDATE runs SET scheduled_fire_at = NULL
FROM unnest(%s::bigint[], %s::timestamptz[]) AS f(id, written)
WHERE runs.id = f.id AND runs.scheduled_fire_at = f.written AND runs.status <> %s
"""
