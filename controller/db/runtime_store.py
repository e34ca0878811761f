"""Runtime queries, each a single statement whatever the fan-out or the history size.

On PostgreSQL the registration path sends the driver-level statements of
:mod:`controller.db.runtime_sql` (fewer and cheaper: see there); elsewhere, and for SQLite, SQLAlchemy
Core statements.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
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

from controller.db import runtime_sql
from controller.db.runtime_models import (
    ExecutionRow,
    ExecutionValueRow,
    RunEventRow,
    RunRow,
    RunTriggerRow,
)
from controller.gates import Execution, Probe
from controller.keys import Key, key_from_text
from controller.runs import OPEN_STATES
from controller.runtime.ports import RunEvent
from controller.specs import TableSpec

_executions = cast(Table, ExecutionRow.__table__)
_values = cast(Table, ExecutionValueRow.__table__)
_runs = cast(Table, RunRow.__table__)
_triggers = cast(Table, RunTriggerRow.__table__)
_events = cast(Table, RunEventRow.__table__)
#: What the runtime reads of a run to open, push and schedule it.
RUN_COLUMNS = tuple(_runs.c[name] for name in runtime_sql.RUN_COLUMNS)
_RUN_TIMES = ("first_trigger_at", "last_trigger_at", "fire_at", "scheduled_fire_at")
#: A run as the runtime handles it: column name → value.
Run = dict[str, Any]
_REVISION = text("SELECT max(id) FROM reconcile_revisions")


def connection(session: Session) -> Connection:
    """The session's connection: the hot path runs Core statements on it (no ORM unit of work)."""
    return session.connection()


def _on_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _driver(
    connection: Connection, statement: str, parameters: Sequence[Any], *, rows: bool = True
) -> list[Any]:
    """Send a statement of :mod:`controller.db.runtime_sql` on the connection's driver cursor; returns
    its rows (none when ``rows`` is false: the statement returns none).

    ``exec_driver_sql`` cost three times the driver's own client time per statement, mostly in
    building result metadata the hot path does not read. What this skips is only that: the statement
    runs in the connection's transaction, its engine's cursor events fire (statement counts, tests),
    and an error goes through the connection's own handling (disconnect detection, invalidation,
    wrapping as a ``DBAPIError``), as in ``Connection._execute_context``.
    """
    cursor = connection.connection.cursor()
    try:
        dispatch = connection.dispatch
        dispatch.before_cursor_execute(connection, cursor, statement, parameters, None, False)
        cursor.execute(statement, parameters)
        found = list(cursor.fetchall()) if rows else []
        dispatch.after_cursor_execute(connection, cursor, statement, parameters, None, False)
    except BaseException as exc:
        connection._handle_dbapi_exception(exc, statement, parameters, cursor, None)
    finally:
        cursor.close()
    return found


def lock_gates(session: Session, tables: Iterable[int], keys: Iterable[tuple[int, str]] = ()) -> int | None:
    """Serialise gate decisions: of whole dependent tables, or of single keys of them (PostgreSQL).
    Returns the newest reconcile revision (read in the same statement on PostgreSQL).

    Two registrations of different upstreams of one table must not both miss each other's execution
    (write skew): each takes the lock of what it decides before inserting and reading. A key lock
    also takes its table's lock in shared mode, so a whole-table lock waits for every key lock of
    that table and the reverse. SQLite needs nothing: its writers are serialised by BEGIN IMMEDIATE.
    """
    if not _on_postgresql(session):
        return cast("int | None", connection(session).execute(_REVISION).scalar())
    whole = set(tables)
    keyed = sorted({(t, k) for t, k in keys if t not in whole})
    table_modes = dict.fromkeys(whole, runtime_sql.EXCLUSIVE) | {
        t: runtime_sql.SHARED for t, _ in keyed if t not in whole
    }
    modes: list[int] = []
    parameters: list[Any] = []
    for table_id, mode in sorted(table_modes.items()):
        modes.append(mode)
        parameters.append(table_id)
    for table_id, key in keyed:
        modes.append(runtime_sql.KEY)
        parameters += [table_id, key]
    (row,) = _driver(connection(session), runtime_sql.lock_statement(tuple(modes)), parameters)
    return cast("int | None", row[0])


@dataclass(frozen=True, slots=True)
class NewExecution:
    """An execution to insert, with its partition values (name, value as text or None when omitted)."""

    table_id: int
    partition_key: str
    partitions: Key
    source: str
    run_id: int | None
    idempotency_key: str | None
    values: list[tuple[str, str | None]]


