"""Validation of a definition set: read files, check structure, then check across tables.

This is the one entry point the CLI, the reconciler and the API use, so every path that accepts
definitions applies exactly the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from controller.checks import LocatedTable, check_tables
from controller.gc_pause import gc_paused
from controller.problems import Location, Problem
from controller.schema import schema_problems
from controller.specs import TableSpec
from controller.yaml_documents import (
    DEFAULT_MAX_FILE_BYTES,
    SourceDocument,
    SourceFile,
    definition_files,
    read_file,
)


@dataclass(slots=True)
class ValidationResult:
    """What a definition set holds and everything wrong with it, in a stable order."""

    tables: list[LocatedTable] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: int = 0

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def specs(self) -> list[TableSpec]:
        return [t.spec for t in self.tables]

    def summary(self) -> dict[str, int]:
        return {
            "files": self.files,
            "tables": len(self.tables),
            "dependencies": sum(len(t.spec.dependencies) for t in self.tables),
            "tasks": sum(len(t.spec.tasks) for t in self.tables),
            "problems": len(self.problems),
            "files_with_problems": len({p.location.path for p in self.problems}),
        }


def validate_directory(root: Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ValidationResult:
    """Validate every definition file under ``root`` (paths in problems start with ``root``)."""
    with gc_paused():  # one pause for reading and checking: no collection in between either
        files = [read_file(path, path, max_bytes=max_file_bytes) for path in definition_files(root)]
        if not files:
            where = Location(root.as_posix())
            return ValidationResult(
                problems=[Problem(where, "no *.yaml or *.yml definition files found", "no-definitions")]
            )
        return _validate(files)


def validate_sources(files: Iterable[SourceFile]) -> ValidationResult:
    """Validate already-read files (from disk, from a Git revision, from an API payload)."""
    with gc_paused():
        return _validate(files)


def _validate(files: Iterable[SourceFile]) -> ValidationResult:
    result = ValidationResult()
    broken_names: set[str] = set()
    all_readable = True
    for source in files:
        result.files += 1
        result.problems.extend(source.problems)
        all_readable &= source.readable
        for document in source.documents:
            table = _table(document, result.problems) if document.usable else None
            if table is not None:
                result.tables.append(table)
            elif isinstance(document.data, dict) and isinstance(document.data.get("name"), str):
                broken_names.add(document.data["name"])
    # Cross-table checks on a set with unreadable files would report consequences, not causes.
    if all_readable:
        result.problems.extend(check_tables(result.tables, broken_names))
    result.problems.sort()
    return result


def _table(document: SourceDocument, problems: list[Problem]) -> LocatedTable | None:
    found = schema_problems(document.data, document)
    if found:
        problems.extend(found)
        return None
    try:
        spec = TableSpec.model_validate(document.data)
    except ValidationError as exc:  # the schema and the models disagree: still point at the value
        for error in exc.errors():
            problems.append(Problem(document.locate(tuple(error["loc"])), error["msg"], "model"))
        return None
    return LocatedTable(spec, document)
