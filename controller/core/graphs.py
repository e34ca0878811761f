"""The dependency graph of a definition set, drawn as Mermaid or Graphviz DOT (pure, no I/O).

Edges point from an upstream table to the table that depends on it; optional dependencies are
dotted (Mermaid) or dashed (DOT); tables that require approval have their own shape and the class
``approval``. The members of an ``any_of`` group (alternatives: one is enough) are drawn as edges
labelled ``any of``; when a table has several groups each is numbered in the order written
(``any of #1``, ``any of #2``), so the edges of one group can be told from another's. Output is
sorted so the same definitions always draw the same text.

``focus`` keeps one table with everything upstream and downstream of it; ``changed`` keeps the
changed tables and everything downstream of them, highlighted with the class ``changed`` (what a
pull-request comment shows).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from controller.core.problems import did_you_mean
from controller.core.specs import TableSpec

#: The label of the edges of an ``any_of`` group's members (numbered when a table has several groups).
GROUP_LABEL = "any of"

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_APPROVAL_STYLE = "fill:#fff4d6,stroke:#b7791f,stroke-width:2px"
_CHANGED_STYLE = "fill:#dbeafe,stroke:#1d4ed8,stroke-width:3px"


@dataclass(frozen=True, slots=True, order=True)
class Edge:
    """``upstream`` must exist before ``downstream`` runs (unless ``required`` is false)."""

    upstream: str
    downstream: str
    required: bool = True
    #: A member of an ``any_of`` group: the group's label ("any of", "any of #2"); empty otherwise.
    group: str = ""


@dataclass(frozen=True, slots=True)
class DependencyGraph:
    """The tables to draw (sorted by name), the edges between them, and the highlighted names."""

    tables: tuple[TableSpec, ...]
    edges: tuple[Edge, ...]
    changed: frozenset[str] = frozenset()


def build(
    tables: Iterable[TableSpec], *, focus: str | None = None, changed: Collection[str] | None = None
) -> DependencyGraph:
    """The graph of ``tables``, narrowed by ``focus`` and/or ``changed`` (both apply when both given).

    Raises ``ValueError`` when ``focus`` names no table. Names in ``changed`` that are not tables
    (deleted ones, say) are ignored.
    """
    by_name = {t.name: t for t in tables}
    edges = _edges(by_name.values(), set(by_name))
    keep = set(by_name)
    if focus is not None:
        if focus not in by_name:
            hint = did_you_mean(focus, sorted(by_name))
            raise ValueError(f"no table named {focus!r} in the definitions{hint}")
        keep &= {focus} | _reachable(focus, edges, upstream=True) | _reachable(focus, edges, upstream=False)
    highlighted = frozenset(changed or ()) & set(by_name)
    if changed is not None:
        downstream: set[str] = set(highlighted)
        for name in highlighted:
            downstream |= _reachable(name, edges, upstream=False)
        keep &= downstream
    return DependencyGraph(
        tables=tuple(by_name[name] for name in sorted(keep)),
        edges=tuple(e for e in edges if e.upstream in keep and e.downstream in keep),
        changed=highlighted & keep,
    )


def mermaid(
    tables: Iterable[TableSpec], *, focus: str | None = None, changed: Collection[str] | None = None
) -> str:
    """A Mermaid ``flowchart LR`` of the tables (see :func:`build` for ``focus`` and ``changed``)."""
    graph = build(tables, focus=focus, changed=changed)
    ids = _node_ids([t.name for t in graph.tables])
    lines = ["flowchart LR"]
    for table in graph.tables:
        label = _mermaid_label(table.name)
        shape = f"{{{{{label}}}}}" if table.requires_approval else f"[{label}]"
        lines.append(f"  {ids[table.name]}{shape}")
    for edge in graph.edges:
        arrow = "-->" if edge.required else "-.->"
        if edge.group:
            arrow += f"|{_mermaid_label(edge.group)}|"
        lines.append(f"  {ids[edge.upstream]} {arrow} {ids[edge.downstream]}")
    approval = [ids[t.name] for t in graph.tables if t.requires_approval]
    highlighted = [ids[t.name] for t in graph.tables if t.name in graph.changed]
    if approval:
        lines.append(f"  classDef approval {_APPROVAL_STYLE}")
        lines.append(f"  class {','.join(approval)} approval")
    if highlighted:
        lines.append(f"  classDef changed {_CHANGED_STYLE}")
        lines.append(f"  class {','.join(highlighted)} changed")
    return "\n".join(lines) + "\n"


def dot(
    tables: Iterable[TableSpec], *, focus: str | None = None, changed: Collection[str] | None = None
) -> str:
    """A Graphviz ``digraph flux`` of the tables (see :func:`build` for ``focus`` and ``changed``)."""
    graph = build(tables, focus=focus, changed=changed)
    lines = [
        "digraph flux {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="Helvetica"];',
    ]
    for table in graph.tables:
        attributes = _dot_attributes(table, table.name in graph.changed)
        suffix = f" [{attributes}]" if attributes else ""
        lines.append(f"  {_dot_id(table.name)}{suffix};")
    for edge in graph.edges:
        marks = ([] if edge.required else ["style=dashed"]) + (
            [f"label={_dot_id(edge.group)}"] if edge.group else []
        )
        suffix = f" [{', '.join(marks)}]" if marks else ""
        lines.append(f"  {_dot_id(edge.upstream)} -> {_dot_id(edge.downstream)}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def table_edges(table: TableSpec) -> list[Edge]:
    """The edges into ``table``, one per upstream it names (plain or ``any_of`` member), in the
    order written; a group's members carry its label, numbered when the table has several groups."""
    groups = sum(1 for r in table.requirements if r.is_group)
    edges: list[Edge] = []
    number = 0
    for requirement in table.requirements:
        label = ""
        if requirement.is_group:
            number += 1
            label = GROUP_LABEL if groups == 1 else f"{GROUP_LABEL} #{number}"
        edges.extend(
            Edge(edge.dependency_name, table.name, requirement.is_required, label)
            for edge in requirement.edges
        )
    return edges