def partition_values(table: TableSpec, key: Key) -> list[tuple[str, str | None]]:
    """One value per partition of the table: as text, or None when omitted (agrees with any value)."""
    return [(p.name, None if key.get(p.name) is None else str(key[p.name])) for p in table.partitions]


def insert_executions(
    session: Session, executions: Sequence[NewExecution], at: datetime, by: str | None
) -> list[int]:
    """Insert executions and their partition values; returns their ids in the order given."""
    if not executions:
        return []
    if _on_postgresql(session):
        parameters: list[Any] = []
        for e in executions:
            parameters += [e.table_id, e.partition_key, json.dumps(e.partitions), e.source]
            parameters += [e.run_id, e.idempotency_key]
        parameters += [at, by]
        parameters += [x for e in executions for pair in e.values for x in pair]
        shape = tuple(len(e.values) for e in executions)
        return [
            row[0] for row in _driver(connection(session), runtime_sql.insert_executions(shape), parameters)
        ]
    rows = [
        {
            "table_id": e.table_id,
            "partition_key": e.partition_key,
            "partitions": e.partitions,
            "source": e.source,
            "run_id": e.run_id,
            "idempotency_key": e.idempotency_key,
            "registered_at": at,
            "registered_by": by,
        }
        for e in executions
    ]
    statement = insert(_executions).returning(_executions.c.id, sort_by_parameter_order=True)
    ids = [row[0] for row in connection(session).execute(statement, rows)]
    value_rows = [
        {"execution_id": i, "name": name, "table_id": e.table_id, "value": value}
        for i, e in zip(ids, executions, strict=True)
        for name, value in e.values
    ]
    if value_rows:
        connection(session).execute(insert(_values), value_rows)
    return ids


def fetch_probed(
    session: Session, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
) -> dict[str, list[Execution]]:
    """Executions answering the probes, grouped by table name (one statement)."""
    if not probes:
        return {}
    whole = [ids[p.table] for p in probes if p.partition is None]
    if _on_postgresql(session):
        valued = [p for p in probes if p.partition is not None]
        parameters: list[Any] = [x for p in valued for x in (ids[p.table], p.partition, str(p.value))]
        statement = runtime_sql.probe_statement(len(valued), len(whole))
        rows = _driver(connection(session), statement, [*parameters, *whole])
        return _found(rows, names)
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
    return _found(connection(session).execute(query), names)


def _found(rows: Iterable[Any], names: dict[int, str]) -> dict[str, list[Execution]]:
    found: dict[str, list[Execution]] = {}
    for execution_id, table_id, key in rows:
        name = names.get(table_id)
        if name is not None:
            found.setdefault(name, []).append(Execution(execution_id, name, key_from_text(key)))
    return found


