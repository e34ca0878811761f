"""The keys of a backfill (DESIGN §8): the product of each partition's values, given as a list or as
a range. Pure: a table's spec and the request's ``partitions`` in, the keys (or the first problem) out.

- a list ``[v, …]``: those values (each checked against the partition's type; repeats count once);
- an int range ``{"from": 1, "to": 12}``: every integer from ``from`` to ``to``, both included;
- a date range ``{"from": "2026-01-01", "to": "2026-03-31", "step": "day" | "month"}``: every day
  (the default), or the same day of every month while it exists (``month`` from the 31st gives only
  the months that have a 31st: rather none than a day the caller did not ask for);
- a partition not given: an optional one is omitted from every key, a required one is a problem.

At most :data:`MAX_KEYS` keys: the count is known before any key is made, so a request for a
million keys costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date, timedelta
from itertools import product
from math import prod
from typing import Any

from controller.core.keys import (
    InvalidPartition,
    Key,
    Value,
    canonical_value,
    key_text,
    make_key,
    unknown_partition,
)
from controller.core.specs import PartitionSpec, TableSpec

MAX_KEYS = 1000
STEPS = ("day", "month")


def backfill_keys(table: TableSpec, partitions: Mapping[str, Any]) -> list[Key]:
    """Every key the request names, in order (the first partition varies slowest), each once.

    Raises :class:`~controller.core.keys.InvalidPartition` naming the partition at fault.
    """
    known = {p.name: p for p in table.partitions}
    for name in partitions:
        if name not in known:
            raise unknown_partition(table, name)
    axes: list[tuple[str, Sequence[Value]]] = []
    for partition in table.partitions:
        if partition.name in partitions:
            axes.append((partition.name, _values(partition, partitions[partition.name])))
        elif partition.is_required:
            raise InvalidPartition(
                f"partition {partition.name!r} of {table.name!r} is required: give its values or a range",
                partition=partition.name,
            )
    count = prod(len(values) for _, values in axes)
    if count > MAX_KEYS:
        raise InvalidPartition(f"the backfill names {count:,} keys; at most {MAX_KEYS:,} at once")
    keys: dict[str, Key] = {}
    for combination in product(*(values for _, values in axes)):
        key = make_key(table, dict(zip((name for name, _ in axes), combination, strict=True)))
        keys.setdefault(key_text(key), key)
    return list(keys.values())


def _values(partition: PartitionSpec, given: Any) -> Sequence[Value]:
    if isinstance(given, list):
        if not given:
            raise InvalidPartition(
                f"partition {partition.name!r}: the list is empty", partition=partition.name
            )
        return list(dict.fromkeys(canonical_value(partition, raw) for raw in given))
    if isinstance(given, Mapping):
        return _range(partition, given)
    raise InvalidPartition(
        f'partition {partition.name!r}: give a list of values or a range {{"from", "to"}}',
        partition=partition.name,
    )


def _range(partition: PartitionSpec, given: Mapping[str, Any]) -> Sequence[Value]:
    name = partition.name
    extra = sorted(set(given) - {"from", "to", "step"})
    if extra or "from" not in given or "to" not in given:
        raise InvalidPartition(
            f'partition {name!r}: a range is {{"from", "to"}} (and "step" for dates)'
            + (f", not {', '.join(map(repr, extra))}" if extra else ""),
            partition=name,
        )
    start, end = canonical_value(partition, given["from"]), canonical_value(partition, given["to"])
    step = given.get("step")
    if partition.type == "int":
        if step is not None:
            raise InvalidPartition(f"partition {name!r}: an int range has no step (it is 1)", partition=name)
        assert isinstance(start, int) and isinstance(end, int)
        _ordered(name, start, end)
        return _bounded(name, end - start + 1, lambda: range(start, end + 1))
    if partition.type == "date":
        step = step or "day"
        if step not in STEPS:
            raise InvalidPartition(
                f"partition {name!r}: step is 'day' or 'month', not {step!r}", partition=name
            )
        first, last = date.fromisoformat(str(start)), date.fromisoformat(str(end))
        _ordered(name, first, last)
        if step == "day":
            return _bounded(name, (last - first).days + 1, lambda: _days(first, last))
        months = (last.year - first.year) * 12 + last.month - first.month + 1
        return _bounded(name, months, lambda: _months(first, last))
    raise InvalidPartition(
        f"partition {name!r} is a string: list its values (a range needs int or date)", partition=name
    )


def _ordered(name: str, start: Any, end: Any) -> None:
    if start > end:
        raise InvalidPartition(
            f"partition {name!r}: the range ends ({end}) before it starts ({start})", partition=name
        )


def _bounded(name: str, count: int, values: Any) -> list[Value]:
    """The range's values, made only once its length is known to fit (a huge range costs nothing)."""
    if count > MAX_KEYS:
        raise InvalidPartition(
            f"partition {name!r}: the range has {count:,} values; at most {MAX_KEYS:,} keys at once",
            partition=name,
        )
    return list(values())


def _days(first: date, last: date) -> Iterator[Value]:
    day = first
    while day <= last:
        yield day.isoformat()
        day += timedelta(days=1)


def _months(first: date, last: date) -> Iterator[Value]:
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        try:
            day = date(year, month, first.day)
        except ValueError:  # no such day in that month (the 31st, February's 29th)
            day = None
        if day is not None and day <= last:
            yield day.isoformat()
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
