"""Firing a run: compare-and-set ``scheduled → dispatching``, start its tasks, record what AWS said.

The state change commits before any task starts, so a duplicate or late fire finds the run no
longer ``scheduled`` and does nothing: a task is never started twice by two fires.

Each started task's external id commits as soon as AWS returns it: while the next tasks start (AWS may
be slow, calls are retried), the ones already started may finish, and their completion events must find
them. Such an event settles the task while the run is still ``dispatching`` (a failure fails the run);
when the dispatch ends, a run whose tasks all succeeded meanwhile succeeds at once.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import Update, select, update
from sqlalchemy.orm import Session

from controller.db.graph_store import RuntimeGraph
from controller.db.models import TableRow
from controller.db.runtime_models import ExecutionRow, RunRow, RunTriggerRow, TaskDispatchRow
from controller.db.runtime_store import changed
from controller.runs import CANCELLED, DISPATCHING, FAILED, RUNNING, SCHEDULED, SUCCEEDED, due
from controller.runtime.context import Effects, Runtime
from controller.runtime.effects import perform
from controller.runtime.ports import RunEvent, TaskRequest, TaskStartError
from controller.runtime.registration import ExecutionInput, register_in
from controller.specs import TableSpec
from controller.templates import render_params

logger = logging.getLogger("flux_control.runtime")


def fire(runtime: Runtime, run_id: int) -> str:
    """Fire run ``run_id`` (a schedule, the sweep, or an immediate run); returns what happened."""
    outcome, requests = perform(
        runtime, lambda s, e: _claim(s, runtime.graphs.get(s), run_id, runtime.clock(), e)
    )
    if not requests:
        return outcome
    errors: dict[str, str] = {}
    for request in requests:
        try:
            external_id = runtime.tasks.start(request)
        except TaskStartError as exc:
            errors[request.alias] = str(exc)
            logger.error(
                "task failed to start", extra={"run_id": run_id, "task": request.alias, "error": str(exc)}
            )
            continue
        _record_start(runtime, request, external_id)
    return perform(
        runtime,
        lambda s, e: _finish_dispatch(s, runtime.graphs.get(s), requests, errors, runtime.clock(), e),
    )


def _claim(
    session: Session, graph: RuntimeGraph, run_id: int, now: datetime, effects: Effects
) -> tuple[str, list[TaskRequest]]:
    run = session.get(RunRow, run_id, with_for_update=True)
    if run is None:
        logger.warning("fire for an unknown run ignored", extra={"run_id": run_id})
        return "unknown", []
    if run.status != SCHEDULED:
        return f"ignored: run is {run.status}", []
    if not due(run.fire_at, now):
        return "ignored: not due yet (the run was pushed)", []
    table_name = graph.names.get(run.table_id)
    spec = graph.table(table_name) if table_name else None
    if spec is None or table_name is None:
        set_status(
            session,
            run,
            CANCELLED,
            now,
            effects,
            _table_name(session, run),
            reason="the table was deleted by a reconcile",
        )
        return "cancelled: table deleted", []
    claimed = changed(
        session,
        update(RunRow)
        .where(RunRow.id == run_id, RunRow.status == SCHEDULED)
        .values(status=DISPATCHING, updated_at=now),
    )
    if claimed != 1:  # pragma: no cover - the row lock makes this impossible; keep the guard
        return "ignored: claimed elsewhere", []
    effects.events.append(RunEvent(run.id, table_name, run.partitions, SCHEDULED, DISPATCHING, at=now))
    try:
        requests = _requests(session, spec, run)
    except TemplateError as exc:
        set_status(
            session,
            run,
            FAILED,
            now,
            effects,
            table_name,
            reason=f"task parameters did not render: {exc}",
            old=DISPATCHING,
        )
        return "failed: parameters did not render", []
    if not requests:
        return _succeed_without_tasks(session, graph, run, table_name, now, effects), []
    session.add_all(
        TaskDispatchRow(
            run_id=run.id,
            attempt=run.attempt,
            alias=r.alias,
            type=r.type,
            target=r.target,
            status="pending",
            request=r.params,
        )
        for r in requests
    )
    return "dispatching", requests


def _requests(session: Session, spec: TableSpec, run: RunRow) -> list[TaskRequest]:
    context = {
        "partitions": dict(run.partitions),
        "table": {"name": spec.name, "description": spec.description, "owner": spec.owner},
        "run": {"id": run.id, "attempt": run.attempt, "manual": run.manual, "reason": run.reason},
        "triggers": _triggers(session, run.id),
    }
    return [
        TaskRequest(
            run_id=run.id,
            attempt=run.attempt,
            table=spec.name,
            alias=task.alias,
            type=task.type,
            target=task.target,
            partitions=dict(run.partitions),
            params=render_params(task.params, context),
        )
        for task in spec.tasks
    ]


def _triggers(session: Session, run_id: int) -> dict[str, list[dict[str, Any]]]:
    query = (
        select(TableRow.name, ExecutionRow.partitions)
        .join(ExecutionRow, ExecutionRow.table_id == TableRow.id)
        .join(RunTriggerRow, RunTriggerRow.execution_id == ExecutionRow.id)
        .where(RunTriggerRow.run_id == run_id)
        .order_by(ExecutionRow.id)
    )
    triggers: dict[str, list[dict[str, Any]]] = {}
    for name, partitions in session.execute(query):
        triggers.setdefault(name, []).append(partitions)
    return triggers


def _succeed_without_tasks(
    session: Session, graph: RuntimeGraph, run: RunRow, table: str, now: datetime, effects: Effects
) -> str:
    """A table without tasks succeeds at once; its execution is registered and cascades."""
    session.execute(update(RunRow).where(RunRow.id == run.id).values(status=RUNNING, updated_at=now))
    register_in(
        session,
        graph,
        [ExecutionInput(table, dict(run.partitions), "flux-control", run_id=run.id)],
        None,
        now,
        effects,
    )
    return "succeeded: no tasks"


def _record_start(runtime: Runtime, request: TaskRequest, external_id: str) -> None:
    """Commit a started task's external id, for its completion event to find."""
    task = _dispatch_row(request.run_id, request.attempt, request.alias).where(
        TaskDispatchRow.status == "pending"
    )
    values = {"status": "started", "external_id": external_id, "started_at": runtime.clock()}
    runtime.transact(lambda session, _: session.execute(task.values(**values)))


