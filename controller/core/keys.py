"""Partition values and keys. Pure: no database, no AWS.

A value is canonicalised by its partition's type so that the same partition always has the same
key: ``int`` values are integers (``"0202305"`` and ``202305`` are one value), ``date`` values are
ISO ``YYYY-MM-DD`` strings, ``string`` values are kept as given. A key is the set of a table's
partition values; an omitted optional partition is absent from the key, and matches any value when
executions are compared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from controller.core.specs import PartitionSpec, TableSpec

Value = int | str
#: A key: partition name → canonical value. Omitted optional partitions are not present.
Key = dict[str, Value]

_INT = re.compile(r"^[+-]?0*[0-9]{1,18}$")  # bounded: fits a 64-bit integer
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
MAX_STRING_VALUE = 256
#: The longest key text (:func:`key_text`) the ``partition_key`` columns hold; PostgreSQL refuses more.
MAX_KEY_TEXT = 1024


class InvalidPartition(ValueError):
    """A value that does not fit its partition, an unknown partition, or a missing required one.

    ``status`` is the HTTP status the API answers with (422 invalid/missing, 404 unknown).
    """

    def __init__(self, message: str, *, status: int = 422, partition: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.partition = partition


def canonical_value(partition: PartitionSpec, raw: Any) -> Value:
    """``raw`` as the canonical value of ``partition``'s type, or :class:`InvalidPartition`."""
    kind = partition.type
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise _invalid(partition, raw, "an integer")
        text = str(raw).strip()
        if not _INT.match(text):
            raise _invalid(partition, raw, "an integer")
        return int(text)
    if kind == "date":
        text = raw.isoformat() if isinstance(raw, date) else raw
        if not isinstance(text, str) or not _DATE.match(text.strip()):
            raise _invalid(partition, raw, "a date as YYYY-MM-DD")
        try:
            return date.fromisoformat(text.strip()).isoformat()
        except ValueError:
            raise _invalid(partition, raw, "a real calendar date") from None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise _invalid(partition, raw, "a string")
    text = str(raw)
    if not text or len(text) > MAX_STRING_VALUE:
        raise _invalid(partition, raw, f"a string of 1 to {MAX_STRING_VALUE} characters")
    return text


def _invalid(partition: PartitionSpec, raw: Any, expected: str) -> InvalidPartition:
    return InvalidPartition(
        f"partition {partition.name!r} is {partition.type}: {raw!r} is not {expected}",
        partition=partition.name,
    )


def make_key(table: TableSpec, values: Mapping[str, Any]) -> Key:
    """The key of ``table`` for the given raw values: every required partition, no unknown ones."""
    known = {p.name: p for p in table.partitions}
    for name in values:
        if name not in known:
            raise unknown_partition(table, name)
    key: Key = {}
    for partition in table.partitions:
        raw = values.get(partition.name)
        if raw is None:
            if partition.is_required:
                raise InvalidPartition(
                    f"partition {partition.name!r} of {table.name!r} is required", partition=partition.name
                )
            continue
        key[partition.name] = canonical_value(partition, raw)
    if len(text := key_text(key)) > MAX_KEY_TEXT:  # JSON: a control character takes 6 characters
        raise InvalidPartition(
            f"the partition values of {table.name!r} are too long together: their key is {len(text)} "
            f"characters, at most {MAX_KEY_TEXT}"
        )
    return key


def unknown_partition(table: TableSpec, name: str) -> InvalidPartition:
    """The 404 of a partition ``table`` does not have, listing those it has."""
    known = ", ".join(p.name for p in table.partitions) or "none"
    return InvalidPartition(
        f"table {table.name!r} has no partition {name!r} (it has: {known})", status=404, partition=name
    )


def key_text(key: Mapping[str, Value]) -> str:
    """The canonical, unambiguous text of a key (stored and indexed): JSON sorted by name."""
    return json.dumps(sorted(key.items()), separators=(",", ":"), ensure_ascii=False)


def key_from_text(text: str) -> Key:
    return dict(json.loads(text))


def agrees(left: Mapping[str, Value], right: Mapping[str, Value], names: Iterable[tuple[str, str]]) -> bool:
    """Whether two keys agree on the given (left name, right name) pairs; an omitted value agrees."""
    for left_name, right_name in names:
        a, b = left.get(left_name), right.get(right_name)
        if a is not None and b is not None and a != b:
            return False
    return True


def describe(key: Mapping[str, Value]) -> str:
    """``a=1, b=x`` for messages."""
    return ", ".join(f"{name}={value}" for name, value in sorted(key.items())) or "(no partitions)"
