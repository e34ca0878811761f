"""Plans for people: terminal text (with and without colour) and Markdown PR comments."""

from __future__ import annotations

import re
from typing import Any

import pytest

from controller.cli.plan_rendering import MARKDOWN_LIMIT, plan_lines, render_markdown, render_text
from controller.core.plans import History, Plan, TableState, make_plan, state_of
from controller.core.specs import TableSpec

ANSI = "\x1b["
CLOSING = "```\n\n</details>\n"


def table(name: str, **fields: Any) -> TableState:
    return state_of(TableSpec.model_validate({"name": name, **fields}))


def by_name(*states: TableState) -> dict[str, TableState]:
    return {s["name"]: s for s in states}


def mixed_plan(history: History | None = None) -> Plan:
    """One delete (``tb_old``), one create (``tb_new``), one update (``tb_upd``), one unchanged."""
    current = by_name(
        table("tb_upd", debounce_seconds=60, partitions=[{"name": "dia", "type": "date"}]),
        table("tb_old"),
        table("tb_same"),
    )
    desired = by_name(
        table("tb_same"),
        table("tb_new", owner="squad", partitions=[{"name": "dia", "type": "date"}]),
        table(
            "tb_upd",
            debounce_seconds=300,
            partitions=[{"name": "dia", "type": "int"}, {"name": "regiao", "type": "string"}],
        ),
    )
    return make_plan(current, desired, {"tb_old": history} if history else None)


def update_plan(before: dict[str, Any], after: dict[str, Any]) -> Plan:
    return make_plan(by_name(table("tb_x", **before)), by_name(table("tb_x", **after)))


def field_lines(text: str) -> list[str]:
    """The stripped per-field lines (indented by six spaces) of a rendered plan."""
    return [line.strip() for line in text.splitlines() if line.startswith("      ")]


def huge_plan(tables: int = 3000) -> Plan:
    desired = by_name(*(table(f"tb_{i:05d}", description="descrição " * 30) for i in range(tables)))
    return make_plan({}, desired)


# --- render_text: content -------------------------------------------------------------------------


def test_text_of_a_small_plan_in_full() -> None:
    """One delete with history and one update: headings, signs, indentation and summary line."""
    current = by_name(table("tb_a", debounce_seconds=60), table("tb_gone"))
    desired = by_name(table("tb_a", debounce_seconds=300))
    plan = make_plan(current, desired, {"tb_gone": History(executions=3, runs=1)})
    assert render_text(plan, colour=False) == (
        "Flux Control will perform the following actions:\n"
        "\n"
        "  # tb_gone will be deleted (it has 3 executions and 1 run; its history is kept)\n"
        "  - table tb_gone\n"
        "\n"
        "  # tb_a will be updated in place\n"
        "  ~ table tb_a\n"
        "      ~ debounce_seconds: 60 → 300\n"
        "\n"
        "Plan: 1 to delete, 0 to create, 1 to update.\n"
    )


def test_text_lists_deletions_first_then_creations_then_updates() -> None:
    text = render_text(mixed_plan(), colour=False)
    deleted = text.index("# tb_old will be deleted")
    created = text.index("# tb_new will be created")
    updated = text.index("# tb_upd will be updated in place")
    assert deleted < created < updated


def test_text_has_a_sign_line_per_table() -> None:
    lines = render_text(mixed_plan(), colour=False).splitlines()
    assert "  - table tb_old" in lines
    assert "  + table tb_new" in lines
    assert "  ~ table tb_upd" in lines
    assert not any("tb_same" in line for line in lines), "unchanged tables are not shown"


def test_text_of_a_creation_shows_every_field_as_added_and_aligned() -> None:
    plan = make_plan(
        {}, by_name(table("tb_new", owner="squad", partitions=[{"name": "dia", "type": "date"}]))
    )
    assert field_lines(render_text(plan, colour=False)) == [
        '+ description         = ""',
        '+ owner               = "squad"',
        "+ requires_approval   = false",
        "+ approvers           = []",
        "+ producers           = []",
        "+ operators           = []",
        "+ debounce_seconds    = 60",
        "+ max_wait_seconds    = null",
        "+ max_concurrent_runs = null",
        "+ retries             = null",
        "+ partition dia (date, required)",
    ]


def test_text_and_markdown_show_a_change_of_producers_and_operators() -> None:
    role = "arn:aws:iam::123456789012:role/glue-etl"
    plan = update_plan(
        {"producers": [role], "operators": ["group:data-platform"]},
        {"producers": [role, "arn:aws:iam::123456789012:user/ana"], "operators": []},
    )
    expected = [
        f'~ producers: ["{role}"] → ["{role}", "arn:aws:iam::123456789012:user/ana"]',
        '~ operators: ["group:data-platform"] → []',
    ]
    assert field_lines(render_text(plan, colour=False)) == expected
    markdown = render_markdown(plan)
    assert all(line in markdown for line in expected)


