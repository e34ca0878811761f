"""The original ``POST /tables`` payload: one table definition per object, field names as in the files.

A payload may be one table object, a list of them, or ``{"tables": [...]}``. Each object becomes
one definition document (``version: 1`` is added when missing).
"""

from __future__ import annotations

import json
from typing import Any

from controller.yaml_documents import SourceFile, parse_bytes


class PayloadError(ValueError):
    """A payload that is not one of the accepted shapes."""


def payload_tables(payload: Any) -> list[dict[str, Any]]:
    """The table objects of a payload, in order."""
    if isinstance(payload, dict) and "tables" in payload and isinstance(payload["tables"], list):
        payload = payload["tables"]
    tables = payload if isinstance(payload, list) else [payload]
    if not tables or not all(isinstance(t, dict) for t in tables):
        raise PayloadError('the payload must be a table object, a list of them, or {"tables": [...]}')
    try:  # JSON may escape a lone surrogate (\ud800), which no UTF-8 text, hence no definition, holds
        json.dumps(tables, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PayloadError(f"the payload is not valid Unicode: {exc.reason}") from None
    return [{"version": 1, **table} for table in tables]


def as_source(tables: list[dict[str, Any]], display: str) -> SourceFile:
    """The tables as one multi-document source, so validation points at lines of this rendering."""
    text = "\n---\n".join(json.dumps(t, indent=2, ensure_ascii=False) for t in tables)
    return parse_bytes(text.encode("utf-8"), display)
