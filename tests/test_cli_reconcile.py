"""``plan``, ``apply``, ``drift`` and ``db upgrade`` as a user runs them: exit codes, output, rails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from controller.cli import main
from controller.db import definition_models
from controller.db.definition_models import ReconcileRevision
from controller.db.run_models import ExecutionRow
from tests.conftest import REPO_ROOT
from tests.factories import table_doc, write_tables


def run(*args: str, database_url: str) -> Result:
    return CliRunner().invoke(main, [*args, "--database-url", database_url])


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    return write_tables(
        tmp_path / "defs",
        [table_doc("up"), table_doc("down", dependencies=[{"dependency_name": "up"}], debounce_seconds=30)],
    )


def test_plan_detailed_exitcode_says_whether_there_are_changes(defs: Path, database_url: str) -> None:
    first = run("plan", str(defs), "--detailed-exitcode", database_url=database_url)
    assert first.exit_code == 2, first.output
    assert "The database is empty: apply will create its schema first." in first.output
    assert run("apply", str(defs), database_url=database_url).exit_code == 0
    again = run("plan", str(defs), "--detailed-exitcode", database_url=database_url)
    assert again.exit_code == 0
    assert again.output == "No changes. The database matches the definitions.\n"
    assert run("plan", str(defs), database_url=database_url).exit_code == 0


def test_plan_text_lists_deletions_first_with_field_changes(defs: Path, database_url: str) -> None:
    run("apply", str(defs), database_url=database_url)
    write_tables(defs, [table_doc("up", debounce_seconds=90), table_doc("zz_new")])
    result = run("plan", str(defs), database_url=database_url)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines.index("  - table down") < lines.index("  + table zz_new") < lines.index("  ~ table up")
    assert "      ~ debounce_seconds: 60 → 90" in lines
    assert lines[-1] == "Plan: 1 to delete, 1 to create, 1 to update."
    assert "\x1b[" not in result.output  # no colours when not on a terminal


def test_plan_json_is_a_versioned_document(defs: Path, database_url: str) -> None:
    result = run("plan", str(defs), "--format", "json", "--revision", "abc", database_url=database_url)
    document = json.loads(result.output)
    assert document["format_version"] == 1
    assert document["revision"] == "abc"
    assert document["desired_digest"].startswith("sha256:")
    assert document["database_fingerprint"].startswith("sha256:")
    assert [(a["action"], a["table"]) for a in document["actions"]] == [("create", "down"), ("create", "up")]


def test_plan_markdown_for_a_pull_request(defs: Path, database_url: str) -> None:
    result = run("plan", str(defs), "--format", "markdown", database_url=database_url)
    assert result.exit_code == 0
    assert result.output.startswith("### Flux Control plan\n")
    assert result.output.index("| ➕ create | 2 |") < result.output.index("<details>")


def test_plan_out_then_apply_plan_applies_exactly_that_plan(
    defs: Path, database_url: str, tmp_path: Path
) -> None:
    plan_file = tmp_path / "plan.json"
    assert (
        run(
            "plan", str(defs), "--out", str(plan_file), "--revision", "r1", database_url=database_url
        ).exit_code
        == 0
    )
    write_tables(defs, [table_doc("something_else")])  # the directory no longer matters
    result = run("apply", "--plan", str(plan_file), database_url=database_url)
    assert result.exit_code == 0, result.output
    assert "Apply complete: 2 created, 0 updated, 0 deleted." in result.output
    again = run("apply", "--plan", str(plan_file), database_url=database_url)
    assert again.exit_code == 1
    assert "the plan is stale" in again.stderr


def test_apply_records_the_given_revision_and_actor(defs: Path, database_url: str, engine: Engine) -> None:
    result = run("apply", str(defs), "--revision", "deadbeef", "--actor", "ana", database_url=database_url)
    assert result.exit_code == 0, result.output
    with Session(engine) as session:
        row = session.execute(select(ReconcileRevision)).scalar_one()
    assert (row.revision, row.actor) == ("deadbeef", "ana")


def test_apply_takes_the_revision_from_github_sha(
    defs: Path, database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_SHA", "0123456789abcdef")
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    assert run("apply", str(defs), database_url=database_url).exit_code == 0
    with Session(engine) as session:
        row = session.execute(select(ReconcileRevision)).scalar_one()
    assert (row.revision, row.actor) == ("0123456789abcdef", "github:octocat")


def test_delete_with_history_needs_allow_delete(defs: Path, database_url: str, engine: Engine) -> None:
    run("apply", str(defs), database_url=database_url)
    with Session(engine) as session, session.begin():
        down_id = session.execute(text("SELECT id FROM tables WHERE name = 'down'")).scalar_one()
        for day in ("2026-01-01", "2026-01-02"):
            session.add(ExecutionRow(table_id=down_id, partition_key=day, partitions={}, source="test"))
    write_tables(defs, [table_doc("up")])
    refused = run("apply", str(defs), database_url=database_url)
    assert refused.exit_code == 1
    assert refused.stderr == (
        "Error: refusing to delete 1 table(s) with execution history: 'down' has 2 executions and 0 runs. "
        "Re-run with --allow-delete to delete them (their history is kept).\n"
    )
    allowed = run("apply", str(defs), "--allow-delete", database_url=database_url)
    assert allowed.exit_code == 0, allowed.output


def test_drift_reports_a_hand_edit_and_apply_heals_it(defs: Path, database_url: str, engine: Engine) -> None:
    run("apply", str(defs), "--revision", "r1", database_url=database_url)
    clean = run("drift", str(defs), database_url=database_url)
    assert clean.exit_code == 0
    assert clean.output.startswith(
        "No drift: the database matches the definitions (last applied from revision r1"
    )
    with engine.begin() as connection:
        connection.execute(text("UPDATE tables SET debounce_seconds = 1 WHERE name = 'down'"))
    drifted = run("drift", str(defs), database_url=database_url)
    assert drifted.exit_code == 2
    assert "Drift: the database differs from the definitions" in drifted.output
    assert "      ~ debounce_seconds: 1 → 30" in drifted.output
    as_json = json.loads(run("drift", str(defs), "--format", "json", database_url=database_url).output)
    assert as_json["drift"] is True
    assert as_json["last_apply"]["revision"] == "r1"
    assert run("apply", str(defs), database_url=database_url).exit_code == 0
    assert run("drift", str(defs), database_url=database_url).exit_code == 0


def test_invalid_definitions_are_not_planned(tmp_path: Path, database_url: str) -> None:
    defs = write_tables(tmp_path / "defs", [table_doc("a", dependencies=[{"dependency_name": "ghost"}])])
    result = run("apply", str(defs), database_url=database_url)
    assert result.exit_code == 1
    assert "unknown dependency 'ghost'" in result.stderr
    assert "fix them (see `flux-control validate`)" in result.stderr


def test_db_upgrade_creates_the_schema(database_url: str) -> None:
    result = run("db", "upgrade", database_url=database_url)
    assert result.exit_code == 0, result.output
    versions = Path(definition_models.__file__).parent / "migrations" / "versions"
    newest = sorted(versions.glob("0*.py"))[-1].name[:4]  # the head is the newest numbered revision
    assert f"is at schema revision {newest} (head: {newest})" in result.output


def test_database_errors_are_one_line_without_the_password(defs: Path) -> None:
    url = "postgresql+psycopg://flux:s3cret@127.0.0.1:1/nowhere?connect_timeout=2"
    result = run("plan", str(defs), database_url=url)
    assert result.exit_code == 1
    assert "s3cret" not in result.output + result.stderr
    assert result.stderr.startswith(
        "Error: database error on postgresql+psycopg://flux:***@127.0.0.1:1/nowhere"
    )
    assert "Traceback" not in result.stderr


def test_the_main_job_applies_the_example_definitions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flux.db'}"
    result = run("apply", str(REPO_ROOT / "definitions"), database_url=url)
    assert result.exit_code == 0, result.output
    assert "Apply complete: 10 created, 0 updated, 0 deleted." in result.output


def test_help_of_every_reconcile_command_has_examples() -> None:
    for command in ("plan", "apply", "drift"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0
        assert f"flux-control {command}" in result.output.split("Examples:")[1]


def test_applies_of_many_tables_show_progress_on_stderr(tmp_path: Path) -> None:
    from tests.factories import generated

    url = f"sqlite:///{tmp_path / 'flux.db'}"
    small = run("apply", str(write_tables(tmp_path / "small", generated(999))), database_url=url)
    assert small.exit_code == 0
    assert "Applying" not in small.stderr
    large = run("apply", str(write_tables(tmp_path / "large", generated(1000, salt=" v2"))), database_url=url)
    assert large.exit_code == 0, large.output
    assert "Applying 1,000 tables" in large.stderr


def test_apply_reports_each_write_step(engine: Engine) -> None:
    from datetime import UTC, datetime

    from controller.db.definitions_store import WRITE_STEPS
    from controller.reconciler import apply
    from tests.factories import generated, states

    steps: list[int] = []
    apply(
        engine,
        desired=states(generated(5)),
        revision="r",
        actor="t",
        now=datetime.now(UTC),
        progress=lambda: steps.append(1),
    )
    assert len(steps) == WRITE_STEPS
