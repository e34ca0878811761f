"""Plans: the difference between the definitions in Git and those in the database. Pure.

A table's state is a plain JSON-compatible dict (see :func:`state_of`), the same whether it comes
from a definition file or from database rows, so that comparing, hashing and serialising need no
database and no YAML.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from controller.core.specs import TableSpec

TableState = dict[str, Any]
ActionKind = Literal["create", "update", "delete"]
PLAN_FORMAT_VERSION = 1

SCALAR_FIELDS = (
    "description",
    "owner",
    "requires_approval",
    "approvers",
    "producers",
    "operators",
    "debounce_seconds",
    "max_wait_seconds",
    "max_concurrent_runs",
    "retries",
)
#: The lists of callers (DESIGN §7): stored and compared as JSON lists.
PEOPLE_FIELDS = ("approvers", "producers", "operators")
#: Fields holding a small object (or null): a change inside it is planned key by key (DESIGN §8).
OBJECT_FIELDS = ("retries",)
#: Nested lists and the field that names each of their items.
LIST_FIELDS = (("partitions", "name"), ("dependencies", "dependency_name"), ("tasks", "alias"))


def state_of(spec: TableSpec) -> TableState:
    """The comparable state of a definition: every field but ``version``, JSON types only."""
    state = spec.model_dump(mode="json", exclude={"version"})
    for people in PEOPLE_FIELDS:
        state[people] = list(state[people])
    for task in state["tasks"]:
        if task["auth_secret"] is None:  # only http tasks have one: the others' states stay as they were
            del task["auth_secret"]
    return state


def digest(states: Iterable[TableState]) -> str:
    """A stable hash of a set of table states (order of tables does not matter).

    The hash of the canonical JSON array of the states sorted by name (sorted keys, no spaces),
    encoded one state at a time: the same text as one ``json.dumps`` of the list, a fifth faster.
    """
    ordered = sorted(states, key=lambda s: str(s["name"]))
    text = "[" + ",".join(map(_CANONICAL.encode, ordered)) + "]"
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class History:
    """How much runtime history a table has: deleting such a table needs ``--allow-delete``."""

    executions: int = 0
    runs: int = 0

    @property
    def empty(self) -> bool:
        return self.executions == 0 and self.runs == 0

    def describe(self) -> str:
        return f"{_count(self.executions, 'execution')} and {_count(self.runs, 'run')}"


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field of one table: ``kind`` add/remove for list items, change otherwise."""

    field: str
    kind: Literal["add", "remove", "change"]
    before: Any = None
    after: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "kind": self.kind, "before": self.before, "after": self.after}


@dataclass(frozen=True, slots=True)
class TableAction:
    """What happens to one table. ``after`` is the full desired state (None for a delete)."""

    action: ActionKind
    table: str
    changes: tuple[FieldChange, ...] = ()
    before: TableState | None = None
    after: TableState | None = None
    history: History | None = None

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"action": self.action, "table": self.table}
        document["changes"] = [c.as_dict() for c in self.changes]
        document["before"] = self.before
        document["after"] = self.after
        if self.history is not None:
            document["history"] = {"executions": self.history.executions, "runs": self.history.runs}
        return document


@dataclass(slots=True, init=False)
class Plan:
    """Ordered actions (deletes first, then creates, then updates) and what the plan was made from.

    The two digests may be given as functions: hashing 10,000 states takes a tenth of a second each,
    and most plans (printed, or applied at once) never read them. They are computed on first use.
    """

    actions: list[TableAction]
    _desired_digest: str | Callable[[], str]
    _database_fingerprint: str | Callable[[], str]
    unchanged: int
    revision: str | None
    created_at: datetime | None
    notes: list[str]
    #: What the plan compares with when it is not the database (a Git revision).
    baseline: str | None

    def __init__(
        self,
        actions: list[TableAction],
        desired_digest: str | Callable[[], str],
        database_fingerprint: str | Callable[[], str],
        unchanged: int = 0,
        revision: str | None = None,
        created_at: datetime | None = None,
        notes: list[str] | None = None,
        baseline: str | None = None,
    ) -> None:
        self.actions = actions
        self._desired_digest = desired_digest
        self._database_fingerprint = database_fingerprint
        self.unchanged = unchanged
        self.revision = revision
        self.created_at = created_at
        self.notes = [] if notes is None else notes
        self.baseline = baseline

    @property
    def desired_digest(self) -> str:
        if not isinstance(self._desired_digest, str):
            self._desired_digest = self._desired_digest()
        return self._desired_digest

    @property
    def database_fingerprint(self) -> str:
        if not isinstance(self._database_fingerprint, str):
            self._database_fingerprint = self._database_fingerprint()
        return self._database_fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return (
            self.actions == other.actions
            and self.desired_digest == other.desired_digest
            and self.database_fingerprint == other.database_fingerprint
            and (self.unchanged, self.revision, self.created_at, self.notes, self.baseline)
            == (other.unchanged, other.revision, other.created_at, other.notes, other.baseline)
        )

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)

    def count(self, action: ActionKind) -> int:
        return sum(1 for a in self.actions if a.action == action)

    def summary(self) -> dict[str, int]:
        return {
            "create": self.count("create"),
            "update": self.count("update"),
            "delete": self.count("delete"),
            "unchanged": self.unchanged,
        }

    def summary_line(self) -> str:
        if not self.actions:
            if self.baseline:
                return f"No changes: the definitions match those at {self.baseline}."
            return "No changes. The database matches the definitions."
        s = self.summary()
        return f"Plan: {s['delete']} to delete, {s['create']} to create, {s['update']} to update."

    def as_dict(self) -> dict[str, Any]:
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "revision": self.revision,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "desired_digest": self.desired_digest,
            "database_fingerprint": self.database_fingerprint,
            "summary": self.summary(),
            "actions": [a.as_dict() for a in self.actions],
        }


