"""Runtime queries, each a single statement whatever the fan-out or the history size."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Executable,
    Table,
    and_,
    bindparam,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from controller.db.runtime_models import ExecutionRow, ExecutionValueRow, RunEventRow, RunRow
from controller.gates import Execution, Probe
from controller.keys import Key, key_from_text
from controller.runs import OPEN_STATES
from controller.runtime.ports import RunEvent
from controller.specs import TableSpec

_executions = cast(Table, ExecutionRow.__table__)
_values = cast(Table, ExecutionValueRow.__table__)
_runs = cast(Table, RunRow.__table__)
_events = cast(Table, RunEventRow.__table__)
#: What the runtime reads of a run to open, push and schedule it.
RUN_COLUMNS = tuple(
    _runs.c[name]
    for name in (
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
)
#: A run as the runtime handles it: column name → value.
Run = dict[str, Any]
_GATE_NAMESPACE = "hashtext(current_schema() || '/flux-control/gate')"
#: One statement takes every lock, in the order given (table locks by id, then key locks): a set
#: function's rows are produced in array order. Mode 0: shared table lock, 1: exclusive table lock,
#: 2: the lock of one key of the table (one 64-bit hash of schema, table and key).
_LOCKS = f"""
SELECT count(CASE m
    WHEN 0 THEN pg_advisory_xact_lock_shared({_GATE_NAMESPACE}, t)
    WHEN 1 THEN pg_advisory_xact_lock({_GATE_NAMESPACE}, t)
    ELSE pg_advisory_xact_lock(
        hashtextextended(current_schema() || '/flux-control/gate/' || t || '/' || k, 0))
END)
FROM unnest(CAST(:modes AS int[]), CAST(:tables AS int[]), CAST(:keys AS text[])) AS u(m, t, k)
"""


def connection(session: Session) -> Connection:
    """The session's connection: the hot path runs Core statements on it (no ORM unit of work)."""
    return session.connection()


def lock_gates(session: Session, tables: Iterable[int], keys: Iterable[tuple[int, str]] = ()) -> None:
    """Serialise gate decisions: of whole dependent tables, or of single keys of them (PostgreSQL).

    Two registrations of different upstreams of one table must not both miss each other's execution
    (write skew): each takes the lock of what it decides before inserting and reading. A key lock
    also takes its table's lock in shared mode, so a whole-table lock waits for every key lock of
    that table and the reverse. SQLite needs nothing: its writers are serialised by BEGIN IMMEDIATE.
    """
    whole = set(tables)
    keyed = sorted({(t, k) for t, k in keys if t not in whole})
    if (not whole and not keyed) or session.get_bind().dialect.name != "postgresql":
        return
    table_modes = dict.fromkeys(whole, 1) | {t: 0 for t, _ in keyed if t not in whole}
    ordered = [(mode, t, None) for t, mode in sorted(table_modes.items())] + [(2, t, k) for t, k in keyed]
    connection(session).execute(
        text(_LOCKS),
        {
            "modes": [m for m, _, _ in ordered],
            "tables": [t for _, t, _ in ordered],
            "keys": [k for _, _, k in ordered],
        },
    )


def value_rows(execution_id: int, table: TableSpec, table_id: int, key: Key) -> list[dict[str, Any]]:
    """One row per partition of the table: its value as text, or NULL when omitted."""
    return [
        {
            "execution_id": execution_id,
            "name": p.name,
            "table_id": table_id,
            "value": None if key.get(p.name) is None else str(key[p.name]),
        }
        for p in table.partitions
    ]


