"""The console in a real browser (DESIGN §9): ``flux-control serve`` in a subprocess on the example
definitions (the seed's flow), Chromium driven by Playwright. An approver signs in, sees the pending
approval of the flow and approves it with the button; a caller who may not approve sees no button; a run page shows its tasks and its timeline; the
lineage page draws the graph. Each page is saved as a screenshot."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_support import accessibility_violations, browser, screenshot
from tests.conftest import REPO_ROOT
from tests.factories import desired_from, states, table_doc
from tests.serve_support import Server, serving, wait_for

__all__ = ["browser"]  # the fixture, used by name

#: The seed's flow: the example definitions of the README's tour (``tbjf001_op_pdz_prep`` →
#: ``tb_op_enriquecido``, approved by ``lrcxpnu`` → ``tb_indicadores_mensais``), and one table whose
#: runs start at once, for a run page with tasks.
APPROVER = "lrcxpnu"
PARTITION = "ano_mes_referencia"
NOW_TABLE = table_doc(
    "tb_console_demo",
    partitions=[{"name": PARTITION, "type": "int"}],
    debounce_seconds=0,
    tasks=[{"alias": "load", "type": "glue", "target": "job-console-demo"}],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    desired = {**desired_from(REPO_ROOT / "definitions"), **states([NOW_TABLE])}
    with serving(tmp_path_factory.mktemp("console"), desired) as running:
        yield running


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(base_url=server.base, viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        yield opened
    finally:
        context.close()
    assert errors == [], errors  # a CSP violation or a broken asset shows up here


def sign_in(page: Any, user: str) -> None:
    page.goto("/console/login")
    page.get_by_label("User").fill(user)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/console/?$"))


def produce(server: Server, month: int) -> dict[str, Any]:
    item = {
        "table_name": "tbjf001_op_pdz_prep",
        "partitions": [{"partition_name": PARTITION, "value": month}],
        "source": "glue",
    }
    [run] = server.ok("POST", "/register_execution", {"data": [item], "user": "glue-job"})["runs"]
    assert run["table_name"] == "tb_op_enriquecido" and run["status"] == "awaiting_approval"
    return dict(run)


def test_an_approver_signs_in_and_approves_the_pending_run(page: Any, server: Server) -> None:
    run = produce(server, 202401)
    sign_in(page, APPROVER)
    assert page.get_by_text("Signed in as").is_visible()
    screenshot(page, "home")
    page.get_by_role("link", name="Approvals").first.click()
    card = page.locator("section.card", has_text=f"{PARTITION}=202401")
    assert card.is_visible()
    screenshot(page, "approvals")
    card.get_by_label("Comment (optional)").fill("checked the source")
    card.get_by_role("button", name="Approve").click()
    page.wait_for_url(re.compile(rf"/console/runs/{run['id']}"))
    assert page.get_by_role("status").inner_text() == "Approved: the run is scheduled."
    assert page.locator("dl.facts .badge").first.inner_text() == "scheduled"
    assert "checked the source" in page.locator("dl.facts").inner_text()
    screenshot(page, "run-approved")


def test_a_caller_who_may_not_approve_sees_why_and_no_button(page: Any, server: Server) -> None:
    produce(server, 202402)
    sign_in(page, "bob")
    page.goto("/console/approvals")
    card = page.locator("section.card", has_text=f"{PARTITION}=202402")
    assert card.get_by_role("button", name="Approve").count() == 0
    assert "approvers" in card.locator(".why").inner_text()


def test_a_run_page_shows_its_tasks_and_its_timeline(page: Any, server: Server) -> None:
    body = {
        "table_name": "tb_console_demo",
        "partitions": [{"partition_name": PARTITION, "value": 202403}],
        "user": "otto",
    }
    run = server.ok("POST", "/runs", body)["run"]
    wait_for(lambda: server.ok("GET", f"/runs/{run['id']}")["run"]["tasks"], 30, "the run's task to start")
    sign_in(page, "otto")
    page.goto(f"/console/runs/{run['id']}")
    tasks = page.locator("table", has=page.get_by_role("columnheader", name="External id"))
    assert tasks.get_by_role("cell", name="load").is_visible()
    assert re.search(r"jr_[0-9a-f]+", tasks.inner_text())
    timeline = page.locator("ol.timeline li")
    assert timeline.count() >= 2 and "new" in timeline.first.inner_text()
    assert "by otto" in page.locator("ol.timeline").inner_text()
    screenshot(page, "run")


def test_the_lineage_page_draws_the_tables_graph(page: Any, server: Server) -> None:
    sign_in(page, APPROVER)
    page.goto("/console/tables/tb_op_enriquecido")
    drawing = page.locator("figure.lineage svg")
    assert drawing.is_visible()
    names = drawing.locator("a text").all_text_contents()
    assert {"tbjf001_op_pdz_prep", "tb_op_enriquecido", "tb_indicadores_mensais"} <= set(names)
    box = drawing.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 30
    page.get_by_label(PARTITION).fill("202401")
    page.get_by_role("button", name="Explain").click()
    assert "tb_op_enriquecido" in page.locator("pre.explain").inner_text()
    screenshot(page, "lineage")
    drawing.locator("a", has_text="tbjf001_op_pdz_prep").first.click()
    page.wait_for_url(re.compile(r"/console/tables/tbjf001_op_pdz_prep"))
    assert Path(screenshot(page, "table")).exists()


def test_every_page_passes_the_wcag_aa_checks_of_axe_core(browser: Any, server: Server) -> None:
    run = produce(server, 202405)
    context = browser.new_context(base_url=server.base, bypass_csp=True)  # to inject axe-core only
    page = context.new_page()
    try:
        sign_in(page, APPROVER)
        found = {}
        for path in (
            "/console/",
            "/console/approvals",
            "/console/runs",
            f"/console/runs/{run['id']}",
            "/console/tables",
            f"/console/tables/tb_op_enriquecido?p_{PARTITION}=202405",
            "/console/executions",
            "/console/login",
        ):
            page.goto(path)
            found[path] = accessibility_violations(page)
    finally:
        context.close()
    assert found == {path: [] for path in found}
