"""The GitHub workflows: linted by actionlint and zizmor, checked against the workflow schema, actions pinned
by commit, least-privilege permissions, and held to what the design promises (serialised reconcile in a
protected environment, PostgreSQL in CI). The pull-request workflow has its own file (test_pr_workflow),
the pre-commit hook too (test_editor_hooks)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.workflow_support import (
    ROOT,
    SCRIPTS,
    WORKFLOWS,
    load,
    run,
    run_step,
    runs,
    step,
    steps,
    tool,
    triggers,
    workflow_files,
)

REQUIRED_WORKFLOWS = ("pr.yml", "reconcile.yml", "ci.yml")
# `owner/repo[/path]@<40 hex> # vX.Y.Z`: a commit no one can move, and the release it is, for people and
# for Dependabot (which rewrites the comment with the SHA).
PINNED = re.compile(r"uses: [\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


# --- linters ---------------------------------------------------------------------------------------------


def test_required_workflows_exist() -> None:
    names = {path.name for path in workflow_files()}
    assert set(REQUIRED_WORKFLOWS) <= names


@pytest.mark.parametrize("path", workflow_files(), ids=lambda path: path.name)
def test_workflow_passes_actionlint(path: Path) -> None:
    result = run([tool("actionlint"), "-no-color", str(path.relative_to(ROOT))])
    assert result.returncode == 0, (
        f"actionlint found problems in {path.name}:\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize("path", workflow_files(), ids=lambda path: path.name)
def test_workflow_matches_the_github_workflow_schema(path: Path) -> None:
    command = [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)]
    result = run(command)
    assert result.returncode == 0, f"check-jsonschema rejected {path.name}:\n{result.stdout}{result.stderr}"


def test_zizmor_finds_nothing_in_the_workflows_and_dependabot_config() -> None:
    """Each finding is fixed or answered in place (`# zizmor: ignore[…]` beside its reason)."""
    result = run([tool("zizmor"), "--offline", "--format", "plain", ".github"])
    assert result.returncode == 0, f"zizmor:\n{result.stdout}{result.stderr}"
    assert "No findings to report" in result.stdout


def test_every_zizmor_ignore_gives_its_reason() -> None:
    for path in workflow_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if "zizmor: ignore" in line:
                assert lines[number - 1].strip().startswith("#"), f"{path.name}:{number + 1}: no reason"


def test_linters_report_a_broken_workflow(tmp_path: Path) -> None:
    """The linters really run: an untrusted expression in a script, an unknown input, an unpinned action."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: pull_request\n"
        "jobs:\n"
        "  x:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "        with:\n"
        "          fetch_depth: 0\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n',
        encoding="utf-8",
    )
    actionlint = run([tool("actionlint"), "-no-color", str(broken)])
    assert actionlint.returncode == 1, actionlint.stdout + actionlint.stderr
    assert "potentially untrusted" in actionlint.stdout
    assert 'input "fetch_depth" is not defined' in actionlint.stdout
    zizmor = run([tool("zizmor"), "--offline", "--format", "plain", str(broken)])
    assert zizmor.returncode != 0
    for audit in ("unpinned-uses", "template-injection", "artipacked", "excessive-permissions"):
        assert f"[{audit}]" in zizmor.stdout, zizmor.stdout


def test_no_expression_is_interpolated_into_a_script() -> None:
    """Values reach scripts through `env:`; `${{ }}` inside `run:` is a script-injection risk."""
    for path in workflow_files():
        workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
        for job_name, job in workflow["jobs"].items():
            for script in runs(job):
                assert "${{" not in script, f"{path.name}, job {job_name}: {script!r}"


# --- pinning and permissions -----------------------------------------------------------------------------


def test_every_action_is_pinned_by_commit_with_its_version() -> None:
    found = 0
    for path in workflow_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip().startswith(("uses:", "- uses:")):
                found += 1
                assert PINNED.search(line), f"{path.name}:{number}: not pinned by commit: {line.strip()}"
    assert found >= 9


def test_dependabot_keeps_the_pinned_actions_up_to_date() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text(encoding="utf-8"))
    assert config["version"] == 2
    (update,) = [u for u in config["updates"] if u["package-ecosystem"] == "github-actions"]
    assert update["directory"] == "/"
    assert update["schedule"]["interval"] in {"daily", "weekly"}
    assert update["cooldown"]["default-days"] >= 7
    result = run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.dependabot", ".github/dependabot.yml"]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_grant_nothing_by_default_and_each_job_says_what_it_needs() -> None:
    expected = {
        ("ci.yml", "lint"): {"contents": "read"},
        ("ci.yml", "test"): {"contents": "read"},
        ("pr.yml", "plan"): {"contents": "read"},
        ("pr.yml", "comment"): {"pull-requests": "write"},
        ("reconcile.yml", "apply"): {"contents": "read"},
        ("reconcile.yml", "drift"): {"contents": "read"},
    }
    for name in REQUIRED_WORKFLOWS:
        workflow = load(name)
        assert workflow["permissions"] == {}, name
        for job_name, job in workflow["jobs"].items():
            assert job["permissions"] == expected[(name, job_name)], (name, job_name)
        text = (WORKFLOWS / name).read_text(encoding="utf-8")
        for scope in ("contents: read", "pull-requests: write"):
            for line in (line for line in text.splitlines() if line.strip().startswith(scope)):
                assert "#" in line, f"{name}: the permission {line.strip()!r} does not say why"


