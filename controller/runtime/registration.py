"""``register_execution``: record that tables produced partitions, and open the gates that opens.

All items of a request are registered in one transaction or none is. Items carrying a ``run_id``
complete that run (the path for SQS and Lambda tasks); items carrying an ``idempotency_key`` seen
before return the first registration and write nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.db.graph_store import GraphCache, RuntimeGraph
from controller.db.runtime_models import ExecutionRow, RunRow, RunTriggerRow, TaskDispatchRow
from controller.db.runtime_store import (
    NewExecution,
    fetch_probed,
    insert_executions,
    lock_gates,
    partition_values,
)
from controller.gates import Execution, GateLock, gate_locks, openings, probes
from controller.keys import InvalidPartition, Key, key_text, make_key
from controller.runs import DISPATCHING, RUNNING, SUCCEEDED
from controller.runtime.context import Effects, Runtime
from controller.runtime.effects import perform
from controller.runtime.errors import Conflict, Forbidden, NotFound, RuntimeProblem, Unprocessable
from controller.runtime.opening import Wanted, newest_approvals, open_or_push, run_summary
from controller.runtime.ports import RunEvent, task_token

MAX_ITEMS = 500


@dataclass(frozen=True, slots=True)
class ExecutionInput:
    table_name: str
    partitions: dict[str, Any]
    source: str
    run_id: int | None = None
    idempotency_key: str | None = None
    #: With ``run_id``: the token the run's task was started with (checked when given).
    token: str | None = None


@dataclass(slots=True)
class Prepared:
    index: int
    item: ExecutionInput
    table_id: int
    key: Key
    execution_id: int | None = None
    replay: dict[str, Any] | None = None  # an idempotent repeat: the first result


def register_executions(runtime: Runtime, items: list[ExecutionInput], user: str | None) -> dict[str, Any]:
    """Register every item (all or none); returns ``{"executions": […], "runs": […]}``."""
    if not items:
        raise Unprocessable("data must hold at least one execution")
    if len(items) > MAX_ITEMS:
        raise Unprocessable(f"at most {MAX_ITEMS} executions per request, got {len(items)}")

    def work(session: Session, effects: Effects) -> dict[str, Any]:
        return _register_current(session, runtime.graphs, items, user, runtime.clock(), effects)

    return perform(runtime, work)


class _StaleGraph(Exception):
    """The cached definitions are older than the database's: decide again with the current ones."""


def _register_current(
    session: Session,
    graphs: GraphCache,
    items: list[ExecutionInput],
    user: str | None,
    now: datetime,
    effects: Effects,
) -> dict[str, Any]:
    """:func:`register_in` with the current definitions, checked without a round trip of its own.

    The cached definitions are used first: the gate-lock statement also reads the newest reconcile
    revision, and a newer one (or an item the cached definitions refuse) means deciding again with
    the definitions reloaded, in the same transaction and before anything was written. The locks the
    first decision took stay held to commit (harmless: a deadlock they could cause with another
    order is detected by PostgreSQL and the transaction runs again).
    """
    cached = graphs.cached()
    if cached is not None:
        try:
            return register_in(session, cached, items, user, now, effects, verified=False)
        except _StaleGraph:
            pass
    return register_in(session, graphs.get(session), items, user, now, effects)


def register_in(
    session: Session,
    graph: RuntimeGraph,
    items: list[ExecutionInput],
    user: str | None,
    now: datetime,
    effects: Effects,
    *,
    verified: bool = True,
) -> dict[str, Any]:
    """The registration inside a caller's transaction (also used when a run completes).

    ``verified=False``: ``graph`` may be stale; :class:`_StaleGraph` is raised, before anything is
    written, when it is (the gate-lock statement reads the newest revision) or when it refuses an item.
    """
    try:
        prepared = [_prepare(graph, index, item) for index, item in enumerate(items)]
    except RuntimeProblem:
        if not verified:
            raise _StaleGraph from None  # the table may be newer than the cached definitions
        raise
    _reject_repeated_keys(prepared)
    _find_replays(session, graph, prepared)
    fresh = [p for p in prepared if p.replay is None]
    revision = _lock_gates(session, graph, fresh)
    if not verified and revision != graph.revision:
        raise _StaleGraph
    reruns = _complete_runs(session, fresh, now, effects)
    ids = insert_executions(session, [_new_execution(graph, p) for p in fresh], now, user)
    for p, execution_id in zip(fresh, ids, strict=True):
        p.execution_id = execution_id
    wanted = _gate_openings(session, graph, fresh) + reruns
    runs = open_or_push(session, graph, wanted, now, effects) if wanted else []
    executions = [p.replay["execution"] if p.replay else _execution_out(p) for p in prepared]
    replayed_runs = [run for p in prepared if p.replay for run in p.replay["runs"]]
    return {"executions": executions, "runs": runs + replayed_runs}


