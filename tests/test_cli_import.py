"""``flux-control import``: original ``POST /tables`` payloads become definition files that validate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from controller.cli import main
from controller.cli.importer import render_table
from controller.files.yaml_documents import parse_bytes
from tests.conftest import REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "original_payload.json"
ORIGINAL: list[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))
SCHEMA_COMMENT = "# yaml-language-server: $schema="

ENRICHED_YAML = """\
version: 1
name: tb_op_enriquecido
description: Tabela de operações enriquecidas
requires_approval: true
approvers: [lrcxpnu]
debounce_seconds: 300
max_wait_seconds: 3600
partitions:
  - {name: ano_mes_referencia, type: int, is_required: true}
dependencies:
  - {dependency_name: tbjf001_op_pdz_prep, is_required: true}
tasks:
  - alias: enrich
    type: glue
    target: job-enrich-operacoes
    params:
      --ano_mes: '{{ partitions.ano_mes_referencia }}'
"""


def _import(payload: Path, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["import", str(payload), "--out", str(out), *extra])


def _write_payload(tmp_path: Path, payload: object) -> Path:
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    return path


def _body(path: Path) -> str:
    """The file without its first line (the schema comment)."""
    first, _, rest = path.read_text(encoding="utf-8").partition("\n")
    assert first.startswith(SCHEMA_COMMENT)
    return rest


def test_the_fixture_is_the_original_example() -> None:
    assert [t["name"] for t in ORIGINAL] == ["tbjf001_op_pdz_prep", "tb_op_enriquecido"]
    assert all("version" not in t for t in ORIGINAL)
    assert ORIGINAL[1]["tasks"][0]["params"] == {"--ano_mes": "{{ partitions.ano_mes_referencia }}"}


def test_original_payload_imports_and_validates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _import(FIXTURE, out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.yaml")) == [
        "tb_op_enriquecido.yaml",
        "tbjf001_op_pdz_prep.yaml",
    ]
    assert f"Wrote {(out / 'tb_op_enriquecido.yaml').as_posix()}" in result.stdout
    assert "Valid: 2 table(s)" in result.stdout
    for table in ORIGINAL:
        path = out / f"{table['name']}.yaml"
        assert yaml.safe_load(path.read_text(encoding="utf-8")) == {"version": 1, **table}
    assert _body(out / "tb_op_enriquecido.yaml") == ENRICHED_YAML

    validated = CliRunner().invoke(main, ["validate", str(out)])
    assert validated.exit_code == 0, validated.output
    assert validated.output == "Valid: 2 tables, 1 dependency, 1 task in 2 files.\n"


def _schema_of(path: Path) -> Path:
    """The schema a file's comment points at, which must be a path relative to the file."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(SCHEMA_COMMENT)
    reference = Path(first.removeprefix(SCHEMA_COMMENT))
    assert not reference.is_absolute(), first
    return (path.parent / reference).resolve()


def test_outside_a_repository_the_schema_is_written_beside_the_files(tmp_path: Path) -> None:
    """The comment was the absolute path of the package's schema: a path of one machine, committed."""
    out = tmp_path / "anywhere" / "out"
    result = _import(FIXTURE, out)
    assert result.exit_code == 0, result.output
    schema = out / "schemas" / "table.schema.json"
    assert f"Wrote {schema.as_posix()} (the schema the files point editors at" in result.stdout
    assert schema.read_text(encoding="utf-8") == (REPO_ROOT / "schemas" / "table.schema.json").read_text(
        encoding="utf-8"
    )
    for path in out.glob("*.yaml"):
        assert (
            path.read_text(encoding="utf-8").splitlines()[0] == f"{SCHEMA_COMMENT}schemas/table.schema.json"
        )
        assert _schema_of(path) == schema.resolve()
        assert str(tmp_path) not in path.read_text(encoding="utf-8")


