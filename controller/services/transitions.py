"""The one way the services change a run's state: decided by the core's state machine
(:func:`controller.core.runs.transition`), written by the store with compare-and-set, its event
recorded for the outbox."""

from __future__ import annotations

from datetime import datetime

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit, TaskStop
from controller.core.records import TASK_STARTED
from controller.core.runs import FAILED, Run, transition
from controller.services.ports import Transaction


def move(
    tx: Transaction,
    after: AfterCommit,
    run: Run,
    to: str,
    now: datetime,
    table: str,
    *,
    reason: str | None = None,
    approval_id: int | None = None,
    fire_at: datetime | None = None,
    actor: str | None = None,
) -> Run | None:
    """Move ``run`` to state ``to`` (``actor``: who asked; None: Flux Control itself); the run as
    changed, or None if it moved meanwhile (nothing done)."""
    change = transition(
        run, to, now, table, reason=reason, approval_id=approval_id, fire_at=fire_at, actor=actor
    )
    if not tx.apply(change):
        return None
    after.events.append(change.event)
    return change.applied_to(run)


def fail(
    tx: Transaction,
    after: AfterCommit,
    run: Run,
    table: str,
    now: datetime,
    reason: str,
    *,
    task_error: str | None = None,
    actor: str | None = None,
) -> Run:
    """Fail the in-progress ``run`` with ``reason`` and stop its tasks that run on (see
    :func:`stop_started`; they are settled with ``task_error``, default ``reason``)."""
    failed = move(tx, after, run, FAILED, now, table, reason=reason, actor=actor)
    if failed is None:
        return run
    stop_started(tx, after, run.id, run.attempt, task_error or reason, now)
    return failed


def stop_started(
    tx: Transaction, after: AfterCommit, run_id: int, attempt: int, error: str, now: datetime
) -> None:
    """Settle failed with ``error`` the tasks of the attempt still started, and stop them after
    commit where AWS can: the attempt is over and its slot free (DESIGN §8), so they must not run on
    beside the next run of the table. A task still pending is being started by a dispatch in flight,
    which records it and, finding the attempt over, stops it in turn (:func:`dispatch.finish`)."""
    for task in tx.tasks_of(run_id, attempt):
        if task.status == TASK_STARTED and task.external_id is not None:
            tx.settle_task(task.id, False, error, now)
            after.stop.append(TaskStop(run_id, task.alias, task.type, task.target, task.external_id))


def table_of(tx: Transaction, catalog: Catalog, run: Run) -> str:
    """The name of ``run``'s table, for its events and answers: live, or deleted by a reconcile."""
    return catalog.names.get(run.table_id) or tx.table_name(run.table_id) or str(run.table_id)
