"""A brute-force reference model of gates and keys (DESIGN §4), for the property tests.

Written from DESIGN's text, not from ``controller.core.gates``: it enumerates every combination instead
of building keys incrementally, and it imports nothing from ``controller``. Definitions are the same
dicts that are validated and applied; values are canonicalised by type as §4 "Partition key" says.

The reading of DESIGN §4 that the model encodes:

* A key K of D maps some of D's partitions to values; every required partition of D is in it.
* Each entry of D's ``dependencies`` is a *requirement*: a set of edges D → U with one required
  flag. A plain dependency is a requirement of one edge; an ``any_of`` group is one requirement
  whose edges are its members (each with its own ``partition_map``; the group's ``is_required``,
  default true). A table is the upstream of at most one edge of D (the validator's rule).
* An execution x of U *provides* to D, through the edge D → U, the value of each partition p of D
  whose upstream partition (``partition_map.get(p, p)``) U has and x gives. It *agrees* with K
  when no provided value differs from K's (an omitted value agrees with anything).
* **Gate.** D's gate for K is open when every required requirement of D has at least one edge with
  an execution, registered so far, that agrees with K through that edge ("a required group blocks
  until one member is present"). Optional requirements (plain or group) never block.
* **Keys considered.** When E of U is registered, for each edge D → U (in requirement R0): E is
  R0's chosen execution (the other members of R0 are not consulted: E satisfies the group). For
  each other requirement: one execution of any one of its members (providing through that member's
  edge), or, when the requirement is optional, nothing ("every combination"). When the values they
  provide never contradict each other, K is their union: E's values ("agree with E on the shared
  partitions"; a given value is part of the key) and "D's other partitions taken from executions of
  D's other dependencies". An optional partition nobody in the combination gives is left out of K.
  K must hold every required partition of D. E opens D@K when D's gate for K is open (checked
  separately, from the gate definition above, against every execution registered so far including E).
* The items of one request are all registered before any gate is decided (they see each other).
  This gives the same union of runs as registering them one by one: a key that needs both E1
  and E2 is reached from whichever is registered second.
* Each opened (D, K) has one run: created by the first opening, pushed by the next ones (a
  re-registered execution of any member opens the same keys again).
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
    """D → ``upstream``: a plain dependency, or one member of an ``any_of`` group."""

    upstream: str
    partition_map: tuple[tuple[str, str], ...]

    def upstream_partition(self, mine: str) -> str:
        return dict(self.partition_map).get(mine, mine)


@dataclass(frozen=True, eq=False)
class Requirement:
    """One entry of ``dependencies``: satisfied by an execution of any of its edges (compared by
    identity: two equal entries of one table are still two requirements)."""

    edges: tuple[Edge, ...]
    required: bool
    group: bool


@dataclass(frozen=True)
class Table:
    name: str
    partitions: tuple[Partition, ...]
    dependencies: tuple[Requirement, ...]

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
        requirements = tuple(requirement_from(d) for d in document.get("dependencies", []))
        tables[document["name"]] = Table(document["name"], partitions, requirements)
    return tables


def requirement_from(entry: Mapping[str, Any]) -> Requirement:
    """An item of ``dependencies``: ``{dependency_name, is_required?, partition_map?}`` or
    ``{any_of: [name | {dependency_name, partition_map?}, …], is_required?}``."""
    required = entry.get("is_required", True)
    if "any_of" not in entry:
        return Requirement((edge_from(entry),), required, group=False)
    members = tuple(edge_from({"dependency_name": m} if isinstance(m, str) else m) for m in entry["any_of"])
    return Requirement(members, required, group=True)


def edge_from(entry: Mapping[str, Any]) -> Edge:
    return Edge(entry["dependency_name"], tuple(sorted(entry.get("partition_map", {}).items())))


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
    """Every required requirement has an edge with a registered execution that agrees with ``candidate``."""
    return all(
        any(
            x.table == edge.upstream and agrees(dependent, edge, tables[edge.upstream], candidate, x.key)
            for edge in requirement.edges
            for x in history
        )
        for requirement in dependent.dependencies
        if requirement.required
    )


#: What a requirement contributes to one combination: an edge and one of its upstream's executions,
#: or nothing (an optional requirement left out).
Choice = tuple[Edge, Registered] | None


def opened_by(
    tables: Mapping[str, Table], execution: Registered, history: Sequence[Registered]
) -> set[tuple[str, FrozenKey]]:
    """Every (dependent, key) whose run ``execution`` opens or pushes; ``history`` includes it."""
    result: set[tuple[str, FrozenKey]] = set()
    upstream = tables[execution.table]
    for dependent in tables.values():
        for own in dependent.dependencies:
            for edge in own.edges:
                if edge.upstream != execution.table:
                    continue
                others = [r for r in dependent.dependencies if r is not own]
                choices: list[list[Choice]] = [
                    [(e, x) for e in r.edges for x in history if x.table == e.upstream]
                    + ([] if r.required else [None])
                    for r in others
                ]
                for combination in itertools.product(*choices):
                    candidate = combine(dependent, tables, edge, upstream, execution, combination)
                    if candidate is None:
                        continue
                    if any(p.required and p.name not in candidate for p in dependent.partitions):
                        continue
                    if gate_open(tables, dependent, candidate, history):
                        result.add((dependent.name, freeze(candidate)))
    return result


def combine(
    dependent: Table,
    tables: Mapping[str, Table],
    edge: Edge,
    upstream: Table,
    execution: Registered,
    combination: Iterable[Choice],
) -> Key | None:
    """The union of what ``execution`` and the chosen executions provide, None if they contradict."""
    candidate = dict(provided(dependent, edge, upstream, execution.key))
    for chosen in combination:
        if chosen is None:
            continue
        other_edge, x = chosen
        given = provided(dependent, other_edge, tables[other_edge.upstream], x.key)
        if any(candidate.get(name, value) != value for name, value in given.items()):
            return None  # contradicting values: not one key
        candidate.update(given)
    return candidate