def insert_executions(session: Session, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert executions and return their ids in the order given."""
    if not rows:
        return []
    statement = insert(_executions).returning(_executions.c.id, sort_by_parameter_order=True)
    return [row[0] for row in connection(session).execute(statement, rows)]


def insert_values(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        connection(session).execute(insert(_values), rows)


def fetch_probed(
    session: Session, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
) -> dict[str, list[Execution]]:
    """Executions answering the probes, grouped by table name (one statement)."""
    if not probes:
        return {}
    whole = [ids[p.table] for p in probes if p.partition is None]
    values = _values.c
    matches = [
        and_(
            values.table_id == ids[p.table],
            values.name == p.partition,
            or_(values.value == str(p.value), values.value.is_(None)),
        )
        for p in probes
        if p.partition is not None
    ]
    conditions = []
    if matches:
        conditions.append(_executions.c.id.in_(select(values.execution_id).where(or_(*matches))))
    if whole:
        conditions.append(_executions.c.table_id.in_(whole))
    columns = _executions.c
    query = select(columns.id, columns.table_id, columns.partition_key).where(or_(*conditions))
    found: dict[str, list[Execution]] = {}
    for execution_id, table_id, key in connection(session).execute(query):
        name = names.get(table_id)
        if name is not None:
            found.setdefault(name, []).append(Execution(execution_id, name, key_from_text(key)))
    return found


def open_runs_for_update(session: Session, pairs: Iterable[tuple[int, str]]) -> dict[tuple[int, str], Run]:
    """The open runs of these (table id, key text) pairs, locked until commit (one statement)."""
    wanted = set(pairs)
    if not wanted:
        return {}
    query = (
        select(*RUN_COLUMNS)
        .where(
            _runs.c.table_id.in_({t for t, _ in wanted}),
            _runs.c.partition_key.in_({k for _, k in wanted}),
            _runs.c.status.in_(OPEN_STATES),
        )
        .with_for_update()
    )
    found = {}
    for row in connection(session).execute(query).mappings():
        if (row["table_id"], row["partition_key"]) in wanted:
            found[(row["table_id"], row["partition_key"])] = dict(row)
    return found


def insert_ignoring_duplicates(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT DO NOTHING, on PostgreSQL and SQLite alike."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    builder = postgresql_insert if dialect == "postgresql" else sqlite_insert
    connection(session).execute(builder(model.__table__).on_conflict_do_nothing(), rows)


def insert_runs(session: Session, rows: Sequence[dict[str, Any]]) -> dict[tuple[int, str], Run]:
    """Insert runs in one statement; returns them by (table id, key text) as :data:`RUN_COLUMNS`.

    RETURNING without parameter order (which would make SQLite insert row by row): rows are matched
    by their (table id, key text), unique among open runs.
    """
    if not rows:
        return {}
    result = connection(session).execute(insert(_runs).returning(*RUN_COLUMNS), rows)
    return {(row["table_id"], row["partition_key"]): dict(row) for row in result.mappings()}


def update_runs(session: Session, changes: Sequence[dict[str, Any]]) -> None:
    """Update runs by id, each with its own values (``changes`` rows hold ``id`` and the same columns)."""
    if not changes:
        return
    columns = [name for name in changes[0] if name != "id"]
    statement = (
        update(_runs)
        .where(_runs.c.id == bindparam("b_id"))
        .values({name: bindparam(f"b_{name}") for name in columns})
    )
    rows = [{f"b_{name}": value for name, value in change.items()} for change in changes]
    connection(session).execute(statement, rows)


def record_events(session: Session, events: Sequence[RunEvent], batch: str) -> None:
    """Write run state changes to the outbox under ``batch`` (published after commit)."""
    if events:
        rows = [
            {"run_id": e.run_id, "detail": e.detail(), "created_at": e.at, "batch": batch} for e in events
        ]
        connection(session).execute(insert(_events), rows)


#: PostgreSQL: what the AWS side did after a commit, recorded in one statement (so it needs no
#: transaction of its own): the runs whose schedule was written at their fire time, and the outbox
#: batch that was published (NULL: none).
_DONE = """
WITH synced AS (
    UPDATE runs SET scheduled_fire_at = u.fire_at, schedule_name = u.name
    FROM unnest(CAST(:ids AS bigint[]), CAST(:fire_ats AS timestamptz[]), CAST(:names AS text[]))
        AS u(id, fire_at, name)
    WHERE runs.id = u.id AND runs.fire_at = u.fire_at
    RETURNING runs.id
)
UPDATE run_events SET published_at = :now WHERE batch = :batch
"""


def record_done(
    engine: Engine, synced: Sequence[tuple[int, datetime, str]], batch: str | None, now: datetime
) -> None:
    """Mark runs whose schedule was written ((run id, fire time, schedule name): only where the run's
    fire time is still the one written) and the outbox ``batch`` published, all or nothing.

    On PostgreSQL one statement in autocommit (one round trip instead of BEGIN, two UPDATEs and
    COMMIT); on SQLite two statements in one transaction.
    """
    if not synced and batch is None:
        return
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as autocommit:
            parameters = {
                "ids": [run_id for run_id, _, _ in synced],
                "fire_ats": [fire_at for _, fire_at, _ in synced],
                "names": [name for _, _, name in synced],
                "now": now,
                "batch": batch,
            }
            autocommit.execute(text(_DONE), parameters)
        return
    with engine.begin() as transaction:
        if synced:
            statement = (
                update(_runs)
                .where(_runs.c.id == bindparam("b_id"), _runs.c.fire_at == bindparam("b_fire_at"))
                .values(scheduled_fire_at=bindparam("b_fire_at"), schedule_name=bindparam("b_name"))
            )
            rows = [{"b_id": i, "b_fire_at": f, "b_name": n} for i, f, n in synced]
            transaction.execute(statement, rows)
        if batch is not None:
            transaction.execute(update(_events).where(_events.c.batch == batch).values(published_at=now))


def changed(session: Session, statement: Executable) -> int:
    """Execute a compare-and-set UPDATE and return how many rows it changed."""
    return int(cast(CursorResult[Any], session.execute(statement)).rowcount)