def merge_edges(edges: Iterable[Edge]) -> list[Edge]:
    """One edge per (upstream, downstream) pair, sorted: required if any is, a plain dependency if
    any is (validation allows an upstream once per table, so merging is for invalid or stale data)."""
    found: dict[tuple[str, str], Edge] = {}
    for edge in edges:
        pair = (edge.upstream, edge.downstream)
        seen = found.get(pair)
        if seen is not None:
            group = "" if not (seen.group and edge.group) else min(seen.group, edge.group)
            edge = Edge(*pair, seen.required or edge.required, group)
        found[pair] = edge
    return sorted(found.values())


def _edges(tables: Iterable[TableSpec], known: set[str]) -> tuple[Edge, ...]:
    """One edge per (upstream, downstream) pair among known tables (see :func:`merge_edges`)."""
    edges = (edge for table in tables for edge in table_edges(table) if edge.upstream in known)
    return tuple(merge_edges(edges))


def _reachable(start: str, edges: Sequence[Edge], *, upstream: bool) -> set[str]:
    """Every table reachable from ``start`` against (upstream) or along (downstream) the edges."""
    step: dict[str, list[str]] = {}
    for edge in edges:
        source, target = (edge.downstream, edge.upstream) if upstream else (edge.upstream, edge.downstream)
        step.setdefault(source, []).append(target)
    seen: set[str] = set()
    pending = [start]
    while pending:
        for name in step.get(pending.pop(), []):
            if name not in seen and name != start:
                seen.add(name)
                pending.append(name)
    return seen


def _node_ids(names: Sequence[str]) -> dict[str, str]:
    """A Mermaid-safe, unique id per name (``t_`` avoids reserved words such as ``end``)."""
    ids: dict[str, str] = {}
    used: set[str] = set()
    for name in sorted(names):
        base = "t_" + _UNSAFE.sub("_", name)
        candidate, n = base, 1
        while candidate in used:
            n += 1
            candidate = f"{base}_{n}"
        used.add(candidate)
        ids[name] = candidate
    return ids


def _mermaid_label(name: str) -> str:
    return '"' + name.replace("#", "#35;").replace('"', "#quot;") + '"'


def _dot_id(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_attributes(table: TableSpec, changed: bool) -> str:
    attributes: list[str] = []
    classes: list[str] = []
    if table.requires_approval:
        attributes.append("shape=hexagon")
        classes.append("approval")
    if changed:
        attributes.append('style="filled,bold", fillcolor="#dbeafe"')
        classes.append("changed")
    if classes:
        attributes.append(f'class="{" ".join(classes)}"')
    return ", ".join(attributes)