# --- reconcile.yml ---------------------------------------------------------------------------------------


def test_reconcile_workflow_applies_one_at_a_time_and_checks_drift_daily() -> None:
    workflow = load("reconcile.yml")
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["paths"] == ["definitions/**"]
    assert "workflow_dispatch" in on
    (schedule,) = on["schedule"]
    assert re.fullmatch(r"\d{1,2} \d{1,2} \* \* \*", schedule["cron"]), "expected a daily cron"

    jobs = workflow["jobs"]
    assert set(jobs) == {"apply", "drift"}
    apply, drift = jobs["apply"], jobs["drift"]
    secret = "${{ secrets.FLUX_DATABASE_URL }}"

    assert "github.event_name == 'push'" in apply["if"]
    assert "github.event_name == 'workflow_dispatch'" in apply["if"]
    assert "github.ref == 'refs/heads/main'" in apply["if"]
    assert "schedule" not in apply["if"]
    assert drift["if"] == "github.event_name == 'schedule'"
    for job in (apply, drift):
        # The secret lives in the protected environment; a drift check never overlaps an apply.
        assert job["environment"] == "production"
        assert job["concurrency"] == {"group": "flux-control-reconcile", "cancel-in-progress": False}
        assert job["env"]["FLUX_DATABASE_URL"] == secret
        # Drift exits 2 when it finds a difference, apply 1 on an error; nothing may swallow that.
        assert "continue-on-error" not in job
        assert all("continue-on-error" not in s for s in steps(job))
    assert (
        'flux-control apply definitions --revision "$GITHUB_SHA" 2>&1 | tee apply.txt'
        in (step(apply, "Apply")["run"])
    )
    assert "flux-control drift definitions 2>&1 | tee drift.txt" in step(drift, "Drift")["run"]


@pytest.mark.parametrize(
    ("job_name", "step_name", "command", "output"),
    [("apply", "Apply", "apply", "apply.txt"), ("drift", "Drift", "drift", "drift.txt")],
)
def test_reconcile_steps_keep_the_exit_code_and_put_the_output_in_the_summary(
    tmp_path: Path, job_name: str, step_name: str, command: str, output: str
) -> None:
    job = load("reconcile.yml")["jobs"][job_name]
    fakes = {"flux-control": f'echo "~ table tb_x \\`debounce\\`"; echo "{command} broke" >&2; exit 2'}
    result = run_step(step(job, step_name)["run"], tmp_path, fakes=fakes, env={"GITHUB_SHA": "abc123"})
    assert result.returncode == 2, "the tee must not hide the command's exit code"
    assert (tmp_path / output).read_text(encoding="utf-8") == f"~ table tb_x `debounce`\n{command} broke\n"

    summary_step = next(s for s in steps(job) if str(s.get("run", "")).startswith("python .github/scripts/"))
    assert summary_step["if"] == "${{ !cancelled() }}"
    summary = tmp_path / "summary.md"
    script = summary_step["run"].replace(".github/scripts/", f"{SCRIPTS}/")
    done = run_step(script, tmp_path, env={"GITHUB_SHA": "abc123", "GITHUB_STEP_SUMMARY": str(summary)})
    assert done.returncode == 0, done.stderr
    assert summary.read_text(encoding="utf-8") == (
        f"### flux-control {command} at abc123\n\n```text\n~ table tb_x `debounce`\n{command} broke\n```\n\n"
    )


# --- ci.yml ----------------------------------------------------------------------------------------------


def test_ci_workflow_lints_type_checks_and_tests_on_postgresql_through_the_makefile() -> None:
    workflow = load("ci.yml")
    assert {"push", "pull_request"} <= set(triggers(workflow))

    jobs = workflow["jobs"]
    for job in jobs.values():
        assert "make install" in runs(job), "install steps live in the Makefile, as on a fresh machine"
    all_runs = [command for job in jobs.values() for command in runs(job)]
    assert {"make lint", "make test"} <= set(all_runs)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    for command in ("ruff check .", "ruff format --check .", "mypy controller .github/scripts"):
        assert command in lint, f"make lint does not run {command!r}"

    (test_job,) = [job for job in jobs.values() if "make test" in runs(job)]
    postgres = test_job["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "5432:5432" in postgres["ports"]
    assert "--health-cmd" in postgres["options"]
    password = postgres["env"]["POSTGRES_PASSWORD"]
    assert test_job["env"]["FLUX_TEST_POSTGRES_URL"] == (
        f"postgresql+psycopg://postgres:{password}@localhost:5432/postgres"
    )
    assert test_job["env"]["CI"] == "true"
