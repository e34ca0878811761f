"""Apply and plan against real databases (SQLite and PostgreSQL): results, rails and statement counts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

from controller.core.plans import TableState, digest
from controller.db.base import Base
from controller.db.definition_models import AuditEntry, ReconcileRevision, TableRow
from controller.db.definitions_store import read_state
from controller.db.migrate import upgrade
from controller.db.run_models import ExecutionRow
from controller.reconciler import ApplyOutcome, ReconcileError, apply, plan
from tests.factories import StatementLog, generated, states, table_doc

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def do_apply(engine: Engine, desired: dict[str, TableState], **kwargs: Any) -> ApplyOutcome:
    options: dict[str, Any] = {"revision": "abc123", "actor": "tester", "now": NOW}
    return apply(engine, desired=desired, **(options | kwargs))


def current(engine: Engine) -> dict[str, TableState]:
    with Session(engine) as session:
        return read_state(session).tables


def add_execution(engine: Engine, table: str) -> None:
    with Session(engine) as session, session.begin():
        table_id = session.execute(select(TableRow.id).where(TableRow.name == table)).scalar_one()
        session.add(
            ExecutionRow(table_id=table_id, partition_key="dt=2026-01-01", partitions={}, source="test")
        )


# --- schema --------------------------------------------------------------------------------------------


def test_migrations_and_models_agree(engine: Engine) -> None:
    upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_apply_on_an_empty_database_migrates_first(engine: Engine) -> None:
    outcome = do_apply(engine, states([table_doc("a")]))
    assert outcome.applied
    assert set(current(engine)) == {"a"}


def test_an_outdated_schema_is_refused_with_what_to_do(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(ReconcileError, match=r"run `flux-control db upgrade` first"):
        plan(engine, states([table_doc("a")]))


# --- results -------------------------------------------------------------------------------------------


def test_apply_makes_the_database_equal_to_the_definitions(engine: Engine) -> None:
    desired = states(generated(30))
    do_apply(engine, desired)
    assert current(engine) == desired


def test_apply_records_revision_actor_time_digest_and_summary(engine: Engine) -> None:
    desired = states(generated(3))
    outcome = do_apply(engine, desired)
    with Session(engine) as session:
        revision = session.get(ReconcileRevision, outcome.revision_id)
        assert revision is not None
        assert (revision.revision, revision.actor, revision.applied_at) == ("abc123", "tester", NOW)
        assert revision.desired_digest == digest(desired.values())
        assert revision.summary == {"create": 3, "update": 0, "delete": 0, "unchanged": 0}
        audit = session.execute(select(AuditEntry.action, AuditEntry.table_name)).all()
        assert sorted(audit) == [
            ("table.create", "t00000"),
            ("table.create", "t00001"),
            ("table.create", "t00002"),
        ]


def test_reapplying_unchanged_definitions_writes_nothing(engine: Engine) -> None:
    desired = states(generated(20))
    do_apply(engine, desired)
    with StatementLog(engine) as log:
        outcome = do_apply(engine, desired)
    assert not outcome.applied
    assert log.writes() == []
    assert log.reads()  # it did look


FIELD_CHANGES: dict[str, dict[str, Any]] = {
    "partition type": {"partitions": [{"name": "dt", "type": "string"}]},
    "partition made optional": {"partitions": [{"name": "dt", "type": "date", "is_required": False}]},
    "dependency added": {"dependencies": [{"dependency_name": "up"}, {"dependency_name": "other"}]},
    "dependency removed": {"dependencies": []},
    "dependency made optional": {"dependencies": [{"dependency_name": "up", "is_required": False}]},
    "task params changed": {
        "tasks": [{"alias": "t", "type": "glue", "target": "job", "params": {"--x": "2"}}]
    },
    "task removed": {"tasks": []},
    "debounce changed": {"debounce_seconds": 900},
}


@pytest.mark.parametrize("change", list(FIELD_CHANGES), ids=list(FIELD_CHANGES))
def test_field_level_changes_are_planned_and_applied(engine: Engine, change: str) -> None:
    base = [
        table_doc("up"),
        table_doc("other"),
        table_doc(
            "down",
            dependencies=[{"dependency_name": "up"}],
            tasks=[{"alias": "t", "type": "glue", "target": "job", "params": {"--x": "1"}}],
        ),
    ]
    do_apply(engine, states(base))
    changed = [*base[:2], {**base[2], **FIELD_CHANGES[change]}]
    proposed, _ = plan(engine, states(changed))
    assert [(a.action, a.table) for a in proposed.actions] == [("update", "down")]
    assert proposed.actions[0].changes  # field-level detail
    do_apply(engine, states(changed))
    assert current(engine) == states(changed)


def test_a_rename_is_a_delete_and_a_create_and_the_delete_is_protected(engine: Engine) -> None:
    do_apply(engine, states([table_doc("old_name"), table_doc("keep")]))
    add_execution(engine, "old_name")
    renamed = states([table_doc("new_name"), table_doc("keep")])
    proposed, _ = plan(engine, renamed)
    assert [(a.action, a.table) for a in proposed.actions] == [("delete", "old_name"), ("create", "new_name")]
    with pytest.raises(ReconcileError, match=r"'old_name' has 1 execution and 0 runs.*--allow-delete"):
        do_apply(engine, renamed)
    assert set(current(engine)) == {"old_name", "keep"}
    do_apply(engine, renamed, allow_delete=True)
    assert set(current(engine)) == {"new_name", "keep"}


def test_a_deleted_table_keeps_its_history_and_revives_with_the_same_id(engine: Engine) -> None:
    do_apply(engine, states([table_doc("a"), table_doc("b")]))
    add_execution(engine, "a")
    with Session(engine) as session:
        first_id = session.execute(select(TableRow.id).where(TableRow.name == "a")).scalar_one()
    do_apply(engine, states([table_doc("b")]), allow_delete=True)
    with Session(engine) as session:
        row = session.execute(select(TableRow).where(TableRow.name == "a")).scalar_one()
        assert row.deleted_at == NOW
        assert session.execute(select(func.count()).select_from(ExecutionRow)).scalar() == 1
    do_apply(engine, states([table_doc("a", description="back"), table_doc("b")]))
    with Session(engine) as session:
        row = session.execute(select(TableRow).where(TableRow.name == "a")).scalar_one()
        assert (row.id, row.deleted_at, row.description) == (first_id, None, "back")
    assert current(engine)["a"]["description"] == "back"


def test_tables_without_history_are_deleted_without_the_flag(engine: Engine) -> None:
    do_apply(engine, states([table_doc("a"), table_doc("b")]))
    outcome = do_apply(engine, states([table_doc("b")]))
    assert outcome.plan.summary()["delete"] == 1
    assert set(current(engine)) == {"b"}


def test_an_empty_definition_set_never_deletes_everything(engine: Engine) -> None:
    do_apply(engine, states([table_doc("a"), table_doc("b")]))
    with pytest.raises(ReconcileError, match="refusing to delete all 2 tables"):
        do_apply(engine, {}, allow_delete=True)
    assert set(current(engine)) == {"a", "b"}


def test_a_stale_saved_plan_is_refused(engine: Engine) -> None:
    do_apply(engine, states([table_doc("a")]))
    saved, _ = plan(engine, states([table_doc("a", description="v2")]))
    do_apply(engine, states([table_doc("a", description="changed meanwhile")]))
    with pytest.raises(ReconcileError, match="the plan is stale"):
        apply(engine, saved_plan=saved, revision="r", actor="x", now=NOW)
    assert current(engine)["a"]["description"] == "changed meanwhile"


def test_a_saved_plan_is_applied_exactly(engine: Engine) -> None:
    do_apply(engine, states([table_doc("a"), table_doc("b")]))
    target = states([table_doc("a", debounce_seconds=5), table_doc("c")])
    saved, _ = plan(engine, target)
    outcome = apply(engine, saved_plan=saved, revision="r", actor="x", now=NOW)
    assert outcome.plan.summary() == {"create": 1, "update": 1, "delete": 1, "unchanged": 0}
    assert current(engine) == target


def test_an_error_halfway_through_apply_leaves_the_database_as_before(engine: Engine) -> None:
    do_apply(engine, states(generated(10)))
    before = _dump(engine)

    def explode(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TABLE_TASKS"):
            raise RuntimeError("injected failure")

    event.listen(engine, "before_cursor_execute", explode)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            do_apply(engine, states(generated(12, salt=" v2")))
    finally:
        event.remove(engine, "before_cursor_execute", explode)
    assert _dump(engine) == before


def _dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    names = [
        "tables",
        "table_partitions",
        "table_dependencies",
        "table_tasks",
        "reconcile_revisions",
        "audit_log",
    ]
    with engine.connect() as connection:
        return {
            name: sorted(map(tuple, connection.execute(text(f"SELECT * FROM {name}"))), key=repr)
            for name in names
        }


# --- statement counts ----------------------------------------------------------------------------------


def _plan_statements(engine: Engine, count: int) -> int:
    desired = states(generated(count))
    do_apply(engine, desired)
    changed = states(generated(count, salt=" v2"))
    with StatementLog(engine) as log:
        plan(engine, changed)
    return len(log.statements)


def _apply_statements(engine: Engine, count: int, salt: str) -> tuple[int, int]:
    with StatementLog(engine) as log:
        do_apply(engine, states(generated(count, salt=salt)))
    return len(log.statements), len(log.writes())


def test_plan_reads_the_database_in_a_constant_number_of_queries(engine: Engine) -> None:
    small = _plan_statements(engine, 10)
    with engine.begin() as connection:
        for name in ("audit_log", "table_tasks", "table_dependencies", "table_partitions", "tables"):
            connection.execute(text(f"DELETE FROM {name}"))
    large = _plan_statements(engine, 1000)
    assert small == large
    assert large <= 12


def test_apply_uses_bulk_statements(engine: Engine) -> None:
    upgrade(engine)
    small_total, small_writes = _apply_statements(engine, 10, "")
    updated_small = _apply_statements(engine, 10, " v2")
    with engine.begin() as connection:
        for name in ("audit_log", "table_tasks", "table_dependencies", "table_partitions", "tables"):
            connection.execute(text(f"DELETE FROM {name}"))
    large_total, large_writes = _apply_statements(engine, 1000, "")
    updated_large = _apply_statements(engine, 1000, " v2")
    # insertmanyvalues pages rows in batches, so 1,000 tables may take a few more INSERTs than 10.
    assert large_writes - small_writes <= 6
    assert large_total - small_total <= 6
    assert updated_large[0] - updated_small[0] <= 6
    assert large_total <= 40


# --- any_of groups and http task secrets (issue 20) ------------------------------------------------------


def grouped(required: bool = True, members: tuple[str, ...] = ("full", "delta")) -> list[dict[str, Any]]:
    """``d`` needs ``a`` and one of ``members`` (``delta`` through its own ``day``), and posts to a hook."""
    maps = {"delta": {"dt": "day"}}
    group = [{"dependency_name": m, "partition_map": maps.get(m, {})} for m in members]
    return [
        table_doc("a"),
        table_doc("full"),
        table_doc("delta", partitions=[{"name": "day", "type": "date"}]),
        table_doc("other"),
        table_doc(
            "d",
            dependencies=[{"dependency_name": "a"}, {"any_of": group, "is_required": required}],
            tasks=[
                {
                    "alias": "hook",
                    "type": "http",
                    "target": "https://hooks.example.com/d",
                    "auth_secret": "hook",
                },
                {"alias": "bus", "type": "eventbridge", "target": "team-bus"},
            ],
        ),
    ]


def test_a_group_and_an_auth_secret_round_trip_through_the_database(engine: Engine) -> None:
    desired = states(grouped())
    do_apply(engine, desired)
    assert current(engine) == desired
    assert current(engine)["d"]["dependencies"][1] == {
        "any_of": [
            {"dependency_name": "full", "partition_map": {}},
            {"dependency_name": "delta", "partition_map": {"dt": "day"}},
        ],
        "is_required": True,
    }
    assert plan(engine, desired)[0].actions == []


def test_a_changed_group_is_planned_field_by_field_and_applied(engine: Engine) -> None:
    do_apply(engine, states(grouped()))
    reordered = states(grouped(required=False, members=("delta", "full")))
    (action,) = plan(engine, reordered)[0].actions
    assert [(c.field, c.kind) for c in action.changes] == [
        ("dependencies.any_of(delta, full).any_of", "change"),
        ("dependencies.any_of(delta, full).is_required", "change"),
    ]
    do_apply(engine, reordered)
    assert current(engine) == reordered
    widened = states(grouped(members=("full", "delta", "other")))
    (action,) = plan(engine, widened)[0].actions
    assert [(c.field, c.kind) for c in action.changes] == [
        ("dependencies.any_of(delta, full)", "remove"),
        ("dependencies.any_of(delta, full, other)", "add"),
    ]
    do_apply(engine, widened)
    assert current(engine) == widened
