"""Reconcile at scale: validate, cold apply, no-op plan and a 1% change, against the YAML parse floor.

Every operation is measured as the command line runs it: ``validate`` reads and checks the files;
``plan`` and ``apply`` validate first, then talk to the database (the "of which database" column is the
part inside :func:`controller.reconciler.plan` / :func:`~controller.reconciler.apply`). The floor is
listing and reading the same files and parsing them with PyYAML's C loader alone, measured in the same
run, interleaved with ``validate`` so that both see the same machine.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine

from bench.common import StatementCounter, Table, database, peak_memory
from bench.generate import change_fraction, write_definitions
from controller.core.plans import Plan
from controller.db.engine import make_engine
from controller.files.validation import validate_directory
from controller.reconciler import apply, desired_states, plan

try:  # The floor is the C loader; the pure-Python one is ~10x slower and would flatter every ratio.
    from yaml import CSafeLoader
except ImportError as exc:  # pragma: no cover - depends on how PyYAML was built
    raise ImportError("PyYAML without libyaml: the parse floor needs yaml.CSafeLoader") from exc

QUICK_SIZES = (200,)
FULL_SIZES = (1_000, 10_000)
CHANGE_FRACTION = 0.01
HEADERS = [
    "operation",
    "tables",
    "database",
    "median (s)",
    "runs (s)",
    "× load floor",
    "CPU (s)",
    "CPU × floor",
    "of which database (s)",
    "peak memory (MiB)",
    "SQL statements",
]
MiB = 1024 * 1024


def say(message: str) -> None:
    print(f"[reconcile] {message}", file=sys.stderr, flush=True)


@dataclass
class Measure:
    """Repeated timings of one operation, the database part of each, and the statements of each."""

    runs: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    database: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)
    peak: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    def add(self, timing: tuple[float, float]) -> None:
        self.runs.append(timing[0])
        self.cpu.append(timing[1])

    def row(self, operation: str, size: int, kind: str, floor: Measure) -> list[Any]:
        return [
            operation,
            size,
            kind,
            self.median,
            " / ".join(f"{r:.3f}" for r in self.runs),
            f"{self.median / floor.median:.2f}",
            self.median_cpu,
            f"{self.median_cpu / floor.median_cpu:.2f}",
            statistics.median(self.database) if self.database else "—",
            f"{self.peak / MiB:,.1f}" if self.peak is not None else "—",
            _statements(self.statements),
        ]


def _statements(counts: list[int]) -> Any:
    if not counts:
        return "—"
    low, high = min(counts), max(counts)
    return low if low == high else f"{low:,}–{high:,}"


# --- the floor --------------------------------------------------------------------------------------


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_floor(root: Path) -> int:
    """List, read and ``yaml.load_all`` every file with the C loader; returns the document count."""
    documents = 0
    for path in _files(root):
        for _ in yaml.load_all(path.read_bytes(), Loader=CSafeLoader):
            documents += 1
    return documents


def compose_floor(root: Path) -> int:
    """The same with ``yaml.compose_all`` (nodes, no Python values): libyaml's share of the floor."""
    documents = 0
    for path in _files(root):
        for _ in yaml.compose_all(path.read_bytes(), Loader=CSafeLoader):
            documents += 1
    return documents


def validate(root: Path) -> None:
    result = validate_directory(root)
    if not result.valid:
        raise AssertionError(f"generated definitions are invalid: {result.problems[:3]}")


def _timed(work: Callable[[], Any]) -> tuple[float, float]:
    """Wall time and this process's CPU time of ``work`` (after a collection, like ``common.timed``)."""
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - started, time.process_time() - cpu


# --- operations through the database ----------------------------------------------------------------


def _desired(root: Path) -> dict[str, Any]:
    result = validate_directory(root)
    if not result.valid:
        raise AssertionError(f"generated definitions are invalid: {result.problems[:3]}")
    return desired_states(result)


