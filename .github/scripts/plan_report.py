"""The pull request's plan report: the plan when validation and planning passed, their errors otherwise.

Run by ``.github/workflows/pr.yml`` after its validate and plan steps, whatever they did. It writes
``report.md`` (which the comment job posts as the sticky comment) and appends the same text to the job
summary, where it is all a pull request from a fork gets: a fork's token cannot comment. Every report
names the commit it judged, so a comment left by an earlier push never passes for the current one.

Inputs come from the environment, as the workflow passes them:

- ``VALIDATE_OUTCOME``, ``PLAN_OUTCOME``: the steps' ``outcome`` (``success``, ``failure``, ``skipped``
  or empty when the step never started);
- ``HEAD_SHA``: the pull request's head commit; ``BASE_REF``: the branch it merges into;
- ``DEFINITIONS``: the definitions directory (default ``definitions``); ``FORK``: ``true`` for a fork;
- ``GITHUB_STEP_SUMMARY``, ``GITHUB_SERVER_URL``, ``GITHUB_REPOSITORY``, ``GITHUB_RUN_ID``: the runner's.

Always exits 0 once the report is written: the workflow's last step fails the job.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from summary import append_summary, fenced

REPORT = Path("report.md")
PLAN = Path("plan.md")
PLAN_ERRORS = Path("plan-errors.txt")
# GitHub refuses a comment body over 65,536 characters; the marker and the footer need some room.
MAX_BODY = 60_000
SUMMARY_LIMIT = 900_000


def main() -> None:
    REPORT.write_text(build_report(os.environ, validation_text=_validation_text), encoding="utf-8")
    # The summary holds 1 MiB: the whole plan goes there, and the comment points at it when cut.
    append_summary(build_report(os.environ, validation_text=_validation_text, limit=SUMMARY_LIMIT))


def build_report(
    env: Mapping[str, str], *, validation_text: Callable[[str], str], limit: int = MAX_BODY
) -> str:
    """The report's markdown for the outcomes in ``env`` (see the module's docstring), its plan or
    errors cut to ``limit`` characters."""
    validate = env.get("VALIDATE_OUTCOME", "")
    plan = env.get("PLAN_OUTCOME", "")
    definitions = env.get("DEFINITIONS", "definitions")
    if validate == "failure":
        body = _failed(
            "validation failed",
            "The definitions are invalid, so no plan was made. Each problem is also annotated on the diff.",
            validation_text(definitions),
            limit,
        )
    elif validate != "success":
        body = _did_not_run("Validation")
    elif plan == "failure":
        errors = PLAN_ERRORS.read_text(encoding="utf-8") if PLAN_ERRORS.exists() else ""
        body = _failed(
            "planning failed", "The definitions are valid but could not be planned.", errors, limit
        )
    elif plan != "success":
        body = _did_not_run("Planning")
    else:
        body = _truncated(PLAN.read_text(encoding="utf-8"), env, limit)
    return f"{body.rstrip()}\n\n{_footer(env)}\n"


def _validation_text(definitions: str) -> str:
    """``flux-control validate`` in its text format: the problems as a person reads them."""
    result = subprocess.run(
        ["flux-control", "validate", definitions],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout + result.stderr


def _failed(what: str, explanation: str, output: str, limit: int) -> str:
    if len(output) > limit:
        output = output[:limit] + "\n… (cut here; the whole output is in the job's log)"
    return f"### ❌ Flux Control: {what}\n\n{explanation}\n\n{fenced(output)}"


def _did_not_run(step: str) -> str:
    return (
        f"### ❌ Flux Control: {step.lower()} did not run\n\n"
        f"{step} did not run because an earlier step of the job failed; see the run's log."
    )


def _truncated(plan: str, env: Mapping[str, str], limit: int) -> str:
    if len(plan) <= limit:
        return plan
    return (
        plan[:limit].rsplit("\n", 1)[0]
        + f"\n\n… the plan is cut here; the whole plan is in the [run's summary]({_run_url(env)})."
    )


def _footer(env: Mapping[str, str]) -> str:
    head = env.get("HEAD_SHA", "")[:12] or "unknown"
    base = env.get("BASE_REF", "") or "the base branch"
    line = f"<sub>Commit `{head}` against `{base}` · [run]({_run_url(env)})</sub>"
    if env.get("FORK") == "true":
        line += (
            "\n\n<sub>This pull request comes from a fork, whose token cannot write a comment: "
            "this job summary is the report.</sub>"
        )
    return line


def _run_url(env: Mapping[str, str]) -> str:
    server = env.get("GITHUB_SERVER_URL", "https://github.com")
    return f"{server}/{env.get('GITHUB_REPOSITORY', '')}/actions/runs/{env.get('GITHUB_RUN_ID', '')}"


if __name__ == "__main__":
    main()
