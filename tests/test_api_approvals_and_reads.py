"""Approvals and caller identity through the HTTP API; read routes, POST /tables, OpenAPI."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from controller.cli import main
from tests.api_support import AT_START, MONTH, TABLES, api_event, error_of, manual, run_detail, send
from tests.factories import states, table_doc
from tests.runtime_support import (
    ACCOUNT,
    Lambda,
    running_lambda,
)


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


# --- approvals and identity --------------------------------------------------------------------------


def test_approving_without_a_caller_identity_is_403(flux: Lambda) -> None:
    run = manual(flux, "tb_gated", 202305)
    status, error = error_of(flux, "POST", "/approve", {"approval_status_id": run["approval_id"]}, user=None)
    assert (status, error["code"]) == (403, "forbidden")
    # Even for a table without approvers: deciding needs someone.
    open_run = manual(flux, "tb_open_gate", 202305)
    body = {"approval_status_id": open_run["approval_id"]}
    status, error = error_of(flux, "POST", "/reject", body, user=None)
    assert (status, error["code"]) == (403, "forbidden")
    assert flux.ok("GET", "/approvals", query={"status": "pending"})["approvals"] != []


def test_the_body_user_is_ignored_unless_the_deployment_trusts_it(flux: Lambda) -> None:
    assert flux.deps.trust_body_user is False
    run = manual(flux, "tb_gated", 202305)
    body = {"approval_status_id": run["approval_id"], "user": "ana"}
    status, error = error_of(flux, "POST", "/approve", body)
    assert (status, error["code"]) == (403, "forbidden")
    # An identified caller who is not an approver cannot borrow an approver's name either.
    status, error = error_of(flux, "POST", "/approve", body, user="mallory")
    assert (status, error["code"]) == (403, "forbidden")
    assert "mallory" in error["message"]
    assert run_detail(flux, run["id"])["status"] == "awaiting_approval"


def test_a_trusted_body_user_counts_as_the_approver(flux: Lambda) -> None:
    flux.deps.trust_body_user = True
    run = manual(flux, "tb_gated", 202305)
    status, answer = flux.call(
        "POST", "/approve", {"approval_status_id": run["approval_id"], "user": "ana", "comment": "ok"}
    )
    assert status == 200, answer
    assert answer["approval"] == {"id": run["approval_id"], "status": "approved"}
    approval = run_detail(flux, run["id"])["approval"]
    assert (approval["status"], approval["decided_by"], approval["comment"]) == ("approved", "ana", "ok")


def test_an_iam_caller_is_identified_by_its_user_arn(flux: Lambda) -> None:
    run = manual(flux, "tb_gated", 202305)
    body = {"approval_status_id": run["approval_id"]}
    mallory = api_event(
        "POST", "/approve", body, identity={"userArn": f"arn:aws:iam::{ACCOUNT}:user/mallory"}
    )
    status, raw = send(flux, mallory)
    assert status == 403, raw
    ana = api_event("POST", "/approve", body, identity={"userArn": f"arn:aws:iam::{ACCOUNT}:user/ana"})
    status, raw = send(flux, ana)
    assert status == 200, raw
    assert json.loads(raw)["approval"] == {"id": run["approval_id"], "status": "approved"}
    assert run_detail(flux, run["id"])["approval"]["status"] == "approved"


def test_only_an_iam_user_arn_is_shortened_to_its_user_name(flux: Lambda) -> None:
    run = manual(flux, "tb_gated", 202305)
    body = {"approval_status_id": run["approval_id"]}
    status, error = error_of(flux, "POST", "/approve", body, user="mallory/ana")
    assert status == 403, error
    session = api_event(
        "POST", "/approve", body, identity={"userArn": f"arn:aws:sts::{ACCOUNT}:assumed-role/AnyRole/ana"}
    )
    status, raw = send(flux, session)
    assert status == 403, raw


def test_a_table_without_approvers_accepts_any_identified_caller(flux: Lambda) -> None:
    run = manual(flux, "tb_open_gate", 202305)
    assert run["status"] == "awaiting_approval"
    answer = flux.ok(
        "POST", "/reject", {"approval_status_id": run["approval_id"], "comment": "no"}, user="zoe"
    )
    assert answer["approval"] == {"id": run["approval_id"], "status": "rejected"}
    assert answer["run"]["status"] == "rejected"
    assert run_detail(flux, run["id"])["approval"]["decided_by"] == "zoe"


# --- read routes, POST /tables, OpenAPI --------------------------------------------------------------


def test_health(flux: Lambda) -> None:
    assert flux.call("GET", "/health") == (200, {"status": "ok"})


def test_tables_are_listed_as_reconciled_with_the_revision(flux: Lambda) -> None:
    answer = flux.ok("GET", "/tables")
    expected = states(TABLES)
    assert answer["tables"] == [expected[name] for name in sorted(expected)]
    assert answer["revision"]["revision"] == "test"
    assert answer["revision"]["applied_at"] == AT_START

    one = flux.ok("GET", "/tables/tb_b")
    assert one["table"] == expected["tb_b"]
    assert one["revision"] == answer["revision"]
    status, error = error_of(flux, "GET", "/tables/tb_ghost")
    assert (status, error["code"]) == (404, "not_found")
    assert "tb_ghost" in error["message"]


def test_post_tables_checks_a_new_table_and_writes_nothing(flux: Lambda) -> None:
    before = flux.ok("GET", "/tables")
    new = {
        "name": "tb_new",
        "description": "a new table",
        "partitions": MONTH,
        "dependencies": [{"dependency_name": "tb_a"}],
    }
    answer = flux.ok("POST", "/tables", new)
    assert answer["valid"] is True
    assert answer["problems"] == []
    actions = answer["plan"]["actions"]
    assert [(a["action"], a["table"]) for a in actions] == [("create", "tb_new")]
    assert (
        actions[0]["after"]
        == states([table_doc("tb_new", **{k: v for k, v in new.items() if k != "name"})])["tb_new"]
    )
    assert flux.ok("GET", "/tables") == before


def test_post_tables_reports_the_problems_of_an_invalid_payload(flux: Lambda) -> None:
    before = flux.ok("GET", "/tables")
    bad = {"name": "tb_bad", "partitions": MONTH, "dependencies": [{"dependency_name": "tb_ghost"}]}
    answer = flux.ok("POST", "/tables", bad)
    assert answer["valid"] is False
    assert answer["plan"] is None
    assert answer["problems"]
    problems = answer["problems"]
    # A payload that is one table: paths start at its fields.
    assert problems == [
        {
            "path": "dependencies[0].dependency_name",
            "code": "unknown-dependency",
            "message": "unknown dependency 'tb_ghost' (did you mean 'tb_gated'?)",
        }
    ]
    assert flux.ok("GET", "/tables") == before


DESIGN_ROUTES = {
    ("get", "/health"),
    ("post", "/register_execution"),
    ("post", "/approve"),
    ("post", "/reject"),
    ("get", "/approvals"),
    ("get", "/runs"),
    ("get", "/runs/{}"),
    ("post", "/runs"),
    ("post", "/runs/{}/cancel"),
    ("post", "/runs/{}/retry"),
    ("get", "/executions"),
    ("get", "/tables"),
    ("get", "/tables/{}"),
    ("post", "/tables"),
}


def _routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, re.sub(r"\{[^}]+\}", "{}", path))
        for path, operations in document["paths"].items()
        for method in operations
    }


def test_the_openapi_document_has_the_routes_of_the_design(flux: Lambda) -> None:
    document = flux.ok("GET", "/openapi.json")
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "Flux Control"
    assert _routes(document) >= DESIGN_ROUTES


def test_flux_control_openapi_prints_the_document() -> None:
    result = CliRunner().invoke(main, ["openapi"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert "/register_execution" in document["paths"]
    assert _routes(document) >= DESIGN_ROUTES