def reconcile_apply(root: Path, engine: Engine) -> tuple[float, Plan]:
    """validate + apply, as ``flux-control apply`` does; returns the database part and the plan."""
    desired = _desired(root)
    started = time.perf_counter()
    outcome = apply(engine, desired=desired, revision="bench", actor="bench", now=datetime.now(UTC))
    return time.perf_counter() - started, outcome.plan


def reconcile_plan(root: Path, engine: Engine) -> tuple[float, Plan]:
    """validate + plan, as ``flux-control plan`` does."""
    desired = _desired(root)
    started = time.perf_counter()
    result, _ = plan(engine, desired)
    return time.perf_counter() - started, result


def _measure(measure: Measure, engine: Engine, work: Callable[[], tuple[float, Plan]]) -> Plan:
    outcome: list[tuple[float, Plan]] = []
    with StatementCounter(engine) as counter:
        measure.add(_timed(lambda: outcome.append(work())))
    measure.database.append(outcome[0][0])
    measure.statements.append(counter.count)
    return outcome[0][1]


def _database_rows(size: int, kind: str, workdir: Path, repeat: int) -> dict[str, Measure]:
    root = workdir / f"defs-{size}-{kind}"
    shutil.rmtree(root, ignore_errors=True)
    write_definitions(root, size)  # the same seed: the same files as the floor's
    cold, noop, change = Measure(), Measure(), Measure()
    try:
        for attempt in range(repeat):
            say(f"{size:,} tables, {kind}: cold apply {attempt + 1}/{repeat}")
            with database(kind, str(workdir)) as url:
                engine = make_engine(url)
                try:
                    result = _measure(cold, engine, partial(reconcile_apply, root, engine))
                finally:
                    engine.dispose()
                _expect(result, create=size)
        with ExitStack() as stack:
            say(f"{size:,} tables, {kind}: cold apply (peak memory)")
            engine = make_engine(stack.enter_context(database(kind, str(workdir))))
            stack.callback(engine.dispose)
            cold.peak = peak_memory(lambda: reconcile_apply(root, engine))
            for attempt in range(repeat):
                say(f"{size:,} tables, {kind}: no-op plan {attempt + 1}/{repeat}")
                _expect(_measure(noop, engine, lambda: reconcile_plan(root, engine)))
            noop.peak = peak_memory(lambda: reconcile_plan(root, engine))
            for attempt in range(repeat + 1):
                changed = change_fraction(root, CHANGE_FRACTION, seed=1000 + attempt)
                step = f"{size:,} tables, {kind}: apply after a {len(changed)}-file change"
                if attempt < repeat:
                    say(f"{step} {attempt + 1}/{repeat}")
                    result = _measure(change, engine, lambda: reconcile_apply(root, engine))
                    _expect(result, update=len(changed))
                else:
                    say(f"{step} (peak memory)")
                    change.peak = peak_memory(lambda: reconcile_apply(root, engine))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"cold apply": cold, "no-op plan": noop, f"apply after changing {CHANGE_FRACTION:.0%}": change}


def _expect(result: Plan, *, create: int = 0, update: int = 0) -> None:
    summary = result.summary()
    if (summary["create"], summary["update"], summary["delete"]) != (create, update, 0):
        raise AssertionError(f"unexpected plan: {summary} (expected {create} created, {update} updated)")


# --- the run ----------------------------------------------------------------------------------------


