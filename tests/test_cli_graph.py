"""``flux-control graph`` and ``controller.core.graphs``: edges, optional, any_of and approval marks,
focus, changed."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from controller.cli import main
from controller.core.graphs import build, dot, mermaid
from controller.core.specs import AnyOfSpec, DependencySpec, MemberSpec, TableSpec
from tests.conftest import REPO_ROOT, WriteDefs

DEFINITIONS = str(REPO_ROOT / "definitions")
ALL_TABLES = [
    "tb_cambio_diario",
    "tb_indicadores_mensais",
    "tb_op_enriquecido",
    "tb_promocoes",
    "tb_vendas_consolidadas",
    "tb_vendas_diarias",
    "tbjf001_op_pdz_prep",
]


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["graph", *args])
    return result.exit_code, result.stdout, result.stderr


def _lines(text: str, marker: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if marker in line]


def test_mermaid_of_the_example_definitions() -> None:
    code, out, err = _run(DEFINITIONS)
    assert code == 0, err
    assert out.splitlines()[0] == "flowchart LR"
    # one node per table, with a t_ id and the name as label; the approval table is a hexagon
    nodes = [line.strip() for line in out.splitlines()[1:] if line.startswith("  t_") and "-" not in line]
    assert nodes == [
        't_tb_cadastro_delta["tb_cadastro_delta"]',
        't_tb_cadastro_full["tb_cadastro_full"]',
        't_tb_cambio_diario["tb_cambio_diario"]',
        't_tb_clientes_ativos["tb_clientes_ativos"]',
        't_tb_indicadores_mensais["tb_indicadores_mensais"]',
        't_tb_op_enriquecido{{"tb_op_enriquecido"}}',
        't_tb_promocoes["tb_promocoes"]',
        't_tb_vendas_consolidadas["tb_vendas_consolidadas"]',
        't_tb_vendas_diarias["tb_vendas_diarias"]',
        't_tbjf001_op_pdz_prep["tbjf001_op_pdz_prep"]',
    ]
    assert _lines(out, "->") == [
        't_tb_cadastro_delta -->|"any of"| t_tb_clientes_ativos',  # alternatives: labelled
        't_tb_cadastro_full -->|"any of"| t_tb_clientes_ativos',
        "t_tb_cambio_diario --> t_tb_vendas_consolidadas",
        "t_tb_op_enriquecido --> t_tb_indicadores_mensais",
        "t_tb_promocoes -.-> t_tb_vendas_consolidadas",  # optional: dotted
        "t_tb_vendas_diarias --> t_tb_vendas_consolidadas",
        "t_tbjf001_op_pdz_prep --> t_tb_op_enriquecido",
    ]
    assert _lines(out, "class ") == ["class t_tb_op_enriquecido approval"]
    assert any(line.startswith("classDef approval ") for line in _lines(out, "classDef"))
    assert "changed" not in out


def test_dot_of_the_example_definitions() -> None:
    code, out, err = _run(DEFINITIONS, "--format", "dot")
    assert code == 0, err
    assert out.startswith("digraph flux {\n")
    assert out.endswith("}\n")
    assert _lines(out, "->") == [
        '"tb_cadastro_delta" -> "tb_clientes_ativos" [label="any of"];',
        '"tb_cadastro_full" -> "tb_clientes_ativos" [label="any of"];',
        '"tb_cambio_diario" -> "tb_vendas_consolidadas";',
        '"tb_op_enriquecido" -> "tb_indicadores_mensais";',
        '"tb_promocoes" -> "tb_vendas_consolidadas" [style=dashed];',
        '"tb_vendas_diarias" -> "tb_vendas_consolidadas";',
        '"tbjf001_op_pdz_prep" -> "tb_op_enriquecido";',
    ]
    assert '"tb_op_enriquecido" [shape=hexagon, class="approval"];' in _lines(out, "tb_op_enriquecido")
    assert '"tbjf001_op_pdz_prep";' in _lines(out, "tbjf001_op_pdz_prep")
    assert out.count(" -> ") == 7


def test_output_is_deterministic() -> None:
    assert _run(DEFINITIONS) == _run(DEFINITIONS)
    assert _run(DEFINITIONS, "--format", "dot") == _run(DEFINITIONS, "--format", "dot")


def test_focus_keeps_upstream_and_downstream_only() -> None:
    code, out, err = _run(DEFINITIONS, "--focus", "tb_op_enriquecido")
    assert code == 0, err
    assert _lines(out, "->") == [
        "t_tb_op_enriquecido --> t_tb_indicadores_mensais",
        "t_tbjf001_op_pdz_prep --> t_tb_op_enriquecido",
    ]
    assert "vendas" not in out
    assert "tb_cambio_diario" not in out
    code, out, _ = _run(DEFINITIONS, "--focus", "tb_vendas_diarias", "--format", "dot")
    assert code == 0
    # downstream of the focus only: its siblings (other upstreams of the same table) are not kept
    assert _lines(out, "->") == ['"tb_vendas_diarias" -> "tb_vendas_consolidadas";']
    assert "tb_promocoes" not in out


def test_unknown_focus_exits_1_with_a_hint() -> None:
    code, out, err = _run(DEFINITIONS, "--focus", "tb_op_enriquecid")
    assert code == 1
    assert out == ""
    assert "no table named 'tb_op_enriquecid'" in err
    assert "did you mean 'tb_op_enriquecido'?" in err


def test_invalid_definitions_exit_1_with_problems(write_defs: WriteDefs) -> None:
    root = write_defs(
        {"b.yaml": "version: 1\nname: b\npartitions: []\ndependencies: [{dependency_name: nope}]\n"}
    )
    code, out, err = _run(str(root))
    assert code == 1
    assert out == ""
    assert "defs/b.yaml:4:34: unknown dependency 'nope'" in err
    assert "flux-control validate" in err


def test_help_has_examples() -> None:
    result = CliRunner().invoke(main, ["graph", "--help"])
    assert result.exit_code == 0
    assert "Examples:\n    flux-control graph > graph.mmd\n" in result.output
    assert "--focus TABLE" in result.output


# --- controller.core.graphs directly ------------------------------------------------------------------


def _table(name: str, *upstream: str, optional: tuple[str, ...] = (), approval: bool = False) -> TableSpec:
    dependencies = [DependencySpec(dependency_name=u) for u in upstream]
    dependencies += [DependencySpec(dependency_name=u, is_required=False) for u in optional]
    return TableSpec(name=name, dependencies=tuple(dependencies), requires_approval=approval)


# a → b → c → d, x → c, y (alone), b ⇢ e (optional)
CHAIN = [
    _table("a"),
    _table("b", "a"),
    _table("c", "b", "x", approval=True),
    _table("d", "c"),
    _table("e", optional=("b",)),
    _table("x"),
    _table("y"),
]


def test_changed_keeps_changed_tables_and_their_downstream() -> None:
    graph = build(CHAIN, changed={"b"})
    assert [t.name for t in graph.tables] == ["b", "c", "d", "e"]
    assert [(e.upstream, e.downstream, e.required) for e in graph.edges] == [
        ("b", "c", True),
        ("b", "e", False),
        ("c", "d", True),
    ]
    assert graph.changed == {"b"}
    text = mermaid(CHAIN, changed={"b"})
    assert "class t_b changed" in text
    assert "classDef changed " in text
    assert "class t_c approval" in text
    assert "t_a" not in text  # upstream of a changed table is not shown
    assert "t_x" not in text


def test_changed_highlights_every_changed_table_and_ignores_deleted_names() -> None:
    text = mermaid(CHAIN, changed={"d", "y", "gone"})
    assert text.splitlines() == [
        "flowchart LR",
        '  t_d["d"]',
        '  t_y["y"]',
        "  classDef changed fill:#dbeafe,stroke:#1d4ed8,stroke-width:3px",
        "  class t_d,t_y changed",
    ]
    assert mermaid(CHAIN, changed=set()) == "flowchart LR\n"


def test_changed_in_dot_marks_the_node_class() -> None:
    text = dot(CHAIN, changed={"c"})
    assert '"c" [shape=hexagon, style="filled,bold", fillcolor="#dbeafe", class="approval changed"];' in text
    assert '"d";' in text
    assert '"b"' not in text


def test_focus_is_transitive_both_ways() -> None:
    graph = build(CHAIN, focus="c")
    assert [t.name for t in graph.tables] == ["a", "b", "c", "d", "x"]  # not e (a sibling) nor y
    graph = build(CHAIN, focus="a")
    assert [t.name for t in graph.tables] == ["a", "b", "c", "d", "e"]


def test_unknown_focus_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"no table named 'zz' in the definitions"):
        build(CHAIN, focus="zz")


def test_node_ids_are_safe_for_mermaid() -> None:
    text = mermaid([_table("end"), _table("o_x", "end")])
    assert '  t_end["end"]' in text
    assert "  t_end --> t_o_x" in text


# --- any_of groups --------------------------------------------------------------------------------


def _group(*members: str, required: bool = True) -> AnyOfSpec:
    return AnyOfSpec(any_of=tuple(MemberSpec(dependency_name=m) for m in members), is_required=required)


def test_a_group_labels_each_member_edge_in_mermaid_and_dot() -> None:
    tables = [
        _table("a"),
        _table("b"),
        _table("p"),
        TableSpec(name="x", dependencies=(DependencySpec(dependency_name="p"), _group("b", "a"))),
    ]
    assert _lines(mermaid(tables), "->") == [
        't_a -->|"any of"| t_x',
        't_b -->|"any of"| t_x',
        "t_p --> t_x",  # a plain dependency beside the group: no label
    ]
    assert _lines(dot(tables), "->") == [
        '"a" -> "x" [label="any of"];',
        '"b" -> "x" [label="any of"];',
        '"p" -> "x";',
    ]
    assert [(e.upstream, e.group) for e in build(tables).edges] == [
        ("a", "any of"),
        ("b", "any of"),
        ("p", ""),
    ]


def test_an_optional_group_is_dotted_or_dashed_and_labelled() -> None:
    tables = [_table("a"), _table("b"), TableSpec(name="x", dependencies=(_group("a", "b", required=False),))]
    assert _lines(mermaid(tables), "->") == ['t_a -.->|"any of"| t_x', 't_b -.->|"any of"| t_x']
    assert _lines(dot(tables), "->") == [
        '"a" -> "x" [style=dashed, label="any of"];',
        '"b" -> "x" [style=dashed, label="any of"];',
    ]


def test_several_groups_of_one_table_are_numbered_in_the_order_written() -> None:
    tables = [
        *(_table(n) for n in ("a", "b", "c", "d")),
        TableSpec(name="x", dependencies=(_group("c", "d"), _group("a", "b", required=False))),
        TableSpec(name="y", dependencies=(_group("a", "b"),)),  # one group: not numbered
    ]
    text = mermaid(tables)
    # '#' is written as Mermaid's entity, as in node labels
    assert _lines(text, "->") == [
        't_a -.->|"any of #35;2"| t_x',
        't_a -->|"any of"| t_y',
        't_b -.->|"any of #35;2"| t_x',
        't_b -->|"any of"| t_y',
        't_c -->|"any of #35;1"| t_x',
        't_d -->|"any of #35;1"| t_x',
    ]
    assert '"c" -> "x" [label="any of #1"];' in dot(tables)
    assert '"a" -> "x" [style=dashed, label="any of #2"];' in dot(tables)
    assert mermaid(list(reversed(tables))) == text  # deterministic whatever the input order


def test_focus_follows_group_members(write_defs: WriteDefs) -> None:
    root = write_defs(
        {
            "a.yaml": "version: 1\nname: a\npartitions: []\n",
            "b.yaml": "version: 1\nname: b\npartitions: []\n",
            "c.yaml": "version: 1\nname: c\npartitions: []\n",
            "x.yaml": "version: 1\nname: x\npartitions: []\ndependencies:\n  - any_of: [a, b]\n    is_required: true\n",
        }
    )
    code, out, err = _run(str(root), "--focus", "a")
    assert code == 0, err
    assert _lines(out, "->") == ['t_a -->|"any of"| t_x']
    code, out, err = _run(str(root), "--focus", "x", "--format", "dot")
    assert code == 0, err
    assert _lines(out, "->") == ['"a" -> "x" [label="any of"];', '"b" -> "x" [label="any of"];']
    assert '"c"' not in out


def test_help_describes_groups() -> None:
    result = CliRunner().invoke(main, ["graph", "--help"])
    assert '"any of"' in result.output