def open_runs_for_update(session: Session, pairs: Iterable[tuple[int, str]]) -> dict[tuple[int, str], Run]:
    """The open runs of these (table id, key text) pairs, locked until commit (one statement)."""
    wanted = set(pairs)
    if not wanted:
        return {}
    if _on_postgresql(session):
        tables, keys = list({t for t, _ in wanted}), list({k for _, k in wanted})
        statement = runtime_sql.open_runs_for_update(len(tables), len(keys))
        result = _driver(connection(session), statement, [*tables, *keys])
        rows = [_in_utc(dict(zip(runtime_sql.RUN_COLUMNS, row, strict=True))) for row in result]
        return {
            (r["table_id"], r["partition_key"]): r
            for r in rows
            if (r["table_id"], r["partition_key"]) in wanted
        }
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


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to create (attempt 1, first and last triggered now)."""

    table_id: int
    partition_key: str
    partitions: Key
    status: str
    fire_at: datetime | None


@dataclass(frozen=True, slots=True)
class Trigger:
    """An execution that opened or pushed a run: an existing run by id, a new one by table and key."""

    run_id: int | None
    table_id: int
    partition_key: str
    execution_id: int


def insert_runs(
    session: Session,
    runs: Sequence[NewRun],
    triggers: Sequence[Trigger],
    now: datetime,
    *,
    manual: bool,
    reason: str | None,
) -> dict[tuple[int, str], Run]:
    """Insert runs and record their triggers (one statement on PostgreSQL); returns the new runs by
    (table id, key text) as :data:`RUN_COLUMNS`.

    Rows are matched by (table id, key text), unique among open runs: RETURNING with parameter order
    would make SQLite insert row by row.
    """
    if not runs and not triggers:
        return {}
    if _on_postgresql(session):
        parameters: list[Any] = []
        for r in runs:
            parameters += [r.table_id, r.partition_key, json.dumps(r.partitions), r.status]
            parameters += [manual, reason, now, r.fire_at]
        parameters += [x for t in triggers for x in (t.run_id, t.table_id, t.partition_key, t.execution_id)]
        statement = runtime_sql.insert_runs_and_triggers(len(runs), len(triggers))
        returned = _driver(connection(session), statement, parameters, rows=bool(runs))
        created = [_in_utc(dict(zip(runtime_sql.RUN_COLUMNS, row, strict=True))) for row in returned]
        return {(r["table_id"], r["partition_key"]): r for r in created}
    inserted: dict[tuple[int, str], Run] = {}
    if runs:
        rows = [
            {
                "table_id": r.table_id,
                "partition_key": r.partition_key,
                "partitions": r.partitions,
                "status": r.status,
                "attempt": 1,
                "manual": manual,
                "rerun_requested": False,
                "reason": reason,
                "first_trigger_at": now,
                "last_trigger_at": now,
                "fire_at": r.fire_at,
                "created_at": now,
                "updated_at": now,
            }
            for r in runs
        ]
        result = connection(session).execute(insert(_runs).returning(*RUN_COLUMNS), rows)
        inserted = {(row["table_id"], row["partition_key"]): dict(row) for row in result.mappings()}
    trigger_rows = [
        {
            "run_id": t.run_id if t.run_id is not None else inserted[(t.table_id, t.partition_key)]["id"],
            "execution_id": t.execution_id,
        }
        for t in triggers
    ]
    insert_ignoring_duplicates(session, RunTriggerRow, trigger_rows)
    return inserted


def _in_utc(run: Run) -> Run:
    """Timestamps as the UTC datetimes SQLAlchemy's column type gives (the driver gives the session's
    time zone)."""
    for column in _RUN_TIMES:
        if run[column] is not None:
            run[column] = run[column].astimezone(UTC)
    return run


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
    if events and _on_postgresql(session):
        parameters = [x for e in events for x in (e.run_id, e.at, batch, json.dumps(e.detail()))]
        _driver(connection(session), runtime_sql.insert_events(len(events)), parameters, rows=False)
    elif events:
        rows = [
            {"run_id": e.run_id, "detail": e.detail(), "created_at": e.at, "batch": batch} for e in events
        ]
        connection(session).execute(insert(_events), rows)


def record_done(
    connection: Connection, synced: Sequence[tuple[int, datetime, str]], batch: str | None, now: datetime
) -> None:
    """Mark runs whose schedule was written ((run id, fire time, schedule name): only where the run's
    fire time is still the one written) and the outbox ``batch`` published, all or nothing, on a
    connection outside any transaction.

    On PostgreSQL one statement in autocommit (one round trip instead of BEGIN, two UPDATEs and
    COMMIT); on SQLite two statements in one transaction.
    """
    if not synced and batch is None:
        return
    if connection.dialect.name == "postgresql":
        parameters = [x for row in synced for x in row]
        if batch is not None:
            parameters += [now, batch]
        done = runtime_sql.record_done(len(synced), batch is not None)
        # Autocommit for this one statement, set on the driver connection and put back at once:
        # SQLAlchemy's isolation-level option costs more than the statement and is only undone at
        # checkin (each later transaction then began with "BEGIN ISOLATION LEVEL …").
        driver: Any = connection.connection.driver_connection
        driver.autocommit = True
        try:
            _driver(connection, done, parameters, rows=False)
        finally:
            driver.autocommit = False
        return
    with connection.begin():
        if synced:
            statement = (
                update(_runs)
                .where(_runs.c.id == bindparam("b_id"), _runs.c.fire_at == bindparam("b_fire_at"))
                .values(scheduled_fire_at=bindparam("b_fire_at"), schedule_name=bindparam("b_name"))
            )
            rows = [{"b_id": i, "b_fire_at": f, "b_name": n} for i, f, n in synced]
            connection.execute(statement, rows)
        if batch is not None:
            connection.execute(update(_events).where(_events.c.batch == batch).values(published_at=now))


def changed(session: Session, statement: Executable) -> int:
    """Execute a compare-and-set UPDATE and return how many rows it changed."""
    return int(cast(CursorResult[Any], session.execute(statement)).rowcount)
