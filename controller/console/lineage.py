"""A table's lineage as an inline SVG for ``/console/tables/{name}`` (DESIGN §9). Pure: no I/O.

Upstreams sit in columns on the left (negative levels), the focus table in the middle, downstreams on
the right; a table's level is its shortest distance from the focus, found by a breadth-first search
limited by depth over an :class:`Adjacency` index, so a page of a 1,000-table DAG costs only the
neighbourhood (build the index once per catalog and reuse it).

The console's Content-Security-Policy forbids inline styles and scripts, so the drawing uses
presentation attributes (``fill=``, ``stroke-dasharray=``...) and ``class=`` hooks only. Every name,
state and link is XML-escaped; output is sorted so the same graph always draws the same text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from controller.core.graphs import Edge, merge_edges
from controller.core.runs import (
    AWAITING_APPROVAL,
    CANCELLED,
    DISPATCHING,
    FAILED,
    QUEUED,
    REJECTED,
    RUNNING,
    SCHEDULED,
    SUCCEEDED,
)

#: The colour of every label; each fill below has a WCAG contrast ratio ≥ 4.5 against it.
LABEL_COLOUR = "#111827"
#: The fill of a table with no run for the selected key (or a state this module does not know).
NO_RUN_FILL = "#f3f4f6"
#: Node fill by run state: light tints, so the dark label stays readable (AA contrast).
STATE_FILLS: Mapping[str, str] = MappingProxyType(
    {
        AWAITING_APPROVAL: "#fef3c7",
        SCHEDULED: "#e0e7ff",
        QUEUED: "#e0f2fe",
        DISPATCHING: "#cffafe",
        RUNNING: "#bfdbfe",
        SUCCEEDED: "#bbf7d0",
        FAILED: "#fecaca",
        REJECTED: "#fbcfe8",
        CANCELLED: "#e5e7eb",
    }
)
NODE_STROKE = "#374151"
EDGE_COLOUR = "#4b5563"
#: Names longer than this are cut with an ellipsis (the full name stays in the tooltip).
MAX_LABEL = 28
DEFAULT_DEPTH = 2
#: Beyond this many tables a column shows the first ones by name and a "+N more" line.
DEFAULT_MAX_PER_COLUMN = 12

# Geometry, in SVG user units. A 28-character label at 12px fits in NODE_WIDTH with padding.
NODE_WIDTH = 210
NODE_HEIGHT = 30
GAP_X = 64
GAP_Y = 10
MARGIN = 12
FONT_SIZE = 12
#: The label of an ``any_of`` member's edge ("any of"), smaller than a table's.
EDGE_FONT_SIZE = 10
_CHAR_WIDTH = 7  # a generous average glyph width, to size the legend
_LEGEND_HEIGHT = 26
_FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
# Characters XML 1.0 forbids even escaped; a name carrying one must not break the whole page.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class Adjacency:
    """The edges indexed both ways: ``upstreams[t]`` ends at ``t``, ``downstreams[t]`` starts at it."""

    upstreams: Mapping[str, Sequence[Edge]]
    downstreams: Mapping[str, Sequence[Edge]]


@dataclass(frozen=True, slots=True)
class Lineage:
    """The drawing and what it shows: ``levels`` of the drawn tables, ``hidden`` count per level."""

    svg: str
    width: int
    height: int
    levels: Mapping[str, int] = field(default_factory=dict)
    hidden: Mapping[int, int] = field(default_factory=dict)

    def __html__(self) -> str:
        """Jinja's autoescape treats the drawing as markup (it is escaped already, here)."""
        return self.svg


def adjacency(edges: Iterable[Edge]) -> Adjacency:
    """Index ``edges`` in one pass; duplicate pairs merge (:func:`~controller.core.graphs.merge_edges`),
    self-loops are dropped."""
    upstreams: dict[str, list[Edge]] = {}
    downstreams: dict[str, list[Edge]] = {}
    for edge in merge_edges(e for e in edges if e.upstream != e.downstream):
        up, down = edge.upstream, edge.downstream
        upstreams.setdefault(down, []).append(edge)
        downstreams.setdefault(up, []).append(edge)
    return Adjacency(
        upstreams={name: tuple(found) for name, found in upstreams.items()},
        downstreams={name: tuple(found) for name, found in downstreams.items()},
    )


def neighbourhood(
    focus: str, graph: Adjacency | Iterable[Edge], *, depth: int = DEFAULT_DEPTH
) -> dict[str, int]:
    """Every table within ``depth`` edges of ``focus``, with its level (``focus`` is 0).

    Upstreams get ``-distance`` and downstreams ``+distance`` (shortest distances). Definitions have no
    cycles, but given one the search still ends, and a table reachable both ways is placed on the side
    where it is nearer (upstream on a tie). Sorted by (level, name). Raises ``ValueError`` when ``depth``
    is negative.
    """
    if depth < 0:
        raise ValueError(f"depth must be 0 or more, not {depth}")
    index = graph if isinstance(graph, Adjacency) else adjacency(graph)
    up = _search(focus, index.upstreams, depth, upstream=True)
    down = _search(focus, index.downstreams, depth, upstream=False)
    levels = {focus: 0}
    for name in up.keys() | down.keys():
        if name == focus:
            continue
        if name in up and (name not in down or up[name] <= down[name]):
            levels[name] = -up[name]
        else:
            levels[name] = down[name]
    return dict(sorted(levels.items(), key=lambda item: (item[1], item[0])))