def _finish_dispatch(
    session: Session,
    graph: RuntimeGraph,
    requests: list[TaskRequest],
    errors: dict[str, str],
    now: datetime,
    effects: Effects,
) -> str:
    first = requests[0]
    for alias, error in errors.items():
        task = _dispatch_row(first.run_id, first.attempt, alias)
        session.execute(
            task.where(TaskDispatchRow.status == "pending").values(
                status="failed", error=error, finished_at=now
            )
        )
    run = session.get(RunRow, first.run_id, with_for_update=True)
    assert run is not None
    if errors:
        reason = "; ".join(f"task {alias} did not start: {error}" for alias, error in sorted(errors.items()))
        set_status(session, run, FAILED, now, effects, first.table, reason=reason, old=DISPATCHING)
        return "failed: " + reason
    if not set_status(session, run, RUNNING, now, effects, first.table, old=DISPATCHING):
        # A task's completion (a failure event, a report by the task) settled the run meanwhile.
        session.refresh(run)
        return f"dispatched; the run is already {run.status}"
    tasks = session.execute(
        select(TaskDispatchRow.status, TaskDispatchRow.type)
        .where(TaskDispatchRow.run_id == run.id, TaskDispatchRow.attempt == first.attempt)
        .order_by(TaskDispatchRow.finished_at, TaskDispatchRow.id)
    ).all()
    if any(status != "succeeded" for status, _ in tasks):
        return "running"
    # Every task succeeded while the others were starting: the run succeeds now, as completion would
    # have made it (the source is the kind of the task that finished last).
    source = "step_function" if tasks[-1].type == "step_function" else "glue"
    session.expire(run)  # its status changed by statement: let completion read it again
    register_in(
        session,
        graph,
        [ExecutionInput(first.table, dict(run.partitions), source, run_id=run.id)],
        None,
        now,
        effects,
    )
    return "succeeded: its tasks finished while it was dispatching"


def _dispatch_row(run_id: int, attempt: int, alias: str) -> Update:
    return update(TaskDispatchRow).where(
        TaskDispatchRow.run_id == run_id, TaskDispatchRow.attempt == attempt, TaskDispatchRow.alias == alias
    )


def set_status(
    session: Session,
    run: RunRow,
    status: str,
    now: datetime,
    effects: Effects,
    table: str,
    *,
    reason: str | None = None,
    old: str | None = None,
) -> bool:
    """Compare-and-set the run's status; records the event. False if the run moved meanwhile."""
    expected = old or run.status
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if status in (SUCCEEDED, FAILED, CANCELLED):
        values["finished_at"] = now
    if reason is not None:
        values["error" if status == FAILED else "reason"] = reason
    statement = update(RunRow).where(RunRow.id == run.id, RunRow.status == expected).values(**values)
    if changed(session, statement) != 1:
        return False
    effects.events.append(RunEvent(run.id, table, run.partitions, expected, status, reason=reason, at=now))
    return True


def _table_name(session: Session, run: RunRow) -> str:
    name = session.execute(select(TableRow.name).where(TableRow.id == run.table_id)).scalar()
    return str(name or run.table_id)
