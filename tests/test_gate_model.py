"""Gates and keys against a brute-force reference model (issues 8, 20), on the real path through the
database.

Hypothesis draws small definition sets (2–6 tables, 0–2 partitions each from a small pool of int,
string and date partitions, required or optional; dependencies forming a DAG, required or optional,
sometimes through ``partition_map``; from the third table on, often one or two ``any_of`` groups of
2–3 earlier tables, required or optional, members sometimes with their own ``partition_map``),
checks them with the project's validator, applies them with the reconciler, then registers
executions drawn from two values per type (so gates do open), some omitting optional partitions,
through ``register_executions``. After every request the runs it opened or pushed must be exactly
those :mod:`tests.gate_reference` predicts, and at the end the database must hold one run per
(table, key) the model ever opened, and no other. ``--hypothesis-show-statistics`` shows how many
drawn sets hold groups.

AWS is replaced by in-memory ports; the clock stands still, so with the default debounce no run ever
fires and the runs that exist are exactly the gates that opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import hypothesis
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, select

from controller import wiring
from controller.core.effects import ScheduleRequest, TaskRequest
from controller.core.gates import Execution, Graph, openings
from controller.core.plans import state_of
from controller.core.runs import RunEvent
from controller.core.specs import TableSpec
from controller.db.base import Base
from controller.db.definition_models import TableRow
from controller.db.migrate import upgrade
from controller.db.run_models import RunRow
from controller.files.validation import validate_sources
from controller.files.yaml_documents import parse_bytes
from controller.reconciler import apply
from controller.services.registration import ExecutionInput, register_executions
from tests.factories import person
from tests.gate_reference import FrozenKey, Registered, freeze, key_of, opened_by, tables_from

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

#: Partition names and their types; two dates, so that partition_map can rename one to the other.
POOL = {"dt": "date", "n": "int", "s": "string", "dt_ref": "date"}
#: How likely a table has each partition (most have ``dt``: shared partitions make gates interesting).
LIKELY = {"dt": [True, True, False], "n": [False, True], "s": [False, True], "dt_ref": [False, False, True]}
VALUES: dict[str, list[Any]] = {"date": ["2024-01-01", "2024-01-02"], "int": [1, 2], "string": ["a", "b"]}

Request = list[tuple[str, dict[str, Any]]]  # (table, raw partition values) per item

# --- generated scenarios -----------------------------------------------------------------------------


@st.composite
def partition_map_for(
    draw: st.DrawFn, partitions: list[dict[str, Any]], upstream: dict[str, Any]
) -> dict[str, str]:
    """Sometimes renames a partition to an upstream partition of the same type (``dt`` → ``dt_ref``)."""
    mapping: dict[str, str] = {}
    for partition in partitions:
        renames: list[str] = [
            q["name"]
            for q in upstream["partitions"]
            if q["type"] == partition["type"] and q["name"] != partition["name"]
        ]
        if not renames or not draw(st.booleans()):
            continue
        mapping[partition["name"]] = draw(st.sampled_from(renames))
    return mapping


def edges_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The edges of an item of ``dependencies``: itself, or the members of an ``any_of`` group."""
    if "any_of" not in entry:
        return [entry]
    return [{"dependency_name": m} if isinstance(m, str) else m for m in entry["any_of"]]


def members_of(group: dict[str, Any]) -> list[str]:
    return [e["dependency_name"] for e in edges_of(group)]


def provides(upstreams: dict[str, dict[str, Any]], edge: dict[str, Any], name: str) -> bool:
    """Whether ``edge`` gives a value for the dependent's partition ``name`` (mapped or shared)."""
    source = edge.get("partition_map", {}).get(name, name)
    return any(q["name"] == source for q in upstreams[edge["dependency_name"]]["partitions"])


@st.composite
def any_of_group(
    draw: st.DrawFn, partitions: list[dict[str, Any]], upstreams: list[dict[str, Any]]
) -> dict[str, Any]:
    """``{any_of: [...], is_required?}`` over 2–3 of ``upstreams``; members written as a bare name,
    as ``{dependency_name}`` or with a ``partition_map``."""
    members: list[str | dict[str, Any]] = []
    for upstream in upstreams:
        mapping = draw(partition_map_for(partitions, upstream))
        if mapping:
            members.append({"dependency_name": upstream["name"], "partition_map": mapping})
        elif draw(st.booleans()):
            members.append(upstream["name"])
        else:
            members.append({"dependency_name": upstream["name"]})
    group: dict[str, Any] = {"any_of": members}
    required = draw(st.sampled_from([True, False, None]))  # None: the default (required)
    if required is not None:
        group["is_required"] = required
    return group


