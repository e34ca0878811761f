"""The GitHub workflows and the pre-commit hook: linted by actionlint, checked against the workflow schema,
and held to what the design promises (PR plan comment, serialised reconcile, PostgreSQL in CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
REQUIRED_WORKFLOWS = ("pr.yml", "reconcile.yml", "ci.yml")
PLAN_MARKER = "<!-- flux-control-plan -->"
INSTALL_HINT = "install the dev extra: pip install -e '.[dev]'"


def _tool(name: str) -> str:
    """The executable installed with this interpreter's packages (the dev extra); else one on PATH.

    A missing tool fails the test: the workflow checks are part of the suite, not optional.
    """
    candidates = [Path(sys.executable).parent / name, Path(sysconfig.get_path("scripts")) / name]
    for candidate in candidates:
        if candidate.is_file() and candidate.stat().st_mode & 0o111:
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; {INSTALL_HINT}")
    return found


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{name} is not a YAML mapping"
    return data


def _triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # PyYAML reads the key `on` as the boolean True (YAML 1.1); GitHub reads it as the string.
    triggers = workflow.get("on", workflow.get(True))
    assert isinstance(triggers, dict), f"expected the triggers as a mapping, got {triggers!r}"
    return triggers


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    steps = job.get("steps")
    assert isinstance(steps, list)
    return steps


def _runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in _steps(job) if "run" in step]


def _uses(job: dict[str, Any]) -> list[str]:
    return [step["uses"] for step in _steps(job) if "uses" in step]


# --- linters ---------------------------------------------------------------------------------------------


def test_required_workflows_exist() -> None:
    names = {path.name for path in _workflow_files()}
    assert set(REQUIRED_WORKFLOWS) <= names


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda path: path.name)
def test_workflow_passes_actionlint(path: Path) -> None:
    result = _run([_tool("actionlint"), "-no-color", str(path.relative_to(ROOT))])
    assert result.returncode == 0, (
        f"actionlint found problems in {path.name}:\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda path: path.name)
def test_workflow_matches_the_github_workflow_schema(path: Path) -> None:
    command = [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)]
    result = _run(command)
    assert result.returncode == 0, f"check-jsonschema rejected {path.name}:\n{result.stdout}{result.stderr}"


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    """The linter really runs: an untrusted expression in a script and an unknown input are reported."""
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
    result = _run([_tool("actionlint"), "-no-color", str(broken)])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "potentially untrusted" in result.stdout
    assert 'input "fetch_depth" is not defined' in result.stdout


def test_no_expression_is_interpolated_into_a_script() -> None:
    """Values reach scripts through `env:`; `${{ }}` inside `run:` is a script-injection risk."""
    for path in _workflow_files():
        workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
        for job_name, job in workflow["jobs"].items():
            for script in _runs(job):
                assert "${{" not in script, f"{path.name}, job {job_name}: {script!r}"


# --- pr.yml ----------------------------------------------------------------------------------------------


def test_pr_workflow_plans_against_the_base_branch_and_keeps_one_comment() -> None:
    text = (WORKFLOWS / "pr.yml").read_text(encoding="utf-8")
    workflow = _load("pr.yml")
    triggers = _triggers(workflow)
    assert set(triggers) == {"pull_request"}
    assert set(triggers["pull_request"]["paths"]) == {"definitions/**", "schemas/**"}
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert workflow["concurrency"]["cancel-in-progress"] is True
    assert "github.event.pull_request.number" in workflow["concurrency"]["group"]

    (job,) = workflow["jobs"].values()
    checkout = next(step for step in _steps(job) if step.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    setup = next(step for step in _steps(job) if step.get("uses", "").startswith("actions/setup-python@"))
    assert str(setup["with"]["python-version"]) == "3.11"

    runs = _runs(job)
    assert "pip install -e ." in runs
    assert "flux-control validate definitions" in runs
    assert runs.index("flux-control validate definitions") < next(
        i for i, run in enumerate(runs) if "flux-control plan" in run
    )
    plan_step = next(step for step in _steps(job) if "--against-ref" in step.get("run", ""))
    assert plan_step["run"] == (
        'flux-control plan definitions --against-ref "origin/$BASE_REF" --format markdown > plan.md'
    )
    assert plan_step["env"] == {"BASE_REF": "${{ github.base_ref }}"}

    comment = next(step for step in _steps(job) if step.get("uses") == "actions/github-script@v7")
    script = comment["with"]["script"]
    assert PLAN_MARKER in text
    assert PLAN_MARKER in script
    assert "plan.md" in script
    for call in ("listComments", "updateComment", "createComment"):
        assert f"github.rest.issues.{call}" in script
    assert _steps(job)[-1] is comment


# --- reconcile.yml ---------------------------------------------------------------------------------------


def test_reconcile_workflow_applies_one_at_a_time_and_checks_drift_daily() -> None:
    workflow = _load("reconcile.yml")
    triggers = _triggers(workflow)
    assert triggers["push"]["branches"] == ["main"]
    assert triggers["push"]["paths"] == ["definitions/**"]
    assert "workflow_dispatch" in triggers
    (schedule,) = triggers["schedule"]
    assert re.fullmatch(r"\d{1,2} \d{1,2} \* \* \*", schedule["cron"]), "expected a daily cron"

    jobs = workflow["jobs"]
    assert set(jobs) == {"apply", "drift"}
    apply, drift = jobs["apply"], jobs["drift"]
    secret = "${{ secrets.FLUX_DATABASE_URL }}"

    assert apply["concurrency"] == {"group": "flux-control-reconcile", "cancel-in-progress": False}
    assert "github.event_name == 'push'" in apply["if"]
    assert "github.event_name == 'workflow_dispatch'" in apply["if"]
    assert "schedule" not in apply["if"]
    assert apply["env"]["FLUX_DATABASE_URL"] == secret
    assert 'flux-control apply definitions --revision "$GITHUB_SHA"' in _runs(apply)

    assert drift["if"] == "github.event_name == 'schedule'"
    assert drift["env"]["FLUX_DATABASE_URL"] == secret
    assert "flux-control drift definitions" in _runs(drift)
    # Drift exits 2 when it finds a difference; nothing may swallow that.
    assert all("continue-on-error" not in step for step in _steps(drift))
    assert "continue-on-error" not in drift


# --- ci.yml ----------------------------------------------------------------------------------------------


def test_ci_workflow_lints_type_checks_and_tests_on_postgresql() -> None:
    workflow = _load("ci.yml")
    triggers = _triggers(workflow)
    assert {"push", "pull_request"} <= set(triggers)

    jobs = workflow["jobs"]
    all_runs = [run for job in jobs.values() for run in _runs(job)]
    for command in ("ruff check .", "ruff format --check .", "mypy controller", "python -m pytest"):
        assert command in all_runs, f"no step runs {command!r}"
    for job in jobs.values():
        assert "pip install -e '.[dev]'" in _runs(job)

    (test_job,) = [job for job in jobs.values() if "python -m pytest" in _runs(job)]
    postgres = test_job["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "5432:5432" in postgres["ports"]
    assert "--health-cmd" in postgres["options"]
    password = postgres["env"]["POSTGRES_PASSWORD"]
    assert test_job["env"]["FLUX_TEST_POSTGRES_URL"] == (
        f"postgresql+psycopg://postgres:{password}@localhost:5432/postgres"
    )
    assert test_job["env"]["CI"] == "true"


# --- .pre-commit-hooks.yaml ------------------------------------------------------------------------------


def test_pre_commit_hook_runs_validate_on_definition_changes() -> None:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert isinstance(hooks, list)
    (hook,) = hooks
    assert hook["id"] == "flux-control-validate"
    assert hook["name"]
    assert hook["description"]
    assert hook["entry"] == "flux-control validate"
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is False
    files = re.compile(hook["files"])
    assert files.search("definitions/operacoes/tb_op_enriquecido.yaml")
    assert files.search("schemas/table.schema.json")
    assert not files.search("controller/cli/validate.py")
    assert not files.search("docs/definitions/x.yaml")
