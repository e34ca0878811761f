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
from collections.abc import Callable
from datetime import datetime
from typing import Any

from jinja2 import TemplateError

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit, ScheduleRequest, TaskRequest, schedule_name
from controller.core.records import TASK_FAILED, TASK_PENDING, TASK_SUCCEEDED, NewTask
from controller.core.runs import CANCELLED, DISPATCHING, FAILED, QUEUED, RUNNING, SCHEDULED, Run, due
from controller.core.specs import TableSpec
from controller.core.templates import render_params
from controller.services import slots
from controller.services.ports import Transaction
from controller.services.registering import complete_run
from controller.services.transitions import fail, move, stop_started, table_of

logger = logging.getLogger("flux_control.runtime")


def claim(
    tx: Transaction,
    catalog: Catalog,
    run_id: int,
    now: datetime,
    after: AfterCommit,
    new_token: Callable[[], str],
) -> tuple[str, list[TaskRequest]]:
    """Claim a due scheduled run; returns what happened and the tasks to start (none: nothing to do).

    Each task gets a token of its own from ``new_token``, recorded with it: the secret it reports with
    (a transaction tried again draws new ones; only the committed ones are ever sent)."""
    run = tx.lock_run(run_id)
    if run is None:
        logger.warning("fire for an unknown run ignored", extra={"run_id": run_id})
        return "unknown", []
    if run.status not in (SCHEDULED, QUEUED):
        return f"ignored: run is {run.status}", []
    table_name = catalog.names.get(run.table_id)
    if run.status == SCHEDULED and not due(run.fire_at, now):
        _rearm(tx, run, table_name, after)
        return "ignored: not due yet (its schedule is written again)", []
    spec = catalog.table(table_name) if table_name else None
    if spec is None or table_name is None:
        name = table_of(tx, catalog, run)
        move(tx, after, run, CANCELLED, now, name, reason="the table was deleted by a reconcile")
        return "cancelled: table deleted", []
    waiting = slots.take_slot(tx, spec, run, table_name, now, after)
    if waiting is not None:
        return waiting, []
    claimed = move(tx, after, run, DISPATCHING, now, table_name)
    if claimed is None:  # pragma: no cover - the row lock makes this impossible; keep the guard
        return "ignored: claimed elsewhere", []
    try:
        requests = _requests(tx, spec, claimed, new_token)
    except TemplateError as exc:
        move(tx, after, claimed, FAILED, now, table_name, reason=f"task parameters did not render: {exc}")
        return "failed: parameters did not render", []
    if not requests:
        return _succeed_without_tasks(tx, catalog, claimed, table_name, now, after), []
    tx.add_tasks(claimed, [NewTask(r.alias, r.type, r.target, r.params, r.token) for r in requests])
    return "dispatching", requests


def _rearm(tx: Transaction, run: Run, table_name: str | None, after: AfterCommit) -> None:
    """An early fire (a stale schedule written before a push, or the scheduler early) dispatches
    nothing: the schedule, which deleted itself by firing, is written again for the fire time."""
    assert run.fire_at is not None  # a scheduled run has a fire time
    name = run.schedule_name or schedule_name(run.id, table_name or tx.table_name(run.table_id) or "")
    after.schedule.append(ScheduleRequest(name, run.id, run.fire_at))


def _requests(tx: Transaction, spec: TableSpec, run: Run, new_token: Callable[[], str]) -> list[TaskRequest]:
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
            token=new_token(),
            timeout_seconds=task.timeout_seconds,
            auth_secret=task.auth_secret,
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
    """A table without tasks succeeds at once; its execution is registered and cascades (or, when
    its key no longer fits the table, it succeeds with that reason: :mod:`~controller.services.settling`)."""
    problem = complete_run(tx, catalog, run, table, "flux-control", now, after)
    return "succeeded: no tasks" + (f"; {problem}" if problem else "")