@st.composite
def definitions(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid definition set: tables t0…tN, each depending only on earlier ones (a DAG); from t2 on,
    a table often has an ``any_of`` group (sometimes two) among its dependencies. Each earlier table
    is named at most once among a table's dependencies (plain or as a member), as §2 requires."""
    documents: list[dict[str, Any]] = []
    for index in range(draw(st.integers(2, 6))):
        names = [name for name in POOL if draw(st.sampled_from(LIKELY[name]))][:2]
        partitions: list[dict[str, Any]] = [
            {"name": n, "type": POOL[n], "is_required": draw(st.booleans())} for n in names
        ]
        free = list(documents)  # earlier tables not yet named among this table's dependencies
        dependencies: list[dict[str, Any]] = []
        for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):
            if len(free) < 2:
                break
            chosen = draw(
                st.lists(st.sampled_from(free), min_size=2, max_size=3, unique_by=lambda d: d["name"])
            )
            free = [d for d in free if all(d["name"] != c["name"] for c in chosen)]
            dependencies.append(draw(any_of_group(partitions, chosen)))
        for upstream in free:
            if not draw(st.booleans()):
                continue
            edge: dict[str, Any] = {"dependency_name": upstream["name"], "is_required": draw(st.booleans())}
            mapping = draw(partition_map_for(partitions, upstream))
            if mapping:
                edge["partition_map"] = mapping
            dependencies.append(edge)
        if len(dependencies) > 1:
            dependencies = draw(st.permutations(dependencies))
        if dependencies:
            # DESIGN §2: a dependent's required partition must come from a dependency; a group
            # provides it only when every member does.
            upstreams = {d["name"]: d for d in documents}
            for partition in partitions:
                provided = any(
                    all(provides(upstreams, edge, partition["name"]) for edge in edges_of(entry))
                    for entry in dependencies
                )
                partition["is_required"] = partition["is_required"] and provided
        document = {"version": 1, "name": f"t{index}", "partitions": partitions}
        if dependencies:
            document["dependencies"] = dependencies
        documents.append(document)
    return documents


@st.composite
def raw_value(draw: st.DrawFn, kind: str) -> Any:
    value = draw(st.sampled_from(VALUES[kind]))
    if kind == "int":  # "01", "1" and 1 are one value (§4 "Partition key")
        return draw(st.sampled_from([value, str(value), f"0{value}"]))
    return value


@st.composite
def request_for(draw: st.DrawFn, documents: list[dict[str, Any]]) -> Request:
    """One POST /register_execution: usually one item, sometimes two."""
    items = []
    for _ in range(draw(st.integers(1, 2))):
        document = draw(st.sampled_from(documents))
        values = {}
        for partition in document["partitions"]:
            if partition["is_required"] or draw(st.booleans()):
                values[partition["name"]] = draw(raw_value(partition["type"]))
        items.append((document["name"], values))
    return items


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[Request]]:
    documents = draw(definitions())
    requests = draw(st.lists(request_for(documents), min_size=2, max_size=10))
    groups = [e for d in documents for e in d.get("dependencies", []) if "any_of" in e]
    hypothesis.event(f"any_of groups in the set: {min(len(groups), 3)}{'+' if len(groups) > 3 else ''}")
    if groups:  # a group whose members both got an execution: the interesting case
        registered = {t for request in requests for t, _ in request}
        hypothesis.event(
            f"a group with 2+ members registered: {any(sum(m in registered for m in members_of(g)) > 1 for g in groups)}"
        )
    return documents, requests


def describe(documents: list[dict[str, Any]], requests: list[Request]) -> None:
    """The failing example, printed by hypothesis (its own argument printing is blank under pytest with
    schemathesis's plugin installed)."""
    for document in documents:
        note(f"definition: {json.dumps(document)}")
    for number, request in enumerate(requests):
        note(f"request {number}: {request}")


