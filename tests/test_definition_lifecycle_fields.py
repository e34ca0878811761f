"""The run-lifecycle fields of a definition (DESIGN §2, §8), on the definitions side: a table's
``max_concurrent_runs`` and ``retries``, a task's ``timeout_seconds``.

Each is checked where it is written (a file's line and column, a payload's JSON path), planned field by
field, applied, read back, migrated, drifted, imported, explained and answered. What the runtime does
with them is tested with the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic import command
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session

from controller.api.app import openapi_document
from controller.cli import main
from controller.cli.importer import render_table
from controller.cli.plan_rendering import render_text
from controller.core.keys import make_key
from controller.core.plans import FieldChange, TableState, diff_table, make_plan, state_of
from controller.core.specs import DEFAULT_TASK_TIMEOUT_SECONDS, RetrySpec, TableSpec
from controller.db.catalog_store import load_catalog
from controller.db.definition_models import TableRow, TaskRow
from controller.db.definitions_store import read_state
from controller.db.migrate import alembic_config, upgrade
from controller.files.validation import validate_directory
from controller.reconciler import apply, plan
from controller.services.explain import Explanation, render
from tests.conftest import WriteDefs
from tests.factories import states, table_doc, write_tables
from tests.runtime_support import START, Lambda, running_lambda

MONTH = [{"name": "mes", "type": "int"}]
RETRIES = {"max_attempts": 3, "backoff_seconds": 300}
ENRICH = {"alias": "enrich", "type": "glue", "target": "job-enrich", "params": {}, "timeout_seconds": 7200}
EXPORT = {"alias": "export", "type": "glue", "target": "job-export"}
LOAD = {"alias": "load", "type": "glue", "target": "job-load"}
TABLES = [
    table_doc("tb_a", partitions=MONTH, max_concurrent_runs=2, retries=RETRIES, tasks=[ENRICH, EXPORT]),
    table_doc("tb_b", partitions=MONTH, dependencies=[{"dependency_name": "tb_a"}], tasks=[LOAD]),
]


def document(line: str) -> str:
    """A definition whose line 4 is ``line``."""
    return f"version: 1\nname: a\npartitions: []\n{line}\n"


# --- validation ----------------------------------------------------------------------------------------

GOOD: dict[str, tuple[str, dict[str, Any]]] = {
    "one run at a time": ("max_concurrent_runs: 1", {"max_concurrent_runs": 1}),
    "the most runs": ("max_concurrent_runs: 1000", {"max_concurrent_runs": 1000}),
    "one attempt, no retry": (
        "retries: {max_attempts: 1, backoff_seconds: 0}",
        {"retries": RetrySpec(max_attempts=1, backoff_seconds=0)},
    ),
    "the most attempts, the longest backoff": (
        "retries: {max_attempts: 100, backoff_seconds: 3600}",
        {"retries": RetrySpec(max_attempts=100, backoff_seconds=3600)},
    ),
    "retries as a block mapping": (
        "retries:\n  backoff_seconds: 300\n  max_attempts: 3",
        {"retries": RetrySpec(max_attempts=3, backoff_seconds=300)},
    ),
    "the shortest timeout": (
        "tasks: [{alias: t, type: glue, target: job, timeout_seconds: 1}]",
        {"timeout_seconds": 1},
    ),
    "the longest timeout": (
        "tasks: [{alias: t, type: glue, target: job, timeout_seconds: 604800}]",
        {"timeout_seconds": 604800},
    ),
    "no timeout written": ("tasks: [{alias: t, type: glue, target: job}]", {"timeout_seconds": 86400}),
    "nothing written": ("description: x", {"max_concurrent_runs": None, "retries": None}),
}


@pytest.mark.parametrize("case", list(GOOD), ids=list(GOOD))
def test_good_values_are_accepted(case: str, write_defs: WriteDefs) -> None:
    line, expected = GOOD[case]
    result = validate_directory(write_defs({"a.yaml": document(line)}))
    assert [str(p) for p in result.problems] == []
    [spec] = result.specs
    found = {name: getattr(spec, name, None) for name in expected}
    if "timeout_seconds" in expected:
        found["timeout_seconds"] = spec.tasks[0].timeout_seconds
    assert found == expected


TASK = "tasks: [{alias: t, type: glue, target: job, timeout_seconds: "
#: Line 4 of a definition, and the problems it gives (code, message) at line 4.
BAD: dict[str, tuple[str, list[tuple[int, str, str]]]] = {
    "no run at all": (
        "max_concurrent_runs: 0",
        [(22, "schema-minimum", "'max_concurrent_runs' must be at least 1, got 0")],
    ),
    "too many runs": (
        "max_concurrent_runs: 1001",
        [(22, "schema-maximum", "'max_concurrent_runs' must be at most 1000, got 1001")],
    ),
    "runs as a string": (
        "max_concurrent_runs: '2'",
        [(22, "schema-type", "'max_concurrent_runs' must be an integer, got string '2'")],
    ),
    "runs as a boolean": (
        "max_concurrent_runs: true",
        [(22, "schema-type", "'max_concurrent_runs' must be an integer, got boolean true")],
    ),
    "runs as a fraction": (
        "max_concurrent_runs: 1.5",
        [(22, "schema-type", "'max_concurrent_runs' must be an integer, got number 1.5")],
    ),
    "retries without backoff_seconds": (
        "retries: {max_attempts: 3}",
        [(10, "schema-required", "missing required field 'backoff_seconds' in 'retries'")],
    ),
    "retries empty": (
        "retries: {}",
        [
            (10, "schema-required", "missing required field 'backoff_seconds' in 'retries'"),
            (10, "schema-required", "missing required field 'max_attempts' in 'retries'"),
        ],
    ),
    "no attempt at all": (
        "retries: {max_attempts: 0, backoff_seconds: 300}",
        [(25, "schema-minimum", "'retries.max_attempts' must be at least 1, got 0")],
    ),
    "too many attempts": (
        "retries: {max_attempts: 101, backoff_seconds: 300}",
        [(25, "schema-maximum", "'retries.max_attempts' must be at most 100, got 101")],
    ),
    "attempts as a word": (
        "retries: {max_attempts: three, backoff_seconds: 300}",
        [(25, "schema-type", "'retries.max_attempts' must be an integer, got string 'three'")],
    ),
    "a negative backoff": (
        "retries: {max_attempts: 3, backoff_seconds: -1}",
        [(45, "schema-minimum", "'retries.backoff_seconds' must be at least 0, got -1")],
    ),
    "a backoff over an hour": (
        "retries: {max_attempts: 3, backoff_seconds: 3601}",
        [(45, "schema-maximum", "'retries.backoff_seconds' must be at most 3600, got 3601")],
    ),
    "a field retries does not have": (
        "retries: {max_attempts: 3, backoff_seconds: 300, jitter: true}",
        [(50, "schema-unknown-field", "unknown field 'jitter' (allowed: backoff_seconds, max_attempts)")],
    ),
    "retries as a number": (
        "retries: 3",
        [(10, "schema-type", "'retries' must be a mapping, got number 3")],
    ),
    "a zero timeout": (
        TASK + "0}]",
        [(62, "schema-minimum", "'tasks[0].timeout_seconds' must be at least 1, got 0")],
    ),
    "a timeout over a week": (
        TASK + "604801}]",
        [(62, "schema-maximum", "'tasks[0].timeout_seconds' must be at most 604800, got 604801")],
    ),
    "a timeout as a string": (
        TASK + "1h}]",
        [(62, "schema-type", "'tasks[0].timeout_seconds' must be an integer, got string '1h'")],
    ),
    "a misspelt field": (
        "max_concurrent_run: 2",
        [
            (
                1,
                "schema-unknown-field",
                "unknown field 'max_concurrent_run' (did you mean 'max_concurrent_runs'?)",
            )
        ],
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_bad_value_is_reported_at_the_value(case: str, write_defs: WriteDefs) -> None:
    line, expected = BAD[case]
    result = validate_directory(write_defs({"a.yaml": document(line)}))
    assert not result.valid
    assert [(str(p), p.code) for p in result.problems] == [
        (f"defs/a.yaml:4:{column}: {message}", code) for column, code, message in expected
    ]


def test_a_bad_value_does_not_hide_a_cycle_or_the_other_tasks(write_defs: WriteDefs) -> None:
    a = (
        "version: 1\nname: a\npartitions: []\nretries: {max_attempts: 0, backoff_seconds: 1}\n"
        "dependencies: [{dependency_name: b}]\n"
        "tasks:\n  - {alias: t, type: glue, target: job, timeout_seconds: 0}\n"
        "  - {alias: u, type: glue, target: job, params: {--x: '{{ partitions.nope }}'}}\n"
    )
    b = "version: 1\nname: b\npartitions: []\nmax_concurrent_runs: 0\ndependencies: [{dependency_name: a}]\n"
    assert [str(p) for p in validate_directory(write_defs({"a.yaml": a, "b.yaml": b})).problems] == [
        "defs/a.yaml:4:25: 'retries.max_attempts' must be at least 1, got 0",
        "defs/a.yaml:5:34: dependency cycle: a -> b -> a",
        "defs/a.yaml:7:58: 'tasks[0].timeout_seconds' must be at least 1, got 0",
        "defs/a.yaml:8:55: template names unknown partition 'nope' (table has: none)",
        "defs/b.yaml:4:22: 'max_concurrent_runs' must be at least 1, got 0",
    ]


# --- plans (pure) ---------------------------------------------------------------------------------------


def state(**fields: Any) -> TableState:
    return state_of(TableSpec.model_validate(table_doc("tb_x", **fields)))


def test_the_state_carries_the_fields_with_their_defaults() -> None:
    plain = state(tasks=[LOAD])
    assert (plain["max_concurrent_runs"], plain["retries"]) == (None, None)
    assert plain["tasks"][0]["timeout_seconds"] == DEFAULT_TASK_TIMEOUT_SECONDS == 86400
    full = state(max_concurrent_runs=2, retries=RETRIES, tasks=[ENRICH])
    assert (full["max_concurrent_runs"], full["retries"], full["tasks"][0]["timeout_seconds"]) == (
        2,
        {"max_attempts": 3, "backoff_seconds": 300},
        7200,
    )
    assert json.loads(json.dumps(full)) == full


CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any], tuple[FieldChange, ...]]] = {
    "a limit set": ({}, {"max_concurrent_runs": 2}, (FieldChange("max_concurrent_runs", "change", None, 2),)),
    "a limit raised": (
        {"max_concurrent_runs": 2},
        {"max_concurrent_runs": 8},
        (FieldChange("max_concurrent_runs", "change", 2, 8),),
    ),
    "a limit lifted": (
        {"max_concurrent_runs": 2},
        {},
        (FieldChange("max_concurrent_runs", "change", 2, None),),
    ),
    "retries added": ({}, {"retries": RETRIES}, (FieldChange("retries", "change", None, RETRIES),)),
    "retries removed": ({"retries": RETRIES}, {}, (FieldChange("retries", "change", RETRIES, None),)),
    "a backoff changed": (
        {"retries": RETRIES},
        {"retries": {**RETRIES, "backoff_seconds": 600}},
        (FieldChange("retries.backoff_seconds", "change", 300, 600),),
    ),
    "both retry fields changed": (
        {"retries": RETRIES},
        {"retries": {"max_attempts": 5, "backoff_seconds": 60}},
        (
            FieldChange("retries.max_attempts", "change", 3, 5),
            FieldChange("retries.backoff_seconds", "change", 300, 60),
        ),
    ),
    "a timeout set": (
        {"tasks": [LOAD]},
        {"tasks": [{**LOAD, "timeout_seconds": 600}]},
        (FieldChange("tasks.load.timeout_seconds", "change", 86400, 600),),
    ),
    "a timeout written as the default": (
        {"tasks": [LOAD]},
        {"tasks": [{**LOAD, "timeout_seconds": 86400}]},
        (),
    ),
}


@pytest.mark.parametrize("case", list(CHANGES), ids=list(CHANGES))
def test_each_change_is_planned_as_a_field_change(case: str) -> None:
    before, after, expected = CHANGES[case]
    assert diff_table(state(**before), state(**after)) == expected


def test_the_plan_text_shows_each_change_and_a_creation_shows_the_fields() -> None:
    before = {"tb_x": state(max_concurrent_runs=2, retries=RETRIES, tasks=[ENRICH])}
    after = {
        "tb_x": state(
            max_concurrent_runs=4,
            retries={**RETRIES, "backoff_seconds": 600},
            tasks=[{**ENRICH, "timeout_seconds": 3600}],
        )
    }
    lines = [line.strip() for line in render_text(make_plan(before, after), colour=False).splitlines()]
    assert "~ max_concurrent_runs: 2 → 4" in lines
    assert "~ retries.backoff_seconds: 300 → 600" in lines
    assert "~ tasks.enrich.timeout_seconds: 7200 → 3600" in lines
    created = render_text(make_plan({}, before), colour=False).splitlines()
    assert "      + max_concurrent_runs = 2" in created
    assert '      + retries             = {"backoff_seconds": 300, "max_attempts": 3}' in created


# --- the database: apply, read back, plan and drift, migration ------------------------------------------


def current(engine: Engine) -> dict[str, TableState]:
    with Session(engine) as session:
        return read_state(session).tables


def do_apply(engine: Engine, desired: dict[str, TableState]) -> None:
    apply(engine, desired=desired, revision="r1", actor="tester", now=START)


def test_apply_writes_the_fields_and_reads_them_back(engine: Engine) -> None:
    desired = states(TABLES)
    do_apply(engine, desired)
    assert current(engine) == desired
    with Session(engine) as session:
        rows = dict(session.execute(select(TableRow.name, TableRow.max_concurrent_runs)).all())
        assert rows == {"tb_a": 2, "tb_b": None}
        retries = session.execute(select(TableRow.name, TableRow.retries).order_by(TableRow.name)).all()
        assert [tuple(r) for r in retries] == [("tb_a", RETRIES), ("tb_b", None)]
        # No retries is SQL NULL, as the migration leaves older tables, not the JSON text null.
        nulls = session.execute(text("SELECT name FROM tables WHERE retries IS NULL")).scalars().all()
        assert nulls == ["tb_b"]
        timeouts = dict(session.execute(select(TaskRow.alias, TaskRow.timeout_seconds)).all())
        assert timeouts == {"enrich": 7200, "export": 86400, "load": 86400}
        # What the runtime is given: the catalog's specs.
        catalog = load_catalog(session, None)
        a, b = catalog.table("tb_a"), catalog.table("tb_b")
        assert a is not None and b is not None
        assert (a.max_concurrent_runs, a.retries) == (2, RetrySpec(max_attempts=3, backoff_seconds=300))
        assert [t.timeout_seconds for t in a.tasks] == [7200, 86400]
        assert (b.max_concurrent_runs, b.retries) == (None, None)
    proposed, _ = plan(engine, desired)
    assert proposed.actions == []

    changed = states(
        [
            {
                **TABLES[0],
                "max_concurrent_runs": None,
                "retries": {"max_attempts": 5, "backoff_seconds": 300},
                "tasks": [{**ENRICH, "timeout_seconds": 60}, EXPORT],
            },
            {**TABLES[1], "max_concurrent_runs": 1, "retries": RETRIES},
        ]
    )
    proposed, _ = plan(engine, changed)
    assert [(a.table, a.changes) for a in proposed.actions] == [
        (
            "tb_a",
            (
                FieldChange("max_concurrent_runs", "change", 2, None),
                FieldChange("retries.max_attempts", "change", 3, 5),
                FieldChange("tasks.enrich.timeout_seconds", "change", 7200, 60),
            ),
        ),
        (
            "tb_b",
            (
                FieldChange("max_concurrent_runs", "change", None, 1),
                FieldChange("retries", "change", None, RETRIES),
            ),
        ),
    ]
    do_apply(engine, changed)
    assert current(engine) == changed
    proposed, _ = plan(engine, changed)
    assert proposed.actions == []

    do_apply(engine, desired)  # and back: retries removed is NULL again
    assert current(engine) == desired
    with engine.connect() as connection:
        nulls = connection.execute(text("SELECT name FROM tables WHERE retries IS NULL")).scalars().all()
        assert nulls == ["tb_b"]


def test_drift_shows_hand_edited_fields(engine: Engine, database_url: str, tmp_path: Path) -> None:
    defs = write_tables(tmp_path / "defs", TABLES)
    runner = CliRunner()
    assert runner.invoke(main, ["apply", str(defs), "--database-url", database_url]).exit_code == 0
    clean = runner.invoke(main, ["drift", str(defs), "--database-url", database_url])
    assert clean.exit_code == 0, clean.output
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE tables SET max_concurrent_runs = 5, "
                "retries = '{\"backoff_seconds\": 60, \"max_attempts\": 2}' WHERE name = 'tb_a'"
            )
        )
        connection.execute(
            text("UPDATE tables SET max_concurrent_runs = 1, retries = NULL WHERE name = 'tb_b'")
        )
        connection.execute(text("UPDATE table_tasks SET timeout_seconds = 60 WHERE alias = 'enrich'"))
    drift = runner.invoke(main, ["drift", str(defs), "--database-url", database_url])
    assert drift.exit_code == 2, drift.output
    lines = drift.output.splitlines()
    assert "      ~ max_concurrent_runs: 5 → 2" in lines
    assert "      ~ retries.max_attempts: 2 → 3" in lines
    assert "      ~ retries.backoff_seconds: 60 → 300" in lines
    assert "      ~ tasks.enrich.timeout_seconds: 60 → 7200" in lines
    assert "      ~ max_concurrent_runs: 1 → null" in lines
    assert not any("export" in line or "load" in line for line in lines)
    # Applying the definitions heals it.
    assert runner.invoke(main, ["apply", str(defs), "--database-url", database_url]).exit_code == 0
    assert runner.invoke(main, ["drift", str(defs), "--database-url", database_url]).exit_code == 0


def test_tables_defined_before_the_migration_get_the_defaults(engine: Engine) -> None:
    """Rows written at revision 0006 have none of the columns: the upgrade gives them no limit, no
    retries (SQL NULL) and one-day task timeouts, which is what their definitions say, so a plan after
    the upgrade shows no change; downgrade drops the columns."""
    desired = states([table_doc("tb_old", tasks=[LOAD, EXPORT]), table_doc("tb_plain")])
    do_apply(engine, desired)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0006")
        tables = {c["name"] for c in inspect(connection).get_columns("tables")}
        tasks = {c["name"] for c in inspect(connection).get_columns("table_tasks")}
        assert {"producers", "operators", "max_wait_seconds"} <= tables
        assert not tables & {"max_concurrent_runs", "retries"}
        assert "params" in tasks and "timeout_seconds" not in tasks
    upgrade(engine)
    assert current(engine) == desired
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT name FROM tables WHERE max_concurrent_runs IS NULL AND retries IS NULL ORDER BY name"
            )
        ).scalars()
        assert list(rows) == ["tb_old", "tb_plain"]
        timeouts = connection.execute(text("SELECT timeout_seconds FROM table_tasks")).scalars()
        assert list(timeouts) == [86400, 86400]
    proposed, _ = plan(engine, desired)
    assert proposed.actions == []


def test_values_written_after_the_migration_are_gone_after_a_downgrade_and_upgrade(engine: Engine) -> None:
    desired = states(TABLES)
    do_apply(engine, desired)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0006")
    upgrade(engine)
    proposed, _ = plan(engine, desired)
    [action] = proposed.actions  # tb_b said only defaults: unchanged
    assert (action.table, action.changes) == (
        "tb_a",
        (
            FieldChange("max_concurrent_runs", "change", None, 2),
            FieldChange("retries", "change", None, RETRIES),
            FieldChange("tasks.enrich.timeout_seconds", "change", 86400, 7200),
        ),
    )


# --- import ---------------------------------------------------------------------------------------------


def test_import_round_trips_the_fields_and_leaves_defaults_out(tmp_path: Path) -> None:
    table = {
        "name": "tb_op_enriquecido",
        "retries": {"backoff_seconds": 300, "max_attempts": 3},
        "max_concurrent_runs": 2,
        "partitions": [{"name": "ano_mes_referencia", "type": "int", "is_required": True}],
        "tasks": [
            {"timeout_seconds": 7200, "alias": "enrich", "type": "glue", "target": "job-enrich"},
            {"alias": "export", "type": "glue", "target": "job-export", "timeout_seconds": 86400},
            {"alias": "notify", "type": "glue", "target": "job-notify", "timeout_seconds": None},
        ],
    }
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"data": [table], "user": "lrcxpnu"}), encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["import", str(payload), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = (out / "tb_op_enriquecido.yaml").read_text(encoding="utf-8")
    assert written.splitlines()[1:] == [
        "version: 1",
        "name: tb_op_enriquecido",
        "max_concurrent_runs: 2",
        "retries: {max_attempts: 3, backoff_seconds: 300}",
        "partitions:",
        "  - {name: ano_mes_referencia, type: int, is_required: true}",
        "tasks:",
        "  - alias: enrich",
        "    type: glue",
        "    target: job-enrich",
        "    timeout_seconds: 7200",
        "  - alias: export",
        "    type: glue",
        "    target: job-export",
        "  - alias: notify",
        "    type: glue",
        "    target: job-notify",
    ]
    [spec] = validate_directory(out).specs
    assert (spec.max_concurrent_runs, spec.retries, [t.timeout_seconds for t in spec.tasks]) == (
        2,
        RetrySpec(max_attempts=3, backoff_seconds=300),
        [7200, 86400, 86400],
    )
    assert render_table({"version": 1, **table}) == written.split("\n", 1)[1]


def test_import_without_the_fields_writes_none_of_them(tmp_path: Path) -> None:
    table = {"name": "tb_x", "max_concurrent_runs": None, "retries": None, "partitions": [], "tasks": [LOAD]}
    text_ = render_table(table)
    assert "max_concurrent_runs" not in text_
    assert "retries" not in text_
    assert "timeout_seconds" not in text_
    assert yaml.safe_load(text_) == {"version": 1, "name": "tb_x", "partitions": [], "tasks": [LOAD]}


# --- explain --------------------------------------------------------------------------------------------


def test_explain_shows_the_fields_that_are_not_the_default() -> None:
    spec = TableSpec.model_validate(TABLES[0])
    explanation = Explanation(
        "tb_a",
        make_key(spec, {"mes": 202305}),
        max_concurrent_runs=2,
        retries=RETRIES,
        task_timeouts={"enrich": 7200, "export": 86400},
    )
    lines = render(explanation).splitlines()
    assert "  max concurrent runs: 2" in lines
    assert "  retries: up to 3 attempts, backoff 300 s doubling, capped at 1 h" in lines
    assert "  task timeouts: enrich 7200 s (default 86400 s)" in lines
    plain = render(Explanation("tb_b", make_key(spec, {"mes": 1}), task_timeouts={"load": 86400}))
    assert "max concurrent runs" not in plain
    assert "retries" not in plain
    assert "timeout" not in plain


@pytest.mark.parametrize(
    ("retries", "words"),
    [
        ({"max_attempts": 1, "backoff_seconds": 300}, "none (max_attempts 1: a failed run stays failed)"),
        ({"max_attempts": 4, "backoff_seconds": 0}, "up to 4 attempts, each at once after a failure"),
        ({"max_attempts": 2, "backoff_seconds": 90}, "up to 2 attempts, the second 90 s after a failure"),
        ({"max_attempts": 5, "backoff_seconds": 3600}, "up to 5 attempts, each 3600 s after a failure"),
        (
            {"max_attempts": 10, "backoff_seconds": 60},
            "up to 10 attempts, backoff 60 s doubling, capped at 1 h",
        ),
    ],
)
def test_explain_says_what_the_retries_do(retries: dict[str, int], words: str) -> None:
    spec = TableSpec.model_validate(TABLES[1])
    lines = render(Explanation("tb_b", make_key(spec, {"mes": 1}), retries=retries)).splitlines()
    assert f"  retries: {words}" in lines


# --- the runtime's API and explain on a reconciled database ---------------------------------------------


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def test_explain_of_a_reconciled_table_shows_its_fields(flux: Lambda, database_url: str) -> None:
    def explain(*args: str) -> str:
        result = CliRunner().invoke(
            main, ["explain", *args, "-p", "mes=202305", "--database-url", database_url]
        )
        assert result.exit_code == 0, result.output
        return result.output

    lines = explain("tb_a").splitlines()
    assert "  max concurrent runs: 2" in lines
    assert "  retries: up to 3 attempts, backoff 300 s doubling, capped at 1 h" in lines
    assert "  task timeouts: enrich 7200 s (default 86400 s)" in lines
    document = json.loads(explain("tb_a", "--format", "json"))
    assert (document["max_concurrent_runs"], document["retries"], document["task_timeouts"]) == (
        2,
        RETRIES,
        {"enrich": 7200, "export": 86400},
    )
    plain = explain("tb_b")
    assert "max concurrent runs" not in plain and "retries" not in plain and "timeout" not in plain
    document = json.loads(explain("tb_b", "--format", "json"))
    assert (document["max_concurrent_runs"], document["retries"], document["task_timeouts"]) == (
        None,
        None,
        {"load": 86400},
    )


def _answer_schema(operation_id: str) -> dict[str, Any]:
    """The 200 answer's schema of an operation of the OpenAPI document, as a plain JSON Schema."""
    spec = json.loads(openapi_document().replace("#/components/schemas/", "#/$defs/"))
    [operation] = [
        op for ops in spec["paths"].values() for op in ops.values() if op["operationId"] == operation_id
    ]
    reference = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    return {
        **spec["components"]["schemas"][reference.rsplit("/", 1)[1]],
        "$defs": spec["components"]["schemas"],
    }


