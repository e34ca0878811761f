"""Runs and their outbox on the runtime's path: the open runs of some keys (locked), new runs with
what triggered them, pushes, the outbox rows of a unit of work, and the record of what AWS did after
it committed. Each a single statement whatever the fan-out (see :mod:`controller.db.runtime_sql` for
the PostgreSQL texts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from controller.db import runtime_sql
from controller.db.runtime_models import ApprovalRow, RunEventRow, RunRow, RunTriggerRow
from controller.db.runtime_store import connection, insert_ignoring_duplicates, on_postgresql, send
from controller.keys import Key
from controller.runs import OPEN_STATES
from controller.runtime.ports import RunEvent

_runs = cast(Table, RunRow.__table__)
_events = cast(Table, RunEventRow.__table__)
_approvals = cast(Table, ApprovalRow.__table__)
#: What the runtime reads of a run to open, push and schedule it.
RUN_COLUMNS = tuple(_runs.c[name] for name in runtime_sql.RUN_COLUMNS)
_NEWEST_APPROVAL = (
    select(func.max(_approvals.c.id))
    .where(_approvals.c.run_id == _runs.c.id)
    .scalar_subquery()
    .label("approval_id")
)
_RUN_TIMES = ("first_trigger_at", "last_trigger_at", "fire_at", "scheduled_fire_at")
#: A run as the runtime handles it: column name → value.
Run = dict[str, Any]


def open_runs_for_update(session: Session, pairs: Iterable[tuple[int, str]]) -> dict[tuple[int, str], Run]:
    """The open runs of these (table id, key text) pairs, locked until commit (one statement), each with
    its newest approval's id (``approval_id``)."""
    wanted = set(pairs)
    if not wanted:
        return {}
    if on_postgresql(session):
        rows: list[Any] = []
        for batch in runtime_sql.batched(sorted(wanted), lambda _: 2):
            tables, keys = list(dict.fromkeys(t for t, _ in batch)), list(dict.fromkeys(k for _, k in batch))
            statement = runtime_sql.open_runs_for_update(len(tables), len(keys))
            rows += send(connection(session), statement, [*tables, *keys])
        runs = [_in_utc(dict(zip(runtime_sql.OPEN_RUN_COLUMNS, row, strict=True))) for row in rows]
        return {
            (r["table_id"], r["partition_key"]): r
            for r in runs
            if (r["table_id"], r["partition_key"]) in wanted
        }
    query = (
        select(*RUN_COLUMNS, _NEWEST_APPROVAL)
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
    if on_postgresql(session):
        return _insert_runs_postgresql(session, runs, triggers, now, manual, reason)
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


def _insert_runs_postgresql(
    session: Session,
    runs: Sequence[NewRun],
    triggers: Sequence[Trigger],
    now: datetime,
    manual: bool,
    reason: str | None,
) -> dict[tuple[int, str], Run]:
    """New runs with the triggers naming them, then the triggers of existing runs: one statement for a
    usual request (several only past :data:`runtime_sql.MAX_PARAMETERS`)."""
    of_new: dict[tuple[int, str], list[Trigger]] = {}
    for t in triggers:
        if t.run_id is None:
            of_new.setdefault((t.table_id, t.partition_key), []).append(t)
    # A new run travels with the triggers that name it; triggers of existing runs go anywhere.
    items: list[tuple[NewRun | None, list[Trigger]]] = [
        (r, of_new.get((r.table_id, r.partition_key), [])) for r in runs
    ] + [(None, [t]) for t in triggers if t.run_id is not None]
    batches = [
        ([r for r, _ in batch if r is not None], [t for _, named in batch for t in named])
        for batch in runtime_sql.batched(items, lambda item: (8 if item[0] else 0) + 4 * len(item[1]))
    ]
    created: dict[tuple[int, str], Run] = {}
    for new, named in batches:
        parameters: list[Any] = []
        for r in new:
            parameters += [r.table_id, r.partition_key, json.dumps(r.partitions), r.status]
            parameters += [manual, reason, now, r.fire_at]
        parameters += [x for t in named for x in (t.run_id, t.table_id, t.partition_key, t.execution_id)]
        statement = runtime_sql.insert_runs_and_triggers(len(new), len(named))
        returned = send(connection(session), statement, parameters, rows=bool(new))
        for row in returned:
            run = _in_utc(dict(zip(runtime_sql.RUN_COLUMNS, row, strict=True)))
            created[(run["table_id"], run["partition_key"])] = run
    return created


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
    if events and on_postgresql(session):
        for part in runtime_sql.batched(events, lambda _: 4):
            parameters = [x for e in part for x in (e.run_id, e.at, batch, json.dumps(e.detail()))]
            send(connection(session), runtime_sql.insert_events(len(part)), parameters, rows=False)
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
        _record_done_postgresql(connection, synced, batch, now)
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


def _record_done_postgresql(
    connection: Connection, synced: Sequence[tuple[int, datetime, str]], batch: str | None, now: datetime
) -> None:
    parts = runtime_sql.batched(synced, lambda _: 3, reserved=2) or [[]]
    statements = []
    for number, part in enumerate(parts, 1):
        published = batch is not None and number == len(parts)
        parameters: list[Any] = [x for row in part for x in row] + ([now, batch] if published else [])
        statements.append((runtime_sql.record_done(len(part), published), parameters))
    if len(statements) > 1:  # past MAX_PARAMETERS: several statements, one transaction
        with connection.begin():
            for statement, parameters in statements:
                send(connection, statement, parameters, rows=False)
        return
    # Autocommit for this one statement, set on the driver connection and put back at once:
    # SQLAlchemy's isolation-level option costs more than the statement and is only undone at
    # checkin (each later transaction then began with "BEGIN ISOLATION LEVEL …").
    driver: Any = connection.connection.driver_connection
    driver.autocommit = True
    try:
        send(connection, *statements[0], rows=False)
    finally:
        driver.autocommit = False
