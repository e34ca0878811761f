"""Run monitoring (DESIGN §8), a pass of the sweep: started tasks are asked about, and stopped when
they run too long.

EventBridge delivers Glue and Step Functions state changes at least once, but not always: a task
``running`` past its check time (``FLUX_POLL_AFTER_SECONDS`` after its start, then as often) is asked
about (Glue ``GetJobRun``, Step Functions ``DescribeExecution``) and settled, as its event would have,
when it ended. A task past its deadline (its ``timeout_seconds``) is stopped where AWS can stop it, and
its run fails ``timed out after …``. At most ``FLUX_POLL_BATCH`` tasks per sweep, the oldest check
first: one indexed statement finds them, so a sweep costs the same whatever the number of healthy
runs, and a backlog is worked off batch by batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta

from controller.core.errors import Unavailable
from controller.core.records import Task
from controller.services import completion
from controller.services.dependencies import Dependencies

logger = logging.getLogger("flux_control.runtime")


def check_tasks(deps: Dependencies, now: datetime) -> Counter[str]:
    """Ask about (or time out) the started tasks whose check time has come; counts per outcome:
    ``settled``, ``timed_out``, ``running``, ``unreachable`` (AWS could not be asked: next time).
    The next checks of the tasks still running are written in one statement at the end (a sweep
    that dies first leaves them due: the next one asks again)."""
    with deps.store.session() as session:
        due = session.tasks_to_check(now, deps.poll_batch)
    outcomes: Counter[str] = Counter()
    later: list[tuple[int, datetime]] = []
    for task, deadline in due:
        outcome = _check_one(deps, task, deadline, now)
        outcomes[outcome] += 1
        if outcome in ("running", "unreachable"):
            later.append((task.id, _next_check(deps, deadline, now)))
    if later:
        with deps.store.session() as session:
            session.postpone_checks(later)
    return outcomes


def _check_one(deps: Dependencies, task: Task, deadline: datetime | None, now: datetime) -> str:
    assert task.external_id is not None  # a started task has one
    try:
        # Asked first even at the deadline: a task that ended before it (its event lost) is settled
        # as it ended, never stopped and failed as timed out.
        status = deps.tasks.status(task.type, task.target, task.external_id)
        if status is not None and status.finished:
            message = status.message or ("SUCCEEDED" if status.succeeded else "FAILED")
            completion.settle_polled(deps, task.type, task.external_id, status.succeeded, message)
            return "settled"
        if deadline is not None and now >= deadline:
            return _time_out(deps, task, deadline, now)
    except Unavailable:
        raise  # the database: the next sweep tries again, nothing lost
    except Exception:
        logger.exception(
            "could not check a running task; the next check tries again",
            extra={"run_id": task.run_id, "task": task.alias},
        )
        return "unreachable"
    return "running"


def _time_out(deps: Dependencies, task: Task, deadline: datetime, now: datetime) -> str:
    assert task.external_id is not None
    stopped = deps.tasks.stop(task.type, task.target, task.external_id)
    ran = deadline - task.started_at if task.started_at is not None else None
    reason = f"timed out after {_duration(ran)}: task {task.alias} " + (
        "was stopped" if stopped else f"could not be stopped ({task.type} tasks run on)"
    )
    completion.time_out(deps, task.external_id, reason)
    return "timed_out"


def _next_check(deps: Dependencies, deadline: datetime | None, now: datetime) -> datetime:
    later = now + timedelta(seconds=deps.poll_after_seconds)
    return min(later, deadline) if deadline is not None else later


def _duration(value: timedelta | None) -> str:
    """``2 h``, ``90 min``, ``45 s``: the timeout as written, in its largest whole unit."""
    if value is None:
        return "its timeout"
    seconds = round(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