def test_get_tables_shows_the_fields_as_reconciled(flux: Lambda) -> None:
    answer = flux.ok("GET", "/tables")
    by_name = {t["name"]: t for t in answer["tables"]}
    a, b = by_name["tb_a"], by_name["tb_b"]
    assert (a["max_concurrent_runs"], a["retries"], [t["timeout_seconds"] for t in a["tasks"]]) == (
        2,
        RETRIES,
        [7200, 86400],
    )
    assert (b["max_concurrent_runs"], b["retries"], [t["timeout_seconds"] for t in b["tasks"]]) == (
        None,
        None,
        [86400],
    )
    assert flux.ok("GET", "/tables/tb_a")["table"] == a == states(TABLES)["tb_a"]
    errors = list(Draft202012Validator(_answer_schema("listTables")).iter_errors(answer))
    assert errors == []


def test_the_openapi_examples_of_a_table_show_the_fields() -> None:
    listed, one = _answer_schema("listTables"), _answer_schema("getTable")
    example = listed["examples"][0]["tables"][0]
    assert one["examples"][0]["table"] == example
    spec = TableSpec.model_validate(example)  # the answer's model: every field known, none missing
    assert spec.max_concurrent_runs == example["max_concurrent_runs"] == 2
    assert spec.retries == RetrySpec(max_attempts=3, backoff_seconds=300)
    assert [t.timeout_seconds for t in spec.tasks] == [7200]
    assert list(Draft202012Validator(listed).iter_errors(listed["examples"][0])) == []
    schemas = listed["$defs"]
    assert {"max_concurrent_runs", "retries"} <= set(schemas["TableSpec"]["properties"])
    assert "timeout_seconds" in schemas["TaskSpec"]["properties"]


