"""Gates: which runs an execution opens. Pure: definitions and executions in, keys out.

D's gate for key K is open when every required dependency R of D has an execution that agrees with
K on the partitions D and R share (by name, or through ``partition_map``). When an execution E of
U arrives, each dependent D of U is considered for the keys that agree with E on what they share,
completed with values from executions of D's other dependencies (every combination that satisfies
all required ones). Optional dependencies never block, but their executions open gates too.

An ``any_of`` group is one requirement with several edges: it is satisfied for K by an execution of
any member that agrees with K through that member's own shared partitions. The execution that
triggers a decision satisfies its own requirement; the other members of that group are not consulted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.core.keys import Key, Value, agrees, key_text
from controller.core.specs import DependencySpec, Requirement, TableSpec

#: Most runs one registration may open: beyond this, a definition or an execution is wrong.
MAX_OPENINGS = 10_000


@dataclass(frozen=True, slots=True)
class Execution:
    """A registered execution as the gate logic sees it."""

    id: int
    table: str
    key: Key


@dataclass(frozen=True, slots=True)
class Probe:
    """Executions the gate logic needs: of ``table``, where ``partition`` is ``value`` or omitted.

    A probe without a partition asks for every execution of the table (a dependency that shares
    no partition with what the trigger determines).
    """

    table: str
    partition: str | None = None
    value: Value | None = None


@dataclass(slots=True)
class Opening:
    """A gate that an execution opened: run ``dependent`` for ``key``, triggered by these executions."""

    dependent: str
    key: Key
    triggers: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DependencyStatus:
    """For ``explain``: whether one dependency is satisfied for a key, and by which execution (of which
    member, for a group: ``satisfied_by.table``)."""

    #: The upstream's name, or ``any_of(a, b)`` for a group.
    dependency: str
    required: bool
    satisfied_by: Execution | None
    #: A group's members, in order; empty for a plain dependency.
    members: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GateLock:
    """The lock that serialises gate decisions of ``table``: for one ``key`` (text), or all of them."""

    table: str
    key: str | None = None


class Graph:
    """Definitions indexed for the runtime: tables by name, and dependents by upstream."""

    def __init__(self, tables: Iterable[TableSpec]) -> None:
        self.tables: dict[str, TableSpec] = {t.name: t for t in tables}
        #: By upstream: each dependent, the edge from it, and the requirement that edge belongs to.
        self.dependents: dict[str, list[tuple[TableSpec, DependencySpec, Requirement]]] = {}
        for table in self.tables.values():
            for requirement in table.requirements:
                for edge in requirement.edges:
                    entry = (table, edge, requirement)
                    self.dependents.setdefault(edge.dependency_name, []).append(entry)
        self._lock_partitions: dict[str, tuple[str, ...]] = {}

    def lock_partitions(self, table: TableSpec) -> tuple[str, ...]:
        """The partitions of ``table`` that every one of its dependencies shares with it.

        An execution of any dependency fixes them, and an execution can only take part in gates of
        keys that agree with it there: gate decisions for different values of these partitions never
        read each other's executions, so they may run concurrently.
        """
        found = self._lock_partitions.get(table.name)
        if found is None:
            common = {p.name for p in table.partitions}
            for dependency in table.edges:
                upstream = self.tables.get(dependency.dependency_name)
                if upstream is not None:
                    common &= {mine for mine, _ in shared(table, dependency, upstream)}
            found = tuple(p.name for p in table.partitions if p.name in common)
            self._lock_partitions[table.name] = found
        return found


def shared(table: TableSpec, dependency: DependencySpec, upstream: TableSpec) -> list[tuple[str, str]]:
    """(partition of ``table``, partition of ``upstream``) pairs the two share."""
    theirs = {p.name for p in upstream.partitions}
    return [
        (p.name, dependency.upstream_partition(p.name))
        for p in table.partitions
        if dependency.upstream_partition(p.name) in theirs
    ]


def _determined(table: TableSpec, edge: DependencySpec, upstream: TableSpec, key: Key) -> Key:
    """The part of ``table``'s key fixed by an execution of ``upstream`` with ``key``."""
    return {mine: key[theirs] for mine, theirs in shared(table, edge, upstream) if theirs in key}


def probes(graph: Graph, execution: Execution) -> list[Probe]:
    """The executions to fetch to evaluate every gate ``execution`` may open."""
    upstream = graph.tables[execution.table]
    found: dict[Probe, None] = {}
    for dependent, edge, own in graph.dependents.get(execution.table, []):
        fixed = _determined(dependent, edge, upstream, execution.key)
        for dependency in _other_edges(dependent, own):
            if dependency.dependency_name not in graph.tables:
                continue
            other = graph.tables[dependency.dependency_name]
            anchors = [
                (theirs, fixed[mine])
                for mine, theirs in shared(dependent, dependency, other)
                if mine in fixed
            ]
            name, value = anchors[0] if anchors else (None, None)
            found[Probe(other.name, name, value)] = None
    return list(found)


