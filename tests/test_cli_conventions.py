"""CLI conventions (issue 13, DESIGN §3): Terraform's exit codes, colour only where allowed, reading
commands that never create a database, stored text that cannot forge a line, a compact apply, shell
completion."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from controller.cli import main
from controller.db.engine import make_engine
from controller.db.migrate import upgrade
from tests.conftest import REPO_ROOT
from tests.factories import table_doc, write_tables
from tests.runtime_support import Lambda, partitions, running_lambda

MONTH = [{"name": "mes", "type": "int"}]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, prog_name="flux-control")


# --- exit codes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("plan", "missing-dir", "--detailed-exitcode"),
        ("drift", "missing-dir"),
        ("apply", "missing-dir"),
        ("validate", "missing-dir"),
        ("plan", "--no-such-option"),
        ("explain",),  # a missing argument
    ],
)
def test_usage_errors_exit_1_never_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """2 means only "changes" or "drift": a CI step must never read a typo as either."""
    monkeypatch.chdir(tmp_path)
    result = run(*args, "--database-url", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Usage: ") or "Error: " in result.output
    assert not (tmp_path / "x.db").exists()


def test_help_and_version_exit_0() -> None:
    assert run("--help").exit_code == 0
    assert run("plan", "--help").exit_code == 0
    version = run("--version")
    assert version.exit_code == 0
    assert version.output.startswith("flux-control, version ")


# --- colour ------------------------------------------------------------------------------------------


def _on_a_terminal(args: list[str], extra_env: dict[str, str], cwd: Path) -> str:
    """What the command prints on a real pseudo-terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    env.update({"TERM": "xterm-256color", **extra_env})
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "controller", *args], stdout=follower, stderr=follower, cwd=cwd, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the follower closed: the command is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_colour_on_a_terminal_unless_no_color_or_a_dumb_terminal(tmp_path: Path) -> None:
    definitions = write_tables(tmp_path / "defs", [table_doc("up"), table_doc("down")])
    database = f"sqlite:///{tmp_path / 'flux.db'}"
    for command in (["validate", str(definitions)], ["plan", str(definitions), "--database-url", database]):
        coloured = _on_a_terminal(command, {}, tmp_path)
        assert "\x1b[" in coloured, coloured
        for extra in ({"NO_COLOR": "1"}, {"TERM": "dumb"}):
            plain = _on_a_terminal(command, extra, tmp_path)
            assert "\x1b[" not in plain, (extra, plain)
            assert plain.replace("\r\n", "\n") == _strip(coloured), extra


def _strip(text: str) -> str:
    import click

    return click.unstyle(text).replace("\r\n", "\n")


# --- commands that only read never create a database -------------------------------------------------


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    return write_tables(tmp_path / "defs", [table_doc("up", partitions=MONTH)])


def test_explain_on_a_missing_database_says_what_to_do_and_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "flux-control.db"
    result = run("explain", "up", "-p", "mes=1", "--database-url", f"sqlite:///{target}")
    assert result.exit_code == 1
    assert result.output == "Error: no definitions applied: run `flux-control apply` first\n"
    assert list(tmp_path.iterdir()) == []


