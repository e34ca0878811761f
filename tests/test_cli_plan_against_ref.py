"""``plan --against-ref``: the pull-request diff, read from Git without a checkout or a database."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from controller.cli import main
from controller.files.git_source import read_revision
from tests.factories import table_doc, write_tables


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with two commits: a, b, c; then b changed and c deleted, d added."""
    for name, value in {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
    }.items():
        monkeypatch.setenv(name, value)
    git(tmp_path, "init", "-q", "-b", "main")
    defs = tmp_path / "definitions"
    write_tables(
        defs, [table_doc("a"), table_doc("b", dependencies=[{"dependency_name": "a"}]), table_doc("c")]
    )
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    write_tables(
        defs,
        [
            table_doc("a"),
            table_doc("b", debounce_seconds=90, dependencies=[{"dependency_name": "a"}]),
            table_doc("d"),
        ],
    )
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "second")
    return tmp_path


def plan(repo: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["plan", str(repo / "definitions"), *args])
    return result.exit_code, result.output + result.stderr


def test_the_diff_between_two_commits_adds_changes_and_deletes(repo: Path) -> None:
    code, output = plan(repo, "--against-ref", "HEAD~1", "--detailed-exitcode")
    assert code == 2, output
    lines = output.splitlines()
    assert lines[0] == "Compared with the definitions at HEAD~1 (not with a database)."
    assert lines.index("  - table c") < lines.index("  + table d") < lines.index("  ~ table b")
    assert "      ~ debounce_seconds: 60 → 90" in lines
    assert lines[-1] == "Plan: 1 to delete, 1 to create, 1 to update."


def test_no_changes_against_the_same_revision(repo: Path) -> None:
    code, output = plan(repo, "--against-ref", "HEAD", "--detailed-exitcode")
    assert code == 0, output
    assert output.splitlines()[-1] == "No changes: the definitions match those at HEAD."


def test_the_working_tree_is_compared_not_the_last_commit(repo: Path) -> None:
    write_tables(
        repo / "definitions",
        [table_doc("a"), table_doc("b", debounce_seconds=90, dependencies=[{"dependency_name": "a"}])],
    )
    code, output = plan(repo, "--against-ref", "HEAD", "--format", "json")
    assert code == 0, output
    document = json.loads(output)
    assert [(a["action"], a["table"]) for a in document["actions"]] == [("delete", "d")]
    assert "history" not in document["actions"][0]  # unknown without a database


def test_markdown_for_the_pull_request_comment(repo: Path) -> None:
    code, output = plan(repo, "--against-ref", "HEAD~1", "--format", "markdown")
    assert code == 0, output
    assert output.startswith("### Flux Control plan")
    assert "| 🗑️ delete | 1 |" in output
    assert "**Deletions:** `c`" in output
    # Summary first, then the graph of changed tables and their downstream, then the details.
    assert output.index("| ✏️ update | 1 |") < output.index("```mermaid") < output.index("<details>")
    graph = output[output.index("```mermaid") : output.index("<details>")]
    assert "class t_b,t_d changed" in graph
    assert "t_a" not in graph  # unchanged and upstream only


def test_an_unknown_revision_says_what_to_do(repo: Path) -> None:
    code, output = plan(repo, "--against-ref", "origin/nowhere")
    assert code == 1
    assert "Error: unknown revision 'origin/nowhere': fetch it first" in output


def test_revision_files_point_at_ref_and_path(repo: Path) -> None:
    files = read_revision(repo / "definitions", "HEAD~1")
    assert [f.path for f in files] == [
        "HEAD~1:definitions/a.yaml",
        "HEAD~1:definitions/b.yaml",
        "HEAD~1:definitions/c.yaml",
    ]
    assert [d.data["name"] for f in files for d in f.documents] == ["a", "b", "c"]


def test_an_oversized_file_at_the_revision_is_a_problem_not_a_crash(repo: Path) -> None:
    files = read_revision(repo / "definitions", "HEAD", max_bytes=10)
    assert {p.code for f in files for p in f.problems} == {"yaml-size"}
    assert all(not f.documents for f in files)
