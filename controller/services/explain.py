"""Why a table did or did not run for a key: its gate, open run, debounce, approval and last runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.core.errors import NotFound
from controller.core.gates import Probe, gate, shared
from controller.core.keys import Key, describe, key_text, make_key
from controller.core.records import Approval
from controller.core.runs import (
    AWAITING_APPROVAL,
    IN_PROGRESS_STATES,
    OPEN_STATES,
    QUEUED,
    SCHEDULED,
    Run,
    fire_time,
)
from controller.core.specs import DEFAULT_TASK_TIMEOUT_SECONDS, MAX_RETRY_BACKOFF_SECONDS, TableSpec
from controller.core.terminal_text import printable
from controller.services import slots
from controller.services.ports import Reads

LAST_RUNS = 5


@dataclass
class Explanation:
    table: str
    key: Key
    dependencies: list[dict[str, Any]] = field(default_factory=list)
    gate_open: bool = False
    open_run: dict[str, Any] | None = None
    last_runs: list[dict[str, Any]] = field(default_factory=list)
    requires_approval: bool = False
    approvers: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)
    debounce_seconds: int = 0
    max_wait_seconds: int | None = None
    #: The run lifecycle of DESIGN §8 as defined: None, no limit / no automatic retries.
    max_concurrent_runs: int | None = None
    retries: dict[str, int] | None = None
    #: Each task's ``timeout_seconds``, by alias.
    task_timeouts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "partitions": self.key,
            "gate": "open" if self.gate_open else "closed",
            "dependencies": self.dependencies,
            "open_run": self.open_run,
            "last_runs": self.last_runs,
            "requires_approval": self.requires_approval,
            "approvers": self.approvers,
            "producers": self.producers,
            "operators": self.operators,
            "debounce_seconds": self.debounce_seconds,
            "max_wait_seconds": self.max_wait_seconds,
            "max_concurrent_runs": self.max_concurrent_runs,
            "retries": self.retries,
            "task_timeouts": self.task_timeouts,
        }


def explain(reads: Reads, table: str, partitions: dict[str, Any]) -> Explanation:
    """Explain (table, key) from the database as it is now; reads only."""
    catalog = reads.catalog()
    spec = catalog.table(table)
    if spec is None:
        raise NotFound(f"unknown table {table!r} (not in the database: was it applied?)")
    key = make_key(spec, partitions)
    probes = []
    for dependency in spec.edges:  # every upstream: plain dependencies and any_of members
        upstream = catalog.table(dependency.dependency_name)
        if upstream is None:
            continue
        anchors = [(theirs, key[mine]) for mine, theirs in shared(spec, dependency, upstream) if mine in key]
        probes.append(Probe(upstream.name, *anchors[0]) if anchors else Probe(upstream.name))
    fetched = reads.probe(probes, catalog.ids, catalog.names)
    statuses = gate(catalog.graph, spec, key, fetched)
    found = sorted({s.satisfied_by.id for s in statuses if s.satisfied_by})
    executions = {
        execution_id: {
            "id": execution_id,
            "partitions": execution_key,
            "source": source,
            "registered_at": registered_at.isoformat(),
        }
        for execution_id, (execution_key, source, registered_at) in reads.executions_by_id(found).items()
    }
    result = Explanation(
        table,
        key,
        requires_approval=spec.requires_approval,
        approvers=list(spec.approvers),
        producers=list(spec.producers),
        operators=list(spec.operators),
        debounce_seconds=spec.debounce_seconds,
        max_wait_seconds=spec.max_wait_seconds,
        max_concurrent_runs=spec.max_concurrent_runs,
        retries=None if spec.retries is None else spec.retries.model_dump(),
        task_timeouts={task.alias: task.timeout_seconds for task in spec.tasks},
    )
    for status in statuses:
        execution = executions.get(status.satisfied_by.id) if status.satisfied_by else None
        result.dependencies.append(
            {
                "dependency": status.dependency,
                "required": status.required,
                "present": execution is not None,
                "execution": execution,
                # Added for any_of groups (the fields above keep their meaning): the group's
                # members, and the one whose execution satisfies it. Plain: [] and null.
                "members": list(status.members),
                "satisfied_by_member": status.satisfied_by.table
                if status.members and status.satisfied_by and execution is not None
                else None,
            }
        )
    result.gate_open = bool(statuses) and all(d["present"] or not d["required"] for d in result.dependencies)
    for run, approval in reads.runs_of_key(catalog.ids[table], key_text(key), LAST_RUNS):
        entry = _run(run, approval)
        if run.status in OPEN_STATES:
            entry["debounce_fire_at"] = fire_time(
                run.first_trigger_at, run.last_trigger_at, spec.debounce_seconds, spec.max_wait_seconds
            ).isoformat()
            entry.update(_lifecycle(reads, table, spec, run))
            result.open_run = entry
        result.last_runs.append(entry)
    return result


#: Queued runs of the table read to place a queued run in its queue (a longer queue counts as this).
MAX_QUEUE_SHOWN = 1000


def _lifecycle(reads: Reads, table: str, spec: TableSpec, run: Run) -> dict[str, Any]:
    """What an open run waits for under DESIGN §8: the slots a queued run waits for (a few more
    reads, only then), and which attempt a retried run is."""
    found: dict[str, Any] = {}
    if run.status == QUEUED:
        limit = spec.max_concurrent_runs
        if limit is None:
            found["waiting"] = "queued: its target was at its own concurrency limit; the sweep tries again"
        else:
            busy = sorted(r.id for state in IN_PROGRESS_STATES for r, _, _ in reads.runs(table, state, limit))
            place = _queue_place(run)
            queued = reads.runs(table, QUEUED, MAX_QUEUE_SHOWN)
            ahead = sum(1 for other, _, _ in queued if _queue_place(other) < place)
            found["waiting"] = slots.waiting_reason(limit, busy, ahead)
    if spec.retries is not None and spec.retries.max_attempts > 1:
        found["attempts"] = f"attempt {run.attempt} of {spec.retries.max_attempts}"
    return found


def _queue_place(run: Run) -> tuple[datetime, int]:
    """Where a queued run stands: oldest fire time first, then id (a queued run has a fire time)."""
    return (run.fire_at or run.created_at, run.id)


def _run(run: Run, approval: Approval | None) -> dict[str, Any]:
    return {
        "id": run.id,
        "status": run.status,
        "attempt": run.attempt,
        "manual": run.manual,
        "first_trigger_at": run.first_trigger_at.isoformat(),
        "last_trigger_at": run.last_trigger_at.isoformat(),
        "fire_at": run.fire_at.isoformat() if run.fire_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error,
        "approval": None
        if approval is None
        else {"id": approval.id, "status": approval.status, "decided_by": approval.decided_by},
    }


def render(explanation: Explanation) -> str:
    """The explanation for a terminal; stored text in it (a source, an error) is shown escaped."""
    e = explanation
    lines = [f"{e.table} for {describe(e.key)}"]
    if not e.dependencies:
        lines.append("  gate: none (a root table: it runs only when registered or started by hand)")
    else:
        missing = [d["dependency"] for d in e.dependencies if d["required"] and not d["present"]]
        lines.append("  gate: open" if e.gate_open else f"  gate: closed, waiting for {', '.join(missing)}")
        lines.append("  dependencies:")
        lines.extend(_dependency_line(d, e.key) for d in e.dependencies)
    lines.append(
        f"  debounce: {e.debounce_seconds}s after the last trigger"
        + (f", at most {e.max_wait_seconds}s after the first" if e.max_wait_seconds is not None else "")
    )
    if e.requires_approval:
        lines.append(
            "  approval: required" + (f" (approvers: {', '.join(e.approvers)})" if e.approvers else "")
        )
    if e.producers:
        lines.append(f"  producers: {', '.join(e.producers)}")
    if e.operators:
        lines.append(f"  operators: {', '.join(e.operators)}")
    if e.max_concurrent_runs is not None:
        lines.append(f"  max concurrent runs: {e.max_concurrent_runs}")
    if e.retries is not None:
        lines.append(f"  retries: {_retries(e.retries['max_attempts'], e.retries['backoff_seconds'])}")
    timeouts = {a: s for a, s in e.task_timeouts.items() if s != DEFAULT_TASK_TIMEOUT_SECONDS}
    if timeouts:
        listed = ", ".join(f"{alias} {seconds} s" for alias, seconds in timeouts.items())
        lines.append(f"  task timeouts: {listed} (default {DEFAULT_TASK_TIMEOUT_SECONDS} s)")
    run = e.open_run
    if run is None:
        lines.append("  open run: none")
    else:
        lines.append(f"  open run: {run['id']} {run['status']}" + _run_detail(run))
    if e.last_runs:
        lines.append("  last runs:")
        for r in e.last_runs:
            end = f" finished {r['finished_at']}" if r["finished_at"] else ""
            error = f": {r['error']}" if r["error"] else ""
            lines.append(f"    {r['id']} {r['status']} (attempt {r['attempt']}){end}{error}")
    return "\n".join(printable(line) for line in lines) + "\n"


def _dependency_line(d: dict[str, Any], key: Key) -> str:
    """One dependency of ``explain``'s answer: the execution that satisfies it (for a group, of which
    member), or why none does."""
    kind = "required" if d["required"] else "optional"
    members = d.get("members") or []
    if d["present"]:
        x = d["execution"]
        via = f"via {d['satisfied_by_member']}, " if members and d.get("satisfied_by_member") else ""
        return (
            f"    ✓ {d['dependency']} ({kind}): {via}execution {x['id']} of {describe(x['partitions'])}, "
            f"registered {x['registered_at']} by {x['source']}"
        )
    if members:
        none = f"none of {', '.join(members)} has an execution" + (f" for {describe(key)}" if key else "")
        note = f"missing: {none}" if d["required"] else f"{none} (optional: does not block)"
    else:
        note = "missing" if d["required"] else "none (optional: does not block)"
    return f"    ✗ {d['dependency']} ({kind}): {note}"


def _retries(max_attempts: int, backoff_seconds: int) -> str:
    """``retries`` in words: "up to 3 attempts, backoff 300 s doubling, capped at 1 h"."""
    if max_attempts <= 1:
        return "none (max_attempts 1: a failed run stays failed)"
    attempts = f"up to {max_attempts} attempts"
    if backoff_seconds == 0:
        return f"{attempts}, each at once after a failure"
    if max_attempts == 2:
        return f"{attempts}, the second {min(backoff_seconds, MAX_RETRY_BACKOFF_SECONDS)} s after a failure"
    if backoff_seconds >= MAX_RETRY_BACKOFF_SECONDS:
        return f"{attempts}, each {MAX_RETRY_BACKOFF_SECONDS} s after a failure"
    return f"{attempts}, backoff {backoff_seconds} s doubling, capped at {_hours(MAX_RETRY_BACKOFF_SECONDS)}"


def _hours(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds % 3600 == 0 else f"{seconds} s"


def _run_detail(run: dict[str, Any]) -> str:
    attempt = f", {run['attempts']}" if run.get("attempts") else ""
    if run["status"] == AWAITING_APPROVAL and run["approval"]:
        approval, due = run["approval"]["id"], run["debounce_fire_at"]
        return f"{attempt}, approval {approval} pending (would fire at {due} once approved)"
    if run["status"] == SCHEDULED:
        when = f" at {run['fire_at']}" if attempt else f", fires at {run['fire_at']}"
        return f"{attempt}{when} (last trigger {run['last_trigger_at']})"
    if run["status"] == QUEUED and run.get("waiting"):
        return f"{attempt}; {run['waiting']}"
    return attempt
