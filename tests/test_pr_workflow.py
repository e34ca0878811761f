"""The pull-request workflow: validate with annotations, plan against the base branch, and a report that is
posted whatever happened (the errors when validation or planning failed), names the commit it judged,
and falls back to the job summary for forks. Its steps' scripts and the report script are run here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.workflow_support import SCRIPTS, load, run_step, step, steps, triggers

PLAN_MARKER = "<!-- flux-control-plan -->"
HEAD = "0123456789abcdef0123456789abcdef01234567"
BROKEN = "version: 1\nname: a\npartitions: []\nowner: 1\n"

Report = Callable[..., tuple[str, str]]


def _jobs() -> dict[str, Any]:
    jobs: dict[str, Any] = load("pr.yml")["jobs"]
    assert set(jobs) == {"plan", "comment"}
    return jobs


# --- the workflow's shape --------------------------------------------------------------------------------


def test_runs_on_definition_changes_and_a_newer_push_cancels_the_older_run() -> None:
    workflow = load("pr.yml")
    on = triggers(workflow)
    assert set(on) == {"pull_request"}, "never pull_request_target: the PR's code must not get a write token"
    assert set(on["pull_request"]["paths"]) == {"definitions/**", "schemas/**"}
    assert workflow["concurrency"]["cancel-in-progress"] is True
    assert "github.event.pull_request.number" in workflow["concurrency"]["group"]


def test_the_plan_job_validates_then_plans_and_always_writes_the_report() -> None:
    job = _jobs()["plan"]
    checkout = steps(job)[0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"] == {"fetch-depth": 0, "persist-credentials": False}
    assert "pip install -e ." in step(job, "Install")["run"]

    validate = step(job, "Validate")
    assert validate["run"] == "flux-control validate definitions --format github"
    assert validate["continue-on-error"] is True
    plan = step(job, "Plan against the base branch")
    assert plan["if"] == "steps.validate.outcome == 'success'"
    assert plan["continue-on-error"] is True
    assert plan["env"] == {"BASE_REF": "${{ github.base_ref }}"}
    assert '--against-ref "origin/$BASE_REF" --format markdown' in plan["run"]

    report = step(job, "Write the report (also to the job summary)")
    assert report["if"] == "${{ !cancelled() }}"
    assert report["run"] == "python .github/scripts/plan_report.py"
    assert report["env"]["VALIDATE_OUTCOME"] == "${{ steps.validate.outcome }}"
    assert report["env"]["PLAN_OUTCOME"] == "${{ steps.plan.outcome }}"
    # The PR's head, not GITHUB_SHA (the merge commit GitHub made for the run).
    assert report["env"]["HEAD_SHA"] == "${{ github.event.pull_request.head.sha }}"
    assert report["env"]["FORK"] == (
        "${{ github.event.pull_request.head.repo.full_name != github.repository }}"
    )
    upload = step(job, "Keep the report for the comment job")
    assert upload["if"] == "${{ !cancelled() }}"
    assert upload["with"]["path"] == "report.md"

    fail = steps(job)[-1]
    assert fail["if"] == "steps.validate.outcome != 'success' || steps.plan.outcome != 'success'"
    index = steps(job).index
    assert index(validate) < index(plan) < index(report) < index(upload) < index(fail)


def test_the_comment_job_runs_none_of_the_pull_requests_code_and_skips_forks() -> None:
    job = _jobs()["comment"]
    assert job["needs"] == "plan"
    assert "!cancelled()" in job["if"], "a failed plan job still gets its report posted"
    assert "github.event.pull_request.head.repo.full_name == github.repository" in job["if"]
    assert not any(s.get("uses", "").startswith("actions/checkout@") for s in steps(job))
    assert all("run" not in s for s in steps(job))
    download, comment = steps(job)
    assert download["uses"].startswith("actions/download-artifact@")
    assert (
        download["with"]["name"]
        == step(_jobs()["plan"], "Keep the report for the comment job")["with"]["name"]
    )
    assert comment["uses"].startswith("actions/github-script@")
    script = comment["with"]["script"]
    assert PLAN_MARKER in script
    assert "report.md" in script
    for call in ("listComments", "updateComment", "createComment"):
        assert f"github.rest.issues.{call}" in script


# --- the steps' scripts ----------------------------------------------------------------------------------


def test_a_failing_plan_keeps_its_errors_for_the_report_and_fails_the_step(tmp_path: Path) -> None:
    plan = step(_jobs()["plan"], "Plan against the base branch")
    fakes = {"flux-control": 'echo "partial"; echo "Error: origin/main: unknown revision" >&2; exit 1'}
    result = run_step(plan["run"], tmp_path, fakes=fakes, env={"BASE_REF": "main"})
    assert result.returncode == 1
    assert (tmp_path / "plan-errors.txt").read_text() == "Error: origin/main: unknown revision\n"
    assert "unknown revision" in result.stderr, "the errors also stay in the step's log"


def test_a_passing_plan_writes_the_markdown(tmp_path: Path) -> None:
    plan = step(_jobs()["plan"], "Plan against the base branch")
    fakes = {"flux-control": 'test "$4" = "origin/main" && echo "### Flux Control plan"'}
    result = run_step(plan["run"], tmp_path, fakes=fakes, env={"BASE_REF": "main"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "plan.md").read_text() == "### Flux Control plan\n"


def test_the_last_step_fails_the_job_naming_both_outcomes(tmp_path: Path) -> None:
    fail = steps(_jobs()["plan"])[-1]
    result = run_step(fail["run"], tmp_path, env={"VALIDATE_OUTCOME": "failure", "PLAN_OUTCOME": "skipped"})
    assert result.returncode == 1
    assert result.stdout == "::error title=flux-control::validation: failure, plan: skipped\n"


# --- the report ------------------------------------------------------------------------------------------


@pytest.fixture
def report(tmp_path: Path) -> Report:
    """Run the report step in ``tmp_path`` as the workflow does; return (report.md, job summary)."""

    def run(**env: str) -> tuple[str, str]:
        summary = tmp_path / "summary.md"
        summary.write_text("", encoding="utf-8")
        environment = {
            "HEAD_SHA": HEAD,
            "BASE_REF": "main",
            "GITHUB_STEP_SUMMARY": str(summary),
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_REPOSITORY": "acme/tables",
            "GITHUB_RUN_ID": "42",
            **env,
        }
        # The step's own command, its script taken from this checkout (tmp_path holds only its inputs).
        command = step(_jobs()["plan"], "Write the report (also to the job summary)")["run"]
        result = run_step(command.replace(".github/scripts/", f"{SCRIPTS}/"), tmp_path, env=environment)
        assert result.returncode == 0, result.stderr
        return (tmp_path / "report.md").read_text(encoding="utf-8"), summary.read_text(encoding="utf-8")

    return run


FOOTER = (
    "<sub>Commit `0123456789ab` against `main` · [run](https://github.com/acme/tables/actions/runs/42)</sub>"
)


def test_a_passing_plan_is_the_report_and_names_its_commit(tmp_path: Path, report: Report) -> None:
    (tmp_path / "plan.md").write_text("### Flux Control plan\n\n➕ create 1\n", encoding="utf-8")
    body, summary = report(VALIDATE_OUTCOME="success", PLAN_OUTCOME="success", FORK="false")
    assert body == f"### Flux Control plan\n\n➕ create 1\n\n{FOOTER}\n"
    assert summary == body + "\n"


def test_invalid_definitions_replace_the_plan_with_their_problems(tmp_path: Path, report: Report) -> None:
    (tmp_path / "definitions").mkdir()
    (tmp_path / "definitions" / "a.yaml").write_text(BROKEN, encoding="utf-8")
    (tmp_path / "plan.md").write_text("### an old plan\n", encoding="utf-8")
    body, _ = report(VALIDATE_OUTCOME="failure", PLAN_OUTCOME="skipped")
    assert body.startswith("### ❌ Flux Control: validation failed\n")
    assert "an old plan" not in body
    assert (
        "```text\ndefinitions/a.yaml:4:8: 'owner' must be a string, got number 1\n"
        "Invalid: 1 problem in 1 file; nothing was written.\n```"
    ) in body
    assert body.endswith(f"{FOOTER}\n")


def test_a_failed_plan_reports_its_errors_in_a_block_they_cannot_close(
    tmp_path: Path, report: Report
) -> None:
    (tmp_path / "plan-errors.txt").write_text("Error: ``` breaks out\n", encoding="utf-8")
    body, _ = report(VALIDATE_OUTCOME="success", PLAN_OUTCOME="failure")
    assert body.startswith("### ❌ Flux Control: planning failed\n")
    assert "````text\nError: ``` breaks out\n````" in body


@pytest.mark.parametrize(
    ("outcomes", "heading"),
    [
        ({"VALIDATE_OUTCOME": ""}, "validation did not run"),
        ({"VALIDATE_OUTCOME": "success", "PLAN_OUTCOME": "skipped"}, "planning did not run"),
    ],
)
def test_steps_that_never_ran_are_reported_not_left_as_the_old_plan(
    report: Report, outcomes: dict[str, str], heading: str
) -> None:
    body, _ = report(**outcomes)
    assert body.startswith(f"### ❌ Flux Control: {heading}\n")
    assert body.endswith(f"{FOOTER}\n")


def test_a_fork_is_told_the_summary_is_its_report(tmp_path: Path, report: Report) -> None:
    (tmp_path / "plan.md").write_text("### Flux Control plan\n", encoding="utf-8")
    body, summary = report(VALIDATE_OUTCOME="success", PLAN_OUTCOME="success", FORK="true")
    assert "comes from a fork, whose token cannot write a comment" in summary
    assert summary == body + "\n"


def test_a_plan_too_long_for_a_comment_is_cut_and_points_at_the_run(tmp_path: Path, report: Report) -> None:
    (tmp_path / "plan.md").write_text("".join(f"~ table t{i}\n" for i in range(10_000)), encoding="utf-8")
    body, summary = report(VALIDATE_OUTCOME="success", PLAN_OUTCOME="success")
    assert len(body) < 65_536 - len(PLAN_MARKER) - 1
    assert "the plan is cut here; the whole plan is in the [run's summary]" in body
    assert "~ table t9999" not in body
    assert "~ table t9999\n" in summary
    assert "cut here" not in summary
