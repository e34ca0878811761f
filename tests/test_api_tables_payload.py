"""``POST /tables`` (issue 13): the original payload in every accepted shape, problems located by JSON
path in the caller's payload, its request body in the OpenAPI document; it never writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from controller.api.app import openapi_document
from tests.api_support import MONTH, TABLES, error_of
from tests.conftest import REPO_ROOT
from tests.runtime_support import Lambda, running_lambda

ORIGINAL: list[dict[str, Any]] = json.loads(
    (Path(REPO_ROOT) / "tests" / "fixtures" / "original_payload.json").read_text(encoding="utf-8")
)


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def _broken(table: str) -> dict[str, Any]:
    """A table with an unknown dependency and a misspelt field."""
    return {
        "name": table,
        "partitions": MONTH,
        "dependencies": [{"dependency_name": "tb_ghost"}],
        "debounce_secods": 60,
    }


@pytest.mark.parametrize(
    ("payload", "prefix"),
    [
        ({"data": [{"name": "tb_ok", "partitions": MONTH}, _broken("tb_x")], "user": "lrcxpnu"}, "data[1]."),
        ([{"name": "tb_ok", "partitions": MONTH}, _broken("tb_x")], "[1]."),
        ({"tables": [{"name": "tb_ok", "partitions": MONTH}, _broken("tb_x")]}, "tables[1]."),
        (_broken("tb_x"), ""),
    ],
    ids=["original envelope", "list", "tables", "one table"],
)
def test_problems_are_located_by_json_path_in_the_payload(flux: Lambda, payload: Any, prefix: str) -> None:
    before = flux.ok("GET", "/tables")
    answer = flux.ok("POST", "/tables", payload)
    assert answer["valid"] is False
    assert answer["plan"] is None
    assert answer["problems"] == [
        {
            "path": f"{prefix}debounce_secods",
            "code": "schema-unknown-field",
            "message": "unknown field 'debounce_secods' (did you mean 'debounce_seconds'?)",
        },
        {
            "path": f"{prefix}dependencies[0].dependency_name",
            "code": "unknown-dependency",
            "message": "unknown dependency 'tb_ghost' (did you mean 'tb_gated'?)",
        },
    ]
    assert flux.ok("GET", "/tables") == before


def test_the_original_envelope_plans_its_tables(flux: Lambda) -> None:
    """The old README's request: today's import said 'table #1 of the payload has name None'."""
    answer = flux.ok("POST", "/tables", {"data": ORIGINAL, "user": "lrcxpnu"})
    assert (answer["valid"], answer["problems"]) == (True, [])
    assert [(a["action"], a["table"]) for a in answer["plan"]["actions"]] == [
        ("create", "tb_op_enriquecido"),
        ("create", "tbjf001_op_pdz_prep"),
    ]


def test_problems_are_in_payload_order_and_reconciled_tables_named_apart(flux: Lambda) -> None:
    tables = [{"name": f"tb_n{i}", "partitions": MONTH, "dependencies": []} for i in range(12)]
    tables[2]["dependencies"] = [{"dependency_name": "tb_ghost"}]
    tables[10]["dependencies"] = [{"dependency_name": "tb_ghost"}]
    # tb_b (reconciled, not in the payload) depends on tb_a; a payload's tb_a without ano_mes breaks it.
    tables.append({"name": "tb_a", "partitions": [{"name": "mes", "type": "int"}]})
    answer = flux.ok("POST", "/tables", {"data": tables})
    paths = [p["path"] for p in answer["problems"]]
    assert paths == [
        "data[2].dependencies[0].dependency_name",
        "data[10].dependencies[0].dependency_name",
        "database:tb_b.partitions[0].name",
    ]


def test_params_keys_that_are_not_names_are_quoted(flux: Lambda) -> None:
    table = {
        "name": "tb_t",
        "partitions": MONTH,
        "tasks": [
            {"alias": "t", "type": "glue", "target": "job", "params": {"--mes": "{{ partitions.mez }}"}}
        ],
    }
    [problem] = flux.ok("POST", "/tables", {"data": [table]})["problems"]
    assert problem["path"] == 'data[0].tasks[0].params["--mes"]'
    assert problem["message"] == "template names unknown partition 'mez' (table has: ano_mes)"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"data": []}, "the payload must be the original request"),
        ({"data": "tb_x"}, "'data' must be a list of table objects"),
        ({"data": [ORIGINAL[0]], "user": "x", "extra": 1}, "unknown field(s) beside 'data': 'extra'"),
        ([1, 2], "the payload must be the original request"),
        (5, "the payload must be the original request"),
        ("tb_x", "the payload must be the original request"),
    ],
)
def test_a_payload_of_no_accepted_shape_is_400(flux: Lambda, payload: Any, reason: str) -> None:
    status, error = error_of(flux, "POST", "/tables", payload)
    assert (status, error["code"]) == (400, "bad_request")
    assert error["message"].startswith("body: "), error
    assert reason in error["message"]


def test_the_request_body_is_in_the_openapi_document() -> None:
    document = json.loads(openapi_document())
    body = document["paths"]["/tables"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/TablesPayload"}
    payload = document["components"]["schemas"]["TablesPayload"]
    shapes = json.dumps(payload["anyOf"])
    assert "#/components/schemas/TablesEnvelope" in shapes and "#/components/schemas/TablesList" in shapes
    envelope = document["components"]["schemas"]["TablesEnvelope"]
    assert envelope["required"] == ["data"]
    assert set(envelope["properties"]) == {"data", "user"}


def test_an_any_of_group_in_the_payload_is_checked_and_planned(flux: Lambda) -> None:
    group = {"any_of": ["tb_a", {"dependency_name": "tb_manual", "partition_map": {}}], "is_required": True}
    table = {"name": "tb_g", "partitions": MONTH, "dependencies": [group]}
    answer = flux.ok("POST", "/tables", {"data": [table]})
    assert (answer["valid"], answer["problems"]) == (True, [])
    [action] = answer["plan"]["actions"]
    assert (action["action"], action["table"]) == ("create", "tb_g")

    broken = {"any_of": ["tb_a", "tb_ghost"], "is_required": True}
    [problem] = flux.ok("POST", "/tables", {"data": [{**table, "dependencies": [broken]}]})["problems"]
    assert problem["path"] == "data[0].dependencies[0].any_of[1].dependency_name"
    assert problem["code"] == "unknown-dependency"
    [problem] = flux.ok("POST", "/tables", {"data": [{**table, "dependencies": [{"any_of": ["tb_a"]}]}]})[
        "problems"
    ]
    assert (problem["path"], problem["code"]) == ("data[0].dependencies[0].any_of", "schema-minItems")


def test_the_old_systems_optative_link_is_refused_with_what_to_write_instead(flux: Lambda) -> None:
    old = [{"dependency_name": "tb_a"}, {"dependency_name": "tb_manual", "optative_with_dependency_id": 1}]
    table = {"name": "tb_g", "partitions": MONTH, "dependencies": old}
    [problem] = flux.ok("POST", "/tables", {"data": [table]})["problems"]
    assert problem == {
        "path": "data[0].dependencies[1].optative_with_dependency_id",
        "code": "schema-unknown-field",
        "message": "unknown field 'optative_with_dependency_id': alternative upstreams are one any_of group "
        "here, {any_of: [a, b], is_required: true} (`flux-control import` converts them)",
    }
