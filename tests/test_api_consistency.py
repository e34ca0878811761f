"""Consistent answers (issue 13): unknown filters, wrong methods and media types answered alike on every
route, and every run summary carrying its approval (pending or decided)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.api_support import MONTH, TABLES, api_event, error_of, item, manual, register, run_detail, send
from tests.factories import table_doc
from tests.runtime_support import Lambda, running_lambda

#: A table that requires approval and waits for tb_a, with a debounce: its runs are pushed.
GATED_DOWNSTREAM = table_doc(
    "tb_reviewed",
    partitions=MONTH,
    requires_approval=True,
    debounce_seconds=300,
    dependencies=[{"dependency_name": "tb_a"}],
    tasks=[{"alias": "build", "type": "glue", "target": "job-reviewed"}],
)


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, [*TABLES, GATED_DOWNSTREAM], monkeypatch) as handler:
        yield handler


def _reviewed(answer: dict[str, object]) -> dict[str, object]:
    runs = answer["runs"]
    assert isinstance(runs, list)
    [run] = [r for r in runs if r["table_name"] == "tb_reviewed"]
    assert isinstance(run, dict)
    return run


# --- filters -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/runs", "/executions"])
def test_filtering_by_an_unknown_table_is_404(flux: Lambda, route: str) -> None:
    status, error = error_of(flux, "GET", f"{route}?table=tb_ghost")
    assert (status, error["code"]) == (404, "not_found")
    assert error["message"] == "unknown table 'tb_ghost'"
    # A known table without rows is an empty list, not a 404.
    assert flux.ok("GET", route, query={"table": "tb_manual"}) == {route.strip("/"): []}


def test_filtering_approvals_by_an_unknown_status_is_422_like_runs(flux: Lambda) -> None:
    manual(flux, "tb_gated", 202305)
    for route in ("/approvals", "/runs"):
        status, error = error_of(flux, "GET", f"{route}?status=pendng")
        assert (status, error["code"]) == (422, "invalid"), route
        assert error["message"].startswith("unknown status 'pendng' (one of: ")
    for known in ("pending", "approved", "rejected", "cancelled"):
        flux.ok("GET", "/approvals", query={"status": known})


# --- methods and media types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/register_execution", "POST"),
        ("DELETE", "/runs", "GET, POST"),
        ("PUT", "/runs/7", "GET"),
        ("GET", "/runs/7/cancel", "POST"),
        ("POST", "/health", "GET"),
        ("PATCH", "/tables", "GET, POST"),
        ("POST", "/tables/tb_a", "GET"),
    ],
)
def test_a_known_path_with_the_wrong_method_is_405_with_allow(
    flux: Lambda, method: str, path: str, allowed: str
) -> None:
    response = flux.invoke(api_event(method, path, {} if method != "GET" else None))
    assert response["statusCode"] == 405, response
    assert response["multiValueHeaders"]["Allow"] == [allowed]
    error = json.loads(response["body"])["error"]
    assert error["code"] == "method_not_allowed"
    assert error["message"] == f"{method} is not allowed on {path} (allowed: {allowed})"
    assert error["details"] == {"allowed": allowed.split(", ")}


def test_an_unknown_path_is_still_404(flux: Lambda) -> None:
    status, error = error_of(flux, "GET", "/runs/7/nothing")
    assert (status, error["code"]) == (404, "not_found")


@pytest.mark.parametrize("media", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_form_body_is_415_like_text_plain(flux: Lambda, media: str) -> None:
    """``curl -d`` labels a JSON body as a form: refused alike everywhere, with the fix in the message."""
    event = api_event("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})
    event["headers"] = {"content-type": media}
    status, raw = send(flux, event)
    error = json.loads(raw)["error"]
    assert (status, error["code"]) == (415, "unsupported_media_type")
    assert error["message"] == (
        f"request body must be application/json, not {media!r} "
        "(curl -d sends a form: add -H 'Content-Type: application/json')"
    )
    assert flux.ok("GET", "/executions")["executions"] == []


# --- approval_id in every run summary ----------------------------------------------------------------


def test_a_push_of_a_run_awaiting_approval_carries_its_approval(flux: Lambda) -> None:
    """The second registration of the same key answered ``approval_id: null``."""
    first = _reviewed(register(flux, item("tb_a", ano_mes=202305))[1])
    assert first["status"] == "awaiting_approval"
    assert first["approval_id"] is not None
    flux.clock.advance(10)
    pushed = _reviewed(register(flux, item("tb_a", ano_mes=202305))[1])
    assert (pushed["id"], pushed["approval_id"]) == (first["id"], first["approval_id"])


def test_a_push_of_an_approved_run_carries_its_decided_approval(flux: Lambda) -> None:
    first = _reviewed(register(flux, item("tb_a", ano_mes=202305))[1])
    flux.ok("POST", "/approve", {"approval_status_id": first["approval_id"]}, user="zoe")
    flux.clock.advance(10)
    pushed = _reviewed(register(flux, item("tb_a", ano_mes=202305))[1])
    assert (pushed["id"], pushed["status"]) == (first["id"], "scheduled")
    assert pushed["approval_id"] == first["approval_id"]


def test_every_answer_carries_the_approval_once_decided(flux: Lambda) -> None:
    """GET /runs and GET /runs/{id} answered ``approval_id: null`` once the approval was decided."""
    run = _reviewed(register(flux, item("tb_a", ano_mes=202305))[1])
    approval = run["approval_id"]
    decided = flux.ok("POST", "/approve", {"approval_status_id": approval}, user="zoe")
    assert decided["run"]["approval_id"] == approval
    assert run_detail(flux, int(str(run["id"])))["approval_id"] == approval
    listed = flux.ok("GET", "/runs", query={"table": "tb_reviewed"})["runs"]
    assert [r["approval_id"] for r in listed] == [approval]
    cancelled = flux.ok("POST", f"/runs/{run['id']}/cancel", {"reason": "not now"})["run"]
    assert cancelled["approval_id"] == approval
    # A rejected run keeps its (rejected) approval too.
    other = manual(flux, "tb_gated", 202401)
    rejected = flux.ok("POST", "/reject", {"approval_status_id": other["approval_id"]}, user="ana")
    assert rejected["run"]["approval_id"] == other["approval_id"]
    assert run_detail(flux, other["id"])["approval_id"] == other["approval_id"]
    # A run of a table without approval has none.
    plain = manual(flux, "tb_manual", 202305)
    assert plain["approval_id"] is None
    assert run_detail(flux, plain["id"])["approval_id"] is None