def render(
    focus: str,
    graph: Adjacency | Iterable[Edge],
    states: Mapping[str, str],
    href: Callable[[str], str],
    *,
    depth: int = DEFAULT_DEPTH,
    max_per_column: int = DEFAULT_MAX_PER_COLUMN,
    legend: bool = True,
    id_prefix: str = "lineage",
) -> Lineage:
    """The lineage of ``focus`` as an SVG: one link per table, coloured by ``states[name]``.

    ``href(name)`` gives a node's link, already URL-quoted (it is XML-escaped here). ``id_prefix`` keeps
    the element ids unique when a page holds more than one drawing. Raises ``ValueError`` for a negative
    ``depth``, a ``max_per_column`` below 1 or an ``id_prefix`` that is not a plain identifier.
    """
    if max_per_column < 1:
        raise ValueError(f"max_per_column must be 1 or more, not {max_per_column}")
    if not _ID.match(id_prefix):
        raise ValueError(f"id_prefix must be letters, digits, '-' or '_', not {id_prefix!r}")
    index = graph if isinstance(graph, Adjacency) else adjacency(graph)
    columns: dict[int, list[str]] = {}
    for name, level in neighbourhood(focus, index, depth=depth).items():
        columns.setdefault(level, []).append(name)  # already sorted by name within a level
    hidden = {
        level: len(names) - max_per_column for level, names in columns.items() if len(names) > max_per_column
    }
    shown = {level: names[:max_per_column] for level, names in columns.items()}
    rows = {level: len(names) + (1 if level in hidden else 0) for level, names in shown.items()}
    first, tallest = min(columns), max(rows.values())
    graph_height = tallest * NODE_HEIGHT + (tallest - 1) * GAP_Y

    # Each column is centred vertically against the tallest one.
    places: dict[str, tuple[int, int]] = {}
    for level, names in shown.items():
        x = MARGIN + (level - first) * (NODE_WIDTH + GAP_X)
        top = MARGIN + (graph_height - (rows[level] * NODE_HEIGHT + (rows[level] - 1) * GAP_Y)) // 2
        for row, name in enumerate(names):
            places[name] = (x, top + row * (NODE_HEIGHT + GAP_Y))

    used_states = [s for s in (*STATE_FILLS, None) if any(_known(states.get(n)) == s for n in places)]
    legend_width = sum(_legend_item_width(state) for state in used_states) if legend else 0
    width = max(
        MARGIN * 2 + len(columns) * NODE_WIDTH + (len(columns) - 1) * GAP_X, MARGIN * 2 + legend_width
    )
    height = MARGIN * 2 + graph_height + (_LEGEND_HEIGHT if legend else 0)

    title_id = f"{id_prefix}-title"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" role="group" aria-labelledby="{title_id}"'
        f' width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' font-family="{_esc(_FONT)}" font-size="{FONT_SIZE}">',
        f'<title id="{title_id}">Lineage of {_esc(focus)}</title>',
        "<defs>",
        f'<marker id="{id_prefix}-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8"'
        f' markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{EDGE_COLOUR}"/>'
        "</marker>",
        "</defs>",
    ]
    parts.extend(_edges(index, places, id_prefix))
    parts.extend(_node(name, name == focus, states.get(name), href(name), places[name]) for name in places)
    for level, count in sorted(hidden.items()):
        x = MARGIN + (level - first) * (NODE_WIDTH + GAP_X)
        y = places[shown[level][-1]][1] + NODE_HEIGHT + GAP_Y
        parts.append(_more(count, x, y))
    if legend:
        parts.append(_legend(used_states, MARGIN + graph_height + MARGIN))
    parts.append("</svg>")
    return Lineage(
        svg="\n".join(parts),
        width=width,
        height=height,
        levels=MappingProxyType({name: level for level, names in shown.items() for name in names}),
        hidden=MappingProxyType(dict(sorted(hidden.items()))),
    )


def _search(focus: str, step: Mapping[str, Sequence[Edge]], depth: int, *, upstream: bool) -> dict[str, int]:
    """Breadth-first from ``focus`` for ``depth`` levels: one index lookup per table expanded."""
    distances: dict[str, int] = {focus: 0}
    frontier = [focus]
    for distance in range(1, depth + 1):
        following: list[str] = []
        for name in frontier:
            for edge in step.get(name, ()):
                other = edge.upstream if upstream else edge.downstream
                if other not in distances:  # also what stops a cycle from looping
                    distances[other] = distance
                    following.append(other)
        if not following:
            break
        frontier = following
    del distances[focus]
    return distances


