"""Completion: tasks settle from Glue / Step Functions events; a run ends when its tasks have.

When every task of a run succeeded, the run succeeds and an execution of its table is registered
for its key (source ``glue`` or ``step_function``), which cascades downstream; when the definitions
changed so that it cannot be, the run succeeds with that reason (:mod:`controller.services.settling`).
Duplicate and out-of-order events find the task already settled and change nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from controller.core.access import Caller, actor_of
from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit
from controller.core.errors import Conflict, NotFound
from controller.core.records import TASK_SUCCEEDED
from controller.core.runs import IN_PROGRESS_STATES, RUNNING
from controller.services.answers import run_summary
from controller.services.authorization import require
from controller.services.dependencies import Dependencies
from controller.services.firing import perform
from controller.services.ports import Transaction
from controller.services.registering import check_token, complete_run
from controller.services.transitions import fail, table_of

logger = logging.getLogger("flux_control.runtime")

GLUE_SUCCESS, GLUE_FAILURE = {"SUCCEEDED"}, {"FAILED", "TIMEOUT", "STOPPED", "ERROR"}
SFN_SUCCESS, SFN_FAILURE = {"SUCCEEDED"}, {"FAILED", "TIMED_OUT", "ABORTED"}


def task_state_changed(
    deps: Dependencies, source: str, external_id: str, state: str, message: str | None
) -> str:
    """Settle the task AWS knows as ``external_id`` (a JobRunId or an executionArn)."""
    success, failure = (GLUE_SUCCESS, GLUE_FAILURE) if source == "glue" else (SFN_SUCCESS, SFN_FAILURE)
    if state not in success | failure:
        return f"ignored: {state} is not a final state"

    def work(tx: Transaction, after: AfterCommit) -> str:
        catalog = deps.catalog(tx)
        return _settle(
            tx, catalog, source, external_id, state in success, message or state, deps.clock(), after
        )

    return perform(deps, work)


def settle_polled(deps: Dependencies, task_type: str, external_id: str, succeeded: bool, message: str) -> str:
    """Settle a task the sweep found ended by asking AWS (its state-change event was lost), exactly
    as that event would have (DESIGN §8)."""
    source = "step_function" if task_type == "step_function" else "glue"

    def work(tx: Transaction, after: AfterCommit) -> str:
        return _settle(tx, deps.catalog(tx), source, external_id, succeeded, message, deps.clock(), after)

    return perform(deps, work)


def time_out(deps: Dependencies, external_id: str, reason: str) -> str:
    """Fail a task that ran past its ``timeout_seconds`` (already stopped where AWS can) and its run,
    with ``reason`` (``timed out after …``)."""

    def work(tx: Transaction, after: AfterCommit) -> str:
        catalog = deps.catalog(tx)
        return _settle(tx, catalog, "timeout", external_id, False, reason, deps.clock(), after, reason=reason)

    return perform(deps, work)


def _settle(
    tx: Transaction,
    catalog: Catalog,
    source: str,
    external_id: str,
    succeeded: bool,
    message: str,
    now: datetime,
    after: AfterCommit,
    *,
    reason: str | None = None,
) -> str:
    """Settle the task AWS knows as ``external_id``; a failure fails its run with ``reason``
    (default ``task ALIAS MESSAGE``)."""
    task = tx.lock_task(external_id)
    if task is None:
        logger.warning("state change for an unknown task ignored", extra={"external_id": external_id})
        return "ignored: unknown task"
    if not tx.settle_task(task.id, succeeded, None if succeeded else message, now):
        return f"ignored: task already {task.status}"
    run = tx.lock_run(task.run_id)
    assert run is not None
    table = table_of(tx, catalog, run)
    if run.status not in IN_PROGRESS_STATES or run.attempt != task.attempt:
        return f"task settled; run is {run.status}"
    if not succeeded:
        why = reason or f"task {task.alias} {message}"
        fail(tx, after, run, table, now, why, task_error=f"stopped: task {task.alias} failed")
        return "run failed"
    unfinished = [t for t in tx.tasks_of(run.id, run.attempt) if t.status != TASK_SUCCEEDED]
    if unfinished or run.status != RUNNING:
        return "task succeeded; the run waits for its other tasks"
    problem = complete_run(tx, catalog, run, table, source, now, after)
    return "run succeeded" + (f"; {problem}" if problem else "")


def fail_run(
    deps: Dependencies,
    run_id: int,
    reason: str | None,
    token: str | None = None,
    caller: Caller | None = None,
) -> dict[str, Any]:
    """``POST /runs/{id}/fail``: a task reports failure (the path for SQS and Lambda tasks) with its
    ``token`` (one the run's current attempt started a task with), or an operator of the table does
    (DESIGN §7: ``caller``, recorded as the actor)."""

    def work(tx: Transaction, after: AfterCommit) -> dict[str, Any]:
        catalog = deps.catalog(tx)
        run = tx.lock_run(run_id)
        if run is None:
            raise NotFound(f"unknown run {run_id}")
        if run.status not in IN_PROGRESS_STATES:
            raise Conflict(f"run {run_id} is {run.status}, not in progress")
        table = table_of(tx, catalog, run)
        if token is not None:
            check_token(tx, run, token)
        else:
            require("complete", caller, catalog, table, deps.own_account)
        now = deps.clock()
        message = reason or "reported as failed"
        actor = actor_of(caller)
        failed = fail(tx, after, run, table, now, message, actor=actor)
        approval = tx.newest_approvals([run_id]).get(run_id)
        return run_summary(failed.id, table, failed.partitions, failed.status, failed.fire_at, approval)

    return perform(deps, work)
