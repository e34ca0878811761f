"""``flux-control import`` of the old system's ``optative_with_dependency_id``: dependencies linked as
alternatives become ``any_of`` groups (the mapping is in ``controller.cli.importer``'s docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.test_cli_import import _body, _import, _write_payload

_DT = [{"name": "dt", "type": "date", "is_required": True}]


def _roots(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "partitions": _DT, "dependencies": []} for name in names]


def test_optative_dependencies_become_one_any_of_group(tmp_path: Path) -> None:
    table = {
        "name": "tb_x",
        "partitions": _DT,
        "dependencies": [
            {"id": 11, "dependency_name": "tb_p", "is_required": True, "optative_with_dependency_id": None},
            {"id": 12, "dependency_name": "tb_full", "is_required": True},
            {
                "id": 13,
                "dependency_id": 7,
                "dependency_name": "tb_delta",
                "is_required": False,
                "partition_map": {"dt": "dt"},
                "optative_with_dependency_id": 12,
            },
        ],
    }
    out = tmp_path / "out"
    result = _import(_write_payload(tmp_path, [*_roots("tb_p", "tb_full", "tb_delta"), table]), out)
    assert result.exit_code == 0, result.output
    assert _body(out / "tb_x.yaml") == (
        "version: 1\n"
        "name: tb_x\n"
        "partitions:\n"
        "  - {name: dt, type: date, is_required: true}\n"
        "dependencies:\n"
        "  - {dependency_name: tb_p, is_required: true}\n"  # linked to none: plain, old ids dropped
        "  - {any_of: [tb_full, {dependency_name: tb_delta, partition_map: {dt: dt}}], is_required: true}\n"
    )


def test_optative_links_chain_into_one_group_and_several_groups_stay_apart(tmp_path: Path) -> None:
    def dep(row: int, name: str, link: int | None = None) -> dict[str, Any]:
        return {"id": row, "dependency_name": name, "is_required": False, "optative_with_dependency_id": link}

    table = {
        "name": "tb_x",
        "partitions": _DT,
        # 1 ↔ 3 ← 4 form one group (written where 1 was); 2 ↔ 5 another; all optional
        "dependencies": [
            dep(1, "tb_a", 3),
            dep(2, "tb_b"),
            dep(3, "tb_c"),
            dep(4, "tb_d", 3),
            dep(5, "tb_e", 2),
        ],
    }
    out = tmp_path / "out"
    result = _import(_write_payload(tmp_path, [*_roots("tb_a", "tb_b", "tb_c", "tb_d", "tb_e"), table]), out)
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((out / "tb_x.yaml").read_text(encoding="utf-8"))
    assert written["dependencies"] == [
        {"any_of": ["tb_a", "tb_c", "tb_d"], "is_required": False},
        {"any_of": ["tb_b", "tb_e"], "is_required": False},
    ]


def test_optative_links_name_the_upstream_table_id_when_dependencies_have_no_row_id(tmp_path: Path) -> None:
    table = {
        "name": "tb_x",
        "partitions": _DT,
        "dependencies": [
            {"dependency_id": 7, "dependency_name": "tb_full", "optative_with_dependency_id": 8},
            {"dependency_id": 8, "dependency_name": "tb_delta", "is_required": False},
        ],
    }
    out = tmp_path / "out"
    result = _import(_write_payload(tmp_path, [*_roots("tb_full", "tb_delta"), table]), out)
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((out / "tb_x.yaml").read_text(encoding="utf-8"))
    # required: one member is (no is_required means required, the definition default)
    assert written["dependencies"] == [{"any_of": ["tb_full", "tb_delta"], "is_required": True}]


def test_an_optative_link_to_nothing_writes_nothing(tmp_path: Path) -> None:
    table = {
        "name": "tb_x",
        "partitions": _DT,
        "dependencies": [
            {"id": 1, "dependency_name": "tb_full"},
            {"id": 2, "dependency_name": "tb_delta", "optative_with_dependency_id": 99},
        ],
    }
    out = tmp_path / "out"
    result = _import(_write_payload(tmp_path, [*_roots("tb_full", "tb_delta"), table]), out)
    assert result.exit_code == 1
    assert (
        "table 'tb_x': dependency #2 has optative_with_dependency_id 99, but no dependency of that "
        "table has that id" in result.stderr
    )
    assert not out.exists()


def test_group_members_outside_the_payload_are_listed_as_missing(tmp_path: Path) -> None:
    table = {
        "name": "tb_x",
        "partitions": _DT,
        "dependencies": [
            {"id": 1, "dependency_name": "tb_full"},
            {"id": 2, "dependency_name": "tb_delta", "optative_with_dependency_id": 1},
        ],
    }
    result = _import(_write_payload(tmp_path, [*_roots("tb_full"), table]), tmp_path / "out")
    assert result.exit_code == 1
    assert "not defined in" in result.stderr
    assert ": tb_delta. Add the definitions" in result.stderr
