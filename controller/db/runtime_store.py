"""Runtime queries, each a single statement whatever the fan-out or the history size: the gate locks,
executions and the probes of gates; runs and their outbox are in :mod:`controller.db.run_store`.

On PostgreSQL the registration path sends the driver-level statements of
:mod:`controller.db.runtime_sql` (fewer and cheaper: see there) with :func:`send`; elsewhere, and
for SQLite, SQLAlchemy Core statements.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Executable,
    Table,
    and_,
    insert,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from controller.db import runtime_sql
from controller.db.graph_store import newest_revision
from controller.db.runtime_models import ExecutionRow, ExecutionValueRow
from controller.gates import Execution, Probe
from controller.keys import Key, key_from_text
from controller.specs import TableSpec

_executions = cast(Table, ExecutionRow.__table__)
_values = cast(Table, ExecutionValueRow.__table__)


def connection(session: Session) -> Connection:
    """The session's connection: the hot path runs Core statements on it (no ORM unit of work)."""
    return session.connection()


def on_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def send(
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
        if dispatch.before_cursor_execute:  # listeners only (an empty collection is false)
            dispatch.before_cursor_execute(connection, cursor, statement, parameters, None, False)
        cursor.execute(statement, parameters)
        found = list(cursor.fetchall()) if rows else []
        if dispatch.after_cursor_execute:
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
    if not on_postgresql(session):
        return newest_revision(session)
    whole = set(tables)
    keyed = sorted({(t, k) for t, k in keys if t not in whole})
    table_modes = dict.fromkeys(whole, runtime_sql.EXCLUSIVE) | {
        t: runtime_sql.SHARED for t, _ in keyed if t not in whole
    }
    locks: list[tuple[int, list[Any]]] = [(mode, [t]) for t, mode in sorted(table_modes.items())]
    locks += [(runtime_sql.KEY, [t, k]) for t, k in keyed]
    revision: int | None = None
    for number, batch in enumerate(runtime_sql.batched(locks, lambda lock: len(lock[1])) or [[]]):
        statement = runtime_sql.lock_statement(tuple(mode for mode, _ in batch))
        (row,) = send(connection(session), statement, [x for _, values in batch for x in values])
        if number == 0:  # read before any lock of a later batch; batches keep the lock order
            revision = cast("int | None", row[0])
    return revision


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
    if on_postgresql(session):
        return _insert_executions_postgresql(session, executions, at, by)
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
    inserted = [row[0] for row in connection(session).execute(statement, rows)]
    value_rows = [
        {"execution_id": i, "name": name, "table_id": e.table_id, "value": value}
        for i, e in zip(inserted, executions, strict=True)
        for name, value in e.values
    ]
    if value_rows:
        connection(session).execute(insert(_values), value_rows)
    return inserted


def fetch_probed(
    session: Session, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
) -> dict[str, list[Execution]]:
    """Executions answering the probes, grouped by table name (one statement)."""
    if not probes:
        return {}
    if on_postgresql(session):
        return _found(_probed_postgresql(session, probes, ids), names)
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
    return _found(connection(session).execute(query), names)


def _insert_executions_postgresql(
    session: Session, executions: Sequence[NewExecution], at: datetime, by: str | None
) -> list[int]:
    ids: list[int] = []
    for batch in runtime_sql.batched(executions, lambda e: 6 + 2 * len(e.values), reserved=2):
        parameters: list[Any] = []
        for e in batch:
            parameters += [e.table_id, e.partition_key, json.dumps(e.partitions), e.source]
            parameters += [e.run_id, e.idempotency_key]
        parameters += [at, by]
        parameters += [x for e in batch for pair in e.values for x in pair]
        statement = runtime_sql.insert_executions(tuple(len(e.values) for e in batch))
        ids += [row[0] for row in send(connection(session), statement, parameters)]
    return ids


def _probed_postgresql(session: Session, probes: Sequence[Probe], ids: dict[str, int]) -> list[Any]:
    """(id, table id, key text) of the executions answering the probes, each once."""
    found: dict[tuple[Any, ...], None] = {}
    for batch in runtime_sql.batched(probes, lambda p: 1 if p.partition is None else 3):
        tables = [ids[p.table] for p in batch if p.partition is None]
        valued = [p for p in batch if p.partition is not None]
        parameters: list[Any] = [x for p in valued for x in (ids[p.table], p.partition, str(p.value))]
        statement = runtime_sql.probe_statement(len(valued), len(tables))
        found.update(
            dict.fromkeys(tuple(row) for row in send(connection(session), statement, [*parameters, *tables]))
        )
    return list(found)


def _found(rows: Iterable[Any], names: dict[int, str]) -> dict[str, list[Execution]]:
    found: dict[str, list[Execution]] = {}
    for execution_id, table_id, key in rows:
        name = names.get(table_id)
        if name is not None:
            found.setdefault(name, []).append(Execution(execution_id, name, key_from_text(key)))
    return found


def insert_ignoring_duplicates(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT DO NOTHING, on PostgreSQL and SQLite alike."""
    if not rows:
        return
    builder = postgresql_insert if on_postgresql(session) else sqlite_insert
    connection(session).execute(builder(model.__table__).on_conflict_do_nothing(), rows)


def changed(session: Session, statement: Executable) -> int:
    """Execute a compare-and-set UPDATE and return how many rows it changed."""
    return int(cast(CursorResult[Any], session.execute(statement)).rowcount)