def test_explain_on_an_empty_database_says_the_same(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flux.db'}"
    engine = make_engine(url)
    upgrade(engine)  # a schema, no table
    engine.dispose()
    result = run("explain", "up", "-p", "mes=1", "--database-url", url)
    assert result.exit_code == 1
    assert "no definitions applied: run `flux-control apply` first" in result.output


def test_plan_and_drift_on_a_missing_database_create_nothing(tmp_path: Path, defs: Path) -> None:
    target = tmp_path / "never.db"
    url = f"sqlite:///{target}"
    planned = run("plan", str(defs), "--database-url", url)
    assert planned.exit_code == 0, planned.output
    assert "The database is empty: apply will create its schema first." in planned.output
    assert "Plan: 0 to delete, 1 to create, 0 to update." in planned.output
    drifted = run("drift", str(defs), "--database-url", url)
    assert drifted.exit_code == 2
    assert "never applied" in drifted.output
    assert not target.exists()
    assert run("apply", str(defs), "--database-url", url).exit_code == 0
    assert target.exists()  # the command that writes creates it


# --- stored text in terminal output ------------------------------------------------------------------


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    tables = [
        table_doc("up", partitions=MONTH),
        table_doc("down", partitions=MONTH, dependencies=[{"dependency_name": "up"}]),
    ]
    with running_lambda(engine, tables, monkeypatch) as handler:
        yield handler


FORGED = "glue\n    ✓ down (required): ok\x1b[2K\x1b]0;pwned\x07\u202e"


def test_control_characters_in_stored_text_are_shown_escaped(flux: Lambda, database_url: str) -> None:
    item = {"table_name": "up", "partitions": partitions(mes=202305), "source": FORGED}
    flux.ok("POST", "/register_execution", {"data": [item]})
    result = run("explain", "down", "-p", "mes=202305", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\u202e" not in result.output
    lines = result.output.splitlines()
    [line] = [line for line in lines if line.startswith("    ✓ up")]
    assert line.endswith("by glue\\n    ✓ down (required): ok\\x1b[2K\\x1b]0;pwned\\x07\\u202e")
    # JSON keeps the value exact.
    document = run("explain", "down", "-p", "mes=202305", "--format", "json", "--database-url", database_url)
    assert document.exit_code == 0
    assert json.loads(document.output)["dependencies"][0]["execution"]["source"] == FORGED


def test_plan_text_escapes_values_from_the_definitions(tmp_path: Path) -> None:
    # NEL (U+0085) breaks the line on some terminals; U+202E reverses what follows: JSON keeps both.
    description = "one\x85  + table forged\u202e"
    defs = write_tables(tmp_path / "defs", [table_doc("up", description=description)])
    result = run("plan", str(defs), "--database-url", f"sqlite:///{tmp_path / 'x.db'}")
    assert result.exit_code == 0, result.output
    assert "\x85" not in result.output and "\u202e" not in result.output
    assert '      + description         = "one\\x85  + table forged\\u202e"' in result.output.splitlines()


def test_validate_escapes_control_characters_in_file_names(tmp_path: Path) -> None:
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "a\x1b[31m.yaml").write_text("version: 1\nname: a\npartitions: []\nowner: 1\n", encoding="utf-8")
    result = run("validate", str(defs))
    assert result.exit_code == 1
    assert "\x1b" not in result.output
    assert "a\\x1b[31m.yaml:4:8: 'owner' must be a string, got number 1" in result.output


# --- a compact apply ---------------------------------------------------------------------------------


def test_apply_compact_prints_the_summary_and_the_deletions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flux.db'}"
    defs = write_tables(tmp_path / "defs", [table_doc(f"t{i:04d}") for i in range(300)])
    first = run("apply", str(defs), "--compact", "--database-url", url)
    assert first.exit_code == 0, first.output
    assert first.output == "Apply complete: 300 created, 0 updated, 0 deleted.\n"
    full = run(
        "plan",
        str(write_tables(tmp_path / "more", [table_doc("t0000", debounce_seconds=5)])),
        "--database-url",
        url,
    )
    assert len(full.output.splitlines()) > 300  # every deletion and the update, field by field
    compact_plan = run("plan", str(tmp_path / "more"), "--compact", "--database-url", url)
    assert compact_plan.output.splitlines()[-1] == "Plan: 299 to delete, 0 to create, 1 to update."
    second = run("apply", str(tmp_path / "more"), "--compact", "--database-url", url)
    assert second.exit_code == 0, second.output
    lines = second.output.splitlines()
    assert lines == [
        "Deleted: " + ", ".join(f"t{i:04d}" for i in range(1, 300)),
        "Apply complete: 0 created, 1 updated, 299 deleted.",
    ]


# --- shell completion --------------------------------------------------------------------------------


def test_shell_completion_is_generated_and_documented() -> None:
    result = run(env={"_FLUX_CONTROL_COMPLETE": "bash_source"})
    assert result.exit_code == 0
    assert "_flux_control_completion()" in result.output
    completed = run(
        env={"_FLUX_CONTROL_COMPLETE": "bash_complete", "COMP_WORDS": "flux-control pl", "COMP_CWORD": "1"}
    )
    assert "plain,plan" in completed.output
    readme = (Path(REPO_ROOT) / "README.md").read_text(encoding="utf-8")
    assert 'eval "$(_FLUX_CONTROL_COMPLETE=bash_source flux-control)"' in readme
    assert "_FLUX_CONTROL_COMPLETE=bash_source" in run("--help").output


# --- the embedded database's files -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["flux-control.db", "flux-control.db-wal", "flux-control.db-shm", "x/y.db-journal"]
)
def test_git_ignores_the_embedded_database_and_its_side_files(name: str) -> None:
    """SQLite in WAL mode (the embedded default) writes -wal and -shm files beside the database."""
    found = subprocess.run(
        ["git", "check-ignore", "--no-index", "--quiet", name], cwd=REPO_ROOT, capture_output=True, timeout=30
    )
    assert found.returncode == 0, f"{name} is not ignored by .gitignore"
