"""The original ``POST /tables`` payload: one table definition per object, field names as in the files.

A payload is the old system's request, ``{"data": [...tables...], "user": "..."}``, or a list of
tables, or ``{"tables": [...]}``, or one table object. Each table becomes one definition document
(``version: 1`` is added when missing) that knows where it is in the payload, so that a problem is
reported at its JSON path (``data[1].dependencies[0].dependency_name``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.core.problems import Location, PathSegment, json_path

#: The keys of the old system's request envelope.
ENVELOPE_KEYS = frozenset({"data", "user"})
SHAPES = (
    'the payload must be the original request {"data": [...tables...], "user": "..."}, a list of '
    'table objects, {"tables": [...]}, or one table object'
)


class PayloadError(ValueError):
    """A payload that is not one of the accepted shapes."""


@dataclass(frozen=True, slots=True)
class PayloadDocument:
    """One table of a payload, as validation reads a document: its value and where its parts are."""

    data: dict[str, Any]
    #: Where the table is in the payload (``("data", 1)``); empty for a payload that is one table.
    at: tuple[PathSegment, ...] = ()
    #: Written before the JSON path, for tables that are not in the caller's payload.
    root: str = ""
    usable: bool = True

    def locate(self, path: tuple[PathSegment, ...], *, key: bool = False) -> Location:
        """The JSON path of ``path`` inside this table (a missing value: the path it would have)."""
        return Location(json_path((*self.at, *path), self.root) or "body", 0, 0)


def payload_documents(payload: Any) -> list[PayloadDocument]:
    """The tables of a payload, in order, each with its place in the payload."""
    items, at = _tables_of(payload)
    if not items or not all(isinstance(t, dict) for t in items):
        raise PayloadError(SHAPES)
    try:  # JSON may escape a lone surrogate (\ud800), which no UTF-8 text, hence no definition, holds
        json.dumps(items, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PayloadError(f"the payload is not valid Unicode: {exc.reason}") from None
    return [PayloadDocument({"version": 1, **table}, place) for table, place in zip(items, at, strict=True)]


def payload_tables(payload: Any) -> list[dict[str, Any]]:
    """The table objects of a payload, in order (``version: 1`` added where missing)."""
    return [document.data for document in payload_documents(payload)]


def _tables_of(payload: Any) -> tuple[Sequence[Any], list[tuple[PathSegment, ...]]]:
    """The table objects of ``payload`` and where each is; a table is an object with a ``name``."""
    if isinstance(payload, list):
        return payload, [(index,) for index in range(len(payload))]
    if not isinstance(payload, dict):
        raise PayloadError(SHAPES)
    for key in ("data", "tables"):
        if key in payload and "name" not in payload:
            listed = payload[key]
            extra = sorted(set(payload) - (ENVELOPE_KEYS if key == "data" else {key}))
            if not isinstance(listed, list):
                raise PayloadError(f"{key!r} must be a list of table objects; {SHAPES}")
            if extra:
                listed_extra = ", ".join(map(repr, extra))
                raise PayloadError(f"unknown field(s) beside {key!r}: {listed_extra}; {SHAPES}")
            if key == "data" and not isinstance(payload.get("user"), str | None):
                raise PayloadError("'user' must be a string")
            return listed, [(key, index) for index in range(len(listed))]
    return [payload], [()]
