"""Completion: tasks settle from Glue / Step Functions events; a run ends when its tasks have.

When every task of a run succeeded, the run succeeds and an execution of its table is registered
for its key (source ``glue`` or ``step_function``), which cascades downstream. Duplicate and
out-of-order events find the task already settled and change nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from controller.db.graph_store import RuntimeGraph
from controller.db.runtime_models import RunRow, TaskDispatchRow
from controller.db.runtime_store import changed
from controller.runs import DISPATCHING, FAILED, RUNNING
from controller.runtime.context import Effects, Runtime
from controller.runtime.dispatch import set_status
from controller.runtime.effects import perform
from controller.runtime.errors import Conflict, NotFound
from controller.runtime.opening import newest_approvals, summary_of
from controller.runtime.registration import ExecutionInput, check_token, register_in

logger = logging.getLogger("flux_control.runtime")

GLUE_SUCCESS, GLUE_FAILURE = {"SUCCEEDED"}, {"FAILED", "TIMEOUT", "STOPPED", "ERROR"}
SFN_SUCCESS, SFN_FAILURE = {"SUCCEEDED"}, {"FAILED", "TIMED_OUT", "ABORTED"}


def task_state_changed(
    runtime: Runtime, source: str, external_id: str, state: str, message: str | None
) -> str:
    """Settle the task AWS knows as ``external_id`` (a JobRunId or an executionArn)."""
    success, failure = (GLUE_SUCCESS, GLUE_FAILURE) if source == "glue" else (SFN_SUCCESS, SFN_FAILURE)
    if state not in success | failure:
        return f"ignored: {state} is not a final state"

    def work(session: Session, effects: Effects) -> str:
        graph = runtime.graphs.get(session)
        return _settle(
            session, graph, source, external_id, state in success, message or state, runtime.clock(), effects
        )

    return perform(runtime, work)


def _settle(
    session: Session,
    graph: RuntimeGraph,
    source: str,
    external_id: str,
    succeeded: bool,
    message: str,
    now: datetime,
    effects: Effects,
) -> str:
    task = session.execute(
        select(TaskDispatchRow).where(TaskDispatchRow.external_id == external_id).with_for_update()
    ).scalar()
    if task is None:
        logger.warning("state change for an unknown task ignored", extra={"external_id": external_id})
        return "ignored: unknown task"
    status = "succeeded" if succeeded else "failed"
    settled = update(TaskDispatchRow).where(
        TaskDispatchRow.id == task.id, TaskDispatchRow.status == "started"
    )
    if (
        changed(session, settled.values(status=status, finished_at=now, error=None if succeeded else message))
        != 1
    ):
        return f"ignored: task already {task.status}"
    run = session.get(RunRow, task.run_id, with_for_update=True)
    assert run is not None
    table = graph.names.get(run.table_id, str(run.table_id))
    if run.status not in (DISPATCHING, RUNNING) or run.attempt != task.attempt:
        return f"task settled; run is {run.status}"
    if not succeeded:
        set_status(session, run, FAILED, now, effects, table, reason=f"task {task.alias} {message}")
        return "run failed"
    open_tasks = session.execute(
        select(func.count())
        .select_from(TaskDispatchRow)
        .where(
            TaskDispatchRow.run_id == run.id,
            TaskDispatchRow.attempt == run.attempt,
            TaskDispatchRow.status != "succeeded",
        )
    ).scalar()
    if open_tasks or run.status != RUNNING:
        return "task succeeded; the run waits for its other tasks"
    item = ExecutionInput(table, dict(run.partitions), source, run_id=run.id)
    register_in(session, graph, [item], None, now, effects)
    return "run succeeded"


def fail_run(runtime: Runtime, run_id: int, reason: str | None, token: str | None = None) -> dict[str, Any]:
    """``POST /runs/{id}/fail``: a task reports failure (the path for SQS and Lambda tasks); ``token``,
    when given, must be one the run's current attempt started a task with."""

    def work(session: Session, effects: Effects) -> dict[str, Any]:
        graph = runtime.graphs.get(session)
        run = session.get(RunRow, run_id, with_for_update=True)
        if run is None:
            raise NotFound(f"unknown run {run_id}")
        if run.status not in (DISPATCHING, RUNNING):
            raise Conflict(f"run {run_id} is {run.status}, not in progress")
        if token is not None:
            check_token(session, run, token)
        table = graph.names.get(run.table_id, str(run.table_id))
        now = runtime.clock()
        message = reason or "reported as failed"
        set_status(session, run, FAILED, now, effects, table, reason=message)
        session.execute(
            update(TaskDispatchRow)
            .where(TaskDispatchRow.run_id == run.id, TaskDispatchRow.status.in_(("pending", "started")))
            .values(status="failed", error=message, finished_at=now)
        )
        session.refresh(run)
        return summary_of(run, table, newest_approvals(session, [run_id]).get(run_id))

    return perform(runtime, work)
