"""The published OpenAPI document (issue 14): valid under openapi-spec-validator, readable operationIds,
typed answers with examples, the error model on every error status, its security schemes; and the
answers of a whole flow are what the document says they are."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from sqlalchemy import Engine

from controller.api.app import openapi_document
from tests.api_support import TABLES, item, manual, register
from tests.runtime_support import Lambda, running_lambda

DOCUMENT: dict[str, Any] = json.loads(openapi_document())
OPERATIONS = {
    (method.upper(), path): operation
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
}


def test_the_document_passes_openapi_spec_validator() -> None:
    """It failed: #/components/schemas/HTTPValidationError was referenced by /health and did not exist."""
    validate(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.1")


def test_operation_ids_are_readable_and_unique() -> None:
    ids = {key: operation["operationId"] for key, operation in OPERATIONS.items()}
    assert len(set(ids.values())) == len(ids)
    assert all(re.fullmatch(r"[a-z][a-zA-Z]+", value) for value in ids.values()), ids
    assert ids[("POST", "/register_execution")] == "registerExecution"
    assert ids[("POST", "/approve")] == "approve"
    assert ids[("GET", "/runs")] == "listRuns"
    assert ids[("GET", "/runs/{run_id}")] == "getRun"
    assert ids[("POST", "/tables")] == "checkTables"


def _schema_of(response: dict[str, Any]) -> dict[str, Any]:
    reference = response["content"]["application/json"]["schema"]["$ref"]
    assert reference.startswith("#/components/schemas/")
    schema: dict[str, Any] = DOCUMENT["components"]["schemas"][reference.rsplit("/", 1)[1]]
    return schema


@pytest.mark.parametrize("key", sorted(OPERATIONS), ids=" ".join)
def test_every_answer_is_typed_with_an_example_and_every_error_is_the_error_model(
    key: tuple[str, str],
) -> None:
    operation = OPERATIONS[key]
    answers = operation["responses"]
    success = _schema_of(answers["200"])
    assert success["type"] == "object" and success.get("properties"), success
    assert success.get("examples"), f"{key}: the 200 answer has no example"
    Draft202012Validator.check_schema(success)
    errors = {status for status in answers if status != "200"}
    assert {"413", "500"} <= errors
    for status in errors:
        assert _schema_of(answers[status]) == DOCUMENT["components"]["schemas"]["Error"], (key, status)
    assert operation["summary"] and operation["summary"] != f"{key[0]} {key[1]}"


def test_no_route_claims_powertools_default_422() -> None:
    """Powertools documents a 422 of its own ({"detail": [...]}) that this API never sends."""
    text = json.dumps(DOCUMENT)
    assert "HTTPValidationError" not in text
    assert '"detail"' not in text
    assert "422" not in OPERATIONS[("GET", "/health")]["responses"]
    assert "422" in OPERATIONS[("GET", "/runs")]["responses"]  # its query parameters can be invalid


def test_the_security_schemes_are_sigv4_and_cognito() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["sigv4"]["type"] == "apiKey"
    assert schemes["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert (schemes["cognito"]["type"], schemes["cognito"]["scheme"]) == ("http", "bearer")
    assert DOCUMENT["security"] == [{"sigv4": []}, {"cognito": []}]


# --- answers as the document says ---------------------------------------------------------------------


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def _local(node: Any) -> Any:
    """``node`` with component references as references into ``$defs`` (a plain JSON Schema)."""
    return json.loads(json.dumps(node).replace("#/components/schemas/", "#/$defs/"))


def conforms(key: tuple[str, str], answer: Any) -> None:
    """``answer`` validates against the 200 schema the document gives ``key`` (references resolved)."""
    schema = {
        **_local(_schema_of(OPERATIONS[key]["responses"]["200"])),
        "$defs": _local(DOCUMENT["components"]["schemas"]),
    }
    errors = sorted(Draft202012Validator(schema).iter_errors(answer), key=str)
    assert not errors, f"{key}: {errors[0].message} at {list(errors[0].absolute_path)}"


def test_the_answers_of_a_flow_are_those_of_the_document(flux: Lambda) -> None:
    conforms(("GET", "/health"), flux.ok("GET", "/health"))
    registered = register(flux, item("tb_a", ano_mes=202305))[1]
    assert registered["runs"]
    conforms(("POST", "/register_execution"), registered)
    gated = manual(flux, "tb_gated", 202305)
    conforms(("POST", "/runs"), {"run": gated})
    conforms(("GET", "/approvals"), flux.ok("GET", "/approvals"))
    decided = flux.ok("POST", "/approve", {"approval_status_id": gated["approval_id"]}, user="ana")
    conforms(("POST", "/approve"), decided)
    conforms(("GET", "/runs"), flux.ok("GET", "/runs"))
    run = registered["runs"][0]
    conforms(("GET", "/runs/{run_id}"), flux.ok("GET", f"/runs/{run['id']}"))
    conforms(("POST", "/runs/{run_id}/cancel"), flux.ok("POST", f"/runs/{run['id']}/cancel", {}))
    conforms(("GET", "/executions"), flux.ok("GET", "/executions"))
    conforms(("GET", "/tables"), flux.ok("GET", "/tables"))
    conforms(("GET", "/tables/{name}"), flux.ok("GET", "/tables/tb_a"))
    conforms(("POST", "/tables"), flux.ok("POST", "/tables", {"name": "tb_x", "partitions": []}))
    conforms(("POST", "/tables"), flux.ok("POST", "/tables", {"name": "tb_x"}))  # invalid: problems
    conforms(("GET", "/openapi.json"), flux.ok("GET", "/openapi.json"))
