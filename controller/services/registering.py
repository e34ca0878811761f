"""The registration inside a unit of work: record that tables produced partitions, complete the runs
items name, and open the gates that opens. Used by ``register_execution`` and when a run succeeds.

Items carrying a ``run_id`` complete that run (the path for SQS and Lambda tasks); an item carrying
an ``idempotency_key`` seen before returns the first registration and writes nothing when it is the
same item (table and partitions), and is a 409 naming that registration when it is another.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.core.access import Caller, actor_of
from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit
from controller.core.errors import Conflict, Forbidden, NotFound, ServiceError, Unprocessable
from controller.core.gates import Execution, GateLock, gate_locks, openings, probes
from controller.core.keys import InvalidPartition, Key, key_text, make_key
from controller.core.records import TASK_SUCCEEDED, NewExecution, StoredExecution, partition_values
from controller.core.runs import IN_PROGRESS_STATES, SUCCEEDED, Run
from controller.services import authorization, settling
from controller.services.answers import run_summary
from controller.services.opening import Wanted, open_or_push
from controller.services.ports import Transaction
from controller.services.transitions import move


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


#: Who registered an execution that Flux Control registers itself, on the completion of a run (its
#: ``run_id`` names the run; its ``source`` what reported the completion).
SYSTEM_ACTOR = "flux-control"


class StaleCatalog(Exception):
    """The cached definitions are older than the database's: decide again with the current ones."""


def register_in(
    tx: Transaction,
    catalog: Catalog,
    items: list[ExecutionInput],
    caller: Caller | None,
    now: datetime,
    after: AfterCommit,
    *,
    verified: bool = True,
    own_account: str | None = None,
    system: str | None = None,
) -> dict[str, Any]:
    """Register ``items`` in the caller's transaction; returns ``{"executions": […], "runs": […]}``.

    ``caller`` must be allowed each item (DESIGN §7; None: Flux Control itself, unchecked) and is
    recorded as who registered (``system`` when it is None: the name Flux Control records itself as).
    ``verified=False``: ``catalog`` may be stale; :class:`StaleCatalog` is raised, before anything is
    written, when it is (the gate-lock statement reads the newest revision) or when it refuses an item.
    """
    prepared, reports = _prepare_all(catalog, items, verified=verified)
    try:
        checked = [(i, item.table_name, item.run_id, item.token) for i, item in enumerate(items)]
        authorization.require_registration(caller, catalog, checked, own_account)
    except Forbidden:
        if not verified:
            raise StaleCatalog from None  # the lists may be newer than the cached definitions
        raise
    user = actor_of(caller)  # the actor of the runs' events: None is Flux Control
    _reject_repeated_keys(prepared)
    _find_replays(tx, catalog, prepared)
    fresh = [p for p in prepared if p.replay is None]
    revision = _lock_gates(tx, catalog, fresh)
    if not verified and revision != catalog.revision:
        raise StaleCatalog
    reruns = _complete_runs(tx, fresh, now, after, user)
    ids = tx.insert_executions([_new_execution(catalog, p) for p in fresh], now, user or system)
    for p, execution_id in zip(fresh, ids, strict=True):
        p.execution_id = execution_id
    wanted = _gate_openings(tx, catalog, fresh) + reruns
    runs = open_or_push(tx, catalog, wanted, now, after, actor=user) if wanted else []
    executions = [p.replay["execution"] if p.replay else _execution_out(p) for p in prepared]
    replayed_runs = [run for p in prepared if p.replay for run in p.replay["runs"]]
    result: dict[str, Any] = {"executions": executions, "runs": runs + replayed_runs}
    if reports:
        result["not_registered"] = _settle_reports(tx, catalog, reports, now, after, user)
    return result


def _prepare_all(
    catalog: Catalog, items: list[ExecutionInput], *, verified: bool
) -> tuple[list[Prepared], list[tuple[int, ExecutionInput, ServiceError]]]:
    """Each item prepared, but for completion reports (items with a ``run_id``) that the current
    definitions refuse: those are returned with the refusal, for :func:`_settle_reports`."""
    prepared: list[Prepared] = []
    reports: list[tuple[int, ExecutionInput, ServiceError]] = []
    for index, item in enumerate(items):
        try:
            prepared.append(_prepare(catalog, index, item))
        except ServiceError as exc:
            if not verified:
                raise StaleCatalog from None  # the table may be newer than the cached definitions
            if item.run_id is None:
                raise
            reports.append((index, item, exc))
    return prepared, reports