def finish(
    tx: Transaction,
    catalog: Catalog,
    requests: list[TaskRequest],
    errors: dict[str, str],
    now: datetime,
    after: AfterCommit,
    limited: frozenset[str] = frozenset(),
) -> str:
    """End the dispatch: failed if a task did not start, else running (or succeeded, if every task
    finished meanwhile). Returns what happened.

    ``limited``: the tasks whose target refused them for its own concurrency limit. When no task of
    the attempt started, the run is queued again instead of failed (its tasks forgotten: the next
    claim records them anew); with a task already started it fails (a retry starts every task again).
    """
    first = requests[0]
    run = tx.lock_run(first.run_id)
    assert run is not None
    if limited and run.status == DISPATCHING and set(errors) == {r.alias for r in requests}:
        return _queue_again(tx, run, first.table, errors, limited, now, after)
    for alias, error in errors.items():
        tx.task_not_started(first.run_id, first.attempt, alias, error, now)
    if run.status != DISPATCHING or run.attempt != first.attempt:
        # A task's completion (a failure event, a report) ended the attempt while others started:
        # those run on for nothing, and hold a slot the attempt gave up.
        stop_started(tx, after, run.id, first.attempt, "stopped: its run ended while it was starting", now)
        if errors:
            return "failed: " + _start_errors(errors)
        return f"dispatched; the run is already {run.status}"
    if errors:
        reason = _start_errors(errors)
        fail(tx, after, run, first.table, now, reason, task_error="stopped: another task did not start")
        return "failed: " + reason
    running = move(tx, after, run, RUNNING, now, first.table)
    assert running is not None  # locked, and dispatching
    tasks = tx.tasks_of(run.id, first.attempt)
    if any(task.status != TASK_SUCCEEDED for task in tasks):
        return "running"
    # Every task succeeded while the others were starting: the run succeeds now, as completion would
    # have made it (the source is the kind of the task that finished last).
    source = "step_function" if tasks[-1].type == "step_function" else "glue"
    problem = complete_run(tx, catalog, running, first.table, source, now, after)
    return "succeeded: its tasks finished while it was dispatching" + (f"; {problem}" if problem else "")


def _start_errors(errors: dict[str, str]) -> str:
    return "; ".join(f"task {alias} did not start: {error}" for alias, error in sorted(errors.items()))


def _queue_again(
    tx: Transaction,
    run: Run,
    table: str,
    errors: dict[str, str],
    limited: frozenset[str],
    now: datetime,
    after: AfterCommit,
) -> str:
    """Nothing started and a target refused for its own limit: the run waits ``queued`` (DESIGN §8)."""
    tx.forget_tasks(run.id, run.attempt)
    alias = sorted(limited)[0]
    reason = f"queued: the target of task {alias} is at its own concurrency limit: {errors[alias]}"
    move(tx, after, run, QUEUED, now, table, reason=reason)
    return reason


#: Why the sweep fails a run whose dispatch was interrupted before every task's start was recorded.
STUCK_REASON = (
    "dispatch was interrupted; whether its tasks started is unknown: check them, then retry the run"
)


def settle_interrupted(tx: Transaction, catalog: Catalog, run: Run, now: datetime, after: AfterCommit) -> str:
    """Settle a dispatch that never ended (the Lambda died, or its connection at the last commit) from
    what is stored: ``"settled"`` or ``"failed"``.

    Every task's start recorded (or the task settled since): only the end was lost, and the run goes
    on as :func:`finish` would have left it — running, or succeeded if every task finished. A task
    whose start is not recorded may or may not have started: the run fails, for a person to check
    (starting it again could run the job twice).
    """
    table = table_of(tx, catalog, run)
    tasks = tx.tasks_of(run.id, run.attempt)
    if not tasks or any(task.status == TASK_PENDING for task in tasks):
        move(tx, after, run, FAILED, now, table, reason=STUCK_REASON)
        return "failed"
    failed = [task for task in tasks if task.status == TASK_FAILED]
    if failed:
        reason = f"task {failed[0].alias} {failed[0].error or 'failed'}"
        fail(tx, after, run, table, now, reason, task_error=f"stopped: task {failed[0].alias} failed")
        return "failed"
    running = move(tx, after, run, RUNNING, now, table)
    if running is not None and all(task.status == TASK_SUCCEEDED for task in tasks):
        source = "step_function" if tasks[-1].type == "step_function" else "glue"
        complete_run(tx, catalog, running, table, source, now, after)
    return "settled"