def test_post_tables_locates_a_bad_value_by_its_json_path(flux: Lambda) -> None:
    payload = {
        "data": [
            {"name": "tb_new", "partitions": MONTH, "retries": {"max_attempts": 0, "backoff_seconds": 1}},
            {**TABLES[0], "max_concurrent_runs": 0, "tasks": [{**ENRICH, "timeout_seconds": 0}]},
        ],
        "user": "ana",
    }
    answer = flux.ok("POST", "/tables", payload)
    assert answer["valid"] is False
    assert answer["problems"] == [
        {
            "path": "data[0].retries.max_attempts",
            "code": "schema-minimum",
            "message": "'retries.max_attempts' must be at least 1, got 0",
        },
        {
            "path": "data[1].max_concurrent_runs",
            "code": "schema-minimum",
            "message": "'max_concurrent_runs' must be at least 1, got 0",
        },
        {
            "path": "data[1].tasks[0].timeout_seconds",
            "code": "schema-minimum",
            "message": "'tasks[0].timeout_seconds' must be at least 1, got 0",
        },
    ]


def test_post_tables_plans_a_change_of_each_field(flux: Lambda) -> None:
    changed = {
        **TABLES[0],
        "max_concurrent_runs": 3,
        "retries": {**RETRIES, "backoff_seconds": 30},
        "tasks": [{**ENRICH, "timeout_seconds": 600}, EXPORT],
    }
    answer = flux.ok("POST", "/tables", {"data": [changed, TABLES[1]], "user": "ana"})
    assert answer["valid"] is True, answer["problems"]
    [action] = answer["plan"]["actions"]
    assert (action["action"], action["table"]) == ("update", "tb_a")
    assert action["changes"] == [
        {"field": "max_concurrent_runs", "kind": "change", "before": 2, "after": 3},
        {"field": "retries.backoff_seconds", "kind": "change", "before": 300, "after": 30},
        {"field": "tasks.enrich.timeout_seconds", "kind": "change", "before": 7200, "after": 600},
    ]
