"""Checks across definitions that a JSON Schema cannot express. Pure: specs in, problems out."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from controller.core.access import GROUP_PREFIX
from controller.core.problems import Locator, PathSegment, Problem, did_you_mean
from controller.core.specs import LOCAL_HOSTS, AnyOfSpec, DependencySpec, PartitionSpec, TableSpec
from controller.core.templates import template_errors, template_strings


@dataclass(frozen=True, slots=True)
class LocatedTable:
    """A table definition together with where it was written.

    ``incomplete`` names the lists (``partitions``, ``dependencies``, ``tasks``) that lost items to
    schema errors (:mod:`controller.core.partial_definitions`): checks that need the whole list skip them.
    """

    spec: TableSpec
    source: Locator
    incomplete: frozenset[str] = frozenset()

    def complete(self, field: str) -> bool:
        return field not in self.incomplete


def check_tables(tables: Sequence[LocatedTable], known_names: Iterable[str] = ()) -> list[Problem]:
    """Every cross-field and cross-table problem of a definition set.

    ``known_names`` are names of tables whose documents failed earlier checks: references to them
    are not reported as unknown (the earlier problem is the one to fix).
    """
    by_name: dict[str, LocatedTable] = {}
    problems: list[Problem] = []
    for table in tables:
        first = by_name.setdefault(table.spec.name, table)
        if first is not table:
            where = first.source.locate(("name",))
            problems.append(
                _at(
                    table,
                    ("name",),
                    f"duplicate table name {table.spec.name!r} (first defined at {where})",
                    "duplicate-table",
                )
            )
    known = set(by_name) | set(known_names)
    # Each table's partitions by name, as a dependency sees them (the first table of a name); None
    # where some of them were dropped for schema errors (what they provide is not known).
    upstream_partitions = {
        name: {p.name: p for p in t.spec.partitions} if t.complete("partitions") else None
        for name, t in by_name.items()
    }
    # What template_errors says of a template text for a table with these partition names; sets
    # repeat a few templates ("{{ partitions.dt }}") over tables with a few sets of partitions.
    template_messages: dict[tuple[str, tuple[str, ...] | None], list[str]] = {}
    for table in tables:
        problems.extend(_own_names(table))
        problems.extend(_dependencies(table, by_name, known, upstream_partitions))
        problems.extend(_templates(table, template_messages))
        problems.extend(_reserved_params(table))
        problems.extend(_principal_typos(table))
        problems.extend(_task_targets(table))
    problems.extend(_cycles(by_name))
    return problems


def _at(
    table: LocatedTable, path: tuple[str | int, ...], message: str, code: str, *, key: bool = False
) -> Problem:
    return Problem(table.source.locate(path, key=key), message, code)


#: Where an edge is written: ``("dependencies", i)`` or ``("dependencies", i, "any_of", j)``.
_EdgePath = tuple[PathSegment, ...]


def _edges(spec: TableSpec) -> Iterator[tuple[DependencySpec, _EdgePath]]:
    """Each edge of ``spec`` (plain dependencies and ``any_of`` members) with where it is written."""
    for index, dependency in enumerate(spec.dependencies):
        if isinstance(dependency, AnyOfSpec):
            for member, edge in enumerate(dependency.edges):
                yield edge, ("dependencies", index, "any_of", member)
        else:
            yield dependency, ("dependencies", index)


def _own_names(table: LocatedTable) -> Iterator[Problem]:
    spec = table.spec
    yield from _repeated_upstreams(table)
    groups = (
        ("partitions", "name", spec.partitions, "partition"),
        ("tasks", "alias", spec.tasks, "task alias"),
    )
    for field, attr, items, what in groups:
        if len(items) < 2:
            continue
        names = [getattr(item, attr) for item in items]
        if len(set(names)) == len(names):
            continue
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                yield _at(
                    table,
                    (field, index, attr),
                    f"duplicate {what} {name!r} in table {spec.name!r}",
                    f"duplicate-{field}",
                )
            seen.add(name)


def _repeated_upstreams(table: LocatedTable) -> Iterator[Problem]:
    """A table appears once among another's dependencies: plain, or as one ``any_of`` member."""
    seen: dict[str, bool] = {}  # name → whether its first appearance is a group member
    for edge, path in _edges(table.spec):
        name, in_group = edge.dependency_name, len(path) > 2
        if name not in seen:
            seen[name] = in_group
            continue
        if not in_group and not seen[name]:
            message = f"duplicate dependency {name!r} in table {table.spec.name!r}"
        elif in_group and seen[name]:
            message = f"{name!r} is named twice among the any_of members of table {table.spec.name!r}"
        else:
            message = (
                f"{name!r} is both a dependency and an any_of member of table {table.spec.name!r}: "
                "name it once (an upstream is either required on its own or one of the alternatives)"
            )
        yield _at(table, (*path, "dependency_name"), message, "duplicate-dependencies")


_Partitions = dict[str, PartitionSpec]


