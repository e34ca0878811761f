"""Reading and writing table definitions in bulk: a constant number of statements for any N.

Reads return the same plain states that :func:`controller.plans.state_of` builds from YAML, so the
pure planner compares like with like.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from controller.db.models import (
    AuditEntry,
    DependencyRow,
    PartitionRow,
    ReconcileRevision,
    TableRow,
    TaskRow,
)
from controller.db.runtime_models import ExecutionRow, RunRow
from controller.plans import SCALAR_FIELDS, History, TableAction, TableState, digest


@dataclass(slots=True)
class DatabaseState:
    """The live (not deleted) definitions, and the ids of every table row ever created."""

    tables: dict[str, TableState] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return digest(self.tables.values())


@dataclass(frozen=True, slots=True)
class RevisionInfo:
    revision: str
    actor: str
    applied_at: datetime
    desired_digest: str


def read_state(session: Session) -> DatabaseState:
    """All live definitions in four queries (tables, partitions, dependencies, tasks)."""
    state = DatabaseState()
    live: dict[int, TableState] = {}
    columns = [getattr(TableRow, name) for name in ("id", "deleted_at", *_SCALARS)]
    for row in session.execute(select(*columns)).mappings():
        state.ids[row["name"]] = row["id"]
        if row["deleted_at"] is None:
            live[row["id"]] = state.tables[row["name"]] = _table_state(row)
    partitions = select(PartitionRow.table_id, PartitionRow.name, PartitionRow.type, PartitionRow.is_required)
    for table_id, name, type_, required in session.execute(
        partitions.order_by(PartitionRow.table_id, PartitionRow.position)
    ):
        if table_id in live:
            live[table_id]["partitions"].append({"name": name, "type": type_, "is_required": required})
    upstream = aliased(TableRow)
    dependencies = (
        select(DependencyRow.table_id, upstream.name, DependencyRow.is_required, DependencyRow.partition_map)
        .join(upstream, upstream.id == DependencyRow.upstream_table_id)
        .order_by(DependencyRow.table_id, DependencyRow.position)
    )
    for table_id, name, required, mapping in session.execute(dependencies):
        if table_id in live:
            live[table_id]["dependencies"].append(
                {"dependency_name": name, "is_required": required, "partition_map": dict(mapping or {})}
            )
    tasks = select(TaskRow.table_id, TaskRow.alias, TaskRow.type, TaskRow.target, TaskRow.params)
    for table_id, alias, type_, target, params in session.execute(
        tasks.order_by(TaskRow.table_id, TaskRow.position)
    ):
        if table_id in live:
            live[table_id]["tasks"].append(
                {"alias": alias, "type": type_, "target": target, "params": params or {}}
            )
    return state


_SCALARS = ("name", *SCALAR_FIELDS)
#: Progress steps of :func:`write_actions`: tables, partitions, dependencies, tasks, audit.
WRITE_STEPS = 5


def _table_state(row: Mapping[Any, Any]) -> TableState:
    state: TableState = {name: row[name] for name in _SCALARS}
    state["approvers"] = list(state["approvers"] or [])
    state.update(partitions=[], dependencies=[], tasks=[])
    return state


def read_history(session: Session, table_ids: dict[str, int]) -> dict[str, History]:
    """Executions and runs per table, for the given tables only (two grouped queries)."""
    if not table_ids:
        return {}
    by_id = {table_id: name for name, table_id in table_ids.items()}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"executions": 0, "runs": 0})
    for model, key in ((ExecutionRow, "executions"), (RunRow, "runs")):
        query = select(model.table_id, func.count()).where(model.table_id.in_(by_id)).group_by(model.table_id)
        for table_id, count in session.execute(query):
            counts[by_id[table_id]][key] = count
    return {name: History(**counts[name]) for name in table_ids}


def last_revision(session: Session) -> RevisionInfo | None:
    row = session.execute(select(ReconcileRevision).order_by(ReconcileRevision.id.desc()).limit(1)).scalar()
    if row is None:
        return None
    return RevisionInfo(row.revision, row.actor, row.applied_at, row.desired_digest)


def write_actions(
    session: Session,
    state: DatabaseState,
    actions: Sequence[TableAction],
    *,
    revision: str,
    actor: str,
    desired_digest: str,
    summary: dict[str, int],
    now: datetime,
    progress: Callable[[], None] = lambda: None,
) -> int:
    """Apply ``actions`` with bulk statements and record the revision; returns the revision id.

    ``progress`` is called after each of the :data:`WRITE_STEPS` steps (for a progress bar).
    """
    revision_id = session.execute(
        insert(ReconcileRevision).returning(ReconcileRevision.id),
        [
            {
                "revision": revision,
                "actor": actor,
                "applied_at": now,
                "desired_digest": desired_digest,
                "summary": summary,
            }
        ],
    ).scalar_one()
    ids = dict(state.ids)
    deleted = [ids[a.table] for a in actions if a.action == "delete"]
    if deleted:
        session.execute(
            update(TableRow)
            .where(TableRow.id.in_(deleted))
            .values(deleted_at=now, updated_at=now, revision_id=revision_id)
        )
        # A deleted table leaves every gate: as a dependent and as an upstream.
        session.execute(
            delete(DependencyRow).where(
                or_(DependencyRow.table_id.in_(deleted), DependencyRow.upstream_table_id.in_(deleted))
            )
        )
    upserts = [a for a in actions if a.action != "delete" and a.after is not None]
    new = [a for a in upserts if a.table not in ids]
    if new:
        rows = [_table_row(a.after, revision_id, now) | {"created_at": now} for a in new if a.after]
        # render_nulls keeps every row's keys identical so all rows go in one batched INSERT (None
        # values would otherwise split the batch wherever owner or max_wait_seconds is missing).
        session.execute(insert(TableRow).execution_options(render_nulls=True), rows)
        # One query for the new ids: RETURNING with parameter order makes SQLite insert row by row.
        ids = {name: table_id for table_id, name in session.execute(select(TableRow.id, TableRow.name))}
    existing = [a for a in upserts if a.table in state.ids]
    if existing:
        session.execute(
            update(TableRow),
            [{"id": ids[a.table], **_table_row(a.after, revision_id, now)} for a in existing if a.after],
        )
    progress()
    _rewrite_children(session, upserts, ids, set(state.ids), progress)
    session.execute(insert(AuditEntry), [_audit(a, actor, revision_id, now) for a in actions])
    progress()
    return int(revision_id)


def _table_row(state: TableState, revision_id: int, now: datetime) -> dict[str, Any]:
    return {
        "name": state["name"],
        "description": state.get("description") or "",
        "owner": state.get("owner"),
        "requires_approval": bool(state.get("requires_approval")),
        "approvers": list(state.get("approvers") or []),
        "debounce_seconds": state["debounce_seconds"],
        "max_wait_seconds": state.get("max_wait_seconds"),
        "updated_at": now,
        "deleted_at": None,
        "revision_id": revision_id,
    }


def _rewrite_children(
    session: Session,
    upserts: Iterable[TableAction],
    ids: dict[str, int],
    had_rows: set[str],
    progress: Callable[[], None],
) -> None:
    """Replace the partitions, dependencies or tasks of tables where those changed (bulk)."""
    for list_field, model in (
        ("partitions", PartitionRow),
        ("dependencies", DependencyRow),
        ("tasks", TaskRow),
    ):
        targets = [
            a
            for a in upserts
            if a.action == "create" or any(c.field.startswith(list_field) for c in a.changes)
        ]
        stale = [ids[a.table] for a in targets if a.table in had_rows]
        if stale:
            session.execute(delete(model).where(model.table_id.in_(stale)))
        rows = [
            _child_row(list_field, item, ids[a.table], position, ids)
            for a in targets
            if a.after
            for position, item in enumerate(a.after.get(list_field, []))
        ]
        if rows:
            session.execute(insert(model), rows)
        progress()


def _child_row(
    list_field: str, item: dict[str, Any], table_id: int, position: int, ids: dict[str, int]
) -> dict[str, Any]:
    row = {"table_id": table_id, "position": position}
    if list_field == "dependencies":
        return row | {
            "upstream_table_id": ids[item["dependency_name"]],
            "is_required": item["is_required"],
            "partition_map": item.get("partition_map") or {},
        }
    if list_field == "tasks":
        return row | {
            "alias": item["alias"],
            "type": item["type"],
            "target": item["target"],
            "params": item.get("params") or {},
        }
    return row | {"name": item["name"], "type": item["type"], "is_required": item["is_required"]}


def _audit(action: TableAction, actor: str, revision_id: int, now: datetime) -> dict[str, Any]:
    detail: dict[str, Any] = {"changes": [c.as_dict() for c in action.changes if action.action == "update"]}
    if action.history is not None:
        detail["history"] = {"executions": action.history.executions, "runs": action.history.runs}
    return {
        "at": now,
        "actor": actor,
        "action": f"table.{action.action}",
        "table_name": action.table,
        "revision_id": revision_id,
        "detail": detail,
    }