def gate_locks(graph: Graph, execution: Execution) -> list[GateLock]:
    """The locks to hold while deciding the gates ``execution`` may open (see ``Graph.lock_partitions``).

    Two registrations that could complete one gate together take the same lock, so neither decides
    without seeing the other's execution (no write skew); registrations for other keys do not wait.
    When the execution does not fix every lock partition (it omits one, or the dependent has none),
    the lock covers all of the dependent's keys.
    """
    upstream = graph.tables[execution.table]
    locks: dict[GateLock, None] = {}
    for dependent, edge, _ in graph.dependents.get(execution.table, []):
        fixed = _determined(dependent, edge, upstream, execution.key)
        names = graph.lock_partitions(dependent)
        whole = not names or any(fixed.get(name) is None for name in names)
        key = None if whole else key_text({name: fixed[name] for name in names})
        locks[GateLock(dependent.name, key)] = None
    return list(locks)


def openings(graph: Graph, execution: Execution, fetched: Mapping[str, Sequence[Execution]]) -> list[Opening]:
    """Every (dependent, key) whose gate ``execution`` opens, given the probed executions by table."""
    upstream = graph.tables[execution.table]
    result: list[Opening] = []
    for dependent, edge, own in graph.dependents.get(execution.table, []):
        start = _determined(dependent, edge, upstream, execution.key)
        seen: set[str] = set()
        for key in _completions(graph, dependent, own, start, fetched):
            statuses = gate(graph, dependent, key, fetched, trigger=(own, execution))
            if any(s.required and s.satisfied_by is None for s in statuses):
                continue
            text = key_text(key)
            if text in seen:
                continue
            seen.add(text)
            triggers = [execution.id] + [
                s.satisfied_by.id for s in statuses if s.satisfied_by and s.satisfied_by.id != execution.id
            ]
            result.append(Opening(dependent.name, key, list(dict.fromkeys(triggers))))
            if len(result) > MAX_OPENINGS:
                raise ValueError(f"this execution would open more than {MAX_OPENINGS:,} runs")
    return result


def gate(
    graph: Graph,
    table: TableSpec,
    key: Key,
    fetched: Mapping[str, Sequence[Execution]],
    trigger: tuple[Requirement, Execution] | None = None,
) -> list[DependencyStatus]:
    """Each dependency of ``table`` for ``key``: satisfied by which execution (the newest among its
    members'), if any. The ``trigger``'s own requirement is satisfied by the trigger alone."""
    statuses = []
    for requirement in table.requirements:
        if trigger is not None and trigger[0] is requirement:
            candidates = [
                (edge, trigger[1]) for edge in requirement.edges if edge.dependency_name == trigger[1].table
            ]
        else:
            candidates = [
                (edge, e) for edge in requirement.edges for e in fetched.get(edge.dependency_name, ())
            ]
        # The shared partitions once per member, not once per candidate execution.
        pairs = {
            edge.dependency_name: shared(table, edge, graph.tables[edge.dependency_name])
            for edge in requirement.edges
            if edge.dependency_name in graph.tables
        }
        matching = [
            e
            for edge, e in candidates
            if edge.dependency_name in pairs and agrees(key, e.key, pairs[edge.dependency_name])
        ]
        newest = max(matching, key=lambda e: e.id) if matching else None
        members = tuple(edge.dependency_name for edge in requirement.edges) if requirement.is_group else ()
        statuses.append(DependencyStatus(requirement.label, requirement.is_required, newest, members))
    return statuses


def _other_edges(table: TableSpec, own: Requirement) -> list[DependencySpec]:
    """The edges of ``table``'s requirements other than ``own``."""
    return [edge for r in table.requirements if r is not own for edge in r.edges]


def _completions(
    graph: Graph,
    table: TableSpec,
    own: Requirement,
    start: Key,
    fetched: Mapping[str, Sequence[Execution]],
) -> list[Key]:
    """Keys of ``table`` extending ``start`` with values from the other requirements' executions (a
    group's: those of any member, each through its own shared partitions)."""
    partials = [start]
    others = [r for r in table.requirements if r is not own]
    # Required dependencies first: they must agree; optional ones only fill what is still missing.
    for requirement in sorted(others, key=lambda r: not r.is_required):
        members = [
            (shared(table, edge, graph.tables[edge.dependency_name]), edge.dependency_name)
            for edge in requirement.edges
            if edge.dependency_name in graph.tables
        ]
        if not members:
            continue
        extended: list[Key] = []
        for partial in partials:
            adds = [
                {mine: e.key[theirs] for mine, theirs in pairs if mine not in partial and theirs in e.key}
                for pairs, name in members
                for e in fetched.get(name, ())
                if agrees(partial, e.key, pairs)
            ]
            additions = [{**partial, **add} for add in {key_text(a): a for a in adds if a}.values()]
            if requirement.is_required:
                # Each distinct set of values it adds is one key; an execution that adds nothing
                # (it omits those partitions) satisfies the partial key as it is.
                if any(not add for add in adds):
                    extended.append(partial)
                extended.extend(additions)
            else:
                # Optional: never blocks; where it has values for partitions still missing from the
                # key, each distinct set of them is a key too (the partial key stays valid as it is).
                extended.append(partial)
                extended.extend(additions)
        partials = extended
    return [k for k in partials if _complete(table, k)]


def _complete(table: TableSpec, key: Key) -> bool:
    return all(p.name in key for p in table.partitions if p.is_required)
