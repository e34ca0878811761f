"""The transactions of firing a run: claim it (``scheduled → dispatching``, its tasks recorded as
pending), and settle the dispatch once each task's start was recorded. :func:`controller.services.firing.fire`
runs them, starting the tasks in between.

The claim commits before any task starts, so a duplicate or late fire finds the run no longer
``scheduled`` and does nothing: a task is never started twice by two fires. Each started task's
external id commits as soon as AWS returns it: while the next tasks start, the ones already started
may finish, and their completion events must find them. Such an event settles the task while the run
is still ``dispatching`` (a failure fails the run); when the dispatch ends, a run whose tasks all
succeeded meanwhile succeeds at once.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from jinja2 import TemplateError

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit, TaskRequest
from controller.core.records import TASK_SUCCEEDED, NewTask
from controller.core.runs import CANCELLED, DISPATCHING, FAILED, RUNNING, SCHEDULED, Run, due
from controller.core.specs import TableSpec
from controller.core.templates import render_params
from controller.services.ports import Transaction
from controller.services.registering import ExecutionInput, register_in
from controller.services.transitions import move

logger = logging.getLogger("flux_control.runtime")


def claim(
    tx: Transaction, catalog: Catalog, run_id: int, now: datetime, after: AfterCommit
) -> tuple[str, list[TaskRequest]]:
    """Claim a due scheduled run; returns what happened and the tasks to start (none: nothing to do)."""
    run = tx.lock_run(run_id)
    if run is None:
        logger.warning("fire for an unknown run ignored", extra={"run_id": run_id})
        return "unknown", []
    if run.status != SCHEDULED:
        return f"ignored: run is {run.status}", []
    if not due(run.fire_at, now):
        return "ignored: not due yet (the run was pushed)", []
    table_name = catalog.names.get(run.table_id)
    spec = catalog.table(table_name) if table_name else None
    if spec is None or table_name is None:
        name = tx.table_name(run.table_id) or str(run.table_id)
        move(tx, after, run, CANCELLED, now, name, reason="the table was deleted by a reconcile")
        return "cancelled: table deleted", []
    claimed = move(tx, after, run, DISPATCHING, now, table_name)
    if claimed is None:  # pragma: no cover - the row lock makes this impossible; keep the guard
        return "ignored: claimed elsewhere", []
    try:
        requests = _requests(tx, spec, claimed)
    except TemplateError as exc:
        move(tx, after, claimed, FAILED, now, table_name, reason=f"task parameters did not render: {exc}")
        return "failed: parameters did not render", []
    if not requests:
        return _succeed_without_tasks(tx, catalog, claimed, table_name, now, after), []
    tx.add_tasks(claimed, [NewTask(r.alias, r.type, r.target, r.params) for r in requests])
    return "dispatching", requests


def _requests(tx: Transaction, spec: TableSpec, run: Run) -> list[TaskRequest]:
    context = {
        "partitions": dict(run.partitions),
        "table": {"name": spec.name, "description": spec.description, "owner": spec.owner},
        "run": {"id": run.id, "attempt": run.attempt, "manual": run.manual, "reason": run.reason},
        "triggers": _triggers(tx, run.id),
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


def _triggers(tx: Transaction, run_id: int) -> dict[str, list[dict[str, Any]]]:
    triggers: dict[str, list[dict[str, Any]]] = {}
    for name, partitions in tx.trigger_partitions(run_id):
        triggers.setdefault(name, []).append(partitions)
    return triggers


def _succeed_without_tasks(
    tx: Transaction, catalog: Catalog, run: Run, table: str, now: datetime, after: AfterCommit
) -> str:
    """A table without tasks succeeds at once; its execution is registered and cascades."""
    item = ExecutionInput(table, dict(run.partitions), "flux-control", run_id=run.id)
    register_in(tx, catalog, [item], None, now, after)
    return "succeeded: no tasks"


def finish(
    tx: Transaction,
    catalog: Catalog,
    requests: list[TaskRequest],
    errors: dict[str, str],
    now: datetime,
    after: AfterCommit,
) -> str:
    """End the dispatch: failed if a task did not start, else running (or succeeded, if every task
    finished meanwhile). Returns what happened."""
    first = requests[0]
    for alias, error in errors.items():
        tx.task_not_started(first.run_id, first.attempt, alias, error, now)
    run = tx.lock_run(first.run_id)
    assert run is not None
    if errors:
        reason = "; ".join(f"task {alias} did not start: {error}" for alias, error in sorted(errors.items()))
        if run.status == DISPATCHING:  # else a completion (a failure event) already ended it
            move(tx, after, run, FAILED, now, first.table, reason=reason)
        return "failed: " + reason
    running = move(tx, after, run, RUNNING, now, first.table) if run.status == DISPATCHING else None
    if running is None:
        # A task's completion (a failure event, a report by the task) settled the run meanwhile.
        return f"dispatched; the run is already {run.status}"
    tasks = tx.tasks_of(run.id, first.attempt)
    if any(task.status != TASK_SUCCEEDED for task in tasks):
        return "running"
    # Every task succeeded while the others were starting: the run succeeds now, as completion would
    # have made it (the source is the kind of the task that finished last).
    source = "step_function" if tasks[-1].type == "step_function" else "glue"
    item = ExecutionInput(first.table, dict(running.partitions), source, run_id=run.id)
    register_in(tx, catalog, [item], None, now, after)
    return "succeeded: its tasks finished while it was dispatching"
