"""Pieces of answers that several services return. Pure: values in, JSON-ready dicts out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controller.core.keys import Key


def iso(value: datetime | None) -> str | None:
    """A time as ISO 8601 text, or None."""
    return value.isoformat() if value is not None else None


def run_summary(
    run_id: int, table: str, partitions: Key, status: str, fire_at: datetime | None, approval_id: int | None
) -> dict[str, Any]:
    """The short form of a run that every answer carries, with its newest approval (pending or
    decided; None when it never needed one)."""
    return {
        "id": run_id,
        "table_name": table,
        "partitions": partitions,
        "status": status,
        "fire_at": iso(fire_at),
        "approval_id": approval_id,
    }
