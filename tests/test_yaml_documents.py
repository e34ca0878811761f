"""Reading YAML: positions, multi-document files, limits, and what is deliberately refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.files.yaml_documents import MAX_DEPTH, iter_definition_files, parse_bytes, read_file


def test_values_are_plain_python_and_keep_their_source_text_types() -> None:
    source = parse_bytes(b"a: 1\nb: '1'\nc: 2024-05-01\nd: true\ne: ~\nf: 1.5\n", "x.yaml")
    assert source.problems == []
    assert source.documents[0].data == {"a": 1, "b": "1", "c": "2024-05-01", "d": True, "e": None, "f": 1.5}


def test_locate_points_at_values_and_keys_one_based() -> None:
    doc = parse_bytes(b"name: t\ntasks:\n  - alias: x\n    params: {a: '{{ y }}'}\n", "x.yaml").documents[0]
    assert str(doc.locate(("name",))) == "x.yaml:1:7"
    assert str(doc.locate(("tasks", 0, "params", "a"))) == "x.yaml:4:17"
    assert str(doc.locate(("tasks", 0, "params", "a"), key=True)) == "x.yaml:4:14"
    # A path that goes past what exists points at the deepest part that does.
    assert str(doc.locate(("tasks", 5, "alias"))) == "x.yaml:3:3"


def test_multi_document_files_give_one_document_each_and_skip_empty_ones() -> None:
    source = parse_bytes(b"---\na: 1\n---\n---\nb: 2\n---\n", "x.yaml")
    assert [d.data for d in source.documents] == [{"a": 1}, {"b": 2}]
    assert str(source.documents[1].locate(("b",))) == "x.yaml:5:4"


def test_aliases_within_limits_are_allowed_and_shared() -> None:
    source = parse_bytes(b"p: &p [{name: dt, type: date}]\nq: *p\n", "x.yaml")
    assert source.problems == []
    data = source.documents[0].data
    assert data["p"] == data["q"] == [{"name": "dt", "type": "date"}]


def test_very_deep_nesting_is_refused_before_libyaml_recurses() -> None:
    # libyaml's composer recurses in C and crashes the interpreter somewhere past 20,000 levels.
    depth = 100_000
    started = time.perf_counter()
    source = parse_bytes(b"[" * depth + b"]" * depth, "deep.yaml")
    # Depending on how PyYAML's libyaml was built, libyaml refuses first (its own nesting limit)
    # or our event scan does; either way it is one clear problem and no crash.
    assert [p.message for p in source.problems] in (
        [f"values nest deeper than {MAX_DEPTH} levels"],
        ["invalid YAML: exceeded maximum nesting depth (while increasing flow level)"],
    )
    assert time.perf_counter() - started < 10  # a guard against hanging, not a benchmark


def test_invalid_utf8_is_reported_not_raised() -> None:
    source = parse_bytes(b"name: \xff\xfe\n", "bad.yaml")
    assert len(source.problems) == 1
    assert source.problems[0].message.startswith("invalid YAML:")
    assert source.documents == []


def test_files_are_found_recursively_in_a_stable_order(tmp_path: Path) -> None:
    for name in ("b.yaml", "a/z.yml", "a/b/c.yaml", "notes.txt", "a/.hidden.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a: 1\n")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_definition_files(tmp_path)]
    assert found == ["a/.hidden.yaml", "a/b/c.yaml", "a/z.yml", "b.yaml"]


def test_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: " + b"x" * 5000 + b"\n")
    source = read_file(big, "big.yaml", max_bytes=4096)
    assert source.documents == []
    assert source.problems[0].code == "yaml-size"
    assert not source.readable


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            b"a: !!binary aGVsbG8=\n",
            "tag 'tag:yaml.org,2002:binary' is not allowed: definitions are plain data",
        ),
        (b"a: !!set {x: null}\n", "tag 'tag:yaml.org,2002:set' is not allowed: definitions are plain data"),
        (b"? [a, b]\n: c\n", "keys must be strings, got a list"),
    ],
)
def test_non_plain_data_is_refused(text: bytes, message: str) -> None:
    assert [p.message for p in parse_bytes(text, "x.yaml").problems] == [message]
