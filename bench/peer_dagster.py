"""Peer: the same DAG under Dagster's declarative automation and under Flux Control, in the same run.

The DAG: N assets (1,000; quick 100), each depending on 1–3 earlier ones (seeded), 12 monthly
partitions. Dagster: every asset has ``AutomationCondition.eager()`` and a static partitions
definition of the 12 months (eager keeps only the latest window of a time-window partitioning; here
any month may land, as in Flux Control), evaluated with ``dagster.evaluate_automation_conditions`` on
an ephemeral instance: the first evaluation, the decision after one partition of the root lands
(a runless materialization is reported, then evaluated with the cursor), and an idle tick (evaluated
again, nothing happened). Flux Control: the same tables with an ``ano_mes`` partition on SQLite,
``register_executions`` of the root's partition with in-memory AWS ports (the decision alone).

Dagster is an optional extra: ``pip install -e '.[bench]'``; without it the table says so.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from bench.common import Table, database

ASSETS = 1_000
QUICK_ASSETS = 100
MONTHS = [2024_00 + m for m in range(1, 13)]  # 202401 … 202412
SEED = 7
NOT_RUN = "not run: install the bench extra (pip install -e '.[bench]')"
TITLE = "Peer: Dagster declarative automation and Flux Control on the same DAG"
HEADERS = ["system", "step", "seconds (median)", "samples", "asset partitions decided", "Dagster ÷ Flux"]
GOAL_RATIO = 100


def _dagster() -> Any:
    """The ``dagster`` module, imported on use: an optional dependency (the bench extra), so typed as
    Any here, for ``mypy bench`` to pass with or without it installed."""
    return importlib.import_module("dagster")


def run(quick: bool, kinds: list[str], workdir: str) -> list[Table]:
    """One table: Dagster's evaluations against Flux Control's registration of the same event."""
    try:
        dagster = _dagster()
    except ImportError:
        return [Table(TITLE, HEADERS, notes=[NOT_RUN])]
    count = QUICK_ASSETS if quick else ASSETS
    repeats = 1 if quick else 2
    dag = make_dag(count)
    table = Table(f"{TITLE} ({count:,} assets × {len(MONTHS)} monthly partitions)", HEADERS)
    peer = measure_dagster(dag, repeats)
    flux = measure_flux(dag, workdir)
    decision = statistics.median(peer["decision"])
    idle = statistics.median(peer["idle"])
    register = statistics.median(flux["register"])
    version = dagster.__version__
    table.rows += [
        [f"Dagster {version}", "first evaluation (no cursor)", peer["first"], 1, peer["first_requested"], ""],
        [
            f"Dagster {version}",
            "decision after one root partition lands",
            decision,
            len(peer["decision"]),
            peer["decided"],
            "",
        ],
        [
            f"Dagster {version}",
            "idle tick (nothing happened)",
            idle,
            len(peer["idle"]),
            peer["idle_requested"],
            "",
        ],
        [
            "Flux Control",
            "register_execution of the root partition (SQLite)",
            register,
            len(flux["register"]),
            flux["opened"],
            f"{decision / register:,.1f}×" if register else "",
        ],
        [
            "Flux Control",
            f"first registration after start (loads {count:,} definitions)",
            flux["first"],
            1,
            flux["first_opened"],
            "",
        ],
        ["Flux Control", "idle: no tick (nothing is evaluated without an event)", 0.0, 0, 0, ""],
        ["Flux Control", "repair sweep, nothing to repair (a rate schedule)", flux["sweep"], 3, 0, ""],
        [
            "Flux Control",
            f"the whole month down the DAG: {count:,} registrations in topological order",
            flux["cascade"],
            1,
            flux["cascade_opened"],  # runs opened or pushed
            f"{decision / flux['cascade']:,.1f}×" if flux["cascade"] else "",
        ],
    ]
    ratio = decision / register if register else 0.0
    table.notes += [
        f"Goal: the decision ≥ {GOAL_RATIO}× faster than Dagster's, with no idle cost: "
        f"{'met' if ratio >= GOAL_RATIO else 'NOT met'} ({ratio:,.1f}×; Dagster's idle tick costs "
        f"{idle:,.1f} s, Flux Control evaluates nothing without an event).",
        "Dagster's eager condition requests the whole runnable closure at once (a dependency that "
        "will be requested in the same tick counts as updated), so one evaluation decides every "
        "descendant of the root; Flux Control opens the direct dependents whose gates are open, and "
        "each later level when the runs before it register their executions. The last row is that "
        "whole cascade in Flux Control: one registration per table, all of them.",
        "Dagster: ephemeral instance (in-memory storage), runless materialization events, no daemon and "
        "no runs launched: the evaluation alone. Flux Control: SQLite, in-memory AWS ports (no schedule "
        "written), graph cache warm except in the 'first registration' row.",
        f"DAG: seed {SEED}; each asset after the first depends on 1–3 earlier ones chosen at random; "
        f"{len(MONTHS)} months {MONTHS[0]}–{MONTHS[-1]}. {os.cpu_count()} CPUs; load average at the end "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
        + ".",
    ]
    return [table]


def make_dag(count: int, seed: int = SEED) -> list[list[int]]:
    """``dag[i]``: the earlier assets asset ``i`` depends on (1–3 of them; none for the root)."""
    rng = random.Random(seed)
    dag: list[list[int]] = [[]]
    for index in range(1, count):
        dag.append(sorted(rng.sample(range(index), rng.randint(1, min(3, index)))))
    return dag


def name(index: int) -> str:
    return f"t{index:04d}"


# --- Dagster -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_dagster() -> Iterator[None]:
    """Dagster logs and warns a lot on an ephemeral instance; the benchmark's output stays readable."""
    import warnings

    saved = os.environ.get("DAGSTER_HOME")
    os.environ.pop("DAGSTER_HOME", None)
    loggers = [logging.getLogger(n) for n in ("dagster", "dagster._core")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if saved is not None:
            os.environ["DAGSTER_HOME"] = saved


def dagster_definitions(dag: Sequence[Sequence[int]]) -> Any:
    dg = _dagster()

    months = dg.StaticPartitionsDefinition([str(m) for m in MONTHS])
    eager = dg.AutomationCondition.eager()

    def asset(index: int) -> Any:
        def materialize() -> None:
            return None

        return dg.asset(
            name=name(index),
            deps=[name(d) for d in dag[index]],
            partitions_def=months,
            automation_condition=eager,
        )(materialize)

    return dg.Definitions(assets=[asset(i) for i in range(len(dag))])


def measure_dagster(dag: Sequence[Sequence[int]], repeats: int) -> dict[str, Any]:
    """Seconds of each evaluation: first, decision after a root partition lands, idle tick."""
    dg = _dagster()

    with quiet_dagster():
        defs = dagster_definitions(dag)
        instance = dg.DagsterInstance.ephemeral()
        root = dg.AssetKey(name(0))

        def evaluate(cursor: Any) -> tuple[float, Any]:
            started = time.perf_counter()
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            return time.perf_counter() - started, result

        first, result = evaluate(None)
        measured: dict[str, Any] = {
            "first": first,
            "first_requested": result.total_requested,
            "decision": [],
            "idle": [],
        }
        for repeat in range(repeats):
            month = str(MONTHS[repeat])
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=root, partition=month))
            seconds, result = evaluate(result.cursor)
            measured["decision"].append(seconds)
            measured.setdefault("decided", result.total_requested)
            seconds, result = evaluate(result.cursor)
            measured["idle"].append(seconds)
            measured.setdefault("idle_requested", result.total_requested)
        instance.dispose()
    return measured


