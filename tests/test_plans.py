"""The pure planner: table states, digests, plans, field-level diffs and plan files."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.core.plans import (
    PLAN_FORMAT_VERSION,
    FieldChange,
    History,
    Plan,
    TableState,
    apply_actions,
    diff_table,
    digest,
    make_plan,
    state_of,
)
from controller.core.specs import TableSpec
from controller.files.plan_documents import PlanFileError, read_plan_file, write_plan_file

#: A table with one of everything, used as the "before" side of field-level diffs.
FULL: dict[str, Any] = {
    "name": "tb_vendas",
    "description": "Vendas",
    "owner": "squad-vendas",
    "partitions": [
        {"name": "data_venda", "type": "date"},
        {"name": "regiao", "type": "string"},
    ],
    "dependencies": [
        {"dependency_name": "tb_diarias"},
        {"dependency_name": "tb_cambio", "partition_map": {"data_venda": "dt_cotacao"}},
    ],
    "tasks": [
        {"alias": "build", "type": "glue", "target": "job-build", "params": {"--dia": "x"}},
        {"alias": "notify", "type": "lambda", "target": "notifica"},
    ],
}


def table(name: str, **fields: Any) -> TableState:
    """The state of a definition built from a small dict."""
    return state_of(TableSpec.model_validate({"name": name, **fields}))


def full(**overrides: Any) -> TableState:
    """The state of :data:`FULL`, with top-level fields replaced by ``overrides``."""
    return state_of(TableSpec.model_validate({**copy.deepcopy(FULL), **overrides}))


def by_name(*states: TableState) -> dict[str, TableState]:
    return {s["name"]: s for s in states}


def mixed_plan() -> tuple[dict[str, TableState], dict[str, TableState], Plan]:
    """Two deletes, two creates, two updates, one unchanged table (names chosen out of order)."""
    current = by_name(
        table("tb_zeta"),
        table("tb_alpha_old"),
        table("tb_same", description="kept"),
        table("tb_upd_b", debounce_seconds=60),
        table("tb_upd_a", owner="a"),
    )
    desired = by_name(
        table("tb_new_y"),
        table("tb_same", description="kept"),
        table("tb_upd_b", debounce_seconds=300),
        table("tb_new_x", partitions=[{"name": "dia", "type": "date"}]),
        table("tb_upd_a", owner="b"),
    )
    history = {"tb_zeta": History(executions=3, runs=1)}
    return current, desired, make_plan(current, desired, history)


# --- state_of -------------------------------------------------------------------------------------


def test_state_of_fills_defaults_and_drops_version() -> None:
    state = state_of(TableSpec.model_validate({"version": 1, "name": "tb_min"}))
    assert state == {
        "name": "tb_min",
        "description": "",
        "owner": None,
        "requires_approval": False,
        "approvers": [],
        "producers": [],
        "operators": [],
        "debounce_seconds": 60,
        "max_wait_seconds": None,
        "max_concurrent_runs": None,
        "retries": None,
        "partitions": [],
        "dependencies": [],
        "tasks": [],
    }


def test_state_of_is_json_compatible_with_nested_defaults() -> None:
    """Tuples become lists and nested items get their defaults, so a JSON round trip is lossless."""
    state = table(
        "tb_x",
        approvers=["ana", "bia"],
        producers=["arn:aws:iam::123456789012:role/glue-etl"],
        operators=["group:data-platform"],
        partitions=[{"name": "dia", "type": "date"}],
        dependencies=[{"dependency_name": "tb_up"}],
        tasks=[{"alias": "t", "type": "sqs", "target": "q"}],
    )
    assert state["approvers"] == ["ana", "bia"]
    assert isinstance(state["approvers"], list)
    assert state["producers"] == ["arn:aws:iam::123456789012:role/glue-etl"]
    assert state["operators"] == ["group:data-platform"]
    assert all(isinstance(state[people], list) for people in ("producers", "operators"))
    assert state["partitions"] == [{"name": "dia", "type": "date", "is_required": True}]
    assert state["dependencies"] == [{"dependency_name": "tb_up", "is_required": True, "partition_map": {}}]
    assert state["tasks"] == [
        {"alias": "t", "type": "sqs", "target": "q", "params": {}, "timeout_seconds": 86400}
    ]
    assert json.loads(json.dumps(state)) == state


# --- digest ---------------------------------------------------------------------------------------


def test_digest_is_a_sha256_string() -> None:
    value = digest([table("tb_a")])
    assert value.startswith("sha256:")
    assert len(value.removeprefix("sha256:")) == 64
    int(value.removeprefix("sha256:"), 16)


def test_digest_ignores_table_order() -> None:
    a, b, c = table("tb_a"), table("tb_b", owner="x"), table("tb_c", debounce_seconds=5)
    assert digest([a, b, c]) == digest([c, a, b]) == digest(iter([b, c, a]))


def test_digest_ignores_key_order() -> None:
    state = full()
    reordered = {key: state[key] for key in reversed(list(state))}
    reordered["partitions"] = [{k: p[k] for k in reversed(list(p))} for p in state["partitions"]]
    assert list(reordered) != list(state)
    assert digest([reordered]) == digest([state])


def test_digest_of_nothing_differs_from_digest_of_one_table() -> None:
    assert digest([]) != digest([table("tb_a")])
    assert digest([table("tb_a")]) != digest([table("tb_a"), table("tb_b")])


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "tb_outro"},
        {"description": "Outras vendas"},
        {"owner": None},
        {"requires_approval": True},
        {"approvers": ["ana"]},
        {"producers": ["arn:aws:iam::123456789012:role/glue-etl"]},
        {"operators": ["group:data-platform"]},
        {"debounce_seconds": 300},
        {"max_wait_seconds": 3600},
        {"max_concurrent_runs": 2},
        {"retries": {"max_attempts": 3, "backoff_seconds": 300}},
        {"partitions": [{"name": "data_venda", "type": "date"}, {"name": "regiao", "type": "int"}]},
        {"partitions": [{"name": "data_venda", "type": "date", "is_required": False}]},
        {"dependencies": [{"dependency_name": "tb_diarias", "is_required": False}]},
        {"dependencies": [{"dependency_name": "tb_cambio", "partition_map": {"data_venda": "dia"}}]},
        {"tasks": [{"alias": "build", "type": "glue", "target": "job-build", "params": {"--dia": "y"}}]},
        {"tasks": [{"alias": "build", "type": "glue", "target": "job-other"}]},
        {"tasks": [{"alias": "build", "type": "glue", "target": "job-build", "timeout_seconds": 600}]},
    ],
    ids=lambda overrides: ",".join(overrides),
)
def test_digest_differs_when_any_field_differs(overrides: dict[str, Any]) -> None:
    assert digest([full(**overrides)]) != digest([full()])


# --- make_plan ------------------------------------------------------------------------------------


def test_no_changes_gives_no_actions_and_counts_unchanged() -> None:
    states = by_name(table("tb_a"), full(), table("tb_c", owner="x"))
    plan = make_plan(states, copy.deepcopy(states))
    assert plan.actions == []
    assert not plan.has_changes
    assert plan.unchanged == 3
    assert plan.summary() == {"create": 0, "update": 0, "delete": 0, "unchanged": 3}
    assert plan.summary_line() == "No changes. The database matches the definitions."


def test_empty_database_and_empty_definitions() -> None:
    plan = make_plan({}, {})
    assert plan.actions == []
    assert plan.unchanged == 0
    assert plan.desired_digest == plan.database_fingerprint == digest([])


def test_actions_are_deletes_then_creates_then_updates_each_sorted_by_name() -> None:
    _, _, plan = mixed_plan()
    assert [(a.action, a.table) for a in plan.actions] == [
        ("delete", "tb_alpha_old"),
        ("delete", "tb_zeta"),
        ("create", "tb_new_x"),
        ("create", "tb_new_y"),
        ("update", "tb_upd_a"),
        ("update", "tb_upd_b"),
    ]
    assert plan.unchanged == 1


def test_actions_carry_before_and_after_states() -> None:
    current, desired, plan = mixed_plan()
    actions = {a.table: a for a in plan.actions}
    assert actions["tb_zeta"].before == current["tb_zeta"]
    assert actions["tb_zeta"].after is None
    assert actions["tb_new_x"].before is None
    assert actions["tb_new_x"].after == desired["tb_new_x"]
    assert actions["tb_upd_b"].before == current["tb_upd_b"]
    assert actions["tb_upd_b"].after == desired["tb_upd_b"]
    assert actions["tb_upd_b"].changes == (FieldChange("debounce_seconds", "change", 60, 300),)


def test_create_lists_every_scalar_field_and_every_item_as_added() -> None:
    desired = by_name(table("tb_new", partitions=[{"name": "dia", "type": "date"}], owner="eu"))
    (action,) = make_plan({}, desired).actions
    assert action.changes == (
        FieldChange("description", "add", after=""),
        FieldChange("owner", "add", after="eu"),
        FieldChange("requires_approval", "add", after=False),
        FieldChange("approvers", "add", after=[]),
        FieldChange("producers", "add", after=[]),
        FieldChange("operators", "add", after=[]),
        FieldChange("debounce_seconds", "add", after=60),
        FieldChange("max_wait_seconds", "add", after=None),
        FieldChange("max_concurrent_runs", "add", after=None),
        FieldChange("retries", "add", after=None),
        FieldChange("partitions.dia", "add", after={"name": "dia", "type": "date", "is_required": True}),
    )


def test_summary_and_summary_line() -> None:
    current = by_name(table("tb_old"))
    desired = by_name(table("tb_b"), table("tb_a"))
    plan = make_plan(current, desired)
    assert plan.summary() == {"create": 2, "update": 0, "delete": 1, "unchanged": 0}
    assert plan.summary_line() == "Plan: 1 to delete, 2 to create, 0 to update."
    assert plan.has_changes


def test_summary_line_of_the_mixed_plan() -> None:
    _, _, plan = mixed_plan()
    assert plan.summary_line() == "Plan: 2 to delete, 2 to create, 2 to update."


def test_plan_digests_are_those_of_current_and_desired() -> None:
    current, desired, plan = mixed_plan()
    assert plan.database_fingerprint == digest(current.values())
    assert plan.desired_digest == digest(desired.values())
    assert plan.database_fingerprint != plan.desired_digest


def test_deletes_carry_the_history_passed_in_or_an_empty_one() -> None:
    _, _, plan = mixed_plan()
    deletes = {a.table: a.history for a in plan.actions if a.action == "delete"}
    assert deletes == {"tb_zeta": History(3, 1), "tb_alpha_old": History()}
    assert deletes["tb_alpha_old"] is not None and deletes["tb_alpha_old"].empty
    assert all(a.history is None for a in plan.actions if a.action != "delete")


def test_deletes_without_history_argument_have_unknown_history() -> None:
    """A plan against a Git revision knows nothing of executions: history is None, not empty."""
    plan = make_plan(by_name(table("tb_a")), {})
    (action,) = plan.actions
    assert action.history is None


def test_deletes_of_tables_missing_from_the_history_mapping_have_empty_history() -> None:
    plan = make_plan(by_name(table("tb_a")), {}, {})
    (action,) = plan.actions
    assert action.history == History(executions=0, runs=0)


def test_history_describe_uses_singular_and_plural() -> None:
    assert History(3, 1).describe() == "3 executions and 1 run"
    assert History(1, 0).describe() == "1 execution and 0 runs"
    assert not History(0, 1).empty


def test_rename_is_a_delete_plus_a_create() -> None:
    current = by_name(full())
    desired = by_name(full(name="tb_vendas_v2"))
    plan = make_plan(current, desired)
    assert [(a.action, a.table) for a in plan.actions] == [
        ("delete", "tb_vendas"),
        ("create", "tb_vendas_v2"),
    ]
    assert plan.unchanged == 0


def test_apply_actions_round_trips_a_mixed_plan() -> None:
    current, desired, plan = mixed_plan()
    assert apply_actions(current, plan.actions) == desired
    assert apply_actions(current, []) == current


def test_apply_actions_does_not_change_its_input() -> None:
    current, _, plan = mixed_plan()
    snapshot = copy.deepcopy(current)
    apply_actions(current, plan.actions)
    assert current == snapshot


# --- diff_table -----------------------------------------------------------------------------------


def with_items(list_field: str, items: list[dict[str, Any]]) -> TableState:
    return full(**{list_field: items})


def test_identical_states_have_no_changes() -> None:
    assert diff_table(full(), full()) == ()
    assert diff_table(table("tb_a"), table("tb_a")) == ()


def test_scalar_change() -> None:
    assert diff_table(full(), full(debounce_seconds=300)) == (
        FieldChange("debounce_seconds", "change", before=60, after=300),
    )


def test_scalar_changes_follow_the_field_order() -> None:
    changes = diff_table(
        full(),
        full(max_wait_seconds=10, operators=["group:ops"], owner=None, producers=["etl"], approvers=["ana"]),
    )
    assert changes == (
        FieldChange("owner", "change", "squad-vendas", None),
        FieldChange("approvers", "change", [], ["ana"]),
        FieldChange("producers", "change", [], ["etl"]),
        FieldChange("operators", "change", [], ["group:ops"]),
        FieldChange("max_wait_seconds", "change", None, 10),
    )


def test_a_change_of_producers_or_operators_is_one_field_change_of_the_whole_list() -> None:
    """Like approvers: the list is one value (its order is kept, as written), not items by name."""
    role = "arn:aws:iam::123456789012:role/glue-etl"
    before = full(producers=[role], operators=["group:data-platform"])
    assert diff_table(before, full(producers=[role, "ana"], operators=["group:data-platform"])) == (
        FieldChange("producers", "change", [role], [role, "ana"]),
    )
    assert diff_table(before, full(producers=[role])) == (
        FieldChange("operators", "change", ["group:data-platform"], []),
    )


def test_partition_type_changed() -> None:
    after = with_items(
        "partitions", [{"name": "data_venda", "type": "date"}, {"name": "regiao", "type": "int"}]
    )
    assert diff_table(full(), after) == (FieldChange("partitions.regiao.type", "change", "string", "int"),)


def test_partition_made_optional() -> None:
    after = with_items(
        "partitions",
        [{"name": "data_venda", "type": "date"}, {"name": "regiao", "type": "string", "is_required": False}],
    )
    assert diff_table(full(), after) == (FieldChange("partitions.regiao.is_required", "change", True, False),)


def test_partition_added() -> None:
    hora = {"name": "hora", "type": "int", "is_required": True}
    after = with_items("partitions", [*FULL["partitions"], {"name": "hora", "type": "int"}])
    assert diff_table(full(), after) == (FieldChange("partitions.hora", "add", after=hora),)


def test_partition_removed() -> None:
    after = with_items("partitions", [{"name": "data_venda", "type": "date"}])
    assert diff_table(full(), after) == (
        FieldChange(
            "partitions.regiao", "remove", before={"name": "regiao", "type": "string", "is_required": True}
        ),
    )


def test_partition_inserted_in_front_is_not_a_reorder() -> None:
    after = with_items("partitions", [{"name": "hora", "type": "int"}, *FULL["partitions"]])
    changes = diff_table(full(), after)
    assert [(c.field, c.kind) for c in changes] == [("partitions.hora", "add")]


def test_partitions_reordered() -> None:
    after = with_items("partitions", list(reversed(FULL["partitions"])))
    assert diff_table(full(), after) == (
        FieldChange("partitions (order)", "change", ["data_venda", "regiao"], ["regiao", "data_venda"]),
    )


def test_dependency_added() -> None:
    after = with_items("dependencies", [*FULL["dependencies"], {"dependency_name": "tb_promo"}])
    assert diff_table(full(), after) == (
        FieldChange(
            "dependencies.tb_promo",
            "add",
            after={"dependency_name": "tb_promo", "is_required": True, "partition_map": {}},
        ),
    )


def test_dependency_removed() -> None:
    after = with_items("dependencies", [FULL["dependencies"][1]])
    assert diff_table(full(), after) == (
        FieldChange(
            "dependencies.tb_diarias",
            "remove",
            before={"dependency_name": "tb_diarias", "is_required": True, "partition_map": {}},
        ),
    )


def test_dependency_made_optional() -> None:
    after = with_items(
        "dependencies", [{"dependency_name": "tb_diarias", "is_required": False}, FULL["dependencies"][1]]
    )
    assert diff_table(full(), after) == (
        FieldChange("dependencies.tb_diarias.is_required", "change", True, False),
    )


def test_dependency_partition_map_changed() -> None:
    after = with_items(
        "dependencies",
        [FULL["dependencies"][0], {"dependency_name": "tb_cambio", "partition_map": {"data_venda": "dia"}}],
    )
    assert diff_table(full(), after) == (
        FieldChange(
            "dependencies.tb_cambio.partition_map",
            "change",
            {"data_venda": "dt_cotacao"},
            {"data_venda": "dia"},
        ),
    )


def test_task_params_changed() -> None:
    build = {**FULL["tasks"][0], "params": {"--dia": "y", "--extra": "1"}}
    after = with_items("tasks", [build, FULL["tasks"][1]])
    assert diff_table(full(), after) == (
        FieldChange("tasks.build.params", "change", {"--dia": "x"}, {"--dia": "y", "--extra": "1"}),
    )


def test_task_type_and_target_changed_are_reported_in_attribute_order() -> None:
    build = {"alias": "build", "type": "sqs", "target": "fila", "params": {"--dia": "x"}}
    after = with_items("tasks", [build, FULL["tasks"][1]])
    assert diff_table(full(), after) == (
        FieldChange("tasks.build.target", "change", "job-build", "fila"),
        FieldChange("tasks.build.type", "change", "glue", "sqs"),
    )


def test_changes_are_scalars_then_partitions_then_dependencies_then_tasks() -> None:
    after = full(
        tasks=[FULL["tasks"][0]],
        dependencies=[FULL["dependencies"][0]],
        partitions=[FULL["partitions"][0]],
        description="nova",
    )
    assert [c.field for c in diff_table(full(), after)] == [
        "description",
        "partitions.regiao",
        "dependencies.tb_cambio",
        "tasks.notify",
    ]


# --- Plan.as_dict ---------------------------------------------------------------------------------


def test_plan_as_dict_is_json_and_complete() -> None:
    current, desired, plan = mixed_plan()
    plan.revision = "abc123"
    plan.created_at = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    document = json.loads(json.dumps(plan.as_dict()))
    assert document["format_version"] == PLAN_FORMAT_VERSION == 1
    assert document["revision"] == "abc123"
    assert document["created_at"] == "2024-05-01T12:30:00+00:00"
    assert document["desired_digest"] == digest(desired.values())
    assert document["database_fingerprint"] == digest(current.values())
    assert document["summary"] == {"create": 2, "update": 2, "delete": 2, "unchanged": 1}
    assert [(a["action"], a["table"]) for a in document["actions"]] == [
        (a.action, a.table) for a in plan.actions
    ]
    update = document["actions"][-1]
    assert update["changes"] == [{"field": "debounce_seconds", "kind": "change", "before": 60, "after": 300}]
    assert update["before"] == current["tb_upd_b"]
    assert update["after"] == desired["tb_upd_b"]


def test_plan_as_dict_without_revision_or_date() -> None:
    document = make_plan({}, {}).as_dict()
    assert document["revision"] is None
    assert document["created_at"] is None
    assert document["actions"] == []


def test_history_appears_only_on_deletes() -> None:
    _, _, plan = mixed_plan()
    actions = plan.as_dict()["actions"]
    with_history = {a["table"]: a["history"] for a in actions if "history" in a}
    assert with_history == {
        "tb_alpha_old": {"executions": 0, "runs": 0},
        "tb_zeta": {"executions": 3, "runs": 1},
    }
    assert all(a["action"] == "delete" for a in actions if "history" in a)


# --- plan files -----------------------------------------------------------------------------------


def test_plan_file_round_trip(tmp_path: Path) -> None:
    _, _, plan = mixed_plan()
    plan.revision = "0123abcd"
    plan.created_at = datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)
    path = tmp_path / "plan.json"
    write_plan_file(plan, path)
    read = read_plan_file(path)
    assert read.actions == plan.actions
    assert read.desired_digest == plan.desired_digest
    assert read.database_fingerprint == plan.database_fingerprint
    assert read.revision == plan.revision
    assert read.created_at == plan.created_at
    assert read.unchanged == plan.unchanged
    assert read.summary() == plan.summary()


def test_plan_file_round_trip_keeps_list_diffs(tmp_path: Path) -> None:
    """Reorders, item adds and nested changes survive JSON (lists and dicts compare equal)."""
    after = full(
        partitions=list(reversed(FULL["partitions"])),
        tasks=[{**FULL["tasks"][0], "params": {"--dia": "z"}}],
    )
    plan = make_plan(by_name(full()), by_name(after))
    path = tmp_path / "plan.json"
    write_plan_file(plan, path)
    assert read_plan_file(path).actions == plan.actions
    assert read_plan_file(path).created_at is None


def test_plan_file_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    document = make_plan({}, by_name(table("tb_a"))).as_dict()
    document["format_version"] = 2
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(PlanFileError, match="plan format 2; this flux-control reads format 1"):
        read_plan_file(path)


def test_plan_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("this is not { json", encoding="utf-8")
    with pytest.raises(PlanFileError, match=r"^cannot read plan file .*plan\.json: "):
        read_plan_file(path)


def test_missing_plan_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanFileError, match="cannot read plan file"):
        read_plan_file(tmp_path / "absent.json")


def test_plan_file_without_actions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    document = make_plan({}, {}).as_dict()
    del document["actions"]
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(PlanFileError, match=r"is not a flux-control plan: actions: Field required"):
        read_plan_file(path)


def test_plan_file_that_is_a_json_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(PlanFileError, match="is not a flux-control plan: document: "):
        read_plan_file(path)
