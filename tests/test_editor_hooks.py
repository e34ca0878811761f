"""Checking definitions outside the CLI: the pre-commit hook (and its override for definitions kept
elsewhere) and check-jsonschema, which reads one YAML document per file, as the README says."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path
from typing import Any

import yaml

from tests.workflow_support import ROOT, run, tool

SCHEMA = ROOT / "schemas" / "table.schema.json"
MULTI_DOCUMENT = ROOT / "definitions" / "vendas" / "sources.yaml"
TABLE = "version: 1\nname: {name}\npartitions: []\n"


def _hook() -> dict[str, Any]:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert isinstance(hooks, list)
    (hook,) = hooks
    assert isinstance(hook, dict)
    return hook


def _documented_override() -> dict[str, Any]:
    """The `files:`/`args:` example in the hooks file's header comment, parsed."""
    text = (ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    header = [line.removeprefix("#") for line in text.splitlines() if line.startswith("#")]
    start = next(
        i
        for i, line in enumerate(header)
        if "- id: flux-control-validate" in line and "files" in header[i + 1]
    )
    example = yaml.safe_load(textwrap.dedent("\n".join(header[start : start + 3])))
    (override,) = example
    assert isinstance(override, dict)
    return override


def _run_hook(hook: dict[str, Any], cwd: Path) -> int:
    """Run the hook as pre-commit does with pass_filenames false: the entry, then the args."""
    command = shlex.split(hook["entry"]) + list(hook.get("args", []))
    return run([tool(command[0]), *command[1:]], cwd=cwd).returncode


# --- the pre-commit hook ---------------------------------------------------------------------------------


def test_pre_commit_hook_runs_validate_on_definition_changes() -> None:
    hook = _hook()
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


def test_the_documented_override_validates_definitions_kept_elsewhere(tmp_path: Path) -> None:
    override = _documented_override()
    assert override["id"] == _hook()["id"]
    (directory,) = override["args"]
    files = re.compile(override["files"])
    assert files.search(f"{directory}/sales/a.yaml")
    assert not files.search("definitions/a.yaml")

    tables = tmp_path / directory
    tables.mkdir(parents=True)
    (tables / "a.yaml").write_text(TABLE.format(name="a"), encoding="utf-8")
    hook = {**_hook(), **override}
    assert _run_hook(hook, tmp_path) == 0
    assert _run_hook(_hook(), tmp_path) == 1, "without args the hook looks for definitions/"
    (tables / "b.yaml").write_text("version: 1\nname: b\n", encoding="utf-8")
    assert _run_hook(hook, tmp_path) == 1


# --- check-jsonschema ------------------------------------------------------------------------------------


def test_check_jsonschema_accepts_the_single_document_examples() -> None:
    singles = [
        path for path in sorted((ROOT / "definitions").rglob("*.yaml")) if "\n---" not in path.read_text()
    ]
    assert singles
    result = run([tool("check-jsonschema"), "--schemafile", str(SCHEMA), *map(str, singles)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_jsonschema_refuses_a_multi_document_file_as_the_readme_says() -> None:
    """If check-jsonschema learns multi-document files, this fails: then the README's advice changes."""
    result = run([tool("check-jsonschema"), "--schemafile", str(SCHEMA), str(MULTI_DOCUMENT)])
    assert result.returncode == 1
    assert "expected a single document in the stream" in result.stdout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "expected a single document in the stream" in readme


def test_validate_checks_every_document_of_a_file_against_the_schema(tmp_path: Path) -> None:
    """What the README offers instead: the same schema, per document, with the document's own line."""
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "many.yaml").write_text(
        TABLE.format(name="a") + "---\n" + TABLE.format(name="b") + "debounce_seconds: soon\n",
        encoding="utf-8",
    )
    result = run([tool("flux-control"), "validate", "defs"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "defs/many.yaml:8:19: 'debounce_seconds' must be an integer, got string 'soon'"
    )