def _lock_gates(session: Session, graph: RuntimeGraph, fresh: list[Prepared]) -> int | None:
    """Lock the gates these executions may open; a completed run's table wholly (it may open again).
    Returns the newest reconcile revision."""
    locks = {GateLock(p.item.table_name) for p in fresh if p.item.run_id is not None} | {
        lock for p in fresh for lock in gate_locks(graph.graph, Execution(0, p.item.table_name, p.key))
    }
    return lock_gates(
        session,
        [graph.ids[lock.table] for lock in locks if lock.key is None],
        [(graph.ids[lock.table], lock.key) for lock in locks if lock.key is not None],
    )


def _prepare(graph: RuntimeGraph, index: int, item: ExecutionInput) -> Prepared:
    table = graph.table(item.table_name)
    if table is None:
        raise NotFound(f"data[{index}]: unknown table {item.table_name!r}", {"index": index})
    try:
        key = make_key(table, item.partitions)
    except InvalidPartition as exc:
        problem = NotFound if exc.status == 404 else Unprocessable
        raise problem(f"data[{index}]: {exc}", {"index": index, "partition": exc.partition}) from None
    return Prepared(index, item, graph.ids[item.table_name], key)


def _reject_repeated_keys(prepared: list[Prepared]) -> None:
    seen: dict[tuple[int, str], int] = {}
    for p in prepared:
        if p.item.idempotency_key is None:
            continue
        first = seen.setdefault((p.table_id, p.item.idempotency_key), p.index)
        if first != p.index:
            raise Unprocessable(
                f"data[{p.index}]: idempotency_key {p.item.idempotency_key!r} is also used by data[{first}]",
                {"index": p.index},
            )


def _new_execution(graph: RuntimeGraph, p: Prepared) -> NewExecution:
    return NewExecution(
        p.table_id,
        key_text(p.key),
        p.key,
        p.item.source,
        p.item.run_id,
        p.item.idempotency_key,
        partition_values(graph.graph.tables[p.item.table_name], p.key),
    )


def _execution_out(p: Prepared) -> dict[str, Any]:
    return {"id": p.execution_id, "table_name": p.item.table_name, "partitions": p.key}


def _find_replays(session: Session, graph: RuntimeGraph, prepared: list[Prepared]) -> None:
    """Items whose idempotency key was used before: answer with the first registration."""
    keyed = {(p.table_id, p.item.idempotency_key): p for p in prepared if p.item.idempotency_key}
    if not keyed:
        return
    query = select(
        ExecutionRow.id, ExecutionRow.table_id, ExecutionRow.idempotency_key, ExecutionRow.partitions
    ).where(
        ExecutionRow.idempotency_key.in_({k for _, k in keyed}),
        ExecutionRow.table_id.in_({t for t, _ in keyed}),
    )
    found = {(t, k): (i, parts) for i, t, k, parts in session.execute(query) if (t, k) in keyed}
    if not found:
        return
    triggered = select(RunTriggerRow.execution_id, RunRow).join(RunRow, RunRow.id == RunTriggerRow.run_id)
    by_execution: dict[int, list[RunRow]] = {}
    for execution_id, run in session.execute(
        triggered.where(RunTriggerRow.execution_id.in_([i for i, _ in found.values()]))
    ):
        by_execution.setdefault(execution_id, []).append(run)
    approvals = newest_approvals(session, [r.id for runs in by_execution.values() for r in runs])
    for pair, (execution_id, partitions) in found.items():
        p = keyed[pair]
        runs = [
            run_summary(
                {"id": r.id, "partitions": r.partitions, "status": r.status, "fire_at": r.fire_at},
                graph.names.get(r.table_id, ""),
                approvals.get(r.id),
            )
            for r in by_execution.get(execution_id, [])
        ]
        execution = {"id": execution_id, "table_name": p.item.table_name, "partitions": partitions}
        p.replay = {"execution": execution, "runs": runs}