def validated_specs(documents: list[dict[str, Any]]) -> list[TableSpec]:
    """The definitions as the project's validator reads them; the generator only makes valid sets."""
    text = "\n---\n".join(json.dumps(d) for d in documents)
    result = validate_sources([parse_bytes(text.encode(), "generated.yaml")])
    assert result.valid, [str(p) for p in result.problems]
    return result.specs


# --- the real path: in-memory AWS ports, a database reset per example -------------------------------


class Scheduler:
    def __init__(self) -> None:
        self.puts: list[ScheduleRequest] = []

    def put(self, request: ScheduleRequest) -> None:
        self.puts.append(request)

    def delete(self, name: str) -> None:
        pass


class Tasks:
    def start(self, request: TaskRequest) -> str:
        raise AssertionError(f"no run fires while the clock stands still: {request}")

    def status(self, type: str, target: str, external_id: str) -> None:
        return None  # no task starts, so none is asked about

    def stop(self, type: str, target: str, external_id: str) -> bool:
        return False


class Events:
    def __init__(self) -> None:
        self.published: list[RunEvent] = []

    def publish(self, events: Sequence[RunEvent]) -> None:
        self.published.extend(events)


def reset(engine: Engine) -> None:
    """Every row of every table gone (the schema stays): each example starts from an empty database."""
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())


def stored_runs(engine: Engine) -> list[tuple[str, FrozenKey, str]]:
    query = select(TableRow.name, RunRow.partitions, RunRow.status).join(
        TableRow, TableRow.id == RunRow.table_id
    )
    with engine.connect() as connection:
        return sorted(
            (name, freeze(partitions), status) for name, partitions, status in connection.execute(query)
        )


def show(pairs: set[tuple[str, FrozenKey]]) -> list[str]:
    return sorted(f"{table}@{dict(key)}" for table, key in pairs)


def check_against_database(engine: Engine, documents: list[dict[str, Any]], requests: list[Request]) -> None:
    specs = validated_specs(documents)
    reset(engine)
    apply(engine, desired={s.name: state_of(s) for s in specs}, revision="model", actor="model", now=START)
    deps = wiring.dependencies_for(engine, Scheduler(), Tasks(), Events(), clock=lambda: START)
    tables = tables_from(documents)
    history: list[Registered] = []
    everything: set[tuple[str, FrozenKey]] = set()
    for number, request in enumerate(requests):
        batch = [
            Registered(len(history) + i, t, key_of(tables[t], values))
            for i, (t, values) in enumerate(request)
        ]
        history.extend(batch)  # the items of one request see each other
        expected = set().union(*(opened_by(tables, e, history) for e in batch))
        answer = register_executions(
            deps, [ExecutionInput(t, values, "model") for t, values in request], person("model")
        )
        assert [(e["table_name"], freeze(e["partitions"])) for e in answer["executions"]] == [
            (e.table, e.key) for e in batch
        ]
        runs = [(r["table_name"], freeze(r["partitions"])) for r in answer["runs"]]
        assert len(runs) == len(set(runs)), f"request {number}: a run twice in one answer: {runs}"
        assert show(set(runs)) == show(expected), f"request {number} {request}: runs differ from the model"
        everything |= expected
    stored = stored_runs(engine)
    assert [(t, k) for t, k, _ in stored] == sorted(everything), "one run per (table, key) the model opened"
    assert {status for _, _, status in stored} <= {"scheduled"}


