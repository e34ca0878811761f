"""The fast paths of validation give what the general ones would: tags, values, listings, the collector."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.generate import write_definitions
from controller.core.gc_pause import gc_paused
from controller.files.validation import validate_directory
from controller.files.yaml_documents import _compose_all, definition_files, iter_definition_files, parse_bytes

# Plain scalars for every implicit resolver of PyYAML (and near misses), quoted and plain.
SCALARS = [
    "",
    "~",
    "null",
    "Null",
    "NULL",
    "nULL",
    "true",
    "True",
    "TRUE",
    "tRUE",
    "yes",
    "Yes",
    "YES",
    "no",
    "No",
    "on",
    "On",
    "OFF",
    "off",
    "y",
    "n",
    "false",
    "False",
    "0",
    "00",
    "007",
    "08",
    "-0",
    "+12",
    "1_000",
    "0b101",
    "0x1F",
    "0o17",
    "1:30",
    "190:20:30",
    "1.5",
    "-1.5e+3",
    "1e3",
    "1.0e+3",
    ".5",
    ".inf",
    "-.Inf",
    ".NaN",
    "2024-05-01",
    "2024-05-01T10:00:00Z",
    "2024-5-1 1:00:00.5 +02:00",
    "<<",
    "=",
    "name",
    "tb_vend_x",
    "notify",
    "fifo",
    "target",
    "٣",
]


def _tags(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return (node.tag, node.value, node.start_mark.line, node.start_mark.column)
    if isinstance(node, yaml.SequenceNode):
        return (node.tag, [_tags(child) for child in node.value])
    return (node.tag, [(_tags(k), _tags(v)) for k, v in node.value])


def _document(scalars: list[str]) -> bytes:
    lines = [f"k{index}: {value}" for index, value in enumerate(scalars)]
    lines += [f"q{index}: '{value}'" for index, value in enumerate(scalars)]
    lines += ["seq: [" + ", ".join(v for v in scalars if v and v not in ("<<", "=")) + "]"]
    lines += ["? " + v + "\n: x" for v in ("null", "1", "true", "<<")]
    lines += ["tagged: !!str 5", "t2: !custom x", "t3: ! 12", "m: !!map {a: 1}", "s: !!seq [1]"]
    return ("\n".join(lines) + "\n---\n- a\n---\nplain\n").encode()


def test_loader_resolves_the_same_tags_as_csafeloader() -> None:
    data = _document(SCALARS)
    for _ in range(2):  # the second time from the cache of plain tags
        expected = [_tags(node) for node in yaml.compose_all(data, Loader=yaml.CSafeLoader)]
        assert [_tags(node) for node in _compose_all(data)] == expected


def test_plain_scalars_build_the_values_pyyaml_constructs() -> None:
    values = [v for v in SCALARS if v not in ("<<", "=")]  # merge and value keys are refused
    data = ("\n".join(f"k{index}: {value}" for index, value in enumerate(values)) + "\n").encode()
    constructor = yaml.constructor.SafeConstructor()
    expected = {}
    document = yaml.compose(data, Loader=yaml.CSafeLoader)
    assert document is not None
    for key, node in document.value:
        # Timestamps stay the text they were written as; every other value is PyYAML's, type included.
        value = node.value if node.tag.endswith(":timestamp") else constructor.construct_object(node)
        expected[key.value] = (type(value), repr(value))
    source = parse_bytes(data, "x.yaml")
    assert source.problems == []
    assert {k: (type(v), repr(v)) for k, v in source.documents[0].data.items()} == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"a: !!int abc\n", "'abc' is not a valid int (tag 'tag:yaml.org,2002:int')"),
        (b"a: !!int ''\n", "'' is not a valid int (tag 'tag:yaml.org,2002:int')"),
        (b"a: !!float x\n", "'x' is not a valid float (tag 'tag:yaml.org,2002:float')"),
        (b"a: !!bool maybe\n", "'maybe' is not a valid bool (tag 'tag:yaml.org,2002:bool')"),
    ],
)
def test_explicit_scalar_tags_on_wrong_text_are_reported_not_raised(text: bytes, message: str) -> None:
    source = parse_bytes(text, "x.yaml")
    assert [(str(p.location), p.message) for p in source.problems] == [("x.yaml:1:4", message)]
    assert not source.documents[0].usable


def test_explicit_scalar_tags_on_right_text_are_values() -> None:
    source = parse_bytes(b"a: !!int '6'\nb: !!bool 'yes'\nc: !!float '1.5'\nd: !!str 5\n", "x.yaml")
    assert source.problems == []
    assert source.documents[0].data == {"a": 6, "b": True, "c": 1.5, "d": "5"}


def test_duplicate_keys_name_the_line_of_the_kept_one() -> None:
    source = parse_bytes(b"a: 1\n1: x\nb: 2\na: 3\nb: 4\n'a': 5\n", "x.yaml")
    assert [str(p) for p in source.problems] == [
        "x.yaml:2:1: keys must be strings, got int '1'",
        "x.yaml:4:1: duplicate key 'a' (first at line 1); keep one of them",
        "x.yaml:5:1: duplicate key 'b' (first at line 3); keep one of them",
        "x.yaml:6:1: duplicate key 'a' (first at line 1); keep one of them",
    ]
    assert source.documents[0].data == {"a": 1, "b": 2}


def test_size_limit_counts_values_without_aliases_too() -> None:
    items = ", ".join(["1"] * 10_001)
    source = parse_bytes(f"a: [{items}]\nb: 1\nb: 2\n".encode(), "x.yaml")
    # The limit is reached inside 'a' (reported at the document), before the duplicate 'b' is seen.
    assert [p.code for p in source.problems] == ["yaml-limit"]
    assert not source.documents[0].usable


def _rglob_listing(root: Path) -> list[str]:
    found = [p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    return [p.as_posix() for p in sorted(found, key=lambda p: p.relative_to(root).as_posix())]


def test_listing_is_rglob_filtered_and_sorted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "defs"
    names = [
        "b.yaml",
        "a/z.yml",
        "a/b/c.yaml",
        "a/.hidden.yaml",
        ".yaml",
        "..yaml",
        "x.yaml.",
        "x.YAML",
        "notes.txt",
        "a-b/c.yaml",
        "a.b/c.yaml",
        "dir.yaml/inner.yml",
        "deep/er/est/t.yaml",
    ]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("a: 1\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "linked.yaml").write_text("a: 1\n")
    (root / "linked-dir").symlink_to(tmp_path / "elsewhere")  # not entered, as rglob does not
    (root / "link.yaml").symlink_to(tmp_path / "elsewhere" / "linked.yaml")  # a file: followed
    (root / "broken.yaml").symlink_to(tmp_path / "missing.yaml")  # no file behind it
    monkeypatch.chdir(tmp_path)
    for given in (root, Path("defs"), Path("defs/"), Path("./defs")):
        assert definition_files(given) == _rglob_listing(given)
        assert list(iter_definition_files(given)) == [Path(p) for p in _rglob_listing(given)]
    monkeypatch.chdir(root)
    assert definition_files(Path()) == _rglob_listing(Path())
    assert definition_files(Path("a/z.yml")) == ["a/z.yml"]


def test_generated_set_is_valid_and_its_specs_match_a_plain_validation(tmp_path: Path) -> None:
    from controller.core.specs import TableSpec

    write_definitions(tmp_path, 300, seed=5)
    result = validate_directory(tmp_path)
    assert result.valid, result.problems[:3]
    expected = [
        TableSpec.model_validate(yaml.load(Path(p).read_bytes(), Loader=yaml.CSafeLoader))
        for p in _rglob_listing(tmp_path)
    ]
    assert result.specs == expected


def test_gc_pause_moves_what_it_made_to_the_oldest_generation() -> None:
    gc.collect()
    with gc_paused():
        assert not gc.isenabled()
        made = [[index] for index in range(50_000)]
    assert gc.isenabled()
    assert gc.get_count()[0] < 700  # no young collection pending over all of it
    assert gc.get_freeze_count() == 0
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert id(made) in oldest and id(made[-1]) in oldest


def test_gc_pause_leaves_frozen_objects_frozen() -> None:
    gc.collect()
    kept = [{"frozen": True}]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with gc_paused():
            made = [{"n": index} for index in range(1000)]
        assert gc.get_freeze_count() == frozen
        assert gc.isenabled()
        assert made and kept
    finally:
        gc.unfreeze()


def test_gc_pause_nested_keeps_collector_off_until_the_outer_one_ends() -> None:
    with gc_paused():
        with gc_paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
