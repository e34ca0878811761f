"""A run's attempts, as ``GET /runs/{id}`` shows them (DESIGN §8): each with its outcome, its error and
its tasks' external ids. Pure: the run's events and tasks in, JSON-ready dicts out.

Attempts are read off the events: a change out of ``failed`` (a retry, by hand or by itself) opens the
next one, so nothing but the outbox the run already has is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from controller.core.records import Task
from controller.core.runs import DISPATCHING, FAILED, FINAL_STATES, RunEvent
from controller.services.answers import iso


def attempts(events: Sequence[RunEvent], tasks: Sequence[Task], current: int) -> list[dict[str, Any]]:
    """Attempts 1 … ``current``, oldest first: ``status`` (where the attempt got to), ``error``
    (why it failed), ``started_at`` (its first dispatch), ``ended_at``, ``tasks``."""
    found: dict[int, dict[str, Any]] = {}
    number = 1
    for event in events:
        if event.old_state == FAILED:
            number += 1
        entry = found.setdefault(number, _attempt(number))
        entry["status"] = event.new_state
        if event.new_state == DISPATCHING and entry["started_at"] is None:
            entry["started_at"] = iso(event.at)
        if event.new_state in FINAL_STATES:
            entry["ended_at"] = iso(event.at)
            entry["error"] = event.reason if event.new_state == FAILED else None
    for number in range(1, current + 1):
        found.setdefault(number, _attempt(number))
    for task in tasks:
        found.setdefault(task.attempt, _attempt(task.attempt))["tasks"].append(
            {"alias": task.alias, "status": task.status, "external_id": task.external_id, "error": task.error}
        )
    return [found[n] for n in sorted(found)]


def _attempt(number: int) -> dict[str, Any]:
    return {
        "attempt": number,
        "status": None,
        "error": None,
        "started_at": None,
        "ended_at": None,
        "tasks": [],
    }
