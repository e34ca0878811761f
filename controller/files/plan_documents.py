"""Plan files (``plan --out plan.json``): the versioned JSON document, read back for ``apply --plan``."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from controller.core.plans import PLAN_FORMAT_VERSION, FieldChange, History, Plan, TableAction


class PlanFileError(Exception):
    """A plan file that cannot be read or is not a plan of this format."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Change(_Model):
    field: str
    kind: Literal["add", "remove", "change"]
    before: Any = None
    after: Any = None


class _History(_Model):
    executions: int
    runs: int


class _Action(_Model):
    action: Literal["create", "update", "delete"]
    table: str
    changes: list[_Change] = []
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    history: _History | None = None


class _PlanDocument(_Model):
    format_version: Literal[1]
    revision: str | None = None
    created_at: datetime | None = None
    desired_digest: str
    database_fingerprint: str
    summary: dict[str, int]
    actions: list[_Action]


def write_plan_file(plan: Plan, path: Path) -> None:
    path.write_text(json.dumps(plan.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_plan_file(path: Path) -> Plan:
    """Read a plan written by ``plan --out``; any other content is a :class:`PlanFileError`."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanFileError(f"cannot read plan file {path}: {exc}") from exc
    if isinstance(raw, dict) and raw.get("format_version") not in (None, PLAN_FORMAT_VERSION):
        raise PlanFileError(
            f"{path} is plan format {raw.get('format_version')!r}; this flux-control reads format "
            f"{PLAN_FORMAT_VERSION}: make the plan again with this version"
        )
    try:
        document = _PlanDocument.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise PlanFileError(f"{path} is not a flux-control plan: {where}: {first['msg']}") from exc
    actions = [
        TableAction(
            a.action,
            a.table,
            tuple(FieldChange(c.field, c.kind, c.before, c.after) for c in a.changes),
            a.before,
            a.after,
            History(a.history.executions, a.history.runs) if a.history else None,
        )
        for a in document.actions
    ]
    return Plan(
        actions=actions,
        desired_digest=document.desired_digest,
        database_fingerprint=document.database_fingerprint,
        unchanged=document.summary.get("unchanged", 0),
        revision=document.revision,
        created_at=document.created_at,
    )
