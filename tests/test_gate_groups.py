"""``any_of`` dependency groups (issue 20, DESIGN §4 "Gate") on hand-written definitions.

Each case registers executions one request at a time and states, for every request, the runs it opens
or pushes. Three answers must equal that statement: the reference model (:mod:`tests.gate_reference`),
the pure gate logic (``controller.core.gates.openings`` given every execution so far) and the real
path (``register_executions`` through the database, SQLite and PostgreSQL). The database must also
hold one run per (table, key) ever opened: a later opening of the same key pushes that run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from controller import wiring
from controller.core.gates import Execution, Graph, openings
from controller.core.plans import state_of
from controller.db.migrate import upgrade
from controller.reconciler import apply
from controller.services.registration import ExecutionInput, register_executions
from tests.factories import person
from tests.gate_reference import Registered, freeze, key_of, opened_by, tables_from
from tests.test_gate_model import (
    START,
    Events,
    Scheduler,
    Tasks,
    reset,
    show,
    stored_runs,
    validated_specs,
)

D1, D2 = "2024-01-01", "2024-01-02"


def table(
    name: str, partitions: dict[str, str], *deps: dict[str, Any], optional: tuple[str, ...] = ()
) -> Any:
    parts = [{"name": n, "type": t, "is_required": n not in optional} for n, t in partitions.items()]
    document: dict[str, Any] = {"version": 1, "name": name, "partitions": parts}
    if deps:
        document["dependencies"] = list(deps)
    return document


class Paths:
    """One definition set, registered through the model, the pure gate logic and the database."""

    def __init__(self, engine: Engine, *documents: dict[str, Any]) -> None:
        specs = validated_specs(list(documents))
        self.graph = Graph(specs)
        self.tables = tables_from(documents)
        self.history: list[Registered] = []
        self.engine = engine
        reset(engine)
        apply(engine, desired={s.name: state_of(s) for s in specs}, revision="t", actor="t", now=START)
        self.deps = wiring.dependencies_for(engine, Scheduler(), Tasks(), Events(), clock=lambda: START)
        self.run_ids: dict[str, Any] = {}  # table@key → the run's id, as first opened

    def register(self, table: str, **values: Any) -> dict[str, list[str]]:
        """The runs one request with one execution opens or pushes, as each path answers."""
        execution = Registered(len(self.history), table, key_of(self.tables[table], values))
        self.history.append(execution)
        model = show(opened_by(self.tables, execution, self.history))
        fetched: dict[str, list[Execution]] = {}
        for x in self.history:
            fetched.setdefault(x.table, []).append(Execution(x.seq + 1, x.table, dict(x.key)))
        found = openings(self.graph, Execution(execution.seq + 1, table, dict(execution.key)), fetched)
        gates = show({(o.dependent, freeze(o.key)) for o in found})
        answer = register_executions(self.deps, [ExecutionInput(table, values, "t")], person("t"))
        database = []
        for run in answer["runs"]:
            text = f"{run['table_name']}@{dict(freeze(run['partitions']))}"
            first = self.run_ids.setdefault(text, run["id"])
            assert first == run["id"], f"{text}: a second run instead of pushing the first"
            database.append(text)
        database.sort()
        return {"model": model, "gates": gates, "database": database}

    def stored(self) -> set[str]:
        """The runs in the database (one per table and key: a duplicate shows in the count)."""
        runs = stored_runs(self.engine)
        assert len(runs) == len({(t, k) for t, k, _ in runs}), runs
        return {f"{t}@{dict(k)}" for t, k, _ in runs}


def expect(answers: dict[str, list[str]], runs: list[str]) -> None:
    """Every path answered ``runs`` (the message names the paths that did not)."""
    wrong = {path: answer for path, answer in answers.items() if answer != sorted(runs)}
    assert not wrong, f"expected {runs}, but {wrong}"


def at(table: str, **key: Any) -> str:
    return f"{table}@{dict(freeze(key))}"


@pytest.fixture
def db(engine: Engine) -> Iterator[Engine]:
    upgrade(engine)
    yield engine


def full_or_delta(db: Engine, group: dict[str, Any], *, group_first: bool = False) -> Paths:
    """``d`` needs ``a`` and ``group`` (of ``full`` and ``delta``), all daily."""
    needs: list[dict[str, Any]] = [{"dependency_name": "a"}, group]
    return Paths(
        db,
        table("a", {"dt": "date"}),
        table("full", {"dt": "date"}),
        table("delta", {"dt": "date"}),
        table("d", {"dt": "date"}, *(needs[::-1] if group_first else needs)),
    )


def test_a_required_group_is_satisfied_by_either_member(db: Engine) -> None:
    paths = full_or_delta(db, {"any_of": ["full", "delta"], "is_required": True})
    expect(paths.register("a", dt=D1), [])  # the group blocks: no member yet
    expect(paths.register("a", dt=D2), [])
    expect(paths.register("full", dt=D1), [at("d", dt=D1)])  # one member is enough
    expect(paths.register("delta", dt=D2), [at("d", dt=D2)])  # ... either one
    expect(paths.register("delta", dt="2024-01-03"), [])  # a member alone does not satisfy ``a``
    assert paths.stored() == {at("d", dt=D1), at("d", dt=D2)}


def test_a_group_member_opens_once_the_other_requirements_arrive(db: Engine) -> None:
    paths = full_or_delta(db, {"any_of": ["full", "delta"]}, group_first=True)  # default: required
    expect(paths.register("delta", dt=D1), [])
    expect(paths.register("full", dt=D2), [])
    expect(paths.register("a", dt=D1), [at("d", dt=D1)])  # the group was satisfied by delta
    expect(paths.register("a", dt=D2), [at("d", dt=D2)])  # ... and for D2 by full


def test_an_optional_group_never_blocks_but_opens_gates(db: Engine) -> None:
    paths = Paths(
        db,
        table("a", {"dt": "date"}),
        table("x", {"dt": "date"}),
        table("y", {"dt": "date"}),
        table("d", {"dt": "date"}, {"dependency_name": "a"}, {"any_of": ["x", "y"], "is_required": False}),
    )
    expect(paths.register("x", dt=D1), [])  # the gate is closed: ``a`` is missing
    expect(paths.register("a", dt=D1), [at("d", dt=D1)])
    expect(paths.register("a", dt=D2), [at("d", dt=D2)])  # no member for D2: the group never blocks
    expect(paths.register("y", dt=D2), [at("d", dt=D2)])  # a member of an open gate pushes its run
    expect(paths.register("x", dt="2024-01-03"), [])  # ... but opens no closed one
    assert paths.stored() == {at("d", dt=D1), at("d", dt=D2)}


def test_members_compare_through_their_own_partition_map(db: Engine) -> None:
    paths = Paths(
        db,
        table("days", {"dt": "date"}),
        table("by_ref", {"dt_ref": "date", "s": "string"}),
        table("by_dt", {"dt": "date", "s": "string"}),
        table(
            "d",
            {"dt": "date", "s": "string"},
            {"dependency_name": "days"},
            {"any_of": [{"dependency_name": "by_ref", "partition_map": {"dt": "dt_ref"}}, "by_dt"]},
        ),
    )
    expect(paths.register("by_ref", dt_ref=D1, s="a"), [])
    expect(paths.register("by_dt", dt=D1, s="b"), [])
    expect(paths.register("by_dt", dt=D2, s="a"), [])
    # Either member provides ``s`` (each through its own mapping of ``dt``): every combination.
    expect(paths.register("days", dt=D1), [at("d", dt=D1, s="a"), at("d", dt=D1, s="b")])
    expect(paths.register("days", dt=D2), [at("d", dt=D2, s="a")])
    # by_ref's dt_ref is d's dt: its D2 execution opens d@D2 (its ``dt`` is not compared).
    expect(paths.register("by_ref", dt_ref=D2, s="b"), [at("d", dt=D2, s="b")])


def test_a_re_registered_member_pushes_the_run(db: Engine) -> None:
    paths = full_or_delta(db, {"any_of": ["full", "delta"]})
    expect(paths.register("a", dt=D1), [])
    expect(paths.register("full", dt=D1), [at("d", dt=D1)])
    expect(paths.register("full", dt=D1), [at("d", dt=D1)])  # re-registered: the same run, pushed
    expect(paths.register("a", dt=D1), [at("d", dt=D1)])
    assert paths.stored() == {at("d", dt=D1)}


def test_the_other_member_arriving_when_the_group_is_satisfied_pushes_the_run(db: Engine) -> None:
    paths = full_or_delta(db, {"any_of": ["full", "delta"]})
    expect(paths.register("full", dt=D1), [])
    expect(paths.register("a", dt=D1), [at("d", dt=D1)])
    expect(paths.register("delta", dt=D1), [at("d", dt=D1)])  # the group was already satisfied by full
    expect(paths.register("delta", dt=D2), [])  # the group is, but ``a`` is not, for D2
    assert paths.stored() == {at("d", dt=D1)}


def test_a_member_with_more_partitions_keys_the_run_and_one_with_fewer_leaves_it_out(db: Engine) -> None:
    """``s`` is optional in d: the wide member gives it, the narrow one does not (§4 "Optional partitions")."""
    paths = Paths(
        db,
        table("wide", {"dt": "date", "s": "string"}),
        table("narrow", {"dt": "date"}),
        table("d", {"dt": "date", "s": "string"}, {"any_of": ["wide", "narrow"]}, optional=("s",)),
    )
    expect(paths.register("wide", dt=D1, s="a"), [at("d", dt=D1, s="a")])
    expect(paths.register("narrow", dt=D1), [at("d", dt=D1)])
    assert paths.stored() == {at("d", dt=D1), at("d", dt=D1, s="a")}


def test_a_group_takes_values_for_the_trigger_from_any_member(db: Engine) -> None:
    """The triggering execution's own requirement is a plain one; the group's two members each offer
    a value of ``s``: every one of them is a key."""
    paths = Paths(
        db,
        table("days", {"dt": "date"}),
        table("x", {"dt": "date", "s": "string"}),
        table("y", {"dt": "date", "s": "string"}),
        table("d", {"dt": "date", "s": "string"}, {"dependency_name": "days"}, {"any_of": ["x", "y"]}),
    )
    expect(paths.register("x", dt=D1, s="a"), [])
    expect(paths.register("y", dt=D1, s="b"), [])
    expect(paths.register("y", dt=D2, s="b"), [])
    expect(paths.register("days", dt=D1), [at("d", dt=D1, s="a"), at("d", dt=D1, s="b")])
