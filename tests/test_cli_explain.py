"""``flux-control explain``: a dependency missing, then present, then the run awaiting approval."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from controller.cli import main
from tests.factories import table_doc
from tests.runtime_support import Lambda, partitions, running_lambda

MONTH = [{"name": "mes", "type": "int"}]
TABLES = [
    table_doc("tb_a", partitions=MONTH),
    table_doc("tb_b", partitions=MONTH),
    table_doc("tb_opt", partitions=MONTH),
    table_doc(
        "tb_c",
        partitions=MONTH,
        requires_approval=True,
        approvers=["ana"],
        debounce_seconds=300,
        dependencies=[
            {"dependency_name": "tb_a"},
            {"dependency_name": "tb_b"},
            {"dependency_name": "tb_opt", "is_required": False},
        ],
    ),
]


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def explain(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["explain", *args, "--database-url", database_url])


def register(flux: Lambda, table: str) -> None:
    flux.ok(
        "POST",
        "/register_execution",
        {"data": [{"table_name": table, "partitions": partitions(mes=202305), "source": "glue"}]},
    )


def test_explain_follows_a_key_from_missing_dependency_to_approval(flux: Lambda, database_url: str) -> None:
    register(flux, "tb_a")
    waiting = explain(database_url, "tb_c", "--partition", "mes=0202305")
    assert waiting.exit_code == 0, waiting.output
    lines = waiting.output.splitlines()
    assert lines[0] == "tb_c for mes=202305"
    assert lines[1] == "  gate: closed, waiting for tb_b"
    assert lines[3].startswith("    ✓ tb_a (required): execution ")
    assert lines[3].endswith("by glue")
    assert lines[4] == "    ✗ tb_b (required): missing"
    assert lines[5] == "    ✗ tb_opt (optional): none (optional: does not block)"
    assert "  approval: required (approvers: ana)" in lines
    assert "  open run: none" in lines

    register(flux, "tb_b")
    ready = explain(database_url, "tb_c", "-p", "mes=202305")
    lines = ready.output.splitlines()
    assert lines[1] == "  gate: open"
    assert lines[4].startswith("    ✓ tb_b (required): execution ")
    [open_run] = [line for line in lines if line.startswith("  open run: ")]
    assert " awaiting_approval, approval " in open_run
    assert open_run.endswith("pending (would fire at 2026-11-29T12:05:00+00:00 once approved)")

    document = json.loads(explain(database_url, "tb_c", "-p", "mes=202305", "--format", "json").output)
    assert document["gate"] == "open"
    assert [(d["dependency"], d["required"], d["present"]) for d in document["dependencies"]] == [
        ("tb_a", True, True),
        ("tb_b", True, True),
        ("tb_opt", False, False),
    ]
    assert document["open_run"]["status"] == "awaiting_approval"
    assert document["open_run"]["approval"]["status"] == "pending"
    assert [r["status"] for r in document["last_runs"]] == ["awaiting_approval"]


def test_explain_refuses_unknown_tables_and_bad_values(flux: Lambda, database_url: str) -> None:
    unknown = explain(database_url, "tb_nope", "-p", "mes=1")
    assert unknown.exit_code == 1
    assert "unknown table 'tb_nope'" in unknown.output
    bad = explain(database_url, "tb_c", "-p", "mes=May")
    assert bad.exit_code == 1
    assert "partition 'mes' is int: 'May' is not an integer" in bad.output
    malformed = explain(database_url, "tb_c", "-p", "mes")
    assert malformed.exit_code == 1  # a usage error: 2 means only changes or drift (DESIGN §3)
    assert "'mes' is not NAME=VALUE" in malformed.output


def test_a_root_table_has_no_gate(flux: Lambda, database_url: str) -> None:
    result = explain(database_url, "tb_a", "-p", "mes=202305")
    assert (
        result.output.splitlines()[1]
        == "  gate: none (a root table: it runs only when registered or started by hand)"
    )


# --- any_of groups: which member satisfied it, or that none did ------------------------------------

GROUPED = [
    *(table_doc(name, partitions=MONTH) for name in ("tb_req", "tb_full", "tb_delta", "tb_x1", "tb_x2")),
    table_doc(
        "tb_g",
        partitions=MONTH,
        dependencies=[
            {"dependency_name": "tb_req"},
            {"any_of": ["tb_full", "tb_delta"], "is_required": True},
            {
                "any_of": ["tb_x1", {"dependency_name": "tb_x2", "partition_map": {"mes": "mes"}}],
                "is_required": False,
            },
        ],
    ),
]


@pytest.fixture
def grouped(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, GROUPED, monkeypatch) as handler:
        yield handler


def test_explain_says_which_member_satisfied_a_group_or_that_none_did(
    grouped: Lambda, database_url: str
) -> None:
    register(grouped, "tb_req")
    waiting = explain(database_url, "tb_g", "-p", "mes=202305")
    assert waiting.exit_code == 0, waiting.output
    lines = waiting.output.splitlines()
    assert lines[1] == "  gate: closed, waiting for any_of(tb_full, tb_delta)"
    assert lines[3].startswith("    ✓ tb_req (required): execution ")
    assert lines[4] == (
        "    ✗ any_of(tb_full, tb_delta) (required): missing: none of tb_full, tb_delta has an execution "
        "for mes=202305"
    )
    assert lines[5] == (
        "    ✗ any_of(tb_x1, tb_x2) (optional): none of tb_x1, tb_x2 has an execution for mes=202305 "
        "(optional: does not block)"
    )

    register(grouped, "tb_delta")
    ready = explain(database_url, "tb_g", "-p", "mes=202305").output.splitlines()
    assert ready[1] == "  gate: open"
    assert ready[4].startswith("    ✓ any_of(tb_full, tb_delta) (required): via tb_delta, execution ")
    assert ready[4].endswith("of mes=202305, registered 2026-11-29T12:00:00+00:00 by glue")

    document = json.loads(explain(database_url, "tb_g", "-p", "mes=202305", "--format", "json").output)
    assert document["gate"] == "open"
    # the fields of a plain dependency keep their meaning; members and satisfied_by_member are added
    assert [
        (d["dependency"], d["required"], d["present"], d["members"], d["satisfied_by_member"])
        for d in document["dependencies"]
    ] == [
        ("tb_req", True, True, [], None),
        ("any_of(tb_full, tb_delta)", True, True, ["tb_full", "tb_delta"], "tb_delta"),
        ("any_of(tb_x1, tb_x2)", False, False, ["tb_x1", "tb_x2"], None),
    ]
    group = document["dependencies"][1]
    assert group["execution"]["partitions"] == {"mes": 202305}
    assert document["open_run"]["status"] == "scheduled"

    register(grouped, "tb_full")  # both members present: the newest execution is shown
    again = explain(database_url, "tb_g", "-p", "mes=202305").output.splitlines()
    assert again[4].startswith("    ✓ any_of(tb_full, tb_delta) (required): via tb_full, execution ")
