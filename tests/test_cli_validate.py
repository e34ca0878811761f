"""``flux-control validate`` as a user runs it: exit codes, formats, default directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli import main
from controller.cli.annotations import github_annotation
from controller.core.problems import Location, Problem
from tests.conftest import REPO_ROOT, WriteDefs

BROKEN = {
    "a.yaml": "version: 1\nname: a\npartitions: []\nowner: 1\n",
    "b.yaml": "version: 1\nname: b\npartitions: []\ndependencies: [{dependency_name: nope}]\n",
}


def test_example_definitions_are_valid() -> None:
    result = CliRunner().invoke(main, ["validate", str(REPO_ROOT / "definitions")])
    assert result.exit_code == 0, result.output
    assert result.output == "Valid: 10 tables, 6 dependencies, 6 tasks in 7 files.\n"


def test_default_directory_is_definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(REPO_ROOT / "definitions", tmp_path / "definitions")
    shutil.copytree(REPO_ROOT / "schemas", tmp_path / "schemas")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Valid: 10 tables")


def test_missing_default_directory_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 1  # a usage error: 2 means only changes or drift (DESIGN §3)
    assert "'definitions' does not exist" in result.output


def test_problems_then_summary_and_exit_1(write_defs: WriteDefs) -> None:
    root = write_defs(BROKEN)
    result = CliRunner().invoke(main, ["validate", str(root)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "defs/a.yaml:4:8: 'owner' must be a string, got number 1",
        "defs/b.yaml:4:34: unknown dependency 'nope'",
        "Invalid: 2 problems in 2 files; nothing was written.",
    ]


def test_json_format_carries_the_same_problems(write_defs: WriteDefs) -> None:
    root = write_defs(BROKEN)
    result = CliRunner().invoke(main, ["validate", str(root), "--format", "json"])
    assert result.exit_code == 1
    document = json.loads(result.output)
    assert document["valid"] is False
    assert document["summary"]["problems"] == 2
    assert document["problems"][1] == {
        "path": "defs/b.yaml",
        "line": 4,
        "column": 34,
        "code": "unknown-dependency",
        "message": "unknown dependency 'nope'",
    }


def test_json_format_when_valid() -> None:
    result = CliRunner().invoke(main, ["validate", str(REPO_ROOT / "definitions"), "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {
        "valid": True,
        "summary": {
            "files": 7,
            "tables": 10,
            "dependencies": 6,
            "tasks": 6,
            "problems": 0,
            "files_with_problems": 0,
        },
        "problems": [],
    }


def test_output_is_stable_between_runs(write_defs: WriteDefs) -> None:
    root = write_defs(BROKEN)
    outputs = {CliRunner().invoke(main, ["validate", str(root)]).output for _ in range(3)}
    assert len(outputs) == 1


@pytest.mark.parametrize(("size", "exit_code"), [("16", 1), ("64KiB", 0), ("1MiB", 0)])
def test_max_file_size_accepts_units(write_defs: WriteDefs, size: str, exit_code: int) -> None:
    root = write_defs({"a.yaml": "version: 1\nname: a\npartitions: []\n"})
    result = CliRunner().invoke(main, ["validate", str(root), "--max-file-size", size])
    assert result.exit_code == exit_code, result.output


def test_bad_max_file_size_is_a_usage_error(write_defs: WriteDefs) -> None:
    root = write_defs({"a.yaml": "version: 1\nname: a\npartitions: []\n"})
    result = CliRunner().invoke(main, ["validate", str(root), "--max-file-size", "lots"])
    assert result.exit_code == 1
    assert "'lots' is not a size such as 1048576, 512KiB or 2MiB" in result.output


def test_an_empty_directory_is_invalid(defs_dir: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "defs"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == "defs:1:1: no *.yaml or *.yml definition files found"


def test_a_single_file_can_be_validated(write_defs: WriteDefs) -> None:
    write_defs({"a.yaml": "version: 1\nname: a\npartitions: []\n"})
    result = CliRunner().invoke(main, ["validate", "defs/a.yaml"])
    assert result.exit_code == 0
    assert result.output == "Valid: 1 table, 0 dependencies, 0 tasks in 1 file.\n"


def test_help_shows_examples() -> None:
    result = CliRunner().invoke(main, ["validate", "--help"])
    assert result.exit_code == 0
    assert "flux-control validate path/to/definitions --format json" in result.output


def test_every_command_has_help_with_examples() -> None:
    import click

    commands: list[tuple[str, ...]] = []
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            commands.extend((name, sub) for sub in command.commands)
        else:
            commands.append((name,))
    assert len(commands) >= 9
    for path in commands:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Examples:" in result.output, f"flux-control {' '.join(path)} --help has no examples"
        assert f"flux-control {' '.join(path)}" in result.output.split("Examples:")[1], path


def test_github_format_annotates_each_problem_at_its_file_and_line(
    write_defs: WriteDefs, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_defs(BROKEN)
    monkeypatch.chdir(root.parent)
    result = CliRunner().invoke(main, ["validate", str(root.resolve()), "--format", "github"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "::error file=defs/a.yaml,line=4,col=8,title=flux-control validate (schema-type)"
        "::'owner' must be a string, got number 1",
        "::error file=defs/b.yaml,line=4,col=34,title=flux-control validate (unknown-dependency)"
        "::unknown dependency 'nope'",
        "Invalid: 2 problems in 2 files; nothing was written.",
    ]


def test_github_format_escapes_what_would_end_a_command() -> None:
    """A message or path from a file cannot end the command early nor start a second one on a new line."""
    problem = Problem(Location("odd,dir/a:b.yaml", 2, 3), "100% wrong\n::add-mask::x", code="c")
    annotation = github_annotation(problem, workspace=Path("/nowhere"))
    assert "\n" not in annotation
    assert annotation == (
        "::error file=odd%2Cdir/a%3Ab.yaml,line=2,col=3,title=flux-control validate (c)"
        "::100%25 wrong\\n::add-mask::x"
    )


def test_github_format_when_valid_prints_only_the_summary() -> None:
    result = CliRunner().invoke(main, ["validate", str(REPO_ROOT / "definitions"), "--format", "github"])
    assert result.exit_code == 0, result.output
    assert result.output == "Valid: 10 tables, 6 dependencies, 6 tasks in 7 files.\n"
