"""Plans for people: terminal text in the manner of ``terraform plan``, and Markdown for PR comments."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import click

from controller.core.plans import FieldChange, Plan, TableAction
from controller.core.terminal_text import printable

MARKDOWN_LIMIT = 60_000
_COLOURS = {"-": "red", "+": "green", "~": "yellow", "#": None, " ": None}
_ITEM_NAMES = {"partitions": "partition", "dependencies": "dependency", "tasks": "task"}
_HEADINGS = {
    "delete": "will be deleted",
    "create": "will be created",
    "update": "will be updated in place",
}


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a rendered plan: a sign (``+ - ~ #`` or space), indentation and text."""

    sign: str
    indent: int
    text: str

    def plain(self) -> str:
        """The line as printed; values in it (descriptions, params) cannot forge another line."""
        return " " * self.indent + (f"{self.sign} " if self.sign != " " else "") + printable(self.text)


def plan_lines(plan: Plan) -> list[Line]:
    """Every action of ``plan``, deletions first, each with its field-level changes."""
    lines: list[Line] = []
    for action in plan.actions:
        heading = f"{action.table} {_HEADINGS[action.action]}"
        if action.action == "delete" and action.history is not None:
            history = action.history
            heading += (
                f" (it has {history.describe()}; its history is kept)"
                if not history.empty
                else " (no history)"
            )
        lines.append(Line("#", 2, heading))
        lines.append(
            Line({"delete": "-", "create": "+", "update": "~"}[action.action], 2, f"table {action.table}")
        )
        lines.extend(_change_lines(action))
        lines.append(Line(" ", 0, ""))
    return lines


def render_text(plan: Plan, *, colour: bool | None = False) -> str:
    """The plan as terminal text; ANSI colours only when ``colour`` is true (callers pass isatty())."""
    out = [printable(note, lines=True) for note in plan.notes]
    if plan.actions:
        out.append("Flux Control will perform the following actions:\n")
    for line in plan_lines(plan):
        fg = _COLOURS.get(line.sign)
        out.append(click.style(line.plain(), fg=fg) if fg else line.plain())
    out.append(plan.summary_line())
    text = "\n".join(out) + "\n"
    return text if colour else click.unstyle(text)


def render_markdown(
    plan: Plan, *, title: str = "Flux Control plan", limit: int = MARKDOWN_LIMIT, graph: str | None = None
) -> str:
    """A PR comment: summary table first, then a Mermaid ``graph`` (if given), then collapsible
    details, kept under ``limit`` characters (the graph is dropped before the summary is)."""
    summary = plan.summary()
    head = [f"### {title}", ""]
    if not plan.actions:
        head.append(f"**{plan.summary_line()}**")
        return "\n".join(head) + "\n"
    head += [
        "| action | tables |",
        "|---|---:|",
        f"| 🗑️ delete | {summary['delete']} |",
        f"| ➕ create | {summary['create']} |",
        f"| ✏️ update | {summary['update']} |",
        f"| unchanged | {summary['unchanged']} |",
        "",
    ]
    deletions = [a for a in plan.actions if a.action == "delete"]
    if deletions:
        head.append("**Deletions:** " + _bounded_list([_deletion_note(a) for a in deletions], limit // 4))
        head.append("")
    if graph and len(graph) < limit // 3:
        head += [
            "Changed tables and everything downstream of them:",
            "",
            "```mermaid",
            graph.rstrip("\n"),
            "```",
            "",
        ]
    opening = ["<details><summary>Details</summary>", "", "```diff"]
    closing = ["```", "", "</details>", ""]
    body = [line.plain() for line in plan_lines(plan)]
    fixed = len("\n".join(head + opening + closing)) + 200  # room for the truncation notice
    kept: list[str] = []
    size = fixed
    for line in body:
        size += len(line) + 1
        if size > limit:
            break
        kept.append(line)
    if len(kept) < len(body):
        kept.append(
            f"… truncated: {len(body) - len(kept)} more lines. "
            "Run `flux-control plan` locally to see the whole plan."
        )
    return "\n".join(head + opening + kept + closing)


def _bounded_list(items: list[str], budget: int) -> str:
    """``items`` joined with commas, cut to ``budget`` characters with a count of what was left out."""
    shown: list[str] = []
    used = 0
    for item in items:
        if used + len(item) + 2 > budget:
            return ", ".join(shown) + f" … and {len(items) - len(shown)} more (see the details)"
        shown.append(item)
        used += len(item) + 2
    return ", ".join(shown)


def _deletion_note(action: TableAction) -> str:
    if action.history is None or action.history.empty:
        return f"`{action.table}`"
    return f"`{action.table}` ({action.history.describe()}; needs `--allow-delete`)"


def _change_lines(action: TableAction) -> list[Line]:
    if action.action == "delete":
        return []
    width = max((len(c.field) for c in action.changes if "." not in c.field), default=0)
    return [_change_line(change, width) for change in action.changes]


def _change_line(change: FieldChange, width: int) -> Line:
    sign = {"add": "+", "remove": "-", "change": "~"}[change.kind]
    kind, _, name = change.field.partition(".")
    if change.kind != "change" and name and "." not in name:
        item = change.after if change.kind == "add" else change.before
        return Line(
            sign, 6, f"{kind.rstrip('s').replace('dependencie', 'dependency')} {name} {_describe(kind, item)}"
        )
    if change.kind == "add":
        return Line(sign, 6, f"{change.field.ljust(width)} = {_value(change.after)}")
    return Line(sign, 6, f"{change.field}: {_value(change.before)} → {_value(change.after)}")


def _describe(kind: str, item: dict[str, Any]) -> str:
    if kind == "partitions":
        return f"({item['type']}, {'required' if item['is_required'] else 'optional'})"
    if kind == "dependencies":
        mapping = item.get("partition_map") or {}
        mapped = f", partition_map {_value(mapping)}" if mapping else ""
        return f"({'required' if item['is_required'] else 'optional'}{mapped})"
    return f"({item['type']} → {item['target']})"


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
