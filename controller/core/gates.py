"""Gates: which runs an execution opens. Pure: definitions and executions in, keys out.

D's gate for key K is open when every required dependency R of D has an execution that agrees with
K on the partitions D and R share (by name, or through ``partition_map``). When an execution E of
U arrives, each dependent D of U is considered for the keys that agree with E on what they share,
completed with values from executions of D's other dependencies (every combination that satisfies
all required ones). Optional dependencies never block, but their executions open gates too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.core.keys import Key, Value, agrees, key_text
from controller.core.specs import DependencySpec, TableSpec

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
    """For ``explain``: whether one dependency is satisfied for a key, and by which execution."""

    dependency: str
    required: bool
    satisfied_by: Execution | None


@dataclass(frozen=True, slots=True)
class GateLock:
    """The lock that serialises gate decisions of ``table``: for one ``key`` (text), or all of them."""

    table: str
    key: str | None = None


class Graph:
    """Definitions indexed for the runtime: tables by name, and dependents by upstream."""

    def __init__(self, tables: Iterable[TableSpec]) -> None:
        self.tables: dict[str, TableSpec] = {t.name: t for t in tables}
        self.dependents: dict[str, list[tuple[TableSpec, DependencySpec]]] = {}
        for table in self.tables.values():
            for dependency in table.dependencies:
                self.dependents.setdefault(dependency.dependency_name, []).append((table, dependency))
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
            for dependency in table.dependencies:
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
    for dependent, edge in graph.dependents.get(execution.table, []):
        fixed = _determined(dependent, edge, upstream, execution.key)
        for dependency in dependent.dependencies:
            if dependency is edge or dependency.dependency_name not in graph.tables:
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
    for dependent, edge in graph.dependents.get(execution.table, []):
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
    for dependent, edge in graph.dependents.get(execution.table, []):
        start = _determined(dependent, edge, upstream, execution.key)
        seen: set[str] = set()
        for key in _completions(graph, dependent, edge, start, fetched):
            statuses = gate(graph, dependent, key, fetched, trigger=(edge, execution))
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
    trigger: tuple[DependencySpec, Execution] | None = None,
) -> list[DependencyStatus]:
    """Each dependency of ``table`` for ``key``: satisfied by which execution (the newest), if any."""
    statuses = []
    for dependency in table.dependencies:
        upstream = graph.tables.get(dependency.dependency_name)
        if upstream is None:
            statuses.append(DependencyStatus(dependency.dependency_name, dependency.is_required, None))
            continue
        pairs = shared(table, dependency, upstream)
        candidates = list(fetched.get(upstream.name, ()))
        if trigger is not None and trigger[0] is dependency:
            candidates = [trigger[1]]
        matching = [e for e in candidates if agrees(key, e.key, pairs)]
        newest = max(matching, key=lambda e: e.id) if matching else None
        statuses.append(DependencyStatus(dependency.dependency_name, dependency.is_required, newest))
    return statuses


def _completions(
    graph: Graph,
    table: TableSpec,
    edge: DependencySpec,
    start: Key,
    fetched: Mapping[str, Sequence[Execution]],
) -> list[Key]:
    """Keys of ``table`` extending ``start`` with values from the other dependencies' executions."""
    partials = [start]
    others = [d for d in table.dependencies if d is not edge and d.dependency_name in graph.tables]
    # Required dependencies first: they must agree; optional ones only fill what is still missing.
    for dependency in sorted(others, key=lambda d: not d.is_required):
        upstream = graph.tables[dependency.dependency_name]
        pairs = shared(table, dependency, upstream)
        extended: list[Key] = []
        for partial in partials:
            matching = [e for e in fetched.get(upstream.name, ()) if agrees(partial, e.key, pairs)]
            adds = [
                {mine: e.key[theirs] for mine, theirs in pairs if mine not in partial and theirs in e.key}
                for e in matching
            ]
            additions = [{**partial, **add} for add in {key_text(a): a for a in adds if a}.values()]
            if dependency.is_required:
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
