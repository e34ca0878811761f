"""``any_of`` groups at runtime (DESIGN §4), through ``lambda_handler`` on SQLite and PostgreSQL, with
moto: a table fed by a full load or by a delta runs when either arrives, each member compared through
its own ``partition_map``; a required group blocks until one member is present, an optional one never
blocks; a re-registered member, or the other one, pushes the open run again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.api_support import run_detail
from tests.factories import table_doc
from tests.runtime_support import Lambda, partitions, running_lambda

DAY = [{"name": "dt", "type": "date"}]


def tables(*, required: bool = True) -> list[dict[str, Any]]:
    """``clientes`` needs ``contas`` and either ``cadastro_full`` (by ``dt``) or ``cadastro_delta``
    (whose date is ``dia``)."""
    group = {
        "any_of": ["cadastro_full", {"dependency_name": "cadastro_delta", "partition_map": {"dt": "dia"}}],
        "is_required": required,
    }
    return [
        table_doc("contas", partitions=DAY),
        table_doc("cadastro_full", partitions=DAY),
        table_doc("cadastro_delta", partitions=[{"name": "dia", "type": "date"}]),
        table_doc(
            "clientes",
            partitions=DAY,
            dependencies=[{"dependency_name": "contas"}, group],
            debounce_seconds=300,
        ),
    ]


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, tables(), monkeypatch) as running:
        yield running


def register(flux: Lambda, table: str, **values: Any) -> list[dict[str, Any]]:
    answer = flux.ok(
        "POST", "/register_execution", {"data": [{"table_name": table, "partitions": partitions(**values)}]}
    )
    runs: list[dict[str, Any]] = answer["runs"]
    return runs


def trigger_tables(flux: Lambda, run_id: int) -> list[str]:
    return sorted(t["table_name"] for t in run_detail(flux, run_id)["triggers"])


def test_a_required_group_blocks_until_one_member_is_registered(flux: Lambda) -> None:
    assert register(flux, "contas", dt="2026-11-01") == []
    assert register(flux, "cadastro_delta", dia="2026-11-02") == []  # another day: its own partition_map
    [run] = register(flux, "cadastro_delta", dia="2026-11-01")
    assert (run["table_name"], run["partitions"], run["status"]) == (
        "clientes",
        {"dt": "2026-11-01"},
        "scheduled",
    )
    assert trigger_tables(flux, run["id"]) == ["cadastro_delta", "contas"]


@pytest.mark.parametrize(
    "member, values", [("cadastro_full", {"dt": "2026-11-01"}), ("cadastro_delta", {"dia": "2026-11-01"})]
)
def test_either_member_opens_the_run_once_the_plain_dependency_is_there(
    flux: Lambda, member: str, values: dict[str, str]
) -> None:
    register(flux, member, **values)
    [run] = register(flux, "contas", dt="2026-11-01")
    assert run["table_name"] == "clientes"
    assert trigger_tables(flux, run["id"]) == sorted(["contas", member])


def test_the_other_member_and_a_re_registered_one_push_the_open_run(flux: Lambda) -> None:
    register(flux, "contas", dt="2026-11-01")
    [first] = register(flux, "cadastro_full", dt="2026-11-01")
    flux.clock.advance(60)
    [again] = register(flux, "cadastro_full", dt="2026-11-01")
    flux.clock.advance(60)
    [other] = register(flux, "cadastro_delta", dia="2026-11-01")
    assert first["id"] == again["id"] == other["id"]
    assert first["fire_at"] < again["fire_at"] < other["fire_at"]  # each trigger pushes the debounce
    assert trigger_tables(flux, first["id"]) == ["cadastro_delta", "cadastro_full", "cadastro_full", "contas"]


def test_an_optional_group_never_blocks_and_its_members_push(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_lambda(engine, tables(required=False), monkeypatch) as flux:
        [run] = register(flux, "contas", dt="2026-11-01")
        [pushed] = register(flux, "cadastro_delta", dia="2026-11-01")
        assert pushed["id"] == run["id"]
        assert register(flux, "cadastro_full", dt="2026-11-09") == []  # contas is required and absent then