@pytest.fixture
def migrated(engine: Engine) -> Iterator[Engine]:
    """The test's database, migrated; commits skip the disk flush (hundreds of them, nothing to lose)."""
    setting = (
        "PRAGMA synchronous = OFF" if engine.dialect.name == "sqlite" else "SET synchronous_commit = off"
    )

    @event.listens_for(engine, "connect")
    def _no_flush(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(setting)
        cursor.close()
        dbapi_connection.commit()  # psycopg opened a transaction for the SET: keep it

    upgrade(engine)
    yield engine


def test_registrations_open_the_runs_the_reference_model_predicts(migrated: Engine) -> None:
    """SQLite and PostgreSQL (``database_url`` is parametrised; the PostgreSQL case is marked)."""
    examples = 50 if migrated.dialect.name == "postgresql" else 75

    @settings(
        max_examples=examples,
        deadline=None,
        print_blob=True,
    )
    @given(scenarios())
    def check(scenario: tuple[list[dict[str, Any]], list[Request]]) -> None:
        describe(*scenario)
        check_against_database(migrated, *scenario)  # resets the database first

    check()


# --- the same property on the pure gate logic, many more examples -----------------------------------


@settings(max_examples=200, deadline=None, print_blob=True)
@given(scenarios())
def test_gate_logic_agrees_with_the_reference_model(
    scenario: tuple[list[dict[str, Any]], list[Request]],
) -> None:
    """``controller.core.gates.openings`` given every execution registered so far (no probes, no database)."""
    documents, requests = scenario
    describe(documents, requests)
    graph = Graph(validated_specs(documents))
    tables = tables_from(documents)
    history: list[Registered] = []
    for request in requests:
        batch = [
            Registered(len(history) + i, t, key_of(tables[t], values))
            for i, (t, values) in enumerate(request)
        ]
        history.extend(batch)
        fetched: dict[str, list[Execution]] = {}
        for x in history:
            fetched.setdefault(x.table, []).append(Execution(x.seq + 1, x.table, dict(x.key)))
        found = {
            (o.dependent, freeze(o.key))
            for e in batch
            for o in openings(graph, Execution(e.seq + 1, e.table, dict(e.key)), fetched)
        }
        expected = set().union(*(opened_by(tables, e, history) for e in batch))
        assert show(found) == show(expected)


# --- the model's reading of DESIGN §4, on hand-made cases --------------------------------------------


def _model(*documents: dict[str, Any]) -> Any:
    tables = tables_from(documents)
    history: list[Registered] = []

    def register(table: str, **values: Any) -> list[str]:
        execution = Registered(len(history), table, key_of(tables[table], values))
        history.append(execution)
        return show(opened_by(tables, execution, history))

    return register


def _table(name: str, partitions: dict[str, str], *deps: dict[str, Any], optional: Sequence[str] = ()) -> Any:
    parts = [{"name": n, "type": t, "is_required": n not in optional} for n, t in partitions.items()]
    return {"version": 1, "name": name, "partitions": parts, "dependencies": list(deps)}


def test_model_opens_a_gate_when_the_last_required_dependency_arrives() -> None:
    register = _model(
        _table("a", {"dt": "date"}),
        _table("b", {"dt": "date"}),
        _table("o", {"dt": "date"}),
        _table(
            "d",
            {"dt": "date"},
            {"dependency_name": "a"},
            {"dependency_name": "b"},
            {"dependency_name": "o", "is_required": False},
        ),
    )
    assert register("a", dt="2024-01-01") == []
    assert register("b", dt="2024-01-02") == []
    assert register("o", dt="2024-01-01") == []  # optional: never opens a closed gate
    assert register("b", dt="2024-01-01") == ["d@{'dt': '2024-01-01'}"]
    assert register("o", dt="2024-01-01") == ["d@{'dt': '2024-01-01'}"]  # ... but opens an open one


def test_model_takes_other_partitions_from_the_other_dependencies_through_partition_map() -> None:
    register = _model(
        _table("days", {"dt": "date"}),
        _table("regions", {"s": "string", "dt_ref": "date"}),
        _table(
            "d",
            {"dt": "date", "s": "string"},
            {"dependency_name": "days"},
            {"dependency_name": "regions", "partition_map": {"dt": "dt_ref"}},
        ),
    )
    register("regions", s="a", dt_ref="2024-01-01")
    register("regions", s="b", dt_ref="2024-01-01")
    register("regions", s="a", dt_ref="2024-01-02")
    assert register("days", dt="2024-01-01") == [
        "d@{'dt': '2024-01-01', 's': 'a'}",
        "d@{'dt': '2024-01-01', 's': 'b'}",
    ]


def test_model_lets_an_omitted_optional_value_agree_and_leaves_it_out_of_the_key() -> None:
    register = _model(
        _table("u", {"dt": "date", "s": "string"}, optional=["s"]),
        _table("d", {"dt": "date", "s": "string"}, {"dependency_name": "u"}, optional=["s"]),
    )
    assert register("u", dt="2024-01-01") == ["d@{'dt': '2024-01-01'}"]
    assert register("u", dt="2024-01-01", s="a") == ["d@{'dt': '2024-01-01', 's': 'a'}"]


def test_model_canonicalises_int_values() -> None:
    register = _model(_table("u", {"n": "int"}), _table("d", {"n": "int"}, {"dependency_name": "u"}))
    assert register("u", n="01") == register("u", n=1) == ["d@{'n': 1}"]
