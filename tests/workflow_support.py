"""Reading the GitHub workflows, running their linters and their steps' scripts, for the workflow tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
SCRIPTS = ROOT / ".github" / "scripts"
INSTALL_HINT = "install the dev extra: pip install -e '.[dev]'"


def tool(name: str) -> str:
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


def run(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{name} is not a YAML mapping"
    return data


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # PyYAML reads the key `on` as the boolean True (YAML 1.1); GitHub reads it as the string.
    found = workflow.get("on", workflow.get(True))
    assert isinstance(found, dict), f"expected the triggers as a mapping, got {found!r}"
    return found


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    found = job.get("steps")
    assert isinstance(found, list)
    return found


def runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in steps(job) if "run" in step]


def uses(job: dict[str, Any]) -> list[str]:
    return [step["uses"] for step in steps(job) if "uses" in step]


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    """The step called ``name`` (its ``name:``), which must exist."""
    for candidate in steps(job):
        if candidate.get("name") == name:
            return candidate
    names = [candidate.get("name") for candidate in steps(job)]
    raise AssertionError(f"no step named {name!r}; the steps are {names}")


def run_step(
    script: str,
    cwd: Path,
    *,
    fakes: Mapping[str, str] = {},
    env: Mapping[str, str] = {},
) -> subprocess.CompletedProcess[str]:
    """Run a step's ``run:`` script as the runner does (``bash -e``), in ``cwd``.

    ``fakes`` maps a command name to the body of a bash script put first on PATH in its place (a
    ``flux-control`` that fails, say), so the step's own shell logic is what is tested. After them on
    PATH comes this interpreter's ``bin``: the real ``flux-control``, as ``pip install -e .`` leaves it
    for the steps that follow.
    """
    bin_dir = cwd / ".fake-bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in fakes.items():
        path = bin_dir / name
        path.write_text(f"#!/usr/bin/env bash\n{body}\n", encoding="utf-8")
        path.chmod(0o755)
    script_file = cwd / ".step.sh"
    script_file.write_text(script, encoding="utf-8")
    search_path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    environment = {**os.environ, **env, "PATH": search_path}
    return subprocess.run(
        ["bash", "-e", str(script_file)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
