"""``controller.console.lineage``: levels, depth, cycles, escaping, colours, the cap, a large DAG, CSP,
any_of members."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence

import pytest

from controller.console.lineage import (
    LABEL_COLOUR,
    NO_RUN_FILL,
    STATE_FILLS,
    Adjacency,
    adjacency,
    neighbourhood,
    render,
)
from controller.core.graphs import Edge
from controller.core.runs import ALL_STATES

SVG = "{http://www.w3.org/2000/svg}"
CHAIN = [Edge("a", "b"), Edge("b", "c"), Edge("c", "d"), Edge("d", "e")]
DIAMOND = [Edge("top", "left"), Edge("top", "right"), Edge("left", "bottom"), Edge("right", "bottom")]


def _href(name: str) -> str:
    return f"/console/tables/{name}"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    return root


def _nodes(root: ET.Element) -> dict[str, ET.Element]:
    """The node links by the full name in their tooltip (``name (state)``)."""
    found: dict[str, ET.Element] = {}
    for link in root.iter(f"{SVG}a"):
        title = link.find(f"{SVG}title")
        assert title is not None and title.text is not None
        found[title.text.rsplit(" (", 1)[0]] = link
    return found


def _rect(link: ET.Element) -> ET.Element:
    rect = link.find(f"{SVG}rect")
    assert rect is not None
    return rect


def _luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    """The WCAG 2 contrast ratio of two ``#rrggbb`` colours."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


class CountingMapping(Mapping[str, Sequence[Edge]]):
    """An index that counts lookups, to prove the search reads only the neighbourhood."""

    def __init__(self, data: Mapping[str, Sequence[Edge]]) -> None:
        self.data = data
        self.lookups = 0

    def __getitem__(self, key: str) -> Sequence[Edge]:
        self.lookups += 1
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the whole index must not be iterated")

    def __len__(self) -> int:
        raise AssertionError("the whole index must not be measured")


def test_levels_of_a_chain() -> None:
    assert neighbourhood("c", CHAIN) == {"a": -2, "b": -1, "c": 0, "d": 1, "e": 2}
    assert neighbourhood("a", CHAIN) == {"a": 0, "b": 1, "c": 2}
    assert neighbourhood("e", CHAIN, depth=1) == {"d": -1, "e": 0}


def test_levels_of_a_diamond_use_the_shortest_distance() -> None:
    assert neighbourhood("bottom", DIAMOND) == {"top": -2, "left": -1, "right": -1, "bottom": 0}
    assert neighbourhood("left", DIAMOND) == {"top": -1, "left": 0, "bottom": 1}
    # a shortcut top → bottom puts top next to bottom
    assert neighbourhood("bottom", [*DIAMOND, Edge("top", "bottom")])["top"] == -1


def test_depth_limits_both_ways() -> None:
    long_chain = [Edge(f"t{i}", f"t{i + 1}") for i in range(10)]
    assert neighbourhood("t5", long_chain, depth=0) == {"t5": 0}
    assert neighbourhood("t5", long_chain, depth=3) == {f"t{i}": i - 5 for i in range(2, 9)}
    assert set(render("t5", long_chain, {}, _href, depth=1).levels) == {"t4", "t5", "t6"}
    with pytest.raises(ValueError, match="depth"):
        neighbourhood("t5", long_chain, depth=-1)


def test_a_cycle_ends_and_each_table_appears_once() -> None:
    cycle = [Edge("a", "b"), Edge("b", "c"), Edge("c", "a")]
    # b is one step downstream and two upstream: it goes to the nearer side
    assert neighbourhood("a", cycle, depth=5) == {"c": -1, "a": 0, "b": 1}
    root = _parse(render("a", [*cycle, Edge("a", "a")], {}, _href, depth=50).svg)
    assert sorted(_nodes(root)) == ["a", "b", "c"]


def test_the_focus_alone_when_it_has_no_edges() -> None:
    lineage = render("lonely", [], {}, _href)
    assert dict(lineage.levels) == {"lonely": 0}
    assert len(_nodes(_parse(lineage.svg))) == 1


def test_svg_structure_title_links_and_viewbox() -> None:
    lineage = render("c", CHAIN, {}, _href)
    root = _parse(lineage.svg)
    assert root.get("role") == "group"  # not "img": its links must stay reachable
    title_id = root.get("aria-labelledby")
    title = root.find(f"{SVG}title")
    assert title is not None and title.get("id") == title_id and title.text == "Lineage of c"
    assert root.get("viewBox") == f"0 0 {lineage.width} {lineage.height}"
    assert (root.get("width"), root.get("height")) == (str(lineage.width), str(lineage.height))
    nodes = _nodes(root)
    assert sorted(nodes) == ["a", "b", "c", "d", "e"]
    assert all(link.get("href") == _href(name) for name, link in nodes.items())
    for link in nodes.values():
        assert link.find(f"{SVG}rect") is not None and link.find(f"{SVG}text") is not None
    # upstreams left of the focus, downstreams right of it, one column per level
    xs = {name: int(_rect(link).get("x", "")) for name, link in nodes.items()}
    assert xs["a"] < xs["b"] < xs["c"] < xs["d"] < xs["e"]
    assert len(list(root.iter(f"{SVG}path"))) == 4 + 1  # four edges and the arrow head
    assert lineage.svg == render("c", list(reversed(CHAIN)), {}, _href).svg  # deterministic