def run(quick: bool, kinds: list[str], workdir: str) -> list[Table]:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    repeat = 1 if quick else 3
    base = Path(workdir) / "reconcile"
    base.mkdir(parents=True, exist_ok=True)
    table = Table(f"Reconcile (median of {repeat})", HEADERS)
    figures: dict[tuple[str, int, str], Measure] = {}
    floors: dict[int, Measure] = {}
    for size in sizes:
        root = base / f"defs-{size}"
        shutil.rmtree(root, ignore_errors=True)
        say(f"{size:,} tables: generating")
        write_definitions(root, size)
        load, compose, check = Measure(), Measure(), Measure()
        for attempt in range(repeat):  # interleaved: the floor and validate see the same machine
            say(f"{size:,} tables: floor and validate {attempt + 1}/{repeat}")
            load.add(_timed(partial(load_floor, root)))
            compose.add(_timed(partial(compose_floor, root)))
            check.add(_timed(partial(validate, root)))
        say(f"{size:,} tables: floor and validate (peak memory)")
        load.peak = peak_memory(partial(load_floor, root))
        compose.peak = peak_memory(partial(compose_floor, root))
        check.peak = peak_memory(partial(validate, root))
        floors[size] = load
        table.rows.append(load.row("floor: yaml.load_all (CSafeLoader)", size, "—", load))
        table.rows.append(compose.row("floor: yaml.compose_all (CSafeLoader)", size, "—", load))
        table.rows.append(check.row("validate", size, "—", load))
        figures["validate", size, "—"] = check
        for kind in kinds:
            for operation, measure in _database_rows(size, kind, base, repeat).items():
                table.rows.append(measure.row(operation, size, kind, load))
                figures[operation, size, kind] = measure
        shutil.rmtree(root, ignore_errors=True)
    table.notes += [
        "Floor: list, read and parse the same files with PyYAML's C loader (`yaml.load_all(data, "
        "Loader=yaml.CSafeLoader)` per file), measured in the same run, interleaved with `validate`; "
        "`compose_all` is libyaml's share of it.",
        "`plan` and `apply` rows include validating the files, as the command line does; *of which "
        "database* is the time inside `reconciler.plan` / `reconciler.apply` (cold apply: the Alembic "
        "migration of an empty database too).",
        "Cold apply runs on a fresh empty database each time (a new SQLite file or PostgreSQL schema). "
        f"The change edits {CHANGE_FRACTION:.0%} of the files (half a debounce, half a description), "
        "anew before each run.",
        "Peak memory: tracemalloc's peak of the Python heap, in a separate run from the timings.",
        "SQL statements: statements the engine sent during the operation (a range when runs differ).",
        "CPU: this process's CPU time (`time.process_time()`), which other load on the machine changes "
        "much less than wall time; it leaves out the PostgreSQL server's own work, so it understates "
        "PostgreSQL rows. The goals are judged on wall time, as the issue states them.",
    ]
    return [table, _goals(figures, floors, kinds, max(sizes), quick)]


def _goals(
    figures: dict[tuple[str, int, str], Measure],
    floors: dict[int, Measure],
    kinds: list[str],
    size: int,
    quick: bool,
) -> Table:
    goals = Table("Reconcile goals", ["goal", "target", "measured", "met"])
    wanted = [
        ("validate of 10,000 files", "validate", "—", 1.5),
        ("no-op plan of 10,000 tables, sqlite", "no-op plan", "sqlite", 1.5),
        ("no-op plan of 10,000 tables, postgresql", "no-op plan", "postgresql", 1.5),
        ("cold apply of 10,000 tables, postgresql", "cold apply", "postgresql", 3.0),
    ]
    for label, operation, kind, limit in wanted:
        target = f"≤ {limit:g}× floor"
        figure = figures.get((operation, size, kind))
        if figure is None:
            why = f"{kind} not in --databases" if kind not in kinds else "no figure"
            goals.rows.append([label, target, f"not measured ({why})", "—"])
            continue
        floor = floors[size]
        ratio = figure.median / floor.median
        measured = (
            f"{ratio:.2f}× ({figure.median:.2f} s / floor {floor.median:.2f} s at {size:,} tables; "
            f"CPU {figure.median_cpu / floor.median_cpu:.2f}×)"
        )
        goals.rows.append([label, target, measured, "met" if ratio <= limit else "not met"])
    if quick or size != 10_000:
        goals.notes.append(
            f"Quick mode: measured at {size:,} tables, not the goals' 10,000; run `python -m bench` "
            "for the figures that count."
        )
    return goals