def make_plan(
    current: Mapping[str, TableState],
    desired: Mapping[str, TableState],
    history: Mapping[str, History] | None = None,
) -> Plan:
    """The actions that turn ``current`` (database) into ``desired`` (Git), deletes first."""
    # Without a history mapping (a plan against a Git revision) the history is unknown: None.
    deletes = [
        TableAction(
            "delete",
            name,
            before=current[name],
            history=None if history is None else history.get(name, History()),
        )
        for name in sorted(set(current) - set(desired))
    ]
    creates = [
        TableAction("create", name, changes=_creation(desired[name]), after=desired[name])
        for name in sorted(set(desired) - set(current))
    ]
    updates = []
    unchanged = 0
    for name in sorted(set(desired) & set(current)):
        # Equality is cheap; the field-by-field diff only runs for tables that changed.
        changes = () if current[name] == desired[name] else diff_table(current[name], desired[name])
        if changes:
            updates.append(TableAction("update", name, changes, before=current[name], after=desired[name]))
        else:
            unchanged += 1
    # Hashed on first use, of the states as they are now (the mappings themselves may change later).
    wanted, found = list(desired.values()), list(current.values())
    return Plan(
        actions=[*deletes, *creates, *updates],
        desired_digest=lambda: digest(wanted),
        database_fingerprint=lambda: digest(found),
        unchanged=unchanged,
    )


def apply_actions(current: Mapping[str, TableState], actions: Iterable[TableAction]) -> dict[str, TableState]:
    """The state that results from applying ``actions`` to ``current`` (used to check a plan file)."""
    result = dict(current)
    for action in actions:
        if action.action == "delete":
            result.pop(action.table, None)
        elif action.after is not None:
            result[action.table] = action.after
    return result


def diff_table(before: TableState, after: TableState) -> tuple[FieldChange, ...]:
    """Field-level changes between two states of the same table, in a stable order.

    An object field (``retries``) present on both sides changes key by key
    (``retries.backoff_seconds: 300 → 600``); added or removed, it changes as a whole.
    """
    changes: list[FieldChange] = []
    for name in SCALAR_FIELDS:
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name in OBJECT_FIELDS and isinstance(old, dict) and isinstance(new, dict):
            changes.extend(
                FieldChange(f"{name}.{key}", "change", old.get(key), new.get(key))
                for key in [*new, *(k for k in old if k not in new)]
                if old.get(key) != new.get(key)
            )
        else:
            changes.append(FieldChange(name, "change", old, new))
    for list_field, key in LIST_FIELDS:
        changes.extend(_diff_items(list_field, key, before.get(list_field, []), after.get(list_field, [])))
    return tuple(changes)


def item_name(key: str, item: Mapping[str, Any]) -> str:
    """What names a list item in a plan: its ``key`` field; an ``any_of`` group, its members sorted
    (``any_of(a, b)``), so that reordering them changes the group instead of replacing it."""
    if key == "dependency_name" and "any_of" in item:
        return "any_of(" + ", ".join(sorted(m["dependency_name"] for m in item["any_of"])) + ")"
    return str(item[key])


def _diff_items(list_field: str, key: str, before: list[Any], after: list[Any]) -> list[FieldChange]:
    old = {item_name(key, item): item for item in before}
    new = {item_name(key, item): item for item in after}
    changes = [
        FieldChange(f"{list_field}.{name}", "remove", before=old[name]) for name in old if name not in new
    ]
    for name, item in new.items():
        if name not in old:
            changes.append(FieldChange(f"{list_field}.{name}", "add", after=item))
            continue
        for attr in sorted(set(item) | set(old[name])):
            if attr != key and item.get(attr) != old[name].get(attr):
                changes.append(
                    FieldChange(f"{list_field}.{name}.{attr}", "change", old[name].get(attr), item.get(attr))
                )
    shared_old = [n for n in old if n in new]
    shared_new = [n for n in new if n in old]
    if shared_old != shared_new:
        changes.append(FieldChange(f"{list_field} (order)", "change", shared_old, shared_new))
    return changes


def _creation(state: TableState) -> tuple[FieldChange, ...]:
    get = state.get
    changes = [FieldChange(name, "add", None, get(name)) for name in SCALAR_FIELDS]
    for list_field, key in LIST_FIELDS:
        prefix = list_field + "."
        items = get(list_field, ())
        changes += [FieldChange(prefix + item_name(key, item), "add", None, item) for item in items]
    return tuple(changes)


def _count(number: int, word: str) -> str:
    return f"{number} {word}" if number == 1 else f"{number} {word}s"