def test_focus_has_a_thicker_stroke() -> None:
    nodes = _nodes(_parse(render("c", CHAIN, {}, _href).svg))
    assert _rect(nodes["c"]).get("stroke-width") == "3"
    assert {_rect(nodes[n]).get("stroke-width") for n in "abde"} == {"1"}
    assert nodes["c"].get("aria-current") == "page" and "focus" in nodes["c"].get("class", "")


def test_names_are_escaped_and_long_ones_truncated() -> None:
    odd = "x<&\">'y"
    long_name = "tb_" + "very_long_name_" * 4
    edges = [Edge(odd, "focus"), Edge("focus", long_name)]
    svg = render("focus", edges, {odd: "fa<iled"}, lambda n: f"/console/tables/{n}?a=1&b=2").svg
    assert "<&" not in svg
    root = _parse(svg)
    nodes = _nodes(root)
    assert set(nodes) == {odd, "focus", long_name}
    text = nodes[odd].find(f"{SVG}text")
    assert text is not None and text.text == odd
    assert nodes[odd].get("href") == f"/console/tables/{odd}?a=1&b=2"
    long_text = nodes[long_name].find(f"{SVG}text")
    assert long_text is not None and long_text.text is not None
    assert len(long_text.text) == 28 and long_text.text.endswith("…")
    assert long_name.startswith(long_text.text[:-1])
    # an unknown state is shown in the tooltip, drawn like no run and never becomes a class
    assert "state-none" in nodes[odd].get("class", "") and _rect(nodes[odd]).get("fill") == NO_RUN_FILL
    # characters XML forbids are replaced instead of breaking the page
    _parse(render("bad\x01name", [], {}, _href).svg)


def test_fill_by_state() -> None:
    states = {"a": "failed", "b": "succeeded", "c": "running", "d": "awaiting_approval"}
    nodes = _nodes(_parse(render("c", CHAIN, states, _href).svg))
    for name, state in states.items():
        assert _rect(nodes[name]).get("fill") == STATE_FILLS[state]
        assert f"state-{state}" in nodes[name].get("class", "")
    assert _rect(nodes["e"]).get("fill") == NO_RUN_FILL


def test_the_palette_covers_every_run_state_with_distinct_colours() -> None:
    assert set(STATE_FILLS) == set(ALL_STATES)
    assert len({*STATE_FILLS.values(), NO_RUN_FILL}) == len(STATE_FILLS) + 1


@pytest.mark.parametrize("fill", [*STATE_FILLS.values(), NO_RUN_FILL, "#ffffff"])
def test_label_contrast_meets_wcag_aa(fill: str) -> None:
    assert _contrast(fill, LABEL_COLOUR) >= 4.5


def test_contrast_helper_matches_known_values() -> None:
    assert _contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert _contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


def test_optional_edges_are_dashed() -> None:
    edges = [Edge("a", "b", required=False), Edge("b", "c"), Edge("b", "c", required=False)]
    root = _parse(render("b", edges, {}, _href).svg)
    dashes = {
        (title.text or ""): path.get("stroke-dasharray")
        for path in root.iter(f"{SVG}path")
        if (title := path.find(f"{SVG}title")) is not None
    }
    # a pair that is required by any edge is required
    assert dashes == {"a → b (optional)": "6 4", "b → c (required)": None}
    assert len(adjacency(edges).downstreams["b"]) == 1


def test_any_of_members_are_labelled_in_text_not_by_look_alone() -> None:
    edges = [
        Edge("full", "x", group="any of"),
        Edge("delta", "x", group="any of"),
        Edge("extra", "x", required=False, group="any of #2"),
        Edge("plain", "x"),
    ]
    root = _parse(render("x", edges, {}, _href).svg)
    paths = {
        (title.text or ""): path
        for path in root.iter(f"{SVG}path")
        if (title := path.find(f"{SVG}title")) is not None
    }
    assert sorted(paths) == [
        "delta → x (required, any of: one of the group is enough)",
        "extra → x (optional, any of #2: one of the group is enough)",
        "full → x (required, any of: one of the group is enough)",
        "plain → x (required)",
    ]
    assert (
        paths["full → x (required, any of: one of the group is enough)"].get("class")
        == "edge required any-of"
    )
    assert (
        paths["extra → x (optional, any of #2: one of the group is enough)"].get("stroke-dasharray") == "6 4"
    )
    assert paths["plain → x (required)"].get("class") == "edge required"
    # each member's edge carries a visible label, drawn in the label colour
    labels = [t for t in root.iter(f"{SVG}text") if t.get("class") == "edge-label"]
    assert sorted(t.text or "" for t in labels) == ["any of", "any of", "any of #2"]
    assert {t.get("fill") for t in labels} == {LABEL_COLOUR}


