"""Reading and writing table definitions in bulk: a constant number of statements for any N.

Reads return the same plain states that :func:`controller.core.plans.state_of` builds from YAML, so the
pure planner compares like with like.

Both directions work on Core statements, not ORM objects: at 10,000 tables the ORM's per-row work
(building rows and instances, collecting insert parameters) costs more than the database does. On
PostgreSQL the bulk writes send all rows of a table as one JSON document, expanded on the server by
``json_to_recordset``: one ``INSERT … SELECT`` (or ``UPDATE … FROM``) instead of one execution per row.
SQLite is in-process, so a plain ``executemany`` is as fast there.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    Text,
    bindparam,
    cast,
    column,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSON as PG_JSON
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import TableValuedAlias

from controller.core.plans import History, TableAction, TableState, digest
from controller.core.specs import DEFAULT_TASK_TIMEOUT_SECONDS
from controller.db.definition_models import (
    AuditEntry,
    DependencyRow,
    PartitionRow,
    ReconcileRevision,
    TableRow,
    TaskRow,
)
from controller.db.run_models import ExecutionRow, RunRow

_TABLES: Table = TableRow.__table__  # type: ignore[assignment]
_PARTITIONS: Table = PartitionRow.__table__  # type: ignore[assignment]
_DEPENDENCIES: Table = DependencyRow.__table__  # type: ignore[assignment]
_TASKS: Table = TaskRow.__table__  # type: ignore[assignment]
_AUDIT: Table = AuditEntry.__table__  # type: ignore[assignment]
_REVISIONS: Table = ReconcileRevision.__table__  # type: ignore[assignment]
#: Progress steps of :func:`write_actions`: tables, partitions, dependencies, tasks, audit.
WRITE_STEPS = 5


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


# --- reading ------------------------------------------------------------------------------------------


def read_state(session: Session) -> DatabaseState:
    """All live definitions in four queries (tables, partitions, dependencies, tasks).

    JSON columns are read as their text and decoded by one ``json.loads`` per query rather than one
    per row; upstream names come from the first query rather than from a join.
    """
    connection = session.connection()
    state = DatabaseState()
    live: dict[int, TableState] = {}
    names: dict[int, str] = {}
    t = _TABLES.c
    tables = connection.execute(
        select(
            t.id,
            t.deleted_at.is_(None),
            t.name,
            t.description,
            t.owner,
            t.requires_approval,
            _as_text(t.approvers),
            _as_text(t.producers),
            _as_text(t.operators),
            t.debounce_seconds,
            t.max_wait_seconds,
            t.max_concurrent_runs,
            _as_text(t.retries),
        )
    ).all()
    approvers = _decode(row[6] for row in tables)
    producers = _decode(row[7] for row in tables)
    operators = _decode(row[8] for row in tables)
    retries = _decode(row[12] for row in tables)
    for row, approved_by, produced_by, operated_by, retried in zip(
        tables, approvers, producers, operators, retries, strict=True
    ):
        table_id, alive, name, description, owner, requires, _, _, _, debounce, max_wait, concurrent, _ = row
        state.ids[name] = table_id
        names[table_id] = name
        if alive:
            # Keys in the order of plans.state_of (plan files print states as they are built).
            live[table_id] = state.tables[name] = {
                "name": name,
                "description": description,
                "owner": owner,
                "requires_approval": requires,
                "approvers": list(approved_by or []),
                "producers": list(produced_by or []),
                "operators": list(operated_by or []),
                "debounce_seconds": debounce,
                "max_wait_seconds": max_wait,
                "max_concurrent_runs": concurrent,
                "retries": _retries(retried),
                "partitions": [],
                "dependencies": [],
                "tasks": [],
            }
    p = _PARTITIONS.c
    partitions = _in_position_order(connection, p.table_id, p.position, p.name, p.type, p.is_required)
    for table_id, _, name, type_, required in partitions:
        if table_id in live:
            live[table_id]["partitions"].append({"name": name, "type": type_, "is_required": required})
    d = _DEPENDENCIES.c
    dependencies = _in_position_order(
        connection,
        d.table_id,
        d.position,
        d.upstream_table_id,
        d.is_required,
        _as_text(d.partition_map),
        d.any_of_position,
    )
    maps = _decode(row[4] for row in dependencies)
    groups: dict[tuple[int, int], dict[str, Any]] = {}  # (table id, group position) → its item
    for (table_id, _, upstream, required, _, group), mapping in zip(dependencies, maps, strict=True):
        if table_id not in live:
            continue
        items: list[dict[str, Any]] = live[table_id]["dependencies"]
        if group is None:
            items.append(
                {"dependency_name": names[upstream], "is_required": required, "partition_map": mapping or {}}
            )
            continue
        item = groups.get((table_id, group))
        if item is None:
            item = groups[table_id, group] = {"any_of": [], "is_required": required}
            items.append(item)
        item["any_of"].append({"dependency_name": names[upstream], "partition_map": mapping or {}})
    k = _TASKS.c
    tasks = _in_position_order(
        connection,
        k.table_id,
        k.position,
        k.alias,
        k.type,
        k.target,
        _as_text(k.params),
        k.timeout_seconds,
        k.auth_secret,
    )
    params = _decode(row[5] for row in tasks)
    for (table_id, _, alias, type_, target, _, timeout, secret), values in zip(tasks, params, strict=True):
        if table_id in live:
            task = {
                "alias": alias,
                "type": type_,
                "target": target,
                "params": values or {},
                "timeout_seconds": timeout,
            }
            live[table_id]["tasks"].append(task if secret is None else {**task, "auth_secret": secret})
    return state


_RETRY_KEYS = ("max_attempts", "backoff_seconds")


def _retries(stored: Any) -> Any:
    """``retries`` with its keys in the order of :func:`~controller.core.plans.state_of` (PostgreSQL's
    JSONB keeps keys in an order of its own), any others after them: a hand edit shows as drift."""
    if not isinstance(stored, dict):
        return stored
    return {k: stored[k] for k in _RETRY_KEYS if k in stored} | {
        k: v for k, v in stored.items() if k not in _RETRY_KEYS
    }


def _in_position_order(connection: Connection, *columns: ColumnElement[Any]) -> list[Any]:
    """All rows of a child table, sorted by their first two columns (table id, position) here.

    Rows come back in storage order, which is already that order nearly everywhere: Python's sort
    runs through it in a few milliseconds, where the server would sort tens of thousands of rows.
    """
    rows: list[Any] = list(connection.execute(select(*columns)).all())
    rows.sort(key=itemgetter(0, 1))
    return rows


def _as_text(column: ColumnElement[Any]) -> ColumnElement[str]:
    """A JSON column as its stored text (JSONB prints as JSON text), left undecoded by the driver."""
    return cast(column, Text)


def _decode(texts: Iterable[str | None]) -> list[Any]:
    """Many JSON documents decoded by a single ``json.loads`` (SQL NULL reads as JSON null)."""
    decoded: list[Any] = json.loads("[" + ",".join(text or "null" for text in texts) + "]")
    return decoded


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


# --- writing ------------------------------------------------------------------------------------------


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
    connection = session.connection()
    revision_id: int = connection.execute(
        insert(_REVISIONS).returning(_REVISIONS.c.id),
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
        t = _TABLES.c
        connection.execute(
            update(_TABLES)
            .where(t.id.in_(deleted))
            .values(deleted_at=now, updated_at=now, revision_id=revision_id)
        )
        # A deleted table leaves every gate: as a dependent and as an upstream.
        d = _DEPENDENCIES.c
        connection.execute(
            delete(_DEPENDENCIES).where(or_(d.table_id.in_(deleted), d.upstream_table_id.in_(deleted)))
        )
    upserts = [a for a in actions if a.action != "delete" and a.after is not None]
    stamp = {"updated_at": now, "deleted_at": None, "revision_id": revision_id}
    new = [_table_row(a.after) for a in upserts if a.table not in ids and a.after]
    if new:
        ids.update(_insert_tables(connection, new, stamp | {"created_at": now}))
    existing = [
        {"id": ids[a.table], **_table_row(a.after)} for a in upserts if a.table in state.ids and a.after
    ]
    if existing:
        _update_tables(connection, existing, stamp)
    progress()
    _rewrite_children(connection, upserts, ids, set(state.ids), progress)
    audit = [_audit(a) for a in actions]
    _insert_rows(connection, _AUDIT, audit, {"at": now, "actor": actor, "revision_id": revision_id})
    progress()
    return int(revision_id)


def _table_row(state: TableState) -> dict[str, Any]:
    return {
        "name": state["name"],
        "description": state.get("description") or "",
        "owner": state.get("owner"),
        "requires_approval": bool(state.get("requires_approval")),
        "approvers": list(state.get("approvers") or []),
        "producers": list(state.get("producers") or []),
        "operators": list(state.get("operators") or []),
        "debounce_seconds": state["debounce_seconds"],
        "max_wait_seconds": state.get("max_wait_seconds"),
        "max_concurrent_runs": state.get("max_concurrent_runs"),
        "retries": state.get("retries"),
    }


def _insert_tables(
    connection: Connection, rows: list[dict[str, Any]], constants: dict[str, Any]
) -> dict[str, int]:
    """Insert new table rows; returns their ids by name."""
    if _bulk_json(connection):
        names = list(rows[0])
        returning = _insert_from_json(_TABLES, names, constants).returning(_TABLES.c.name, _TABLES.c.id)
        return dict(connection.execute(returning, {"rows": rows, **constants}).all())
    connection.execute(insert(_TABLES), [row | constants for row in rows])
    # One query for the new ids: RETURNING with executemany makes SQLite insert row by row.
    t = _TABLES.c
    return dict(connection.execute(select(t.name, t.id)).all())


def _update_tables(connection: Connection, rows: list[dict[str, Any]], constants: dict[str, Any]) -> None:
    t = _TABLES.c
    names = [name for name in rows[0] if name != "id"]
    if _bulk_json(connection):
        source = _recordset(_TABLES, ["id", *names])
        values = {name: source.c[name] for name in names} | {
            name: bindparam(name, type_=_TABLES.c[name].type) for name in constants
        }
        statement = update(_TABLES).values(values).where(t.id == source.c.id)
        connection.execute(statement, {"rows": rows, **constants})
        return
    # executemany: the SET clause comes from the keys; the id goes under another name (it is the WHERE).
    statement = update(_TABLES).where(t.id == bindparam("row_id"))
    connection.execute(
        statement, [{"row_id": row["id"], **{n: row[n] for n in names}} | constants for row in rows]
    )


def _rewrite_children(
    connection: Connection,
    upserts: Iterable[TableAction],
    ids: dict[str, int],
    had_rows: set[str],
    progress: Callable[[], None],
) -> None:
    """Replace the partitions, dependencies or tasks of tables where those changed (bulk)."""
    for list_field, table in (
        ("partitions", _PARTITIONS),
        ("dependencies", _DEPENDENCIES),
        ("tasks", _TASKS),
    ):
        targets = [
            a
            for a in upserts
            if a.action == "create" or any(c.field.startswith(list_field) for c in a.changes)
        ]
        stale = [ids[a.table] for a in targets if a.table in had_rows]
        if stale:
            connection.execute(delete(table).where(table.c.table_id.in_(stale)))
        rows = [
            row
            for a in targets
            if a.after
            for row in _child_rows(list_field, a.after.get(list_field, []), ids[a.table], ids)
        ]
        _insert_rows(connection, table, rows)
        progress()


def _child_rows(
    list_field: str, items: list[dict[str, Any]], table_id: int, ids: dict[str, int]
) -> list[dict[str, Any]]:
    """The rows of one table's partitions, dependencies or tasks (an ``any_of`` group: one per member)."""
    if list_field != "dependencies":
        return [_child_row(list_field, item, table_id, position) for position, item in enumerate(items)]
    edges = [
        (member, item["is_required"], index if "any_of" in item else None)
        for index, item in enumerate(items)
        for member in item.get("any_of", [item])
    ]
    return [
        {
            "table_id": table_id,
            "position": position,
            "upstream_table_id": ids[member["dependency_name"]],
            "is_required": required,
            "partition_map": member.get("partition_map") or {},
            "any_of_position": group,
        }
        for position, (member, required, group) in enumerate(edges)
    ]