def _dependencies(
    table: LocatedTable,
    by_name: dict[str, LocatedTable],
    known: set[str],
    upstream_partitions: dict[str, _Partitions | None],
) -> Iterator[Problem]:
    spec = table.spec
    dependencies = spec.dependencies
    if not dependencies:
        return
    own = {p.name: p for p in spec.partitions}
    all_resolved = table.complete("dependencies")
    for dep, at in _edges(spec):
        name = dep.dependency_name
        if name == spec.name:
            yield _at(
                table,
                (*at, "dependency_name"),
                f"table {name!r} depends on itself",
                "self-dependency",
            )
            all_resolved = False
            continue
        mapping = dep.partition_map
        for downstream in mapping if table.complete("partitions") else ():
            if downstream not in own:
                yield _at(
                    table,
                    (*at, "partition_map", downstream),
                    f"partition_map names unknown partition {downstream!r} of {spec.name!r} "
                    f"(it has: {_names(own)})",
                    "partition-map",
                    key=True,
                )
        upstream = by_name.get(name)
        if upstream is None:
            all_resolved = False
            if name not in known:
                hint = did_you_mean(name, sorted(known))
                yield _at(
                    table,
                    (*at, "dependency_name"),
                    f"unknown dependency {name!r}{hint}",
                    "unknown-dependency",
                )
            continue
        # A mapped partition must exist upstream; a shared one must have the same type.
        theirs = upstream_partitions[name]
        if theirs is None:  # the upstream lost partitions to schema errors: nothing more to judge
            all_resolved = False
            continue
        for downstream, mapped in mapping.items():
            if mapped not in theirs:
                yield _at(
                    table,
                    (*at, "partition_map", downstream),
                    f"partition_map maps {downstream!r} to {mapped!r}, which {upstream.spec.name!r} "
                    f"does not have (it has: {_names(theirs)})",
                    "partition-map",
                )
        for own_name, partition in own.items():  # duplicates are reported apart
            other = theirs.get(mapping.get(own_name, own_name) if mapping else own_name)
            if other is not None and other.type != partition.type:
                yield _at(
                    table,
                    (*at, "dependency_name"),
                    f"partition {partition.name!r} is {partition.type} here but {other.name!r} of "
                    f"{upstream.spec.name!r} is {other.type}: their values can never match",
                    "partition-type",
                )
    if all_resolved:
        yield from _unprovided_partitions(table, upstream_partitions)


def _unprovided_partitions(
    table: LocatedTable, upstream_partitions: dict[str, _Partitions | None]
) -> Iterator[Problem]:
    """Each required partition of a dependent table must come from at least one dependency (whose
    partitions are all known: the caller checks); an ``any_of`` group provides a partition only when
    every member does, since any one of them may be the one that satisfies it."""
    spec = table.spec

    def provides(edge: DependencySpec, name: str) -> bool:
        mapping = edge.partition_map
        return (mapping.get(name, name) if mapping else name) in (
            upstream_partitions[edge.dependency_name] or {}
        )

    for index, partition in enumerate(spec.partitions):
        if not partition.is_required:
            continue
        name = partition.name
        if any(all(provides(edge, name) for edge in r.edges) for r in spec.requirements):
            continue
        upstreams = ", ".join(repr(r.label) if not r.is_group else r.label for r in spec.requirements)
        lacking = [
            f"{r.label}: {', '.join(repr(e.dependency_name) for e in r.edges if not provides(e, name))} "
            "lacks it"
            for r in spec.requirements
            if r.is_group and any(provides(e, name) for e in r.edges)
        ]
        why = (
            f"; {'; '.join(lacking)}, and a group provides a partition only if every member does"
            if lacking
            else ""
        )
        yield _at(
            table,
            ("partitions", index, "name"),
            f"required partition {partition.name!r} is provided by no dependency ({upstreams}){why}; "
            "add it upstream, map it with partition_map, or set is_required: false",
            "unprovided-partition",
        )


def _templates(
    table: LocatedTable, known_messages: dict[tuple[str, tuple[str, ...] | None], list[str]]
) -> Iterator[Problem]:
    partitions: _Partitions | None = None
    names: tuple[str, ...] | None = ()
    # With partitions dropped for schema errors, which names a template may use is not known.
    complete = table.complete("partitions")
    for index, task in enumerate(table.spec.tasks):
        for key, value in task.params.items():
            # Most parameters are flat strings, most of those templates: no walk for them.
            if isinstance(value, str):
                if "{" not in value:  # every template marker starts with one
                    continue
                strings: Iterable[tuple[tuple[PathSegment, ...], str]] = (((key,), value),)
            elif isinstance(value, Mapping | list):
                strings = template_strings(value, (key,))
            else:
                continue
            for path, source in strings:
                if partitions is None:
                    partitions = {p.name: p for p in table.spec.partitions}
                    names = tuple(partitions) if complete else None
                # template_errors sees the partitions as a mapping of names to opaque values.
                messages = known_messages.get((source, names))
                if messages is None:
                    known = partitions if complete else None
                    messages = known_messages[source, names] = template_errors(source, known)
                for message in messages:
                    yield _at(table, ("tasks", index, "params", *path), message, "template")