def _gate_openings(session: Session, graph: RuntimeGraph, fresh: list[Prepared]) -> list[Wanted]:
    executions = [
        Execution(p.execution_id, p.item.table_name, p.key) for p in fresh if p.execution_id is not None
    ]
    wanted_probes = list(dict.fromkeys(probe for e in executions for probe in probes(graph.graph, e)))
    fetched = fetch_probed(session, wanted_probes, graph.ids, graph.names)
    # Executions of this request are visible to each other's gates.
    for e in executions:
        if e not in fetched.get(e.table, []):
            fetched.setdefault(e.table, []).append(e)
    try:
        found = [o for e in executions for o in openings(graph.graph, e, fetched)]
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None
    return [Wanted(o.dependent, o.key, o.triggers) for o in found]


def _complete_runs(session: Session, fresh: list[Prepared], now: datetime, effects: Effects) -> list[Wanted]:
    """Items with a run_id complete that run: it must be this table's, for this key, in progress.

    Returns the runs to open again: a trigger arrived while they were in progress.
    """
    targets = {p.item.run_id: p for p in fresh if p.item.run_id is not None}
    if not targets:
        return []
    rows = {
        r.id: r
        for r in session.execute(select(RunRow).where(RunRow.id.in_(targets)).with_for_update()).scalars()
    }
    for run_id, p in targets.items():
        run = rows.get(run_id)
        where = f"data[{p.index}]"
        if run is None:
            raise NotFound(f"{where}: unknown run {run_id}", {"index": p.index})
        if run.table_id != p.table_id or run.partition_key != key_text(p.key):
            raise Unprocessable(
                f"{where}: run {run_id} is not a run of {p.item.table_name} for these partitions",
                {"index": p.index},
            )
        if run.status not in (DISPATCHING, RUNNING):
            raise Conflict(f"{where}: run {run_id} is {run.status}, not in progress", {"index": p.index})
        if p.item.token is not None:
            check_token(session, run, p.item.token, where)
    finished = list(targets)
    session.execute(
        update(TaskDispatchRow)
        .where(TaskDispatchRow.run_id.in_(finished), TaskDispatchRow.status.in_(("pending", "started")))
        .values(status="succeeded", finished_at=now)
    )
    session.execute(
        update(RunRow)
        .where(RunRow.id.in_(finished))
        .values(status=SUCCEEDED, finished_at=now, updated_at=now)
    )
    for run_id in finished:
        run = rows[run_id]
        effects.events.append(
            RunEvent(
                run_id,
                targets[run_id].item.table_name,
                run.partitions,
                run.status,
                SUCCEEDED,
                None,
                None,
                now,
            )
        )
    return [Wanted(targets[i].item.table_name, targets[i].key) for i in finished if rows[i].rerun_requested]


def check_token(session: Session, run: RunRow, token: str, where: str = "") -> None:
    """Refuse ``token`` unless a task of ``run``'s current attempt was started with it."""
    aliases = session.execute(
        select(TaskDispatchRow.alias).where(
            TaskDispatchRow.run_id == run.id, TaskDispatchRow.attempt == run.attempt
        )
    ).scalars()
    if token not in {task_token(run.id, run.attempt, alias) for alias in aliases}:
        prefix = f"{where}: " if where else ""
        raise Forbidden(
            f"{prefix}the token is not one of run {run.id}'s current attempt ({run.attempt}): "
            "report with the flux.token the task was started with"
        )


__all__ = ["ExecutionInput", "RuntimeProblem", "check_token", "register_executions", "register_in"]