def test_text_of_an_update_shows_each_field_change() -> None:
    lines = field_lines(render_text(mixed_plan(), colour=False))
    assert "~ debounce_seconds: 60 → 300" in lines
    assert '~ partitions.dia.type: "date" → "int"' in lines
    assert "+ partition regiao (string, required)" in lines


def test_text_shows_removed_items_with_minus() -> None:
    text = render_text(
        update_plan(
            {
                "partitions": [{"name": "dia", "type": "date"}, {"name": "regiao", "type": "string"}],
                "dependencies": [{"dependency_name": "tb_up", "partition_map": {"dia": "dt"}}],
                "tasks": [{"alias": "run", "type": "glue", "target": "job-run"}],
            },
            {"partitions": [{"name": "dia", "type": "date"}]},
        ),
        colour=False,
    )
    assert field_lines(text) == [
        "- partition regiao (string, required)",
        '- dependency tb_up (required, partition_map {"dia": "dt"})',
        "- task run (glue → job-run)",
    ]


def test_text_shows_added_dependency_and_task_and_nested_changes() -> None:
    text = render_text(
        update_plan(
            {
                "dependencies": [{"dependency_name": "tb_a"}],
                "tasks": [{"alias": "run", "type": "glue", "target": "job-run", "params": {"n": 1}}],
            },
            {
                "dependencies": [
                    {"dependency_name": "tb_a", "is_required": False},
                    {"dependency_name": "tb_b"},
                ],
                "tasks": [
                    {"alias": "run", "type": "glue", "target": "job-run", "params": {"n": 2}},
                    {"alias": "tell", "type": "sqs", "target": "queue"},
                ],
            },
        ),
        colour=False,
    )
    assert field_lines(text) == [
        "~ dependencies.tb_a.is_required: true → false",
        "+ dependency tb_b (required)",
        '~ tasks.run.params: {"n": 1} → {"n": 2}',
        "+ task tell (sqs → queue)",
    ]


def test_text_shows_a_reorder() -> None:
    parts = [{"name": "dia", "type": "date"}, {"name": "regiao", "type": "string"}]
    text = render_text(update_plan({"partitions": parts}, {"partitions": parts[::-1]}), colour=False)
    assert field_lines(text) == ['~ partitions (order): ["dia", "regiao"] → ["regiao", "dia"]']


def test_text_delete_heading_mentions_the_history() -> None:
    text = render_text(mixed_plan(History(executions=3, runs=1)), colour=False)
    assert "  # tb_old will be deleted (it has 3 executions and 1 run; its history is kept)\n" in text


def test_text_delete_heading_says_no_history() -> None:
    text = render_text(mixed_plan(History(0, 0)), colour=False)
    assert "  # tb_old will be deleted (no history)\n" in text


def test_text_delete_heading_says_nothing_when_history_is_unknown() -> None:
    text = render_text(mixed_plan(), colour=False)
    assert "  # tb_old will be deleted\n" in text


def test_text_ends_with_the_summary_line() -> None:
    plan = mixed_plan()
    text = render_text(plan, colour=False)
    assert text.endswith("\nPlan: 1 to delete, 1 to create, 1 to update.\n")
    assert text.splitlines()[-1] == plan.summary_line()


def test_text_of_no_changes() -> None:
    states = by_name(table("tb_a"))
    text = render_text(make_plan(states, states), colour=False)
    assert text == "No changes. The database matches the definitions.\n"


def test_text_starts_with_the_notes() -> None:
    plan = mixed_plan()
    plan.notes.append("Note: 2 definitions were skipped.")
    text = render_text(plan, colour=False)
    assert text.startswith("Note: 2 definitions were skipped.\nFlux Control will perform")


# --- render_text: colour --------------------------------------------------------------------------


@pytest.mark.parametrize("colour", [False, None])
def test_text_without_colour_has_no_ansi_codes(colour: bool | None) -> None:
    text = render_text(mixed_plan(History(3, 1)), colour=colour)
    assert ANSI not in text
    assert "\x1b" not in text


def test_text_with_colour_has_ansi_codes() -> None:
    text = render_text(mixed_plan(History(3, 1)), colour=True)
    assert ANSI in text
    assert "\x1b[31m  - table tb_old" in text, "deletions are red"
    assert "\x1b[32m  + table tb_new" in text, "creations are green"
    assert "\x1b[33m  ~ table tb_upd" in text, "updates are yellow"


def test_colour_only_adds_escape_codes() -> None:
    plan = mixed_plan(History(3, 1))
    coloured = render_text(plan, colour=True)
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == render_text(plan, colour=False)


# --- render_markdown ------------------------------------------------------------------------------


def test_markdown_summary_table_comes_before_the_details() -> None:
    markdown = render_markdown(mixed_plan())
    assert markdown.startswith("### Flux Control plan\n")
    table_at = markdown.index("| action | tables |")
    details_at = markdown.index("<details><summary>Details</summary>")
    assert table_at < details_at
    for row in ("| 🗑️ delete | 1 |", "| ➕ create | 1 |", "| ✏️ update | 1 |", "| unchanged | 1 |"):
        assert row in markdown[:details_at]


