"""The SQLite statements of the run lifecycle (DESIGN §8): a table's busy and queued runs, and the
started tasks the sweep asks AWS about. Built once, with bound parameters, like
:mod:`controller.db.sqlite_statements` (whose tables and columns they use)."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Integer, Table, bindparam, delete, insert, select, text, update

from controller.core import records
from controller.core.runs import IN_PROGRESS_STATES, QUEUED
from controller.db.predicates import FAILED_RERUN
from controller.db.run_models import BackfillRow, BackfillRunRow
from controller.db.sqlite_statements import TASK_COLUMNS, runs, tasks

backfills = cast(Table, BackfillRow.__table__)
backfill_runs = cast(Table, BackfillRunRow.__table__)

_LIMIT = bindparam("limit", type_=Integer)

BUSY_RUNS = (
    select(runs.c.id)
    .where(runs.c.table_id == bindparam("table_id"), runs.c.status.in_(IN_PROGRESS_STATES))
    .order_by(runs.c.id)
)
QUEUED_RUNS = (
    select(runs.c.id)
    .where(runs.c.table_id == bindparam("table_id"), runs.c.status == QUEUED)
    .order_by(runs.c.fire_at, runs.c.id)
    .limit(_LIMIT)
)
#: The partial index's predicate, literally (a state given as a parameter could not use the index).
FAILED_RERUNS = (
    select(runs.c.id, runs.c.table_id, runs.c.partition_key)
    .where(text(FAILED_RERUN))
    .order_by(runs.c.id)
    .limit(_LIMIT)
)
QUEUED_TABLES = select(runs.c.table_id).where(runs.c.status == QUEUED).group_by(runs.c.table_id).limit(_LIMIT)
FORGET_TASKS = delete(tasks).where(
    tasks.c.run_id == bindparam("run_id"),
    tasks.c.attempt == bindparam("attempt"),
    tasks.c.status.in_((records.TASK_PENDING, records.TASK_FAILED)),
)
TASKS_TO_CHECK = (
    select(*TASK_COLUMNS, tasks.c.deadline_at)
    .where(tasks.c.status == records.TASK_STARTED, tasks.c.check_at <= bindparam("now"))
    .order_by(tasks.c.check_at, tasks.c.id)
    .limit(_LIMIT)
)
POSTPONE_CHECK = update(tasks).where(tasks.c.id == bindparam("b_id")).values(check_at=bindparam("b_check_at"))
INSERT_BACKFILL = insert(backfills).returning(backfills.c.id)
INSERT_BACKFILL_RUNS = insert(backfill_runs)
