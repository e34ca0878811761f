"""A brute-force reference model of gates and keys (DESIGN §4), for the property tests.

Written from DESIGN's text, not from ``controller.core.gates``: it enumerates every combination instead
of building keys incrementally, and it imports nothing from ``controller``. Definitions are the same
dicts that are validated and applied; values are canonicalised by type as §4 "Partition key" says.

The reading of DESIGN §4 that the model encodes:

* A key K of D maps some of D's partitions to values; every required partition of D is in it.
* An execution x of U *provides* to D, through the edge D → U, the value of each partition p of D
  whose upstream partition (``partition_map.get(p, p)``) U has and x gives. It *agrees* with K
  when no provided value differs from K's (an omitted value agrees with anything).
* **Gate.** D's gate for K is open when every required dependency of D has at least one execution,
  registered so far, that agrees with K. Optional dependencies never block.
* **Keys considered.** When E of U is registered, for each dependent D of U: take E, and one
  execution of each of D's other required dependencies, and at most one of each optional one
  ("every combination"); when the values they provide never contradict each other, K is their
  union: E's values ("agree with E on the shared partitions"; a given value is part of the key)
  and "D's other partitions taken from executions of D's other dependencies". An optional
  partition nobody in the combination gives is left out of K. K must hold every required
  partition of D. E opens D@K when D's gate for K is open (checked separately, from the gate
  definition above, against every execution registered so far including E).
* The items of one request are all registered before any gate is decided (they see each other).
  This gives the same union of runs as registering them one by one: a key that needs both E1
  and E2 is reached from whichever is registered second.
* Each opened (D, K) has one run: created by the first opening, pushed by the next ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Value = int | str
Key = dict[str, Value]
#: A key in a hashable, order-free form: sorted (partition, value) pairs.
FrozenKey = tuple[tuple[str, Value], ...]


@dataclass(frozen=True)
class Partition:
    name: str
    type: str  # int | string | date
    required: bool


@dataclass(frozen=True)
class Edge:
    upstream: str
    required: bool
    partition_map: tuple[tuple[str, str], ...]

    def upstream_partition(self, mine: str) -> str:
        return dict(self.partition_map).get(mine, mine)


@dataclass(frozen=True)
class Table:
    name: str
    partitions: tuple[Partition, ...]
    dependencies: tuple[Edge, ...]

    def partition_names(self) -> set[str]:
        return {p.name for p in self.partitions}


@dataclass(frozen=True)
class Registered:
    """An execution as the model sees it: its table and canonical key (``seq`` keeps duplicates apart)."""

    seq: int
    table: str
    key: FrozenKey


def tables_from(documents: Iterable[Mapping[str, Any]]) -> dict[str, Table]:
    """The model's tables from definition dicts (defaults as in the JSON Schema: required = true)."""
    tables = {}
    for document in documents:
        partitions = tuple(
            Partition(p["name"], p["type"], p.get("is_required", True))
            for p in document.get("partitions", [])
        )
        edges = tuple(
            Edge(
                d["dependency_name"],
                d.get("is_required", True),
                tuple(sorted(d.get("partition_map", {}).items())),
            )
            for d in document.get("dependencies", [])
        )
        tables[document["name"]] = Table(document["name"], partitions, edges)
    return tables


def canonical(kind: str, raw: Any) -> Value:
    """§4 "Partition key": ints as integers, dates as ISO text, strings as given."""
    if kind == "int":
        return int(raw)
    return str(raw)


def key_of(table: Table, values: Mapping[str, Any]) -> FrozenKey:
    """The key of an execution registered with ``values`` (None or absent = omitted)."""
    return freeze(
        {
            p.name: canonical(p.type, values[p.name])
            for p in table.partitions
            if values.get(p.name) is not None
        }
    )


def freeze(key: Mapping[str, Value]) -> FrozenKey:
    return tuple(sorted(key.items()))


def provided(dependent: Table, edge: Edge, upstream: Table, key: FrozenKey) -> Key:
    """What an execution of ``upstream`` with ``key`` provides to ``dependent`` through ``edge``."""
    theirs = dict(key)
    result: Key = {}
    for partition in dependent.partitions:
        source = edge.upstream_partition(partition.name)
        if source in upstream.partition_names() and source in theirs:
            result[partition.name] = theirs[source]
    return result


def agrees(
    dependent: Table, edge: Edge, upstream: Table, candidate: Mapping[str, Value], key: FrozenKey
) -> bool:
    given = provided(dependent, edge, upstream, key)
    return all(candidate.get(name, value) == value for name, value in given.items())


def gate_open(
    tables: Mapping[str, Table],
    dependent: Table,
    candidate: Mapping[str, Value],
    history: Sequence[Registered],
) -> bool:
    """Every required dependency has a registered execution that agrees with ``candidate``."""
    return all(
        any(
            x.table == edge.upstream and agrees(dependent, edge, tables[edge.upstream], candidate, x.key)
            for x in history
        )
        for edge in dependent.dependencies
        if edge.required
    )


def opened_by(
    tables: Mapping[str, Table], execution: Registered, history: Sequence[Registered]
) -> set[tuple[str, FrozenKey]]:
    """Every (dependent, key) whose run ``execution`` opens or pushes; ``history`` includes it."""
    result: set[tuple[str, FrozenKey]] = set()
    upstream = tables[execution.table]
    for dependent in tables.values():
        for edge in dependent.dependencies:
            if edge.upstream != execution.table:
                continue
            others = [e for e in dependent.dependencies if e is not edge]
            choices: list[list[tuple[Edge, Registered | None]]] = [
                [(e, x) for x in history if x.table == e.upstream] + ([] if e.required else [(e, None)])
                for e in others
            ]
            for combination in itertools.product(*choices):
                candidate: Key | None = dict(provided(dependent, edge, upstream, execution.key))
                for other_edge, chosen in combination:
                    if chosen is None or candidate is None:
                        continue
                    given = provided(dependent, other_edge, tables[other_edge.upstream], chosen.key)
                    if any(candidate.get(name, value) != value for name, value in given.items()):
                        candidate = None  # contradicting values: not one key
                    else:
                        candidate.update(given)
                if candidate is None:
                    continue
                if any(p.required and p.name not in candidate for p in dependent.partitions):
                    continue
                if gate_open(tables, dependent, candidate, history):
                    result.add((dependent.name, freeze(candidate)))
    return result