# --- Flux Control ------------------------------------------------------------------------------------


def flux_definitions(dag: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    return [
        {
            "version": 1,
            "name": name(index),
            "partitions": [{"name": "ano_mes", "type": "int"}],
            "dependencies": [{"dependency_name": name(d)} for d in deps],
        }
        for index, deps in enumerate(dag)
    ]


def measure_flux(dag: Sequence[Sequence[int]], workdir: str) -> dict[str, Any]:
    """Seconds of ``register_executions`` of the root's partitions on SQLite (in-memory AWS ports)."""
    from bench.runtime_setup import runtime_dependencies
    from controller.core.plans import state_of
    from controller.core.specs import TableSpec
    from controller.db.engine import make_engine
    from controller.reconciler import apply
    from controller.services.registration import ExecutionInput, register_executions
    from controller.services.sweep import sweep

    documents = flux_definitions(dag)
    desired = {d["name"]: state_of(TableSpec.model_validate(d)) for d in documents}
    with database("sqlite", workdir) as url:
        engine = make_engine(url)
        try:
            apply(engine, desired=desired, revision="bench", actor="bench", now=datetime.now(UTC))
            runtime = runtime_dependencies(engine, _NoScheduler(), _NoTasks(), _NoEvents())

            def register(index: int, month: int) -> tuple[float, int]:
                item = ExecutionInput(name(index), {"ano_mes": month}, "bench")
                started = time.perf_counter()
                result = register_executions(runtime, [item], None)
                return time.perf_counter() - started, len(result["runs"])

            first, first_opened = register(0, MONTHS[0])  # cold: loads the definitions
            timings, opened = [], set()
            for month in MONTHS[1:]:
                seconds, runs = register(0, month)
                timings.append(seconds)
                opened.add(runs)
            sweeps = []
            for _ in range(3):
                started = time.perf_counter()
                sweep(runtime)
                sweeps.append(time.perf_counter() - started)
            # The whole month down the DAG: every table registers once, in topological order.
            started = time.perf_counter()
            cascade_opened = sum(register(index, MONTHS[0])[1] for index in range(1, len(dag)))
            cascade = time.perf_counter() - started
            runtime.store.close()
        finally:
            engine.dispose()
    return {
        "first": first,
        "first_opened": first_opened,
        "register": timings,
        "opened": "/".join(str(n) for n in sorted(opened)),
        "sweep": statistics.median(sweeps),
        "cascade": cascade,
        "cascade_opened": cascade_opened + first_opened,
    }


class _NoScheduler:
    def put(self, request: Any) -> None:
        pass

    def delete(self, name: str) -> None:
        pass


class _NoTasks:
    def start(self, request: Any) -> str:
        return "local"


class _NoEvents:
    def publish(self, events: Any) -> None:
        pass


__all__ = ["run"]


if __name__ == "__main__":  # python -m bench.peer_dagster [--quick]
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        for result_table in run("--quick" in sys.argv, ["sqlite"], scratch):
            print(result_table.markdown())