#: Task params Flux Control sets itself (DESIGN §7): a param of that name would replace the task's
#: token (Glue arguments ``--flux_run_id``, ``--flux_token``; ``flux`` in the other targets' payload),
#: so the task could not report back, and a repeated Glue start would not be recognised.
_RESERVED_PARAM = re.compile(r"--flux_.*|flux", re.DOTALL)
# "Group:leads", "groups:leads", "group :leads": meant as group:NAME, but names nobody (a name match).
_GROUP_TYPO = re.compile(r"\s*groups?\s*:.*", re.IGNORECASE | re.DOTALL)


def _reserved_params(table: LocatedTable) -> Iterator[Problem]:
    for index, task in enumerate(table.spec.tasks):
        for key in task.params:
            if _RESERVED_PARAM.fullmatch(key):
                yield _at(
                    table,
                    ("tasks", index, "params", key),
                    f"param {key!r} is reserved: Flux Control passes the run's id and token under "
                    "'--flux_*' (Glue) and 'flux' (the payload of the other targets); rename it",
                    "reserved-param",
                    key=True,
                )


def _principal_typos(table: LocatedTable) -> Iterator[Problem]:
    for field in ("approvers", "producers", "operators"):
        for index, entry in enumerate(getattr(table.spec, field)):
            if _GROUP_TYPO.fullmatch(entry) and not entry.startswith(GROUP_PREFIX):
                name = entry.split(":", 1)[1].strip()
                yield _at(
                    table,
                    (field, index),
                    f"{entry!r} is a name, not a group (and matches nobody): write "
                    f"'{GROUP_PREFIX}{name}' for the members of Cognito group {name!r}",
                    "principal",
                )


def _task_targets(table: LocatedTable) -> Iterator[Problem]:
    """An ``http`` task posts to https only, but for a local host (the schema checks the URL's form)."""
    for index, task in enumerate(table.spec.tasks):
        if task.type != "http" or not task.target.lower().startswith("http://"):
            continue
        if _host_of(task.target) not in LOCAL_HOSTS:
            yield _at(
                table,
                ("tasks", index, "target"),
                f"http task {task.alias!r} must use https:// (plain http:// only for a local host: "
                f"{', '.join(sorted(LOCAL_HOSTS))}), not {task.target!r}",
                "http-target",
            )


def _host_of(url: str) -> str:
    """The host of an ``http://`` URL, lower case, without credentials, port or IPv6 brackets (the
    core parses it by hand: ``urllib`` is outside the pure core's imports)."""
    authority = re.split(r"[/?#]", url.split("://", 1)[1], maxsplit=1)[0].rsplit("@", 1)[-1]
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0].lower()
    return authority.split(":", 1)[0].lower()


def _cycles(by_name: dict[str, LocatedTable]) -> Iterator[Problem]:
    """One problem per dependency cycle, printed from its alphabetically first table."""
    upstreams = {
        name: {
            d.dependency_name
            for d in t.spec.edges
            if d.dependency_name in by_name and d.dependency_name != name
        }
        for name, t in by_name.items()
    }
    if _acyclic(upstreams):  # the usual case, told apart in a fraction of Tarjan's time
        return
    graph = {name: sorted(names) for name, names in upstreams.items()}
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        cycle = _cycle_through(min(component), graph, component)
        start = by_name[cycle[0]]
        at = next(path for edge, path in _edges(start.spec) if edge.dependency_name == cycle[1])
        yield _at(
            start,
            (*at, "dependency_name"),
            "dependency cycle: " + " -> ".join(cycle),
            "cycle",
        )


def _acyclic(upstreams: dict[str, set[str]]) -> bool:
    """Whether the graph has no cycle (Kahn's algorithm: every table can be put after its upstreams)."""
    waiting = {name: len(names) for name, names in upstreams.items()}
    downstreams: dict[str, list[str]] = {}
    for name, names in upstreams.items():
        for upstream in names:
            downstreams.setdefault(upstream, []).append(name)
    ready = [name for name, count in waiting.items() if not count]
    placed = 0
    while ready:
        placed += 1
        for downstream in downstreams.get(ready.pop(), ()):
            waiting[downstream] -= 1
            if not waiting[downstream]:
                ready.append(downstream)
    return placed == len(upstreams)


def _strongly_connected(graph: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (a 10,000-table chain must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child_pos = work.pop()
            if child_pos == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            children = graph[node]
            if child_pos < len(children):
                work.append((node, child_pos + 1))
                child = children[child_pos]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def _cycle_through(start: str, graph: dict[str, list[str]], component: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected component (BFS)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in graph[node]:
                if child not in component:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in a cycle but no path returns to it")


def _names(partitions: Mapping[str, object]) -> str:
    return ", ".join(partitions) or "no partitions"
