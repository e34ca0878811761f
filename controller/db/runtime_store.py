"""Runtime queries, each a single statement whatever the fan-out or the history size."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, RowMapping, and_, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from controller.db.runtime_models import ExecutionRow, ExecutionValueRow, RunEventRow, RunRow
from controller.gates import Execution, Probe
from controller.keys import Key, key_from_text, key_text
from controller.runs import OPEN_STATES
from controller.runtime.ports import RunEvent
from controller.specs import TableSpec

RUN_COLUMNS = (
    RunRow.id,
    RunRow.table_id,
    RunRow.partition_key,
    RunRow.partitions,
    RunRow.status,
    RunRow.attempt,
    RunRow.first_trigger_at,
    RunRow.last_trigger_at,
    RunRow.fire_at,
    RunRow.scheduled_fire_at,
    RunRow.schedule_name,
)
_GATE_LOCK = "hashtext(current_schema() || '/flux-control/gate')"


def lock_gates(session: Session, table_ids: Iterable[int]) -> None:
    """Serialise gate decisions per dependent table (PostgreSQL advisory locks, in id order).

    Two registrations of different upstreams of one table must not both miss each other's execution
    (write skew): each takes the dependent's lock before inserting and reading. SQLite needs nothing:
    its writers are already serialised by BEGIN IMMEDIATE.
    """
    ids = sorted(set(table_ids))
    if not ids or session.get_bind().dialect.name != "postgresql":
        return
    statement = (
        f"SELECT pg_advisory_xact_lock({_GATE_LOCK}, CAST(t AS int)) FROM unnest(CAST(:ids AS bigint[])) t"
    )
    session.execute(text(statement), {"ids": ids})


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
    result = session.execute(
        insert(ExecutionRow).returning(ExecutionRow.id, sort_by_parameter_order=True), rows
    )
    return [row[0] for row in result]


def insert_values(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(ExecutionValueRow), rows)


def fetch_probed(
    session: Session, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
) -> dict[str, list[Execution]]:
    """Executions answering the probes, grouped by table name (one statement)."""
    if not probes:
        return {}
    whole = [ids[p.table] for p in probes if p.partition is None]
    matches = [
        and_(
            ExecutionValueRow.table_id == ids[p.table],
            ExecutionValueRow.name == p.partition,
            or_(ExecutionValueRow.value == str(p.value), ExecutionValueRow.value.is_(None)),
        )
        for p in probes
        if p.partition is not None
    ]
    conditions = []
    if matches:
        conditions.append(ExecutionRow.id.in_(select(ExecutionValueRow.execution_id).where(or_(*matches))))
    if whole:
        conditions.append(ExecutionRow.table_id.in_(whole))
    query = select(ExecutionRow.id, ExecutionRow.table_id, ExecutionRow.partition_key).where(or_(*conditions))
    found: dict[str, list[Execution]] = {}
    for execution_id, table_id, key in session.execute(query):
        name = names.get(table_id)
        if name is not None:
            found.setdefault(name, []).append(Execution(execution_id, name, key_from_text(key)))
    return found


def open_runs_for_update(
    session: Session, pairs: Iterable[tuple[int, str]]
) -> dict[tuple[int, str], RowMapping]:
    """The open runs of these (table id, key text) pairs, locked until commit (one statement)."""
    wanted = set(pairs)
    if not wanted:
        return {}
    query = (
        select(*RUN_COLUMNS)
        .where(
            RunRow.table_id.in_({t for t, _ in wanted}),
            RunRow.partition_key.in_({k for _, k in wanted}),
            RunRow.status.in_(OPEN_STATES),
        )
        .with_for_update()
    )
    found = {}
    for row in session.execute(query).mappings():
        if (row["table_id"], row["partition_key"]) in wanted:
            found[(row["table_id"], row["partition_key"])] = row
    return found


def insert_ignoring_duplicates(session: Session, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT DO NOTHING, on PostgreSQL and SQLite alike."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    builder = postgresql_insert if dialect == "postgresql" else sqlite_insert
    session.execute(builder(model).on_conflict_do_nothing(), rows)


def insert_runs(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert runs in one statement (callers read them back with :func:`open_runs_for_update`).

    No RETURNING: with parameter order it makes SQLite insert row by row, one statement per run.
    """
    if rows:
        session.execute(insert(RunRow), rows)


def record_events(session: Session, events: Sequence[RunEvent], batch: str) -> None:
    """Write run state changes to the outbox under ``batch`` (published after commit)."""
    if events:
        rows = [
            {"run_id": e.run_id, "detail": e.detail(), "created_at": e.at, "batch": batch} for e in events
        ]
        session.execute(insert(RunEventRow), rows)


def mark_published(session: Session, batch: str, now: datetime) -> None:
    session.execute(update(RunEventRow).where(RunEventRow.batch == batch).values(published_at=now))


def key_pair(table_id: int, key: Key) -> tuple[int, str]:
    return table_id, key_text(key)


def changed(session: Session, statement: Executable) -> int:
    """Execute a compare-and-set UPDATE and return how many rows it changed."""
    return int(cast(CursorResult[Any], session.execute(statement)).rowcount)