def test_in_a_repository_without_schemas_the_schema_is_written_at_its_top(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    out = repo / "definitions" / "operacoes"
    assert _import(FIXTURE, out).exit_code == 0
    for path in out.glob("*.yaml"):
        assert path.read_text(encoding="utf-8").splitlines()[0] == (
            f"{SCHEMA_COMMENT}../../schemas/table.schema.json"
        )
        assert _schema_of(path) == (repo / "schemas" / "table.schema.json").resolve()
    # A second import finds it and writes it no more.
    again = _import(FIXTURE, repo / "definitions" / "vendas")
    assert again.exit_code == 0
    assert "schema the files point editors at" not in again.stdout


def test_the_original_request_envelope_imports(tmp_path: Path) -> None:
    """``{"data": [...], "user": ...}`` as the old README shows it: it said "table #1 has name None"."""
    payload = _write_payload(tmp_path, {"data": ORIGINAL, "user": "lrcxpnu"})
    out = tmp_path / "out"
    result = _import(payload, out)
    assert result.exit_code == 0, result.output
    assert "Valid: 2 table(s)" in result.stdout
    assert _body(out / "tb_op_enriquecido.yaml") == ENRICHED_YAML
    for table in ORIGINAL:
        assert yaml.safe_load((out / f"{table['name']}.yaml").read_text("utf-8")) == {"version": 1, **table}


def test_an_envelope_with_unknown_fields_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _import(_write_payload(tmp_path, {"data": ORIGINAL, "usr": "lrcxpnu"}), out)
    assert result.exit_code == 1
    assert "unknown field(s) beside 'data': 'usr'" in result.stderr
    assert not out.exists()


def test_schema_comment_inside_a_repository_is_relative(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "schemas").mkdir()
    shutil.copy(REPO_ROOT / "schemas" / "table.schema.json", repo / "schemas" / "table.schema.json")
    out = repo / "definitions" / "operacoes"
    assert _import(FIXTURE, out).exit_code == 0
    for path in out.iterdir():
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../../schemas/table.schema.json"
        assert (out / first.removeprefix(SCHEMA_COMMENT)).resolve().is_file()


def test_tables_object_shape(tmp_path: Path) -> None:
    payload = _write_payload(tmp_path, {"tables": ORIGINAL})
    result = _import(payload, tmp_path / "out")
    assert result.exit_code == 0, result.output
    loaded = yaml.safe_load(_body(tmp_path / "out" / "tbjf001_op_pdz_prep.yaml"))
    assert loaded == {"version": 1, **ORIGINAL[0]}
    assert (tmp_path / "out" / "tb_op_enriquecido.yaml").is_file()


def test_single_object_shape(tmp_path: Path) -> None:
    payload = _write_payload(tmp_path, ORIGINAL[0])
    result = _import(payload, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").glob("*.yaml")] == ["tbjf001_op_pdz_prep.yaml"]
    assert _body(tmp_path / "out" / "tbjf001_op_pdz_prep.yaml") == (
        "version: 1\n"
        "name: tbjf001_op_pdz_prep\n"
        "partitions:\n"
        "  - {name: ano_mes_referencia, type: int, is_required: true}\n"
        "dependencies: []\n"
    )


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _import(FIXTURE, out).exit_code == 0
    edited = out / "tb_op_enriquecido.yaml"
    edited.write_text("# edited by hand\n", encoding="utf-8")

    result = _import(FIXTURE, out)
    assert result.exit_code == 1
    assert "already exist" in result.stderr
    assert "Use --force to overwrite." in result.stderr
    assert "nothing was written" in result.stderr
    assert edited.read_text(encoding="utf-8") == "# edited by hand\n"

    result = _import(FIXTURE, out, "--force")
    assert result.exit_code == 0, result.output
    assert _body(edited) == ENRICHED_YAML


def test_payload_that_is_not_json_writes_nothing(tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text("name: tb_x\n", encoding="utf-8")
    out = tmp_path / "out"
    result = _import(payload, out)
    assert result.exit_code == 1
    assert "is not valid JSON" in result.stderr
    assert "nothing was written" in result.stderr
    assert not out.exists()


def test_payload_of_the_wrong_shape_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for payload in ([], [1, 2], "tb_x"):
        result = _import(_write_payload(tmp_path, payload), out)
        assert result.exit_code == 1
        assert (
            'the payload must be the original request {"data": [...tables...], "user": "..."}, a list of '
            'table objects, {"tables": [...]}, or one table object'
        ) in result.stderr
    result = _import(_write_payload(tmp_path, [{"name": "../escape", "partitions": []}]), out)
    assert result.exit_code == 1
    assert "table #1 of the payload has name '../escape'" in result.stderr
    result = _import(_write_payload(tmp_path, [ORIGINAL[0], ORIGINAL[0]]), out)
    assert result.exit_code == 1
    assert "appears more than once" in result.stderr
    assert not out.exists()


def test_unknown_dependency_writes_files_and_exits_1(tmp_path: Path) -> None:
    payload = _write_payload(tmp_path, [ORIGINAL[1]])
    out = tmp_path / "out"
    result = _import(payload, out)
    assert result.exit_code == 1
    assert _body(out / "tb_op_enriquecido.yaml") == ENRICHED_YAML
    written = (out / "tb_op_enriquecido.yaml").as_posix()
    assert f"Warning: {written}:12:23: unknown dependency 'tbjf001_op_pdz_prep'" in result.stderr
    assert "depend on tables that are not defined in" in result.stderr
    assert "tbjf001_op_pdz_prep. Add the definitions of those upstream tables" in result.stderr

    # once the upstream table is there too, the directory validates
    assert _import(_write_payload(tmp_path, [ORIGINAL[0]]), out).exit_code == 0


def test_other_problems_are_reported_after_writing(tmp_path: Path) -> None:
    payload = _write_payload(tmp_path, {"name": "tb_x", "partitions": [], "owner": 5, "created_at": None})
    result = _import(payload, tmp_path / "out")
    assert result.exit_code == 1
    assert _body(tmp_path / "out" / "tb_x.yaml") == "version: 1\nname: tb_x\nowner: 5\npartitions: []\n"
    assert "'owner' must be a string" in result.stderr
    assert "have 1 problem(s); fix them" in result.stderr


def test_values_round_trip_with_yaml_quoting() -> None:
    table = {
        "name": "tb_x",
        "description": "línea 1: com dois-pontos # e cerquilha\nlinha 2",
        "owner": "yes",
        "partitions": [{"name": "dt", "type": "date", "is_required": False}],
        "dependencies": [
            {"dependency_name": "tb_up", "partition_map": {"dt": "data"}, "is_required": False},
        ],
        "tasks": [
            {
                "alias": "t",
                "type": "sqs",
                "target": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
                "params": {
                    "body": "{{ partitions.dt }}",
                    "n": "123",
                    "when": "2024-01-01",
                    "flag": "null",
                    "loop": "{% for t in triggers %}{{ t }}{% endfor %}",
                    "nested": {"list": [1, "two", None, True], "empty": {}},
                },
            }
        ],
    }
    text = render_table(table)
    assert yaml.safe_load(text) == {"version": 1, **table}
    document = parse_bytes(text.encode("utf-8"), "x.yaml").documents[0]
    assert document.data == {"version": 1, **table}
    assert "  - {dependency_name: tb_up, is_required: false, partition_map: {dt: data}}\n" in text


def test_help_has_examples() -> None:
    result = CliRunner().invoke(main, ["import", "--help"])
    assert result.exit_code == 0
    assert "Examples:\n    flux-control import payload.json --out definitions/operacoes\n" in result.output
