"""What the operator commands print: aligned tables with a header (like ``kubectl get``), a run in
full (like ``kubectl describe``), or the API's answer as JSON. Pure: strings in, strings out.

Every value from the API is shown through :func:`~controller.core.terminal_text.printable`, so a
reason or an error message cannot move the cursor or forge a line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.core.terminal_text import printable

#: The columns of a run in ``runs list`` and after every action on a run.
RUN_COLUMNS = ("ID", "TABLE", "PARTITIONS", "STATUS", "FIRE AT", "APPROVAL")
_GAP = "   "
_NONE = "-"


def as_json(answer: Any) -> str:
    """The API's answer, pretty-printed (values exact: JSON escapes what a terminal would not show)."""
    return json.dumps(answer, indent=2, ensure_ascii=False)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, three spaces apart; no trailing spaces."""
    cells = [list(headers), *([printable(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [_GAP.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def cell(value: Any) -> str:
    """One value as a table cell: ``-`` for nothing, times without their ``+00:00``."""
    if value is None or value == "":
        return _NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return text[:-6] + "Z" if text.endswith("+00:00") and "T" in text else text


def partitions_cell(partitions: Any) -> str:
    """``name=value,name=value`` in the API's order; ``-`` for a table without partitions."""
    if not isinstance(partitions, Mapping) or not partitions:
        return _NONE
    return ",".join(f"{name}={value}" for name, value in partitions.items())


def run_row(run: Mapping[str, Any]) -> list[str]:
    """A run summary as the cells of :data:`RUN_COLUMNS`."""
    return [
        cell(run.get("id")),
        cell(run.get("table_name")),
        partitions_cell(run.get("partitions")),
        cell(run.get("status")),
        cell(run.get("fire_at")),
        cell(run.get("approval_id")),
    ]


def runs_table(runs: Sequence[Mapping[str, Any]], empty: str = "No runs found.") -> str:
    """Runs under the header of :data:`RUN_COLUMNS`, or ``empty`` when there are none."""
    if not runs:
        return empty + "\n"
    return table(RUN_COLUMNS, (run_row(run) for run in runs))


def run_detail(run: Mapping[str, Any]) -> str:
    """One run in full: its fields, its approval, then its tasks, triggers and state changes."""
    approval = run.get("approval")
    fields = [
        ("Run", run.get("id")),
        ("Table", run.get("table_name")),
        ("Partitions", partitions_cell(run.get("partitions"))),
        ("Status", run.get("status")),
        ("Attempt", run.get("attempt")),
        ("Manual", run.get("manual")),
        ("Reason", run.get("reason")),
        ("Error", run.get("error")),
        ("Fire at", run.get("fire_at")),
        ("First trigger", run.get("first_trigger_at")),
        ("Last trigger", run.get("last_trigger_at")),
        ("Created", run.get("created_at")),
        ("Finished", run.get("finished_at")),
        ("Approval", _approval(approval if isinstance(approval, Mapping) else None, run.get("approval_id"))),
    ]
    width = max(len(name) for name, _ in fields) + 2
    lines = [f"{name + ':':<{width}}{printable(cell(value))}" for name, value in fields]
    text = "\n".join(lines) + "\n"
    text += _section(
        "Tasks",
        ("ALIAS", "TYPE", "TARGET", "ATTEMPT", "STATUS", "EXTERNAL ID", "ERROR"),
        [
            [cell(t.get(k)) for k in ("alias", "type", "target", "attempt", "status", "external_id", "error")]
            for t in _items(run.get("tasks"))
        ],
    )
    text += _section(
        "Triggers",
        ("EXECUTION", "TABLE", "PARTITIONS"),
        [
            [cell(t.get("execution_id")), cell(t.get("table_name")), partitions_cell(t.get("partitions"))]
            for t in _items(run.get("triggers"))
        ],
    )
    text += _section(
        "Events",
        ("AT", "FROM", "TO", "ACTOR", "REASON"),
        [
            [cell(e.get(k)) for k in ("at", "old_state", "new_state", "actor", "reason")]
            for e in _items(run.get("events"))
        ],
    )
    return text


def backfill_summary(backfill: Mapping[str, Any]) -> str:
    """The backfill's id, table and key count, then its runs as a table."""
    keys = backfill.get("keys")
    count = len(keys) if isinstance(keys, list) else keys
    runs = list(_items(backfill.get("runs")))
    head = f"Backfill {cell(backfill.get('id'))} of {cell(backfill.get('table_name'))}: "
    head += f"{cell(count)} keys, {len(runs)} runs."
    return printable(head) + "\n" + (runs_table(runs) if runs else "")


def _approval(approval: Mapping[str, Any] | None, approval_id: Any) -> str:
    if approval is None:
        return cell(approval_id)
    text = f"{cell(approval.get('id'))} {cell(approval.get('status'))}"
    if approval.get("decided_by"):
        text += f" by {approval['decided_by']}"
    if approval.get("decided_at"):
        text += f" at {cell(approval['decided_at'])}"
    if approval.get("comment"):
        text += f": {approval['comment']}"
    return text


def _section(title: str, headers: Sequence[str], rows: list[list[str]]) -> str:
    if not rows:
        return f"\n{title}: none\n"
    indented = "".join(f"  {line}\n" for line in table(headers, rows).splitlines())
    return f"\n{title}:\n{indented}"


def _items(value: Any) -> Iterable[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []
