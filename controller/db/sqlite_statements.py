"""The SQLAlchemy Core statements of :mod:`controller.db.sqlite_store`, and the core values their rows
make.

Statements with a fixed shape are built once, with bound parameters (lists through expanding ones):
SQLAlchemy compiles each once per engine. Those whose shape depends on the input (the probe of gates,
the columns an UPDATE sets) are built by the functions here. Rows are read only through typed
columns, so every datetime comes back aware and in UTC (:class:`~controller.db.base.UTCDateTime`).

Updates name their parameters ``b_…``: SQLAlchemy reserves a column's own name for its SET value.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from controller.core import records
from controller.core.gates import Probe
from controller.core.records import (
    Approval,
    NewExecution,
    NewRun,
    NewTask,
    StoredExecution,
    Task,
)
from controller.core.runs import DISPATCHING, OPEN_STATES, RUN_FIELDS, SCHEDULED, Run, RunEvent
from controller.db.definition_models import ReconcileRevision, TableRow
from controller.db.run_models import (
    ApprovalRow,
    ExecutionRow,
    ExecutionValueRow,
    RunEventRow,
    RunRow,
    RunTriggerRow,
    TaskDispatchRow,
)

revisions = cast(Table, ReconcileRevision.__table__)
tables = cast(Table, TableRow.__table__)
executions = cast(Table, ExecutionRow.__table__)
values = cast(Table, ExecutionValueRow.__table__)
runs = cast(Table, RunRow.__table__)
triggers = cast(Table, RunTriggerRow.__table__)
tasks = cast(Table, TaskDispatchRow.__table__)
approvals = cast(Table, ApprovalRow.__table__)
events = cast(Table, RunEventRow.__table__)

TASK_FIELDS = tuple(Task.__dataclass_fields__)
APPROVAL_FIELDS = tuple(Approval.__dataclass_fields__)
#: A run's columns in the order of :class:`~controller.core.runs.Run`'s fields: rows select them first.
RUN_COLUMNS = tuple(runs.c[name] for name in RUN_FIELDS)
TASK_COLUMNS = tuple(tasks.c[name] for name in TASK_FIELDS)
APPROVAL_COLUMNS = tuple(approvals.c[name] for name in APPROVAL_FIELDS)
_RUN_WIDTH = len(RUN_FIELDS)
_LIMIT = bindparam("limit", type_=Integer)


# --- rows to values ----------------------------------------------------------------------------------
def run_of(row: Sequence[Any]) -> Run:
    """The run a row starting with :data:`RUN_COLUMNS` holds."""
    return Run(*row[:_RUN_WIDTH])


def task_of(row: Sequence[Any]) -> Task:
    """The task a row of :data:`TASK_COLUMNS` holds."""
    return Task(*row)


def approval_of(row: Sequence[Any]) -> Approval:
    """The approval a row of :data:`APPROVAL_COLUMNS` holds."""
    return Approval(*row)


def stored_execution_of(row: Sequence[Any]) -> StoredExecution:
    """The execution a row of :data:`EXECUTIONS_BY_KEY` holds."""
    return StoredExecution(*row)


# --- values to rows ----------------------------------------------------------------------------------
def execution_rows(found: Sequence[NewExecution], at: datetime, by: str | None) -> list[dict[str, Any]]:
    """Parameters of :data:`INSERT_EXECUTIONS`, in the order given."""
    return [
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
        for e in found
    ]


def value_rows(found: Sequence[NewExecution], ids: Sequence[int]) -> list[dict[str, Any]]:
    """Parameters of :data:`INSERT_VALUES`: the partition values of executions inserted as ``ids``."""
    return [
        {"execution_id": i, "name": name, "table_id": e.table_id, "value": value}
        for i, e in zip(ids, found, strict=True)
        for name, value in e.values
    ]


def run_rows(
    found: Sequence[NewRun], now: datetime, manual: bool, reason: str | None
) -> list[dict[str, Any]]:
    """Parameters of :data:`INSERT_RUNS`: attempt 1, first and last triggered ``now``."""
    return [
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
        for r in found
    ]


def task_rows(run: Run, found: Sequence[NewTask]) -> list[dict[str, Any]]:
    """Parameters of :data:`INSERT_TASKS`: pending, for the run's current attempt."""
    return [
        {
            "run_id": run.id,
            "attempt": run.attempt,
            "alias": t.alias,
            "type": t.type,
            "target": t.target,
            "status": records.TASK_PENDING,
            "request": t.request,
            "token": t.token,
        }
        for t in found
    ]


def event_rows(found: Sequence[RunEvent], batch: str, now: datetime) -> list[dict[str, Any]]:
    """Parameters of :data:`INSERT_EVENTS` under ``batch``; an event without a time is dated ``now``
    (the column is NOT NULL, and the sweep ages events by it)."""
    return [
        {"run_id": e.run_id, "created_at": e.at or now, "batch": batch, "detail": e.detail()} for e in found
    ]


# --- definitions -------------------------------------------------------------------------------------
NEWEST_REVISION = select(func.max(revisions.c.id))
TABLE_NAME = select(tables.c.name).where(tables.c.id == bindparam("table_id"))

# --- executions --------------------------------------------------------------------------------------
INSERT_EXECUTIONS = insert(executions).returning(executions.c.id, sort_by_parameter_order=True)
INSERT_VALUES = insert(values)
#: By the key alone, whatever the table (the unique index ``uq_executions_idempotency``).
EXECUTIONS_BY_KEY = select(
    executions.c.id, executions.c.table_id, executions.c.idempotency_key, executions.c.partitions
).where(executions.c.idempotency_key.in_(bindparam("keys", expanding=True)))
RUNS_TRIGGERED_BY = (
    select(*RUN_COLUMNS, triggers.c.execution_id)
    .join_from(runs, triggers, triggers.c.run_id == runs.c.id)
    .where(triggers.c.execution_id.in_(bindparam("ids", expanding=True)))
    .order_by(triggers.c.execution_id, runs.c.id)
)
TRIGGER_PARTITIONS = (
    select(tables.c.name, executions.c.partitions)
    .join_from(executions, tables, tables.c.id == executions.c.table_id)
    .join(triggers, triggers.c.execution_id == executions.c.id)
    .where(triggers.c.run_id == bindparam("run_id"))
    .order_by(executions.c.id)
)


def probe_query(probes: Sequence[Probe], ids: dict[str, int]) -> Select[Any]:
    """(id, table id, key text) of the executions answering ``probes``: one statement whatever the
    history (an omitted partition value, NULL, agrees with any value)."""
    whole = [ids[p.table] for p in probes if p.partition is None]
    matches = [
        and_(
            values.c.table_id == ids[p.table],
            values.c.name == p.partition,
            or_(values.c.value == str(p.value), values.c.value.is_(None)),
        )
        for p in probes
        if p.partition is not None
    ]
    conditions: list[ColumnElement[bool]] = []
    if matches:
        conditions.append(executions.c.id.in_(select(values.c.execution_id).where(or_(*matches))))
    if whole:
        conditions.append(executions.c.table_id.in_(whole))
    columns = executions.c
    return select(columns.id, columns.table_id, columns.partition_key).where(or_(*conditions))


