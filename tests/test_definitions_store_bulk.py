"""The bulk paths of the definitions store on SQLite and PostgreSQL: what goes in comes back, exactly.

PostgreSQL writes every table's rows as one JSON document expanded by ``json_to_recordset``; SQLite uses
``executemany``. Reads decode each query's JSON columns with a single ``json.loads``. These tests pin
the values that such paths could bend: JSON types inside ``params``, non-ASCII and escape-worthy text,
NULLs, updates of existing rows and revivals of deleted ones.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, delete, insert, select
from sqlalchemy.orm import Session

from controller.core.plans import TableState, digest, make_plan
from controller.db.definition_models import PartitionRow, TableRow, TaskRow
from controller.db.definitions_store import read_state
from controller.db.migrate import upgrade
from controller.reconciler import apply, plan
from tests.factories import StatementLog, generated, states, table_doc

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)

TRICKY_PARAMS: dict[str, Any] = {
    "--workers": 5,
    "ratio": 2.5,
    "whole_float": 3.0,
    "big": 12345678901234,
    "flag": True,
    "off": False,
    "nothing": None,
    "list": [1, "two", 3.5, None, {"nested": ["x", False]}],
    "object": {"b": 1, "a": {"deep": "ç"}},
    "text": 'aspas "duplas", barra \\ e tab\t, linha\nnova, unicode: çãé ✓ 🚀 \u2028',
    "{{ template }}": "{{ partitions.dt }}",
}


def tricky_documents() -> list[dict[str, Any]]:
    return [
        table_doc(
            "tb_upstream",
            description="Descrição com acentuação, \"aspas\" e 'apóstrofos'\nsegunda linha",
            owner=None,
            partitions=[
                {"name": "dt", "type": "date"},
                {"name": "região", "type": "string", "is_required": False},
            ],
        ),
        table_doc(
            "tb_down",
            owner="squad-ç",
            requires_approval=True,
            approvers=["ana", "joão"],
            producers=["arn:aws:iam::123456789012:role/glue-etl", "Maria José"],
            operators=["group:squad-ç"],
            debounce_seconds=0,
            max_wait_seconds=3600,
            dependencies=[
                {"dependency_name": "tb_upstream", "is_required": False, "partition_map": {"dia": "dt"}},
            ],
            partitions=[{"name": "dia", "type": "date"}],
            tasks=[
                {"alias": "build", "type": "glue", "target": "job-ç", "params": TRICKY_PARAMS},
                {"alias": "notify", "type": "sqs", "target": "https://sqs.example/q.fifo"},
            ],
        ),
    ]


def do_apply(engine: Engine, desired: dict[str, TableState], **kwargs: Any) -> Any:
    return apply(engine, desired=desired, revision="r1", actor="tester", now=NOW, **kwargs)


def current(engine: Engine) -> dict[str, TableState]:
    with Session(engine) as session:
        return read_state(session).tables


def json_text(value: Any) -> str:
    """Canonical JSON: equal texts mean equal values *and* equal JSON types (1 vs 1.0 vs true)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def test_tricky_values_come_back_exactly(engine: Engine) -> None:
    desired = states(tricky_documents())
    do_apply(engine, desired)
    stored = current(engine)
    assert stored == desired
    assert json_text(stored) == json_text(desired)  # no True/1 or 3.0/3 mix-ups
    assert digest(stored.values()) == digest(desired.values())
    params = stored["tb_down"]["tasks"][0]["params"]
    assert type(params["whole_float"]) is float and type(params["--workers"]) is int
    assert params["flag"] is True and params["nothing"] is None
    proposed, _ = plan(engine, desired)
    assert not proposed.actions
    assert proposed.database_fingerprint == proposed.desired_digest


def test_updates_deletes_creates_and_revivals_through_the_bulk_paths(engine: Engine) -> None:
    first = states(generated(40))
    do_apply(engine, first)
    with Session(engine) as session:
        ids_before = dict(session.execute(select(TableRow.name, TableRow.id)).all())
    changed = dict(first)
    changed["t00003"] = {**first["t00003"], "description": "nova ç", "owner": "x", "max_wait_seconds": 90}
    changed["t00004"] = {**first["t00004"], "tasks": [], "approvers": ["a"], "producers": ["p"]}
    del changed["t00039"]  # nothing depends on the last one
    changed["t_new"] = states([table_doc("t_new", dependencies=[{"dependency_name": "t00001"}])])["t_new"]
    outcome = do_apply(engine, changed)
    assert outcome.plan.summary() == {"create": 1, "update": 2, "delete": 1, "unchanged": 37}
    assert current(engine) == changed
    revived = {**changed, "t00039": {**first["t00039"], "description": "de volta"}}
    do_apply(engine, revived)
    assert current(engine) == revived
    with Session(engine) as session:
        ids_after = dict(session.execute(select(TableRow.name, TableRow.id)).all())
    assert {name: ids_after[name] for name in ids_before} == ids_before  # updated and revived in place


def test_every_definition_table_is_written_by_one_insert(engine: Engine) -> None:
    """However many rows: one INSERT per definition table (on PostgreSQL from one JSON document)."""
    tables = ["tables", "table_partitions", "table_dependencies", "table_tasks", "audit_log"]
    upgrade(engine)
    for count, salt in ((5, ""), (300, " v2")):  # the second one updates 5 tables and creates 295
        with StatementLog(engine) as log:
            do_apply(engine, states(generated(count, salt=salt)))
        inserts = [
            s.split(" (")[0].removeprefix("INSERT INTO ") for s in log.writes() if s.startswith("INSERT")
        ]
        assert inserts == ["reconcile_revisions", *tables]
        if engine.dialect.name == "postgresql":
            bulk = [s for s in log.writes() if s.startswith("INSERT INTO") and "reconcile_revisions" not in s]
            assert len(bulk) == 5 and all("FROM json_to_recordset(" in s for s in bulk)
            updates = [s for s in log.writes() if s.startswith("UPDATE tables")]
            assert len(updates) == (0 if count == 5 else 1) and all(
                "json_to_recordset(" in s for s in updates
            )


def test_plan_digests_are_of_the_states_when_the_plan_was_made() -> None:
    current_states = states(generated(3))
    desired = states(generated(4, salt=" v2"))
    expected = (digest(desired.values()), digest(current_states.values()))
    made = make_plan(current_states, desired)
    desired.pop("t00000")
    current_states.clear()
    assert (made.desired_digest, made.database_fingerprint) == expected
    again = make_plan(states(generated(3)), states(generated(4, salt=" v2")))
    assert again == made


def test_items_come_back_in_position_order_whatever_the_storage_order(engine: Engine) -> None:
    partitions = [{"name": f"p{i}", "type": "string"} for i in range(4)]
    tasks = [{"alias": f"t{i}", "type": "sqs", "target": f"q{i}"} for i in range(3)]
    desired = states([table_doc("tb_up"), table_doc("tb_a", partitions=partitions, tasks=tasks)])
    do_apply(engine, desired)
    with engine.begin() as connection:  # the same rows, stored last position first
        for model in (PartitionRow, TaskRow):
            table = cast(Table, model.__table__)
            rows = connection.execute(select(table).order_by(table.c.position.desc())).mappings().all()
            connection.execute(delete(table))
            for row in rows:
                connection.execute(insert(table).values({k: v for k, v in row.items() if k != "id"}))
    stored = current(engine)
    assert [p["name"] for p in stored["tb_a"]["partitions"]] == ["p0", "p1", "p2", "p3"]
    assert [t["alias"] for t in stored["tb_a"]["tasks"]] == ["t0", "t1", "t2"]
    assert stored == desired
