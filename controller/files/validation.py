"""Validation of a definition set: read files, check structure, then check across tables.

This is the one entry point the CLI, the reconciler and the API use, so every path that accepts
definitions applies exactly the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from controller.core.checks import LocatedTable, check_tables
from controller.core.gc_pause import gc_paused
from controller.core.partial_definitions import salvage
from controller.core.problems import Location, Locator, Problem
from controller.core.specs import TableSpec
from controller.files.schema import schema_errors

if TYPE_CHECKING:
    from controller.files.yaml_documents import SourceFile


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


def validate_directory(root: Path, *, max_file_bytes: int | None = None) -> ValidationResult:
    """Validate every definition file under ``root`` (paths in problems start with ``root``);
    ``max_file_bytes`` defaults to the YAML reader's limit (1 MiB)."""
    # YAML is read here only: validating an API payload (the Lambda) never loads the YAML reader.
    from controller.files.yaml_documents import DEFAULT_MAX_FILE_BYTES, definition_files, read_file

    limit = DEFAULT_MAX_FILE_BYTES if max_file_bytes is None else max_file_bytes
    with gc_paused():  # one pause for reading and checking: no collection in between either
        files = [read_file(path, path, max_bytes=limit) for path in definition_files(root)]
        if not files:
            where = Location(root.as_posix())
            return ValidationResult(
                problems=[Problem(where, "no *.yaml or *.yml definition files found", "no-definitions")]
            )
        return _validate(files)


def validate_sources(files: Iterable[SourceFile]) -> ValidationResult:
    """Validate already-read files (from disk, from a Git revision)."""
    with gc_paused():
        return _validate(files)


class Document(Locator, Protocol):
    """What validation reads of one definition: its value, and where its parts were written."""

    @property
    def data(self) -> Any: ...

    @property
    def usable(self) -> bool:
        """False when a value could not be built (a tag, an alias bomb): checking the rest would
        only report consequences of that problem."""
        ...


def validate_documents(documents: Iterable[Document]) -> ValidationResult:
    """Validate definitions that were not read from files (an API payload)."""
    result = ValidationResult()
    with gc_paused():
        _check(result, documents, across=True)
    return result


def _validate(files: Iterable[SourceFile]) -> ValidationResult:
    result = ValidationResult()
    documents: list[Document] = []
    all_readable = True
    for source in files:
        result.files += 1
        result.problems.extend(source.problems)
        all_readable &= source.readable
        documents.extend(source.documents)
    # Cross-table checks on a set with unreadable files would report consequences, not causes.
    _check(result, documents, across=all_readable)
    return result


def _check(result: ValidationResult, documents: Iterable[Document], *, across: bool) -> None:
    """Check each document, then (``across``) the set; problems go to ``result``, sorted."""
    partial: list[LocatedTable] = []
    broken_names: set[str] = set()
    for document in documents:
        errors = schema_errors(document.data, document) if document.usable else []
        table = _table(document, result.problems) if document.usable and not errors else None
        if table is not None:
            result.tables.append(table)
            continue
        result.problems.extend(problem for problem, _ in errors)
        salvaged = salvage(document.data, [path for _, path in errors], document) if errors else None
        if salvaged is not None:
            partial.append(salvaged)
        elif isinstance(document.data, dict) and isinstance(document.data.get("name"), str):
            broken_names.add(document.data["name"])
    if across:
        # Documents with schema errors take part with their sound fields (a typo never hides a cycle).
        result.problems.extend(check_tables([*result.tables, *partial], broken_names))
    result.problems.sort()


def _table(document: Document, problems: list[Problem]) -> LocatedTable | None:
    """The table of a document the schema accepts, or None (its problems added) when the models
    refuse it."""
    try:
        spec = TableSpec.model_validate(document.data)
    except ValidationError as exc:  # the schema and the models disagree: still point at the value
        for error in exc.errors():
            problems.append(Problem(document.locate(tuple(error["loc"])), error["msg"], "model"))
        return None
    return LocatedTable(spec, document)