# --- runs --------------------------------------------------------------------------------------------
# No FOR UPDATE: SQLite has no row locks, and BEGIN IMMEDIATE already serialises every writer.
RUN_BY_ID = select(*RUN_COLUMNS).where(runs.c.id == bindparam("run_id"))
RUNS_BY_ID = select(*RUN_COLUMNS).where(runs.c.id.in_(bindparam("ids", expanding=True)))
_NEWEST_APPROVAL = (
    select(func.max(approvals.c.id))
    .where(approvals.c.run_id == runs.c.id)
    .scalar_subquery()
    .label("approval")
)
#: Candidates only: tables × keys; the caller keeps the pairs it asked for.
OPEN_RUNS = select(*RUN_COLUMNS, _NEWEST_APPROVAL).where(
    runs.c.table_id.in_(bindparam("tables", expanding=True)),
    runs.c.partition_key.in_(bindparam("keys", expanding=True)),
    runs.c.status.in_(OPEN_STATES),
)
RUN_OF_KEY = (
    select(*RUN_COLUMNS)
    .where(
        runs.c.table_id == bindparam("table_id"),
        runs.c.partition_key == bindparam("key"),
        runs.c.status.in_(bindparam("states", expanding=True)),
    )
    .order_by(runs.c.id)
    .limit(1)
)
# Rows come back matched by (table id, key text), unique among open runs: RETURNING in parameter
# order would make SQLAlchemy insert row by row on SQLite.
INSERT_RUNS = insert(runs).returning(*RUN_COLUMNS)
INSERT_TRIGGERS = sqlite_insert(triggers).on_conflict_do_nothing()
STUCK_DISPATCHING = (
    select(*RUN_COLUMNS)
    .where(runs.c.status == DISPATCHING, runs.c.updated_at <= bindparam("before"))
    .order_by(runs.c.id)
    .limit(_LIMIT)
)


@lru_cache(maxsize=64)
def push_runs(columns: tuple[str, ...]) -> Update:
    """Set ``columns`` of runs by ``b_id`` (an executemany: one row of ``b_…`` values per run)."""
    return (
        update(runs)
        .where(runs.c.id == bindparam("b_id"))
        .values({name: bindparam(f"b_{name}") for name in columns})
    )


@lru_cache(maxsize=64)
def apply_change(columns: tuple[str, ...]) -> Update:
    """Set ``columns`` of run ``b_id`` provided it is still in state ``b_expected`` (compare-and-set)."""
    return (
        update(runs)
        .where(runs.c.id == bindparam("b_id"), runs.c.status == bindparam("b_expected"))
        .values({name: bindparam(f"b_{name}") for name in columns})
    )


# --- task dispatches ---------------------------------------------------------------------------------
INSERT_TASKS = insert(tasks)
# SQLite sorts NULLs first: the unfinished tasks go last explicitly.
TASKS_OF = (
    select(*TASK_COLUMNS)
    .where(tasks.c.run_id == bindparam("run_id"), tasks.c.attempt == bindparam("attempt"))
    .order_by(tasks.c.finished_at.nulls_last(), tasks.c.id)
)
_PENDING_TASK = update(tasks).where(
    tasks.c.run_id == bindparam("b_run_id"),
    tasks.c.attempt == bindparam("b_attempt"),
    tasks.c.alias == bindparam("b_alias"),
    tasks.c.status == records.TASK_PENDING,
)
TASK_STARTED = _PENDING_TASK.values(
    status=records.TASK_STARTED,
    external_id=bindparam("b_external_id"),
    started_at=bindparam("b_at"),
    check_at=bindparam("b_check_at"),
    deadline_at=bindparam("b_deadline_at"),
)
TASK_NOT_STARTED = _PENDING_TASK.values(
    status="failed", error=bindparam("b_error"), finished_at=bindparam("b_at")
)
TASK_BY_EXTERNAL_ID = (
    select(*TASK_COLUMNS).where(tasks.c.external_id == bindparam("external_id")).order_by(tasks.c.id).limit(1)
)
SETTLE_TASK = (
    update(tasks)
    .where(tasks.c.id == bindparam("b_id"), tasks.c.status == records.TASK_STARTED)
    .values(status=bindparam("b_status"), finished_at=bindparam("b_at"), error=bindparam("b_error"))
)
_UNFINISHED_TASKS = update(tasks).where(
    tasks.c.run_id.in_(bindparam("b_run_ids", expanding=True)), tasks.c.status.in_(records.TASK_UNFINISHED)
)
SETTLE_UNFINISHED = _UNFINISHED_TASKS.values(status=bindparam("b_status"), finished_at=bindparam("b_at"))
SETTLE_UNFINISHED_WITH_ERROR = _UNFINISHED_TASKS.values(
    status=bindparam("b_status"), finished_at=bindparam("b_at"), error=bindparam("b_error")
)