def _edges(index: Adjacency, places: Mapping[str, tuple[int, int]], id_prefix: str) -> list[str]:
    """The edges between drawn tables, as curves from a box's right side to the next box's left side."""
    drawn: list[str] = []
    for name in sorted(places):
        x1, y1 = places[name]
        for edge in index.downstreams.get(name, ()):
            if edge.downstream not in places:
                continue
            start_x, start_y = x1 + NODE_WIDTH, y1 + NODE_HEIGHT // 2
            x2, y2 = places[edge.downstream]
            end_x, end_y = x2, y2 + NODE_HEIGHT // 2
            # Levels are shortest distances, so a shortcut may point back or within a column: bending
            # at least half a gap keeps those curves visible instead of a line through the boxes.
            bend = max(GAP_X // 2, abs(end_x - start_x) // 2)
            dash = "" if edge.required else ' stroke-dasharray="6 4"'
            kind = "required" if edge.required else "optional"
            # An any_of member: a class hook, the group in the tooltip and a visible text label at
            # the curve's midpoint (text, so the marking does not rest on the line's look alone).
            member = " any-of" if edge.group else ""
            about = f"{kind}, {edge.group}: one of the group is enough" if edge.group else kind
            drawn.append(
                f'<path class="edge {kind}{member}" d="M{start_x},{start_y} C{start_x + bend},{start_y}'
                f' {end_x - bend},{end_y} {end_x},{end_y}" fill="none" stroke="{EDGE_COLOUR}"'
                f' stroke-width="1.5"{dash} marker-end="url(#{id_prefix}-arrow)">'
                f"<title>{_esc(edge.upstream)} → {_esc(edge.downstream)} ({_esc(about)})</title></path>"
            )
            if edge.group:
                # The midpoint of this symmetric cubic curve is the midpoint of its ends.
                drawn.append(
                    f'<text class="edge-label" x="{(start_x + end_x) // 2}" y="{(start_y + end_y) // 2 - 4}"'
                    f' text-anchor="middle" font-size="{EDGE_FONT_SIZE}" fill="{LABEL_COLOUR}"'
                    f' aria-hidden="true">{_esc(edge.group)}</text>'
                )
    return drawn


def _node(name: str, is_focus: bool, state: str | None, link: str, place: tuple[int, int]) -> str:
    """One table: a link around its box and label, the full name and state in the tooltip."""
    x, y = place
    known = _known(state)
    fill = STATE_FILLS[known] if known is not None else NO_RUN_FILL
    classes = f"node state-{known or 'none'}" + (" focus" if is_focus else "")
    stroke_width = 3 if is_focus else 1
    label = name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 1] + "…"
    tooltip = f"{name} ({state or 'no run'})"
    # The focus is marked three ways (stroke, weight, aria-current), not by colour alone.
    current = ' aria-current="page"' if is_focus else ""
    weight = ' font-weight="bold"' if is_focus else ""
    return (
        f'<a class="{classes}" href="{_esc(link)}"{current}>'
        f"<title>{_esc(tooltip)}</title>"
        f'<rect x="{x}" y="{y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="4" fill="{fill}"'
        f' stroke="{NODE_STROKE}" stroke-width="{stroke_width}"/>'
        f'<text x="{x + 8}" y="{y + NODE_HEIGHT // 2}" dominant-baseline="central" fill="{LABEL_COLOUR}"'
        f"{weight}>{_esc(label)}</text></a>"
    )


def _more(count: int, x: int, y: int) -> str:
    """The line that stands for a column's tables beyond the cap."""
    return (
        f'<g class="more"><rect x="{x}" y="{y}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="4"'
        f' fill="#ffffff" stroke="{NODE_STROKE}" stroke-width="1" stroke-dasharray="3 3"/>'
        f'<text x="{x + 8}" y="{y + NODE_HEIGHT // 2}" dominant-baseline="central"'
        f' fill="{LABEL_COLOUR}">+{count} more</text></g>'
    )


def _legend(used_states: Sequence[str | None], y: int) -> str:
    """A swatch and name for each state the drawing uses, in the palette's order."""
    items: list[str] = [f'<g class="legend" transform="translate({MARGIN},{y})">']
    x = 0
    for state in used_states:
        fill = STATE_FILLS[state] if state is not None else NO_RUN_FILL
        items.append(
            f'<rect x="{x}" y="2" width="12" height="12" fill="{fill}" stroke="{NODE_STROKE}"'
            f' stroke-width="1"/><text x="{x + 16}" y="8" dominant-baseline="central"'
            f' fill="{LABEL_COLOUR}">{_legend_label(state)}</text>'
        )
        x += _legend_item_width(state)
    items.append("</g>")
    return "".join(items)


def _legend_label(state: str | None) -> str:
    return (state or "no run").replace("_", " ")


def _legend_item_width(state: str | None) -> int:
    return 16 + len(_legend_label(state)) * _CHAR_WIDTH + 16


def _known(state: str | None) -> str | None:
    """The state if the palette knows it; an unknown one is drawn like no run (never as a class)."""
    return state if state in STATE_FILLS else None


def _esc(text: str) -> str:
    """Escape for XML text and attribute values, replacing characters XML cannot carry at all."""
    return html.escape(_XML_INVALID.sub("\ufffd", text), quote=True)