def _settle_reports(
    tx: Transaction,
    catalog: Catalog,
    reports: list[tuple[int, ExecutionInput, ServiceError]],
    now: datetime,
    after: AfterCommit,
    actor: str | None,
) -> list[dict[str, Any]]:
    """A run's task reported success, but the definitions changed since the run opened (its table
    deleted, its partitions changed): the run succeeds without an execution, and its key is free.
    An item that names no such run in progress of that table is refused as it would have been."""
    runs = tx.lock_runs([item.run_id for _, item, _ in reports if item.run_id is not None])
    settled: list[dict[str, Any]] = []
    for index, item, refusal in reports:
        run = runs.get(item.run_id or 0)
        if run is None or run.status not in IN_PROGRESS_STATES:
            raise refusal
        if tx.table_name(run.table_id) != item.table_name:
            raise refusal
        problem = settling.registration_problem(catalog, item.table_name, run)
        if problem is None:  # the run's key fits: the item's partitions are wrong, not the definitions
            raise refusal
        if item.token is not None:
            check_token(tx, run, item.token, f"data[{index}]")
        reason = settling.succeed_unregistered(tx, run, item.table_name, problem, now, after, actor)
        settled.append({"index": index, "run_id": run.id, "status": SUCCEEDED, "reason": reason})
    return settled


def _lock_gates(tx: Transaction, catalog: Catalog, fresh: list[Prepared]) -> int | None:
    """Lock the gates these executions may open; a completed run's table wholly (it may open again).
    Returns the newest reconcile revision."""
    locks = {GateLock(p.item.table_name) for p in fresh if p.item.run_id is not None} | {
        lock for p in fresh for lock in gate_locks(catalog.graph, Execution(0, p.item.table_name, p.key))
    }
    return tx.lock_gates(
        [catalog.ids[lock.table] for lock in locks if lock.key is None],
        [(catalog.ids[lock.table], lock.key) for lock in locks if lock.key is not None],
    )


def _prepare(catalog: Catalog, index: int, item: ExecutionInput) -> Prepared:
    table = catalog.table(item.table_name)
    if table is None:
        raise NotFound(f"data[{index}]: unknown table {item.table_name!r}", {"index": index})
    try:
        key = make_key(table, item.partitions)
    except InvalidPartition as exc:
        problem = NotFound if exc.status == 404 else Unprocessable
        raise problem(f"data[{index}]: {exc}", {"index": index, "partition": exc.partition}) from None
    return Prepared(index, item, catalog.ids[item.table_name], key)


def _reject_repeated_keys(prepared: list[Prepared]) -> None:
    """An idempotency key names one item: twice in one request it is refused, whatever the tables
    (the second would be a replay of, or a conflict with, an item of the same answer)."""
    seen: dict[str, int] = {}
    for p in prepared:
        if p.item.idempotency_key is None:
            continue
        first = seen.setdefault(p.item.idempotency_key, p.index)
        if first != p.index:
            raise Unprocessable(
                f"data[{p.index}]: idempotency_key {p.item.idempotency_key!r} is also used by data[{first}]",
                {"index": p.index},
            )


def _new_execution(catalog: Catalog, p: Prepared) -> NewExecution:
    return NewExecution(
        p.table_id,
        key_text(p.key),
        p.key,
        p.item.source,
        p.item.run_id,
        p.item.idempotency_key,
        partition_values(catalog.graph.tables[p.item.table_name], p.key),
    )


def _execution_out(p: Prepared) -> dict[str, Any]:
    return {"id": p.execution_id, "table_name": p.item.table_name, "partitions": p.key}


def _find_replays(tx: Transaction, catalog: Catalog, prepared: list[Prepared]) -> None:
    """Items whose idempotency key was used before. The key names one item, whatever the table: the
    same table and partitions (compared canonical) are answered with the first registration; another
    partition or another table is a :class:`Conflict` naming it, raised before anything is written.

    Keys are unique within the request (:func:`_reject_repeated_keys`) and in the database (the
    index ``uq_executions_idempotency``): a concurrent registration that takes a key after this
    lookup makes this one's insert fail, and its retry finds that registration here.
    """
    keyed = {p.item.idempotency_key: p for p in prepared if p.item.idempotency_key is not None}
    if not keyed:
        return
    found = {e.idempotency_key: e for e in tx.executions_by_idempotency_key(set(keyed))}
    if not found:
        return
    for key, p in keyed.items():  # in the items' order: the first item refused is the one named
        first = found.get(key)
        if first is not None and not _same_item(first, p):
            raise _key_reused(tx, catalog, p, first)
    by_execution = tx.runs_triggered_by([e.id for e in found.values()])
    approvals = tx.newest_approvals([r.id for runs in by_execution.values() for r in runs])
    for key, execution in found.items():
        p = keyed[key]
        runs = [
            run_summary(
                r.id,
                catalog.names.get(r.table_id, ""),
                r.partitions,
                r.status,
                r.fire_at,
                approvals.get(r.id),
            )
            for r in by_execution.get(execution.id, [])
        ]
        out = {"id": execution.id, "table_name": p.item.table_name, "partitions": execution.partitions}
        p.replay = {"execution": out, "runs": runs}


def _same_item(first: StoredExecution, p: Prepared) -> bool:
    """Whether the execution that took ``p``'s key registered the same item: its table, and its
    partitions once canonical ("0202305" and 202305 are one value of an int partition)."""
    return first.table_id == p.table_id and key_text(first.partitions) == key_text(p.key)