# --- approvals ---------------------------------------------------------------------------------------
# At most one pending approval per run (a partial unique index): a second request is a no-op.
INSERT_APPROVALS = sqlite_insert(approvals).on_conflict_do_nothing()
NEWEST_APPROVALS = (
    select(approvals.c.run_id, func.max(approvals.c.id))
    .where(approvals.c.run_id.in_(bindparam("run_ids", expanding=True)))
    .group_by(approvals.c.run_id)
)
APPROVAL_BY_ID = select(*APPROVAL_COLUMNS).where(approvals.c.id == bindparam("approval_id"))
DECIDE_APPROVAL = (
    update(approvals)
    .where(approvals.c.id == bindparam("b_id"), approvals.c.status == records.APPROVAL_PENDING)
    .values(
        status=bindparam("b_status"),
        decided_by=bindparam("b_by"),
        decided_at=bindparam("b_at"),
        comment=bindparam("b_comment"),
    )
)
CANCEL_PENDING_APPROVALS = (
    update(approvals)
    .where(approvals.c.run_id == bindparam("b_run_id"), approvals.c.status == records.APPROVAL_PENDING)
    .values(status=records.APPROVAL_CANCELLED, decided_at=bindparam("b_at"))
)

# --- outbox and sweep --------------------------------------------------------------------------------
INSERT_EVENTS = insert(events)
UNSYNCED_RUNS = (
    select(runs.c.id, runs.c.table_id, runs.c.fire_at)
    .where(
        runs.c.status == SCHEDULED,
        runs.c.fire_at > bindparam("after"),
        or_(runs.c.scheduled_fire_at.is_(None), runs.c.scheduled_fire_at != runs.c.fire_at),
    )
    .order_by(runs.c.id)
    .limit(_LIMIT)
)
OVERDUE_RUNS = (
    select(runs.c.id)
    .where(runs.c.status == SCHEDULED, runs.c.fire_at <= bindparam("before"))
    .order_by(runs.c.id)
    .limit(_LIMIT)
)
UNPUBLISHED_EVENTS = (
    select(events.c.id, events.c.detail)
    .where(events.c.published_at.is_(None), events.c.created_at <= bindparam("before"))
    .order_by(events.c.id)
    .limit(_LIMIT)
)
MARK_PUBLISHED = (
    update(events)
    .where(events.c.id.in_(bindparam("b_ids", expanding=True)))
    .values(published_at=bindparam("b_at"))
)
RUN_STATE = select(runs.c.status, runs.c.fire_at).where(runs.c.id == bindparam("run_id"))
# Runs no longer scheduled holding a written schedule (the partial index ix_runs_schedule_written).
LEFTOVER_SCHEDULES = (
    select(runs.c.id, runs.c.schedule_name, runs.c.scheduled_fire_at)
    .where(
        runs.c.scheduled_fire_at.is_not(None),
        runs.c.status != SCHEDULED,
        runs.c.schedule_name.is_not(None),
    )
    .order_by(runs.c.id)
    .limit(_LIMIT)
)
# Compare-and-set on the fire time written: a schedule written again meanwhile stays a leftover.
FORGET_SCHEDULES = (
    update(runs)
    .where(
        runs.c.id == bindparam("b_id"),
        runs.c.scheduled_fire_at == bindparam("b_written"),
        runs.c.status != SCHEDULED,
    )
    .values(scheduled_fire_at=None)
)
# Compare-and-set on the fire time written: a run pushed meanwhile keeps needing its schedule.
MARK_SCHEDULED = (
    update(runs)
    .where(runs.c.id == bindparam("b_id"), runs.c.fire_at == bindparam("b_fire_at"))
    .values(scheduled_fire_at=bindparam("b_fire_at"), schedule_name=bindparam("b_name"))
)
MARK_BATCH_PUBLISHED = (
    update(events).where(events.c.batch == bindparam("b_batch")).values(published_at=bindparam("b_at"))
)
