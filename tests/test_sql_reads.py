"""``SqlReads`` on SQLite and PostgreSQL: orders, newest approvals, filters and unknown ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session

from controller.core.gates import Execution, Probe
from controller.core.keys import Key, key_text
from controller.core.runs import RunEvent
from controller.db.migrate import upgrade
from controller.db.reads import SqlReads
from controller.db.run_models import (
    ApprovalRow,
    ExecutionRow,
    ExecutionValueRow,
    RunEventRow,
    RunRow,
    RunTriggerRow,
    TaskDispatchRow,
)
from controller.reconciler import apply
from controller.services.ports import Reads
from tests.factories import states, table_doc

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
MONTH = [{"name": "mes", "type": "int"}, {"name": "regiao", "type": "string", "is_required": False}]
TABLES = [
    table_doc("tb_a", partitions=MONTH),
    table_doc("tb_b", partitions=MONTH, dependencies=[{"dependency_name": "tb_a"}]),
    table_doc("tb_gone"),
]


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def reads(engine: Engine) -> Reads:
    """A migrated database with TABLES applied at T0 (as revision "r"), then tb_gone deleted."""
    upgrade(engine)
    apply(engine, desired=states(TABLES), revision="r", actor="t", now=T0)
    apply(engine, desired=states(TABLES[:2]), allow_delete=True, revision="r2", actor="t", now=at(1))
    found: Reads = SqlReads(engine)  # the port, structurally
    return found


def ids(reads: Reads) -> dict[str, int]:
    return reads.catalog().ids


def add_execution(
    engine: Engine, table_id: int, key: Key, *, source: str = "glue", minute: int = 0, by: str | None = None
) -> int:
    """An execution with a value row per given partition (an omitted one is stored as NULL)."""
    with Session(engine) as session, session.begin():
        execution_id = session.execute(
            insert(ExecutionRow)
            .values(
                table_id=table_id,
                partition_key=key_text(key),
                partitions=key,
                source=source,
                registered_at=at(minute),
                registered_by=by,
            )
            .returning(ExecutionRow.id)
        ).scalar_one()
        rows: list[dict[str, Any]] = [
            {"name": "mes", "value": str(key["mes"])},
            {"name": "regiao", "value": key.get("regiao")},
        ]
        session.execute(
            insert(ExecutionValueRow),
            [{"execution_id": execution_id, "table_id": table_id, **row} for row in rows],
        )
    return execution_id


def add_run(engine: Engine, table_id: int, key: Key, status: str, **columns: Any) -> int:
    values = {
        "table_id": table_id,
        "partition_key": key_text(key),
        "partitions": key,
        "status": status,
        "first_trigger_at": T0,
        "last_trigger_at": T0,
        **columns,
    }
    with Session(engine) as session, session.begin():
        return session.execute(insert(RunRow).values(**values).returning(RunRow.id)).scalar_one()


def add(engine: Engine, model: Any, rows: list[dict[str, Any]]) -> list[int]:
    with Session(engine) as session, session.begin():
        return [session.execute(insert(model).values(**row).returning(model.id)).scalar_one() for row in rows]


def test_definitions_catalog_and_known_tables(engine: Engine, reads: Reads) -> None:
    tables, stamp = reads.definitions()
    assert sorted(tables) == ["tb_a", "tb_b"]  # a deleted table is not live
    assert tables["tb_b"]["dependencies"] == [
        {"dependency_name": "tb_a", "is_required": True, "partition_map": {}}
    ]
    assert stamp == ("r2", at(1))
    catalog = reads.catalog()
    assert sorted(catalog.graph.tables) == ["tb_a", "tb_b"]
    assert catalog.names == {v: k for k, v in catalog.ids.items()}
    assert catalog.revision is not None
    assert reads.table_exists("tb_gone")  # its history remains
    assert not reads.table_exists("tb_never")


def test_an_empty_database_has_no_definitions(engine: Engine) -> None:
    upgrade(engine)
    reads = SqlReads(engine)
    assert reads.definitions() == ({}, None)
    assert reads.catalog().revision is None
    assert reads.runs(None, None, 10) == []


def test_runs_newest_first_with_their_newest_approval(engine: Engine, reads: Reads) -> None:
    table = ids(reads)
    old = add_run(engine, table["tb_a"], {"mes": 1}, "succeeded")
    waiting = add_run(engine, table["tb_b"], {"mes": 1}, "awaiting_approval")
    scheduled = add_run(engine, table["tb_b"], {"mes": 2}, "scheduled", fire_at=at(5))
    _, newest = add(
        engine,
        ApprovalRow,
        [
            {"run_id": waiting, "status": "cancelled", "requested_at": T0},
            {"run_id": waiting, "status": "pending", "requested_at": at(1)},
        ],
    )
    found = reads.runs(None, None, 10)
    assert [(run.id, name, approval) for run, name, approval in found] == [
        (scheduled, "tb_b", None),
        (waiting, "tb_b", newest),
        (old, "tb_a", None),
    ]
    assert found[0][0].fire_at == at(5)
    assert found[0][0].partitions == {"mes": 2}
    assert [run.id for run, _, _ in reads.runs("tb_b", None, 1)] == [scheduled]
    assert [run.id for run, _, _ in reads.runs(None, "awaiting_approval", 10)] == [waiting]
    assert reads.runs("tb_gone", None, 10) == []


def test_run_detail_orders_tasks_and_triggers(engine: Engine, reads: Reads) -> None:
    table = ids(reads)
    first = add_execution(engine, table["tb_a"], {"mes": 1})
    second = add_execution(engine, table["tb_a"], {"mes": 1}, minute=1)
    run_id = add_run(engine, table["tb_b"], {"mes": 1}, "running", attempt=2)
    task = {"run_id": run_id, "type": "glue", "target": "job", "status": "succeeded"}
    later, earlier, retried = add(
        engine,
        TaskDispatchRow,
        [
            {**task, "attempt": 2, "alias": "b"},
            {**task, "attempt": 1, "alias": "a"},
            {**task, "attempt": 2, "alias": "a"},
        ],
    )
    add(engine, ApprovalRow, [{"run_id": run_id, "status": "rejected", "requested_at": T0}])
    (newest,) = add(
        engine,
        ApprovalRow,
        [
            {
                "run_id": run_id,
                "status": "approved",
                "requested_at": at(1),
                "decided_by": "ana",
                "decided_at": at(2),
            }
        ],
    )
    with Session(engine) as session, session.begin():
        session.execute(
            insert(RunTriggerRow), [{"run_id": run_id, "execution_id": e} for e in (second, first)]
        )

    changes = [RunEvent(run_id, "tb_b", {"mes": 1}, None, "scheduled", at=T0, actor="ana")]
    changes.append(RunEvent(run_id, "tb_b", {"mes": 1}, "scheduled", "dispatching", at=at(1)))
    with Session(engine) as session, session.begin():
        rows = [{"run_id": run_id, "created_at": T0, "batch": "b", "detail": e.detail()} for e in changes]
        session.execute(insert(RunEventRow), rows)

    detail = reads.run_detail(run_id)
    assert detail is not None
    run, name, approval, tasks, triggers, events = detail
    assert (run.id, run.status, run.attempt, name) == (run_id, "running", 2, "tb_b")
    assert approval is not None
    assert (approval.id, approval.status, approval.decided_by, approval.decided_at) == (
        newest,
        "approved",
        "ana",
        at(2),
    )
    assert [t.id for t in tasks] == [earlier, later, retried]  # by attempt, then as recorded
    assert triggers == [(first, "tb_a", {"mes": 1}), (second, "tb_a", {"mes": 1})]
    assert events == changes  # the timeline, oldest first, with who asked
    assert reads.run_detail(run_id + 1000) is None


def test_runs_of_key_are_the_last_ones_with_their_newest_approval(engine: Engine, reads: Reads) -> None:
    table = ids(reads)
    key: Key = {"mes": 1}
    runs = [add_run(engine, table["tb_b"], key, "rejected") for _ in range(3)]
    add_run(engine, table["tb_b"], {"mes": 2}, "rejected")  # another key
    approvals = add(
        engine,
        ApprovalRow,
        [
            {"run_id": runs[2], "status": "cancelled", "requested_at": T0},
            {"run_id": runs[2], "status": "rejected", "requested_at": at(1), "decided_by": "ana"},
        ],
    )
    found = reads.runs_of_key(table["tb_b"], key_text(key), 2)
    assert [(run.id, approval.id if approval else None) for run, approval in found] == [
        (runs[2], approvals[1]),
        (runs[1], None),
    ]
    assert reads.runs_of_key(table["tb_a"], key_text(key), 5) == []


def test_approvals_newest_first_with_their_run(engine: Engine, reads: Reads) -> None:
    table = ids(reads)
    runs = [add_run(engine, table["tb_b"], {"mes": m}, "awaiting_approval") for m in (1, 2)]
    pending, decided = add(
        engine,
        ApprovalRow,
        [
            {"run_id": runs[0], "status": "pending", "requested_at": T0},
            {"run_id": runs[1], "status": "approved", "requested_at": T0},
        ],
    )
    found = reads.approvals(None, 10)
    assert [(a.id, a.status, a.run_id, name, key) for a, name, key in found] == [
        (decided, "approved", runs[1], "tb_b", {"mes": 2}),
        (pending, "pending", runs[0], "tb_b", {"mes": 1}),
    ]
    assert [a.id for a, _, _ in reads.approvals("pending", 10)] == [pending]
    assert [a.id for a, _, _ in reads.approvals(None, 1)] == [decided]


def test_executions_newest_first_and_by_id(engine: Engine, reads: Reads) -> None:
    table = ids(reads)
    a = add_execution(engine, table["tb_a"], {"mes": 1}, minute=1)
    b = add_execution(engine, table["tb_b"], {"mes": 1}, source="run", minute=2, by="ana")
    assert reads.executions(None, 10) == [
        (b, "tb_b", {"mes": 1}, "run", at(2), None, "ana"),
        (a, "tb_a", {"mes": 1}, "glue", at(1), None, None),
    ]
    assert [e[0] for e in reads.executions("tb_a", 10)] == [a]
    assert [e[0] for e in reads.executions(None, 1)] == [b]
    assert reads.executions_by_id([a, b + 1000]) == {a: ({"mes": 1}, "glue", at(1))}
    assert reads.executions_by_id([]) == {}


def test_probes_match_values_omitted_values_and_whole_tables(engine: Engine, reads: Reads) -> None:
    catalog = reads.catalog()
    table = catalog.ids
    sul = add_execution(engine, table["tb_a"], {"mes": 1, "regiao": "sul"})
    anywhere = add_execution(engine, table["tb_a"], {"mes": 2})  # omitted regiao: agrees with any
    add_execution(engine, table["tb_a"], {"mes": 3, "regiao": "norte"})
    b = add_execution(engine, table["tb_b"], {"mes": 1})
    probes = [Probe("tb_a", "regiao", "sul")]
    found = reads.probe(probes, table, catalog.names)
    assert sorted(found) == ["tb_a"]
    assert sorted(found["tb_a"], key=lambda e: e.id) == [  # the statement has no order
        Execution(sul, "tb_a", {"mes": 1, "regiao": "sul"}),
        Execution(anywhere, "tb_a", {"mes": 2}),
    ]
    assert reads.probe([Probe("tb_b")], table, catalog.names) == {"tb_b": [Execution(b, "tb_b", {"mes": 1})]}
    # Executions of a table missing from the names (deleted) answer no gate.
    assert reads.probe([Probe("tb_b")], table, {}) == {}
    assert reads.probe([], table, catalog.names) == {}
