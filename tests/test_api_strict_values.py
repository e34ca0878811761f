"""Strict values (issue 13): a JSON boolean is never a partition value nor an id, a fraction is never an
integer, and a body that is not UTF-8 is malformed; each refused with nothing written."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.api_support import TABLES, api_event, error_of, manual, run_detail, send
from tests.factories import table_doc
from tests.runtime_support import Lambda, partitions, running_lambda

DEFINITIONS = [*TABLES, table_doc("tb_text", partitions=[{"name": "regiao", "type": "string"}])]


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, DEFINITIONS, monkeypatch) as handler:
        yield handler


def _register(flux: Lambda, table: str, value: Any) -> tuple[int, dict[str, Any]]:
    name = next(t for t in DEFINITIONS if t["name"] == table)["partitions"][0]["name"]
    body = {"data": [{"table_name": table, "partitions": [{"partition_name": name, "value": value}]}]}
    return error_of(flux, "POST", "/register_execution", body)


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("table", ["tb_a", "tb_typed", "tb_text"])  # int, date and string partitions
def test_a_boolean_is_never_a_partition_value(flux: Lambda, table: str, value: bool) -> None:
    """``true`` registered partition 1 of an int partition and "1" of a string one."""
    status, error = _register(flux, table, value)
    assert (status, error["code"]) == (422, "invalid")
    literal = json.dumps(value)
    assert error["message"] == (
        f"data[0].partitions[0].value: {literal} is not a partition value: "
        "give an integer, a date as YYYY-MM-DD or a string"
    )
    assert flux.ok("GET", "/executions")["executions"] == []


def test_a_boolean_never_opens_a_manual_run(flux: Lambda) -> None:
    body = {"table_name": "tb_text", "partitions": partitions(regiao=True)}
    status, error = error_of(flux, "POST", "/runs", body)
    assert (status, error["code"]) == (422, "invalid")
    assert error["message"].startswith("partitions[0].value: true is not a partition value")
    assert flux.ok("GET", "/runs")["runs"] == []


@pytest.mark.parametrize("value", [202305.0, 2023.5, 1e3])
def test_a_fraction_for_an_int_partition_is_a_plain_422(flux: Lambda, value: float) -> None:
    status, error = _register(flux, "tb_a", value)
    assert (status, error["code"]) == (422, "invalid")
    assert error["message"] == (
        f"data[0].partitions[0].value: {value!r} is not a partition value: "
        "give an integer, a date as YYYY-MM-DD or a string"
    )
    # One error, at the value: not one per member of pydantic's union (value.int, value.str).
    assert error["details"]["errors"] == [
        {"location": "data[0].partitions[0].value", "message": error["message"].split(": ", 1)[1]}
    ]


@pytest.mark.parametrize("value", [[202305], {"v": 1}])
def test_a_container_is_never_a_partition_value(flux: Lambda, value: Any) -> None:
    status, error = _register(flux, "tb_a", value)
    assert (status, error["code"]) == (422, "invalid")
    assert "is not a partition value" in error["message"]


@pytest.mark.parametrize("route", ["/approve", "/reject"])
@pytest.mark.parametrize("given", [True, "1", 1.0])
def test_an_approval_id_is_a_json_integer(flux: Lambda, route: str, given: Any) -> None:
    """``{"approval_status_id": true}`` decided approval 1."""
    run = manual(flux, "tb_open_gate", 202305)
    assert run["approval_id"] == 1
    status, error = error_of(flux, "POST", route, {"approval_status_id": given}, user="ana")
    assert (status, error["code"]) == (422, "invalid")
    assert error["message"] == "approval_status_id: Input should be a valid integer"
    assert run_detail(flux, run["id"])["approval"]["status"] == "pending"


@pytest.mark.parametrize("given", [True, "1"])
def test_a_run_id_to_complete_is_a_json_integer(flux: Lambda, given: Any) -> None:
    run = manual(flux, "tb_manual", 202305)
    assert run["id"] == 1
    body = {"data": [{"table_name": "tb_manual", "partitions": partitions(ano_mes=202305), "run_id": given}]}
    status, error = error_of(flux, "POST", "/register_execution", body)
    assert (status, error["code"]) == (422, "invalid")
    assert error["message"].startswith("data[0].run_id: ")
    assert flux.ok("GET", "/executions")["executions"] == []


@pytest.mark.parametrize(
    "body",
    [b'{"approval_status_id": 1, "comment": "\xff"}', b'{"approval_status_id": 1, "comment": "\xc3"}'],
)
def test_a_body_that_is_not_utf8_is_400(flux: Lambda, body: bytes) -> None:
    """API Gateway hands a binary body over base64-encoded; serve does the same."""
    run = manual(flux, "tb_open_gate", 202305)
    event = api_event("POST", "/approve", authorizer={"claims": {"cognito:username": "ana"}})
    event.update(body=base64.b64encode(body).decode(), isBase64Encoded=True)
    status, raw = send(flux, event)
    answer = json.loads(raw)
    assert status == 400, raw
    assert answer["error"]["code"] == "bad_request"
    assert answer["error"]["message"].startswith("request body is not valid UTF-8 (byte ")
    assert run_detail(flux, run["id"])["approval"]["status"] == "pending"


def test_a_body_with_a_lone_surrogate_is_400(flux: Lambda) -> None:
    event = api_event("POST", "/register_execution")
    event["body"] = '{"data": [{"table_name": "tb_a\ud800", "partitions": []}]}'
    status, raw = send(flux, event)
    assert (status, json.loads(raw)["error"]["code"]) == (400, "bad_request")


def test_a_utf8_body_sent_base64_encoded_is_read(flux: Lambda) -> None:
    body = {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=202305), "source": "glué"}]}
    event = api_event("POST", "/register_execution")
    event.update(body=base64.b64encode(json.dumps(body).encode()).decode(), isBase64Encoded=True)
    status, raw = send(flux, event)
    assert status == 200, raw
    assert flux.ok("GET", "/executions")["executions"][0]["source"] == "glué"