def test_merged_pairs_keep_a_plain_dependency_over_a_group() -> None:
    index = adjacency([Edge("a", "x", group="any of"), Edge("a", "x", required=False)])
    assert index.upstreams["x"] == (Edge("a", "x", True, ""),)
    index = adjacency([Edge("a", "x", required=False, group="any of #2"), Edge("a", "x", group="any of #1")])
    assert index.upstreams["x"] == (Edge("a", "x", True, "any of #1"),)


def test_a_crowded_column_shows_the_first_names_and_a_count() -> None:
    edges = [Edge(f"up_{i:02}", "focus") for i in range(20)] + [Edge("focus", "down")]
    lineage = render("focus", edges, {}, _href, max_per_column=12)
    root = _parse(lineage.svg)
    assert sorted(_nodes(root)) == sorted([f"up_{i:02}" for i in range(12)] + ["focus", "down"])
    assert dict(lineage.hidden) == {-1: 8}
    more = [g for g in root.iter(f"{SVG}g") if g.get("class") == "more"]
    assert len(more) == 1 and "".join(more[0].itertext()) == "+8 more"
    assert len(list(root.iter(f"{SVG}path"))) == 12 + 1 + 1  # shown edges only, and the arrow head
    with pytest.raises(ValueError, match="max_per_column"):
        render("focus", edges, {}, _href, max_per_column=0)


def _large_dag() -> list[Edge]:
    """1,000 tables; t_i depends on t_{i-1} and t_{i-7}."""
    return [Edge(f"t_{i - step}", f"t_{i}") for i in range(1, 1000) for step in (1, 7) if i - step >= 0]


def test_a_large_dag_draws_only_the_neighbourhood() -> None:
    index = adjacency(_large_dag())
    upstreams, downstreams = CountingMapping(index.upstreams), CountingMapping(index.downstreams)
    counted = Adjacency(upstreams=upstreams, downstreams=downstreams)
    levels = neighbourhood("t_500", counted)
    assert levels == {
        "t_486": -2,
        "t_492": -2,
        "t_498": -2,
        "t_493": -1,
        "t_499": -1,
        "t_500": 0,
        "t_501": 1,
        "t_507": 1,
        "t_502": 2,
        "t_508": 2,
        "t_514": 2,
    }
    # one lookup per table expanded: the focus and the first level, each way
    assert upstreams.lookups == 3 and downstreams.lookups == 3
    upstreams.lookups = downstreams.lookups = 0
    lineage = render("t_500", counted, {}, _href)
    assert len(_nodes(_parse(lineage.svg))) == 11
    assert upstreams.lookups + downstreams.lookups <= 3 * len(levels)
    assert len(lineage.svg) < 20_000


def test_csp_safe_output_no_inline_style_or_script() -> None:
    edges = [*DIAMOND, Edge("bottom", "<script>alert(1)</script>", required=False)]
    svg = render("bottom", edges, {"top": "failed"}, _href).svg
    assert "style=" not in svg
    assert "<script" not in svg.lower()
    root = _parse(svg)
    assert not [e for e in root.iter() if e.tag in {f"{SVG}script", f"{SVG}style"} or "style" in e.attrib]


def test_legend_lists_the_states_drawn() -> None:
    states = {"a": "failed", "b": "succeeded"}
    root = _parse(render("b", CHAIN, states, _href, depth=1).svg)
    legend = [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend"]
    assert [t.text for t in legend[0].iter(f"{SVG}text")] == ["succeeded", "failed", "no run"]
    bare = _parse(render("b", CHAIN, states, _href, legend=False).svg)
    assert not [g for g in bare.iter(f"{SVG}g") if g.get("class") == "legend"]


def test_id_prefix_keeps_ids_unique_and_is_validated() -> None:
    svg = render("c", CHAIN, {}, _href, id_prefix="upstream-1").svg
    assert 'id="upstream-1-arrow"' in svg and "url(#upstream-1-arrow)" in svg
    with pytest.raises(ValueError, match="id_prefix"):
        render("c", CHAIN, {}, _href, id_prefix='x" onload="')