def _key_reused(tx: Transaction, catalog: Catalog, p: Prepared, first: StoredExecution) -> Conflict:
    """The 409 of an item whose idempotency key another item took: it names that registration (its
    table may have been deleted since: its name is read then) and the item, so the caller can tell
    a key collision from a changed payload."""
    table = catalog.names.get(first.table_id) or tx.table_name(first.table_id) or f"#{first.table_id}"
    return Conflict(
        f"data[{p.index}]: idempotency_key {p.item.idempotency_key!r} was used by execution {first.id} "
        f"(table {table}, partitions {_shown(first.partitions)}); this item is table "
        f"{p.item.table_name}, partitions {_shown(p.key)}: a key names one registration item",
        {"index": p.index, "execution_id": first.id, "table_name": table, "partitions": first.partitions},
    )


def _shown(partitions: Key) -> str:
    """Partitions for a message, as JSON sorted by name: ``{"dt": "2026-01-01", "n": 7}``."""
    return json.dumps(dict(sorted(partitions.items())), ensure_ascii=False)


def _gate_openings(tx: Transaction, catalog: Catalog, fresh: list[Prepared]) -> list[Wanted]:
    executions = [
        Execution(p.execution_id, p.item.table_name, p.key) for p in fresh if p.execution_id is not None
    ]
    wanted_probes = list(dict.fromkeys(probe for e in executions for probe in probes(catalog.graph, e)))
    fetched = tx.probe(wanted_probes, catalog.ids, catalog.names) if wanted_probes else {}
    # Executions of this request are visible to each other's gates.
    for e in executions:
        if e not in fetched.get(e.table, []):
            fetched.setdefault(e.table, []).append(e)
    try:
        found = [o for e in executions for o in openings(catalog.graph, e, fetched)]
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None
    return [Wanted(o.dependent, o.key, o.triggers) for o in found]


def _complete_runs(
    tx: Transaction, fresh: list[Prepared], now: datetime, after: AfterCommit, actor: str | None
) -> list[Wanted]:
    """Items with a run_id complete that run: it must be this table's, for this key, in progress.

    Returns the runs to open again: a trigger arrived while they were in progress.
    """
    targets = {p.item.run_id: p for p in fresh if p.item.run_id is not None}
    if not targets:
        return []
    rows = tx.lock_runs(targets)
    for run_id, p in targets.items():
        _check_completable(tx, rows.get(run_id), run_id, p)
    finished = list(targets)
    tx.settle_unfinished_tasks(finished, TASK_SUCCEEDED, None, now)
    for run_id in finished:
        move(tx, after, rows[run_id], SUCCEEDED, now, targets[run_id].item.table_name, actor=actor)
    return [Wanted(targets[i].item.table_name, targets[i].key) for i in finished if rows[i].rerun_requested]


def _check_completable(tx: Transaction, run: Run | None, run_id: int, p: Prepared) -> None:
    where = f"data[{p.index}]"
    if run is None:
        raise NotFound(f"{where}: unknown run {run_id}", {"index": p.index})
    if run.table_id != p.table_id or run.partition_key != key_text(p.key):
        raise Unprocessable(
            f"{where}: run {run_id} is not a run of {p.item.table_name} for these partitions",
            {"index": p.index},
        )
    if run.status not in IN_PROGRESS_STATES:
        raise Conflict(f"{where}: run {run_id} is {run.status}, not in progress", {"index": p.index})
    if p.item.token is not None:
        check_token(tx, run, p.item.token, where)


def check_token(tx: Transaction, run: Run, token: str, where: str = "") -> None:
    """Refuse ``token`` unless a task of ``run``'s current attempt was started with it (the stored
    token of one of its tasks, compared in constant time; a task stored without one matches none)."""
    given = token.encode()
    matched = False
    for task in tx.tasks_of(run.id, run.attempt):
        if task.token is not None:
            matched |= hmac.compare_digest(given, task.token.encode())
    if not matched:
        prefix = f"{where}: " if where else ""
        raise Forbidden(
            f"{prefix}the token is not one of run {run.id}'s current attempt ({run.attempt}): "
            "report with the flux.token the task was started with"
        )


def complete_run(
    tx: Transaction, catalog: Catalog, run: Run, table: str, source: str, now: datetime, after: AfterCommit
) -> str | None:
    """End ``run``, whose work is done, as succeeded: register its execution (``source``), which
    cascades, or succeed it with the reason it cannot be registered (returned; None: registered)."""
    problem = settling.registration_problem(catalog, table, run)
    if problem is not None:
        return settling.succeed_unregistered(tx, run, table, problem, now, after)
    item = ExecutionInput(table, dict(run.partitions), source, run_id=run.id)
    register_in(tx, catalog, [item], None, now, after, system=SYSTEM_ACTOR)
    return None