def test_markdown_details_hold_the_diff_lines() -> None:
    plan = mixed_plan()
    markdown = render_markdown(plan)
    block = markdown.split("```diff\n", 1)[1].split("\n```", 1)[0]
    assert block.split("\n") == [line.plain() for line in plan_lines(plan)]
    assert markdown.endswith(CLOSING)
    assert "truncated" not in markdown


def test_markdown_title_is_used() -> None:
    assert render_markdown(mixed_plan(), title="Plan for prod").startswith("### Plan for prod\n")


def test_markdown_calls_out_deletions_with_history() -> None:
    markdown = render_markdown(mixed_plan(History(executions=3, runs=1)))
    deletions = next(line for line in markdown.splitlines() if line.startswith("**Deletions:**"))
    assert deletions == "**Deletions:** `tb_old` (3 executions and 1 run; needs `--allow-delete`)"
    assert markdown.index("**Deletions:**") < markdown.index("<details>")


def test_markdown_calls_out_deletions_without_history_without_allow_delete() -> None:
    markdown = render_markdown(mixed_plan())
    assert "**Deletions:** `tb_old`\n" in markdown
    assert "--allow-delete" not in markdown


def test_markdown_lists_every_deletion() -> None:
    current = by_name(table("tb_b"), table("tb_a"))
    markdown = render_markdown(make_plan(current, {}, {"tb_b": History(0, 2)}))
    assert "**Deletions:** `tb_a`, `tb_b` (0 executions and 2 runs; needs `--allow-delete`)\n" in markdown


def test_markdown_without_deletions_has_no_deletion_note() -> None:
    markdown = render_markdown(make_plan({}, by_name(table("tb_new"))))
    assert "Deletions" not in markdown
    assert "| 🗑️ delete | 0 |" in markdown


def test_markdown_of_no_changes() -> None:
    states = by_name(table("tb_a"), table("tb_b"))
    markdown = render_markdown(make_plan(states, states))
    assert "**No changes. The database matches the definitions.**" in markdown
    assert "<details>" not in markdown
    assert "```" not in markdown


def test_markdown_of_no_changes_against_a_revision_names_it() -> None:
    states = by_name(table("tb_a"))
    plan = make_plan(states, states)
    plan.baseline = "origin/main"
    assert "**No changes: the definitions match those at origin/main.**" in render_markdown(plan)


def test_markdown_of_a_huge_plan_is_truncated_and_well_formed() -> None:
    plan = huge_plan()
    full_size = sum(len(line.plain()) + 1 for line in plan_lines(plan))
    assert full_size > 10 * MARKDOWN_LIMIT, "the plan must really be too big to show whole"
    markdown = render_markdown(plan)
    assert len(markdown) < 60_000
    assert markdown.endswith(CLOSING)
    assert markdown.count("```") == 2
    assert markdown.count("<details>") == 1
    assert markdown.count("</details>") == 1
    assert "| ➕ create | 3000 |" in markdown
    notice = re.search(r"… truncated: (\d+) more lines\. Run `flux-control plan` locally", markdown)
    assert notice is not None
    shown = markdown.split("```diff\n", 1)[1].split("\n… truncated", 1)[0].split("\n")
    assert len(shown) + int(notice.group(1)) == len(plan_lines(plan)), "the notice counts what was cut"


def test_markdown_truncation_notice_is_inside_the_code_block() -> None:
    markdown = render_markdown(huge_plan(300))
    before_closing = markdown[: -len(CLOSING)]
    assert before_closing.rstrip("\n").splitlines()[-1].startswith("… truncated:")


def test_markdown_of_a_small_plan_is_not_truncated() -> None:
    markdown = render_markdown(huge_plan(5))
    assert "truncated" not in markdown
    assert "# tb_00004 will be created" in markdown


@pytest.mark.parametrize("limit", [1_500, 5_000, 20_000])
def test_markdown_honours_the_limit(limit: int) -> None:
    plan = huge_plan(200)
    markdown = render_markdown(plan, limit=limit)
    assert len(markdown) <= limit
    assert "truncated" in markdown
    assert markdown.endswith(CLOSING)


def test_markdown_larger_limit_shows_more() -> None:
    plan = huge_plan(200)
    small, large = render_markdown(plan, limit=5_000), render_markdown(plan, limit=20_000)
    assert len(small) < len(large)
    assert large.startswith(small.split("… truncated")[0])


def test_markdown_with_a_generous_limit_is_whole() -> None:
    plan = huge_plan(200)
    markdown = render_markdown(plan, limit=10_000_000)
    assert "truncated" not in markdown
    assert "# tb_00199 will be created" in markdown


def test_markdown_of_a_huge_deletion_plan_stays_under_the_limit() -> None:
    current = by_name(*(table(f"tb_{i:05d}") for i in range(3000)))
    history = {name: History(executions=3, runs=1) for name in current}
    markdown = render_markdown(make_plan(current, {}, history))
    assert len(markdown) < MARKDOWN_LIMIT
    assert markdown.endswith(CLOSING)