def _child_row(list_field: str, item: dict[str, Any], table_id: int, position: int) -> dict[str, Any]:
    if list_field == "tasks":
        return {
            "table_id": table_id,
            "position": position,
            "alias": item["alias"],
            "type": item["type"],
            "target": item["target"],
            "params": item.get("params") or {},
            "timeout_seconds": item.get("timeout_seconds", DEFAULT_TASK_TIMEOUT_SECONDS),
            "auth_secret": item.get("auth_secret"),
        }
    return {
        "table_id": table_id,
        "position": position,
        "name": item["name"],
        "type": item["type"],
        "is_required": item["is_required"],
    }


def _audit(action: TableAction) -> dict[str, Any]:
    detail: dict[str, Any] = {"changes": [c.as_dict() for c in action.changes if action.action == "update"]}
    if action.history is not None:
        detail["history"] = {"executions": action.history.executions, "runs": action.history.runs}
    return {"action": f"table.{action.action}", "table_name": action.table, "detail": detail}


# --- bulk statements ----------------------------------------------------------------------------------


def _bulk_json(connection: Connection) -> bool:
    """Whether rows go to the server as one JSON document (PostgreSQL) or by ``executemany``."""
    return connection.dialect.name == "postgresql"


def _insert_rows(
    connection: Connection, table: Table, rows: list[dict[str, Any]], constants: dict[str, Any] | None = None
) -> None:
    """Insert ``rows`` (all with the same keys) in one statement; ``constants`` go in every row."""
    if not rows:
        return
    constants = constants or {}
    if _bulk_json(connection):
        connection.execute(_insert_from_json(table, list(rows[0]), constants), {"rows": rows, **constants})
    else:
        connection.execute(insert(table), [row | constants for row in rows] if constants else rows)


def _recordset(table: Table, names: list[str]) -> TableValuedAlias:
    """``json_to_recordset(:rows) AS x(name type, …)``, typed like ``table``'s columns."""
    typed = [column(name, table.c[name].type) for name in names]
    source = func.json_to_recordset(bindparam("rows", type_=PG_JSON))
    return source.table_valued(*typed).render_derived(name="x", with_types=True)


def _insert_from_json(table: Table, names: list[str], constants: dict[str, Any]) -> Any:
    """``INSERT INTO table (names…, constants…) SELECT x.names…, :constants… FROM json_to_recordset``."""
    source = _recordset(table, names)
    values = [source.c[name] for name in names]
    values += [bindparam(name, type_=table.c[name].type) for name in constants]
    return insert(table).from_select([*names, *constants], select(*values))
