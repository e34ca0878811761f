"""A definition with schema errors, reduced to its sound parts so the other checks still see it.

A typo in one field must not hide a cycle or a template error elsewhere (DESIGN §2: every problem of
the set in one run). So a document whose errors are confined to some fields is checked across tables
with everything but those fields: an unknown or ill-typed scalar field is dropped (its default stands
in; no cross-table check reads it), a broken item of ``partitions``, ``dependencies`` or ``tasks`` is
dropped from its list, and the list is marked *incomplete*, so checks that need the whole list (a
dependent's required partitions, a template's partition names) skip what they cannot judge.
Positions of the items kept still point at where they were written. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from controller.core.checks import LocatedTable
from controller.core.problems import Location, Locator, PathSegment
from controller.core.specs import TableSpec

LIST_FIELDS = ("partitions", "dependencies", "tasks")


@dataclass(frozen=True, slots=True)
class _KeptItems:
    """Locates paths of the reduced document where they were written: item ``i`` of a reduced list is
    item ``kept[field][i]`` of the original."""

    source: Locator
    kept: Mapping[str, tuple[int, ...]]

    def locate(self, path: tuple[PathSegment, ...], *, key: bool = False) -> Location:
        if len(path) >= 2 and isinstance(path[0], str) and isinstance(path[1], int):
            kept = self.kept.get(path[0])
            if kept is not None and path[1] < len(kept):
                path = (path[0], kept[path[1]], *path[2:])
        return self.source.locate(path, key=key)


def salvage(data: Any, broken: Iterable[tuple[PathSegment, ...]], source: Locator) -> LocatedTable | None:
    """The table of ``data`` without the values at the ``broken`` paths, or None when nothing sound
    is left to check: ``data`` is not a mapping, the whole document or its ``name`` is broken, or the
    rest still does not make a definition."""
    if not isinstance(data, dict):
        return None
    dropped_fields: set[str] = set()
    dropped_items: dict[str, set[int]] = {}
    for path in broken:
        if not path or path[0] == "name" or not isinstance(path[0], str):
            return None
        field = path[0]
        if field in LIST_FIELDS and len(path) >= 2 and isinstance(path[1], int):
            dropped_items.setdefault(field, set()).add(path[1])
        else:
            dropped_fields.add(field)
    reduced = {k: v for k, v in data.items() if k not in dropped_fields}
    kept: dict[str, tuple[int, ...]] = {}
    for field, indexes in dropped_items.items():
        items = reduced.get(field)
        if not isinstance(items, list):
            continue
        kept[field] = tuple(i for i in range(len(items)) if i not in indexes)
        reduced[field] = [items[i] for i in kept[field]]
    try:
        spec = TableSpec.model_validate(reduced)
    except ValidationError:
        return None
    incomplete = frozenset((dropped_fields | set(dropped_items)) & set(LIST_FIELDS))
    return LocatedTable(spec, _KeptItems(source, kept) if kept else source, incomplete)
