"""The JSON Schema: well formed, the single copy, and the fast and detailed validators agree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema_rs
import pytest
from jsonschema import Draft202012Validator

from controller.files import schema
from controller.files.schema import schema_problems, table_schema, table_validator
from controller.files.yaml_documents import parse_bytes
from tests.conftest import REPO_ROOT
from tests.test_validation_catalogue import CASES


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads((REPO_ROOT / "schemas" / "table.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_package_reads_the_repository_schema() -> None:
    assert table_schema() == json.loads((REPO_ROOT / "schemas" / "table.schema.json").read_text())


def _documents() -> list[object]:
    docs: list[object] = []
    texts = [c for case in CASES for c in case.files.values() if isinstance(c, str)]
    texts += [p.read_text() for p in (REPO_ROOT / "definitions").rglob("*.yaml")]
    for text in texts:  # read as validation reads them (keys are always strings there)
        source = parse_bytes(text.encode(), "x.yaml")
        docs.extend(d.data for d in source.documents if isinstance(d.data, dict))
    assert len(docs) > 40
    return docs


@pytest.mark.parametrize("document", _documents())
def test_fast_validator_agrees_with_jsonschema(document: object) -> None:
    fast = jsonschema_rs.validator_for(table_schema())
    assert fast.is_valid(document) == table_validator().is_valid(document)


def test_without_jsonschema_rs_the_same_problems_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lambda package ships without jsonschema-rs: the pure-Python validator answers alone."""
    documents = _documents()
    located = parse_bytes(b"x: 1\n", "x.yaml").documents[0]
    expected = [[str(p) for p in schema_problems(d, located)] for d in documents]
    monkeypatch.setitem(sys.modules, "jsonschema_rs", None)  # importing it raises ImportError
    schema._fast_validator.cache_clear()
    try:
        assert isinstance(schema._fast_validator(), Draft202012Validator)
        assert [[str(p) for p in schema_problems(d, located)] for d in documents] == expected
    finally:
        schema._fast_validator.cache_clear()
    assert any(expected)  # some documents are invalid: the comparison is not vacuous


def test_example_definitions_point_editors_at_the_schema() -> None:
    for path in sorted((REPO_ROOT / "definitions").rglob("*.y*ml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        target = (path.parent / first.split("$schema=", 1)[1]).resolve()
        assert target == (REPO_ROOT / "schemas" / "table.schema.json").resolve(), path
        assert Path(target).is_file()
