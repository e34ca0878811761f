"""Smoke tests of the benchmarks: the generator's output validates, and `python -m bench --quick` writes
the tables it promises with numbers in them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import parse_args, run_module
from bench.generate import change_fraction, write_definitions
from controller.files.validation import validate_directory
from controller.reconciler import desired_states

REPO = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")


def markdown_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every ``### title`` table of a Markdown document, as rows keyed by header."""
    tables: dict[str, list[dict[str, str]]] = {}
    for section in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        title, _, body = section.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|")]
        headers = [cell.strip() for cell in lines[0].strip("|").split("|")]
        tables[title.strip()] = [
            dict(zip(headers, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
            for line in lines[2:]
        ]
    return tables


def numeric(cell: str) -> bool:
    return bool(NUMBER.match(cell))


def run_bench(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "B.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    for line in ("# Flux Control benchmarks", "- Date: ", "- Machine: ", "- Commit: ", "- Mode: quick"):
        assert line in text
    return text


def test_generated_definitions_validate(tmp_path: Path) -> None:
    paths = write_definitions(tmp_path / "defs", 50, seed=7)
    assert len(paths) == 50
    assert all(p.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema=") for p in paths)
    result = validate_directory(tmp_path / "defs")
    assert result.problems == []
    specs = result.specs
    assert len(specs) == 50
    assert {len(s.dependencies) for s in specs} <= {0, 1, 2, 3, 4}
    assert any(s.dependencies for s in specs)
    assert all(1 <= len(s.partitions) <= 3 and 1 <= len(s.tasks) <= 2 for s in specs)
    # The same seed writes the same files.
    write_definitions(tmp_path / "again", 50, seed=7)
    assert [p.read_bytes() for p in paths] == [
        (tmp_path / "again" / p.relative_to(tmp_path / "defs")).read_bytes() for p in paths
    ]


def test_change_fraction_changes_that_share_and_stays_valid(tmp_path: Path) -> None:
    write_definitions(tmp_path / "defs", 200)
    before = desired_states(validate_directory(tmp_path / "defs"))
    for seed in (1, 2):  # a second change with another seed changes the tables again
        changed = change_fraction(tmp_path / "defs", 0.01, seed=seed)
        assert len(changed) == 2
        result = validate_directory(tmp_path / "defs")
        assert result.problems == []
        after = desired_states(result)
        assert sum(before[name] != after[name] for name in before) == 2
        before = after


def test_a_missing_benchmark_module_is_reported_not_skipped() -> None:
    args = parse_args(["--quick", "--databases", "sqlite"])

    def missing(name: str) -> object:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    def no_dagster(name: str) -> object:
        raise ModuleNotFoundError("No module named 'dagster'", name="dagster")

    lines, ok = run_module("runtime", args, "/nonexistent", loader=missing)
    assert ok and "Not run: `bench/runtime.py` does not exist in this checkout." in lines
    lines, ok = run_module("peer", args, "/nonexistent", loader=no_dagster)
    assert ok and any(line.startswith("Not run: its dependency `dagster` is not installed") for line in lines)


@pytest.mark.slow
def test_quick_reconcile_writes_its_tables(tmp_path: Path) -> None:
    tables = markdown_tables(run_bench(tmp_path, "--only", "reconcile", "--databases", "sqlite"))
    rows = tables["Reconcile (median of 1)"]
    assert [(r["operation"], r["database"]) for r in rows] == [
        ("floor: yaml.load_all (CSafeLoader)", "—"),
        ("floor: yaml.compose_all (CSafeLoader)", "—"),
        ("validate", "—"),
        ("cold apply", "sqlite"),
        ("no-op plan", "sqlite"),
        ("apply after changing 1%", "sqlite"),
    ]
    for row in rows:
        assert row["tables"] == "200"
        for column in ("median (s)", "× load floor", "peak memory (MiB)"):
            assert numeric(row[column]), (row["operation"], column, row[column])
        if row["database"] != "—":
            assert numeric(row["SQL statements"]) and numeric(row["of which database (s)"])
    assert rows[0]["× load floor"] == "1.00"
    goals = tables["Reconcile goals"]
    assert len(goals) == 4
    assert all(g["met"] in ("met", "not met", "—") for g in goals)
    assert goals[2]["measured"].startswith("not measured")  # postgresql was not asked for


@pytest.mark.slow
def test_quick_coldstart_writes_its_tables(tmp_path: Path) -> None:
    tables = markdown_tables(run_bench(tmp_path, "--only", "coldstart", "--databases", "sqlite"))
    rows = {r["measure"]: r for r in tables["Cold start (median of 2 fresh processes)"]}
    for measure in (
        "import boto3",
        "import the runtime dependencies alone",
        "import controller.lambda_function",
        "first request (GET /health) after import",
    ):
        assert numeric(rows[measure]["median (s)"]), measure
    assert rows["import boto3"]["× import boto3"] == "1.00"
    assert numeric(rows["import controller.lambda_function"]["× runtime dependencies"])
    assert [g["met"] in ("met", "not met") for g in tables["Cold start goals"]] == [True, True]


@pytest.mark.slow
def test_quick_package_writes_sizes_and_cold_starts_before_and_after(tmp_path: Path) -> None:
    tables = markdown_tables(run_bench(tmp_path, "--only", "package"))
    rows = {
        r["measure"]: r for r in tables["Lambda package: size and cold start (median of 2 fresh processes)"]
    }
    assert float(rows["zipped (MiB)"]["after"]) < 20 < float(rows["zipped (MiB)"]["before"])
    for measure in (
        "unzipped (MiB)",
        "import + first GET /health (s)",
        "import + first POST /register_execution (s)",
    ):
        assert numeric(rows[measure]["before"]) and numeric(rows[measure]["after"]), measure
