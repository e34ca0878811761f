"""The console of DESIGN §9 through ``lambda_handler``, on SQLite and PostgreSQL: every page renders
HTML a strict parser accepts with a strict Content-Security-Policy; approvals and run actions go
through the same services and rules as the API (§7); every form is CSRF-protected; errors are pages,
never stack traces."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from controller.console import views
from tests.console_support import Visitor, csrf_of, nu_validator_errors, page, run_id_from, squash
from tests.factories import table_doc
from tests.runtime_support import Lambda, partitions, running_lambda

MONTH = [{"name": "mes", "type": "int"}]
APPROVER, OPERATOR, STRANGER = "ana", "otto", "mallory"
TABLES = [
    table_doc("raw", partitions=MONTH, tasks=[{"alias": "load", "type": "glue", "target": "job-raw"}]),
    table_doc(
        "gated",
        partitions=MONTH,
        dependencies=[{"dependency_name": "raw", "is_required": True}],
        requires_approval=True,
        approvers=[APPROVER],
        operators=[OPERATOR],
        debounce_seconds=0,
        tasks=[{"alias": "build", "type": "glue", "target": "job-gated"}],
    ),
]


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def produce(flux: Lambda, month: int) -> int:
    """``raw`` produced ``mes=month``: the approval the gated run waits for."""
    item = {"table_name": "raw", "partitions": partitions(mes=month), "source": "glue"}
    [run] = flux.ok("POST", "/register_execution", {"data": [item]})["runs"]
    approval_id: int = run["approval_id"]
    return approval_id


def test_every_page_renders_valid_html_with_the_security_headers(flux: Lambda) -> None:
    produce(flux, 1)
    visitor = Visitor(APPROVER)
    [run] = flux.ok("GET", "/runs", query={"table": "gated"})["runs"]
    for path in (
        "/console/",
        "/console/approvals",
        "/console/runs",
        f"/console/runs/{run['id']}",
        "/console/tables",
        "/console/tables/gated",
        "/console/executions",
    ):
        html = page(visitor.get(path))
        assert "<h1>" in html and 'lang="en"' in html, path
    assert page(visitor.get("/console/runs", status="awaiting_approval", table="gated"))
    style = visitor.get("/console/static/console.css")
    assert (style.status, style.header("Content-Type")) == (200, "text/css; charset=utf-8")


def test_an_approver_approves_with_the_button_and_the_run_is_scheduled(flux: Lambda) -> None:
    approval_id = produce(flux, 2)
    visitor = Visitor(APPROVER)
    html = page(visitor.get("/console/approvals"))
    assert "Approve" in html and "Reject" in html
    assert "Triggered by: raw (mes=2)" in squash(html)  # the execution that opened its gate
    answer = visitor.post(
        f"/console/approvals/{approval_id}",
        {"decision": "approve", "comment": "looks right"},
        token=csrf_of(html),
    )
    assert answer.status == 303
    run_id = run_id_from(answer.header("Location"))
    shown = squash(page(visitor.get(answer.header("Location"))))
    assert "Approved: the run is scheduled." in shown
    detail = flux.ok("GET", f"/runs/{run_id}")["run"]
    assert detail["approval"]["decided_by"] == APPROVER and detail["approval"]["comment"] == "looks right"
    assert detail["status"] in ("scheduled", "running")  # no debounce: fired at once
    assert f"by {APPROVER}" in shown


def test_a_caller_who_may_not_approve_sees_why_instead_of_the_buttons(flux: Lambda) -> None:
    approval_id = produce(flux, 3)
    visitor = Visitor(STRANGER)
    html = page(visitor.get("/console/approvals"))
    assert 'value="approve"' not in html
    assert "approvers" in squash(html)  # the rule's own message names who may
    # A post made anyway is refused on the page, and nothing is decided.
    refused = visitor.post(f"/console/approvals/{approval_id}", {"decision": "approve"})  # its cookie's token
    assert "approvers" in squash(page(refused, 403))
    [approval] = flux.ok("GET", "/approvals", query={"status": "pending"})["approvals"]
    assert approval["id"] == approval_id


def test_a_post_without_the_pages_token_or_from_another_site_writes_nothing(flux: Lambda) -> None:
    approval_id = produce(flux, 4)
    visitor = Visitor(APPROVER)
    page(visitor.get("/console/approvals"))
    forged = visitor.post(f"/console/approvals/{approval_id}", {"decision": "approve"}, token="0" * 64)
    assert "security token" in squash(page(forged, 403))
    stranger_site = Visitor(APPROVER)  # a browser that never loaded the page has no token cookie
    assert page(stranger_site.post(f"/console/approvals/{approval_id}", {"decision": "approve"}), 403)
    assert flux.ok("GET", "/approvals", query={"status": "pending"})["approvals"]


def test_an_operator_cancels_a_run_from_its_page_and_a_non_operator_sees_why(flux: Lambda) -> None:
    produce(flux, 5)
    [run] = flux.ok("GET", "/runs", query={"table": "gated"})["runs"]
    stranger = page(Visitor(STRANGER).get(f"/console/runs/{run['id']}"))
    assert ">Cancel<" not in stranger and "operators" in squash(stranger)
    operator = Visitor(OPERATOR)
    html = page(operator.get(f"/console/runs/{run['id']}"))
    answer = operator.post(
        f"/console/runs/{run['id']}/cancel", {"reason": "not this month"}, token=csrf_of(html)
    )
    assert answer.status == 303
    shown = squash(page(operator.get(answer.header("Location"))))
    assert "Cancelled." in shown and "not this month" in shown and f"by {OPERATOR}" in shown
    assert flux.ok("GET", f"/runs/{run['id']}")["run"]["status"] == "cancelled"


def test_a_refused_action_shows_the_error_on_the_page(flux: Lambda) -> None:
    produce(flux, 6)
    [run] = flux.ok("GET", "/runs", query={"table": "gated"})["runs"]
    operator = Visitor(OPERATOR)
    token = csrf_of(page(operator.get(f"/console/runs/{run['id']}")))
    answer = operator.post(f"/console/runs/{run['id']}/retry", {}, token=token)  # not failed: a 409
    assert "only failed runs can be retried" in squash(page(answer, 409))


def test_reads_need_a_signed_in_caller_outside_trusted_mode(flux: Lambda) -> None:
    answer = Visitor(None).get("/console/approvals")
    assert "sign in" in squash(page(answer, 403)).lower()
    assert Visitor(None).get("/console/login").status == 404  # the local login is serve's only


def test_unknown_pages_and_ids_are_error_pages_without_a_trace(flux: Lambda) -> None:
    visitor = Visitor(APPROVER)
    for path, status in (("/console/nowhere", 404), ("/console/runs/999999", 404), ("/console/runs/x", 404)):
        html = page(visitor.get(path), status)
        assert "Traceback" not in html
    assert "unknown table" in squash(page(visitor.get("/console/tables/nope"), 404))


def test_the_table_page_explains_a_key_and_draws_its_lineage(flux: Lambda) -> None:
    produce(flux, 7)
    visitor = Visitor(APPROVER)
    html = page(visitor.get("/console/tables/gated", p_mes="7", key="mes=7"))
    assert "<svg" in html and 'href="/console/tables/raw"' in html
    assert "awaiting approval" in squash(html).lower() or "awaiting_approval" in html
    bad = visitor.get("/console/tables/gated", p_mes="not-a-month")
    assert page(bad, 422)


def test_runs_filter_by_table_state_and_key_in_pages(flux: Lambda, monkeypatch: pytest.MonkeyPatch) -> None:
    for month in (11, 12, 13):
        produce(flux, month)
    monkeypatch.setattr(views, "PAGE", 2)
    visitor = Visitor(APPROVER)
    first = page(visitor.get("/console/runs", table="gated", status="awaiting_approval"))
    assert "mes=13" in first and "mes=12" in first and "mes=11" not in first
    older = re.search(r'href="(/console/runs\?[^"]*before=\d+)"', first)
    assert older, "no link to the older runs"
    second = page(visitor.get(older.group(1).replace("&amp;", "&")))
    assert "mes=11" in second and "mes=12" not in second
    one = squash(page(visitor.get("/console/runs", table="gated", key="mes=12")))
    assert "mes=12" in one and "mes=13" not in one and "mes=11" not in one
    assert "choose a table" in squash(page(visitor.get("/console/runs", key="mes=12"), 422))
    assert page(visitor.get("/console/runs", status="sleeping"), 422)
    assert "unknown table" in squash(page(visitor.get("/console/runs", table="nope"), 404))


def test_every_page_passes_the_nu_html_checker(flux: Lambda, tmp_path: Path) -> None:
    produce(flux, 21)
    [run] = flux.ok("GET", "/runs", query={"table": "gated"})["runs"]
    visitor = Visitor(APPROVER)
    paths = [
        "/console/",
        "/console/approvals",
        "/console/runs?status=awaiting_approval",
        f"/console/runs/{run['id']}",
        "/console/tables",
        "/console/tables/gated?key=mes%3D21&p_mes=21",
        "/console/executions",
        "/console/nowhere",
    ]
    pages = {}
    for path in paths:
        target, _, query = path.partition("?")
        answer = visitor.get(target, **dict(part.split("=", 1) for part in query.split("&") if part))
        pages[path] = answer.text
    assert nu_validator_errors(pages, tmp_path) == {path: [] for path in paths}


def test_behind_an_api_stage_links_redirects_and_cookies_keep_the_stage(flux: Lambda) -> None:
    """The browser sees ``/v1/console/…`` at API Gateway's default URL; the function sees
    ``/console/…``: every link, form, redirect and cookie must carry the stage."""
    approval_id = produce(flux, 31)
    visitor = Visitor(APPROVER, stage="/v1")
    answer = visitor.get("/console/approvals")
    html = page(answer)
    links = re.findall(r'(?:href|action)="(/[^"]*)"', html)
    assert links and all(link.startswith("/v1/console/") for link in links), links
    assert "Path=/v1/console" in answer.header("Set-Cookie")
    done = visitor.post(f"/console/approvals/{approval_id}", {"decision": "approve"}, token=csrf_of(html))
    assert done.status == 303 and done.header("Location").startswith("/v1/console/runs/")
    lineage = page(visitor.get("/console/tables/gated"))
    assert 'href="/v1/console/tables/raw"' in lineage


def test_the_tables_page_finds_tables_by_name_and_says_which_reconcile_it_shows(flux: Lambda) -> None:
    visitor = Visitor(APPROVER)
    html = squash(page(visitor.get("/console/tables")))
    assert "As reconciled from revision test" in html and "2 tables" in html
    found = page(visitor.get("/console/tables", q="GAT"))
    assert 'href="/console/tables/gated"' in found and 'href="/console/tables/raw"' not in found
    assert "1 tables" in squash(found)
    assert "No table's name holds" in squash(page(visitor.get("/console/tables", q="zzz")))


GROUPED = [
    *(table_doc(name, partitions=MONTH) for name in ("full", "delta")),
    table_doc("merged", partitions=MONTH, dependencies=[{"any_of": ["full", "delta"], "is_required": True}]),
]


def test_an_any_of_group_is_listed_drawn_and_explained(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_lambda(engine, GROUPED, monkeypatch) as flux:
        item = {"table_name": "delta", "partitions": partitions(mes=4), "source": "glue"}
        flux.ok("POST", "/register_execution", {"data": [item]})
        visitor = Visitor(APPROVER)
        listed = squash(page(visitor.get("/console/tables", q="merged")))
        assert "any_of(full, delta)" in listed
        html = page(visitor.get("/console/tables/merged", p_mes="4", key="mes=4"))
        # each member's edge is marked in text: a visible label and the tooltip, besides a class hook
        assert html.count('class="edge required any-of"') == 2
        assert html.count(">any of</text>") == 2
        assert "full → merged (required, any of: one of the group is enough)" in html
        assert "✓ any_of(full, delta) (required): via delta, execution " in html
        assert 'href="/console/tables/full"' in html and 'href="/console/tables/delta"' in html
