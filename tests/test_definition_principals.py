"""Who may do what to a table (issue 17, DESIGN §7): ``approvers``, ``producers`` and ``operators``.

One rule for the entries of all three lists, checked where they are written (a file's line and column,
a payload's JSON path); the lists are planned, applied, read back, migrated, imported, explained and
answered alike.
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
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session

from controller.cli import main
from controller.cli.importer import render_table
from controller.core.keys import make_key
from controller.core.plans import FieldChange, TableState
from controller.core.specs import TableSpec
from controller.db.definition_models import TableRow
from controller.db.definitions_store import read_state
from controller.db.migrate import alembic_config, upgrade
from controller.files.validation import validate_directory
from controller.reconciler import apply, plan
from controller.services.explain import Explanation, render
from tests.conftest import WriteDefs
from tests.factories import states, table_doc, write_tables
from tests.runtime_support import START, Lambda, running_lambda

PEOPLE = ("approvers", "producers", "operators")
ROLE = "arn:aws:iam::123456789012:role/glue-etl"
SESSION = "arn:aws:sts::123456789012:assumed-role/glue-etl/jr_0a1b2c"
MONTH = [{"name": "mes", "type": "int"}]

#: Every form DESIGN §7 lists, and names that only look like the other forms (a name is matched exactly).
GOOD = [
    "lrcxpnu",
    "ana@example.com",
    "Maria José",
    "joão",
    "ARN:aws:iam::1:role/x",
    "arnaldo",
    "groups",
    "grupo:dados",
    "group:data-platform",
    "group:squad_dados.2",
    ROLE,
    "arn:aws:iam::123456789012:role/service-role/glue-etl",
    "arn:aws:iam::123456789012:user/ana",
    "arn:aws:iam::123456789012:user/division/ana.b+c=d,e@f",
    "arn:aws-cn:iam::123456789012:role/etl",
    "arn:aws-us-gov:iam::123456789012:user/ana",
]

GROUP = "group:NAME needs the name of a Cognito group after 'group:', without spaces"
NOT_IAM = (
    "an ARN here must be an IAM user ARN (arn:aws:iam::ACCOUNT:user/NAME) or an IAM role ARN "
    "(arn:aws:iam::ACCOUNT:role/NAME); for a Glue job, a Lambda or another service, list the ARN of the "
    "role it runs as instead"
)
A_SESSION = (
    "a session's ARN (arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION) changes with every session; list the "
    "role ARN instead, arn:aws:iam::ACCOUNT:role/NAME, which matches any session of the role"
)
#: An entry, the problem code and the explanation the message ends with.
BAD: dict[str, tuple[str, str, str]] = {
    "group without a name": ("group:", "schema-pattern", GROUP),
    "group name after a space": ("group: data-platform", "schema-pattern", GROUP),
    "group name with a space": ("group:data platform", "schema-pattern", GROUP),
    "assumed-role session": (SESSION, "schema-not", A_SESSION),
    "federated user session": ("arn:aws:sts::123456789012:federated-user/ana", "schema-not", A_SESSION),
    "sts of another partition": ("arn:aws-cn:sts::123456789012:assumed-role/etl/s", "schema-not", A_SESSION),
    "assumed-role under iam": (
        "arn:aws:iam::123456789012:assumed-role/glue-etl/s",
        "schema-pattern",
        NOT_IAM,
    ),
    "lambda function": ("arn:aws:lambda:us-east-1:123456789012:function:f", "schema-pattern", NOT_IAM),
    "glue job": ("arn:aws:glue:us-east-1:123456789012:job/etl", "schema-pattern", NOT_IAM),
    "iam group": ("arn:aws:iam::123456789012:group/devs", "schema-pattern", NOT_IAM),
    "short account": ("arn:aws:iam::12345:role/etl", "schema-pattern", NOT_IAM),
    "region in an iam arn": ("arn:aws:iam:us-east-1:123456789012:role/etl", "schema-pattern", NOT_IAM),
    "role without a name": ("arn:aws:iam::123456789012:role/", "schema-pattern", NOT_IAM),
    "role path without a name": ("arn:aws:iam::123456789012:role/service-role/", "schema-pattern", NOT_IAM),
    "not aws": ("arn:gcp:iam::123456789012:role/etl", "schema-pattern", NOT_IAM),
}


def document(field: str, entries: list[Any]) -> str:
    """A definition whose line 4 is ``field: [...]`` (JSON is YAML)."""
    return f"version: 1\nname: a\npartitions: []\n{field}: {json.dumps(entries, ensure_ascii=False)}\n"


# --- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", PEOPLE)
def test_every_form_of_entry_is_accepted_in_each_list(field: str, write_defs: WriteDefs) -> None:
    result = validate_directory(write_defs({"a.yaml": document(field, GOOD)}))
    assert [str(p) for p in result.problems] == []
    assert getattr(result.specs[0], field) == tuple(GOOD)


@pytest.mark.parametrize("field", PEOPLE)
@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_bad_entry_is_reported_at_the_entry_in_each_list(
    field: str, case: str, write_defs: WriteDefs
) -> None:
    entry, code, explanation = BAD[case]
    result = validate_directory(write_defs({"a.yaml": document(field, ["ok", entry])}))
    column = len(f'{field}: ["ok", ') + 1
    assert [(str(p), p.code) for p in result.problems] == [
        (f"defs/a.yaml:4:{column}: '{field}[1]' {entry!r} is not valid: {explanation}", code)
    ]


@pytest.mark.parametrize("field", PEOPLE)
@pytest.mark.parametrize("entry", ["Group:leads", "groups:leads", "GROUP:leads", "group :leads"])
def test_a_group_written_almost_right_is_reported_with_the_spelling_that_works(
    field: str, entry: str, write_defs: WriteDefs
) -> None:
    result = validate_directory(write_defs({"a.yaml": document(field, ["ok", entry])}))
    column = len(f'{field}: ["ok", ') + 1
    assert [(str(p), p.code) for p in result.problems] == [
        (
            f"defs/a.yaml:4:{column}: {entry!r} is a name, not a group (and matches nobody): write "
            "'group:leads' for the members of Cognito group 'leads'",
            "principal",
        )
    ]


def test_the_example_approvers_stay_valid_and_the_old_rules_still_apply(write_defs: WriteDefs) -> None:
    """What approvers accepted before (any non-empty name) is still accepted unless it is written as a
    group or an ARN; duplicates, empty and overlong entries are refused as before."""
    assert validate_directory(write_defs({"a.yaml": document("approvers", ["lrcxpnu"])})).valid
    result = validate_directory(
        write_defs(
            {
                "a.yaml": document("producers", ["etl", "etl"]),
                "b.yaml": document("operators", [""]).replace("name: a", "name: b"),
                "c.yaml": document("approvers", ["x" * 257]).replace("name: a", "name: c"),
            }
        )
    )
    assert [str(p) for p in result.problems] == [
        "defs/a.yaml:4:12: 'producers' lists the same value more than once",
        "defs/b.yaml:4:13: 'operators[0]' must have at least 1 characters",
        "defs/c.yaml:4:13: 'approvers[0]' must have at most 256 characters",
    ]


def test_a_group_written_with_a_space_in_a_flow_list_is_a_mapping(write_defs: WriteDefs) -> None:
    """YAML reads ``[group: x]`` as a list holding the mapping {group: x}: reported at the item."""
    text = "version: 1\nname: a\npartitions: []\noperators: [group: data-platform]\n"
    assert [str(p) for p in validate_directory(write_defs({"a.yaml": text})).problems] == [
        "defs/a.yaml:4:13: 'operators[0]' must be a string, got a mapping"
    ]


def test_a_bad_entry_does_not_hide_a_cycle(write_defs: WriteDefs) -> None:
    a = f"version: 1\nname: a\npartitions: []\nproducers: [{SESSION}]\ndependencies: [{{dependency_name: b}}]\n"
    b = "version: 1\nname: b\npartitions: []\ndependencies: [{dependency_name: a}]\n"
    assert [str(p) for p in validate_directory(write_defs({"a.yaml": a, "b.yaml": b})).problems] == [
        f"defs/a.yaml:4:13: 'producers[0]' {SESSION!r} is not valid: {A_SESSION}",
        "defs/a.yaml:5:34: dependency cycle: a -> b -> a",
    ]


# --- the runtime's API: POST /tables locates the entry, GET /tables shows the lists -------------------

TABLES = [
    table_doc(
        "tb_a",
        partitions=MONTH,
        requires_approval=True,
        approvers=["ana"],
        producers=[ROLE],
        operators=["group:data-platform", "bia"],
    ),
    table_doc("tb_b", partitions=MONTH, dependencies=[{"dependency_name": "tb_a"}]),
]


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def test_get_tables_shows_producers_and_operators_as_reconciled(flux: Lambda) -> None:
    answer = flux.ok("GET", "/tables")
    by_name = {t["name"]: t for t in answer["tables"]}
    assert [by_name["tb_a"][field] for field in PEOPLE] == [["ana"], [ROLE], ["group:data-platform", "bia"]]
    assert [by_name["tb_b"][field] for field in PEOPLE] == [[], [], []]
    assert flux.ok("GET", "/tables/tb_a")["table"] == by_name["tb_a"] == states(TABLES)["tb_a"]


def test_post_tables_locates_a_bad_entry_by_its_json_path(flux: Lambda) -> None:
    payload = {
        "data": [
            {"name": "tb_new", "partitions": MONTH, "operators": ["group:"]},
            {"name": "tb_a", "partitions": MONTH, "producers": [ROLE, SESSION]},
        ],
        "user": "ana",
    }
    answer = flux.ok("POST", "/tables", payload)
    assert answer["valid"] is False
    assert answer["problems"] == [
        {
            "path": "data[0].operators[0]",
            "code": "schema-pattern",
            "message": f"'operators[0]' 'group:' is not valid: {GROUP}",
        },
        {
            "path": "data[1].producers[1]",
            "code": "schema-not",
            "message": f"'producers[1]' {SESSION!r} is not valid: {A_SESSION}",
        },
    ]


def test_post_tables_plans_a_change_of_producers(flux: Lambda) -> None:
    changed = {**TABLES[0], "producers": [ROLE, "arn:aws:iam::123456789012:user/ana"]}
    answer = flux.ok("POST", "/tables", {"data": [changed, TABLES[1]], "user": "ana"})
    assert answer["valid"] is True, answer["problems"]
    [action] = answer["plan"]["actions"]
    assert (action["action"], action["table"]) == ("update", "tb_a")
    assert action["changes"] == [
        {"field": "producers", "kind": "change", "before": [ROLE], "after": changed["producers"]}
    ]


# --- the database: apply, read back, plan and drift, migration ------------------------------------------


def current(engine: Engine) -> dict[str, TableState]:
    with Session(engine) as session:
        return read_state(session).tables


def do_apply(engine: Engine, desired: dict[str, TableState]) -> None:
    apply(engine, desired=desired, revision="r1", actor="tester", now=START)


def test_apply_writes_the_lists_and_reads_them_back(engine: Engine) -> None:
    desired = states(TABLES)
    do_apply(engine, desired)
    assert current(engine) == desired
    with Session(engine) as session:
        row = session.execute(select(TableRow).where(TableRow.name == "tb_a")).scalar_one()
        assert (row.approvers, row.producers, row.operators) == (
            ["ana"],
            [ROLE],
            ["group:data-platform", "bia"],
        )
    proposed, _ = plan(engine, desired)
    assert proposed.actions == []

    changed = states([{**TABLES[0], "producers": [], "operators": ["group:data-platform"]}, TABLES[1]])
    proposed, _ = plan(engine, changed)
    [action] = proposed.actions
    assert action.changes == (
        FieldChange("producers", "change", [ROLE], []),
        FieldChange("operators", "change", ["group:data-platform", "bia"], ["group:data-platform"]),
    )
    do_apply(engine, changed)
    assert current(engine) == changed


def test_drift_shows_a_hand_edited_list(engine: Engine, database_url: str, tmp_path: Path) -> None:
    defs = write_tables(tmp_path / "defs", TABLES)
    runner = CliRunner()
    assert runner.invoke(main, ["apply", str(defs), "--database-url", database_url]).exit_code == 0
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE tables SET producers = '[]', operators = '[\"eve\"]' WHERE name = 'tb_a'")
        )
    drift = runner.invoke(main, ["drift", str(defs), "--database-url", database_url])
    assert drift.exit_code == 2, drift.output
    assert f'      ~ producers: [] → ["{ROLE}"]' in drift.output
    assert '      ~ operators: ["eve"] → ["group:data-platform", "bia"]' in drift.output


def test_tables_defined_before_the_migration_get_empty_lists(engine: Engine) -> None:
    """Rows written at revision 0004 have neither column: the upgrade gives them empty lists, which is
    what their definitions say, so a plan after the upgrade shows no change; downgrade drops them."""
    desired = states([table_doc("tb_old", approvers=["ana"]), table_doc("tb_plain")])
    do_apply(engine, desired)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0004")
        columns = {c["name"] for c in inspect(connection).get_columns("tables")}
        assert "approvers" in columns
        assert not columns & {"producers", "operators"}
    upgrade(engine)
    assert current(engine) == desired
    assert [(s["producers"], s["operators"]) for s in current(engine).values()] == [([], []), ([], [])]
    proposed, _ = plan(engine, desired)
    assert proposed.actions == []


# --- import, explain ----------------------------------------------------------------------------------


def test_import_round_trips_producers_and_operators(tmp_path: Path) -> None:
    """The old payload has neither field (tests/test_cli_import.py); one that has them keeps them, each
    as a flow list after approvers, as DESIGN §2 orders them."""
    table = {
        "name": "tb_op_enriquecido",
        "operators": ["group:data-platform"],
        "approvers": ["lrcxpnu"],
        "producers": [ROLE],
        "partitions": [{"name": "ano_mes_referencia", "type": "int", "is_required": True}],
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
        "approvers: [lrcxpnu]",
        f"producers: ['{ROLE}']",
        "operators: ['group:data-platform']",
        "partitions:",
        "  - {name: ano_mes_referencia, type: int, is_required: true}",
    ]
    assert yaml.safe_load(written) == {"version": 1, **table}
    [spec] = validate_directory(out).specs
    assert (spec.producers, spec.operators) == ((ROLE,), ("group:data-platform",))
    assert render_table({"version": 1, **table}) == written.split("\n", 1)[1]


def test_explain_shows_producers_and_operators() -> None:
    spec = TableSpec.model_validate(TABLES[0])
    explanation = Explanation(
        "tb_a",
        make_key(spec, {"mes": 202305}),
        requires_approval=True,
        approvers=list(spec.approvers),
        producers=list(spec.producers),
        operators=list(spec.operators),
    )
    lines = render(explanation).splitlines()
    assert "  approval: required (approvers: ana)" in lines
    assert f"  producers: {ROLE}" in lines
    assert "  operators: group:data-platform, bia" in lines
    document = explanation.as_dict()
    assert [document[field] for field in PEOPLE] == [["ana"], [ROLE], ["group:data-platform", "bia"]]
    nobody = render(Explanation("tb_b", make_key(spec, {"mes": 202305})))
    assert "producers" not in nobody
    assert "operators" not in nobody
