"""Builders of definition sets for tests: small hand-written ones and large generated DAGs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import event

from controller.core.access import Caller
from controller.core.plans import TableState, state_of
from controller.core.specs import TableSpec
from controller.files.validation import validate_directory


def table_doc(name: str, **fields: Any) -> dict[str, Any]:
    """A definition as a dict; partitions default to one required ``dt`` date."""
    document: dict[str, Any] = {"version": 1, "name": name, "partitions": [{"name": "dt", "type": "date"}]}
    document.update(fields)
    return document


def write_tables(root: Path, documents: list[dict[str, Any]]) -> Path:
    """One file per table (JSON is YAML), replacing whatever ``root`` held."""
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("*.yaml"):
        old.unlink()
    for document in documents:
        (root / f"{document['name']}.yaml").write_text(json.dumps(document), encoding="utf-8")
    return root


def generated(count: int, *, salt: str = "") -> list[dict[str, Any]]:
    """``count`` tables forming a DAG: each depends on up to two earlier ones, with one or two tasks."""
    documents = []
    for index in range(count):
        dependencies = [
            {"dependency_name": f"t{up:05d}", "is_required": up % 3 != 0}
            for up in (index - 1, index - 7)
            if up >= 0
        ]
        tasks = [
            {
                "alias": f"task{k}",
                "type": "glue",
                "target": f"job-{index}-{k}",
                "params": {"--dt": "{{ partitions.dt }}"},
            }
            for k in range(1 + index % 2)
        ]
        documents.append(
            table_doc(
                f"t{index:05d}",
                description=f"table {index}{salt}",
                dependencies=dependencies,
                tasks=tasks,
            )
        )
    return documents


def states(documents: list[dict[str, Any]]) -> dict[str, TableState]:
    return {d["name"]: state_of(TableSpec.model_validate(d)) for d in documents}


def desired_from(root: Path) -> dict[str, TableState]:
    result = validate_directory(root)
    assert result.valid, [str(p) for p in result.problems]
    return {spec.name: state_of(spec) for spec in result.specs}


class StatementLog:
    """Every SQL statement sent while attached, by each target: a store (its ``listeners``; ``BEGIN``
    and ``COMMIT`` left out, as SQLAlchemy's cursor events leave them out) or an engine
    (``before_cursor_execute``)."""

    def __init__(self, *targets: Any) -> None:
        self.targets = targets
        self.statements: list[str] = []

    def __enter__(self) -> StatementLog:
        for target in self.targets:
            if hasattr(target, "listeners"):
                target.listeners.append(self._heard)
            else:
                event.listen(target, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for target in self.targets:
            if hasattr(target, "listeners"):
                target.listeners.remove(self._heard)
            else:
                event.remove(target, "before_cursor_execute", self._record)

    def _heard(self, statement: str, _connection: Any) -> None:
        if statement.split()[0].upper() not in ("BEGIN", "COMMIT"):
            self.statements.append(" ".join(statement.split()))

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements.append(" ".join(statement.split()))

    def writes(self) -> list[str]:
        verbs = ("INSERT", "UPDATE", "DELETE")
        return [s for s in self.statements if s.lstrip().upper().startswith(verbs)]

    def reads(self) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith("SELECT")]


def same_state(actual: Mapping[str, TableState], expected: Mapping[str, TableState]) -> bool:
    return dict(actual) == dict(expected)


def person(name: str) -> Caller:
    """A caller signed in by name (a Cognito user), as the API would pass one to the services."""
    return Caller(name, kind="cognito")
