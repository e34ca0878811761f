"""Statement and AWS-call budgets of a registration: independent of fan-out and of history size."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from controller.core.keys import key_text
from controller.db.definition_models import TableRow
from controller.db.run_models import ExecutionRow, ExecutionValueRow
from controller.services.registration import ExecutionInput, register_executions
from tests.factories import StatementLog, table_doc
from tests.runtime_support import running_lambda

DAY = [{"name": "dt", "type": "date"}]


def fan_out(dependents: int) -> list[dict[str, Any]]:
    """``source`` and ``reference`` feed ``dependents`` tables that need both (so gates probe)."""
    return [
        table_doc("source", partitions=DAY),
        table_doc("reference", partitions=DAY),
        *(
            table_doc(
                f"dep_{i:03d}",
                partitions=DAY,
                dependencies=[{"dependency_name": "source"}, {"dependency_name": "reference"}],
            )
            for i in range(dependents)
        ),
    ]


def add_history(engine: Engine, table: str, count: int) -> None:
    """``count`` past executions of ``table`` on distinct days, inserted in bulk."""
    if count == 0:
        return
    with Session(engine) as session, session.begin():
        table_id = session.execute(select(TableRow.id).where(TableRow.name == table)).scalar_one()
        rows = []
        for n in range(count):
            day = f"{1900 + n // 12:04d}-{1 + n % 12:02d}-{1 + (n // 144) % 28:02d}"
            rows.append(
                {
                    "table_id": table_id,
                    "partition_key": key_text({"dt": day}),
                    "partitions": {"dt": day},
                    "source": "history",
                }
            )
        session.execute(insert(ExecutionRow), rows)
        inserted = session.execute(
            select(ExecutionRow.id, ExecutionRow.partitions).where(
                ExecutionRow.table_id == table_id, ExecutionRow.source == "history"
            )
        )
        values = [
            {"execution_id": i, "name": "dt", "table_id": table_id, "value": p["dt"]} for i, p in inserted
        ]
        session.execute(insert(ExecutionValueRow), values)


class CountingScheduler:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def put(self, request: Any) -> None:
        self.calls += 1
        self.inner.put(request)

    def delete(self, name: str) -> None:
        self.calls += 1
        self.inner.delete(name)


def measure(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, dependents: int, history: int
) -> tuple[int, int, int]:
    """(SQL statements, schedule calls, runs opened) of one registration of ``source``."""
    with running_lambda(engine, fan_out(dependents), monkeypatch) as flux:
        register_executions(flux.deps, [ExecutionInput("reference", {"dt": "2026-11-28"}, "test")], None)
        for table in ("source", "reference"):
            add_history(engine, table, history)
        scheduler = CountingScheduler(flux.deps.scheduler)
        flux.deps.scheduler = scheduler
        with StatementLog(flux.deps.store) as log:
            result = register_executions(
                flux.deps, [ExecutionInput("source", {"dt": "2026-11-28"}, "test")], None
            )
        return len(log.statements), scheduler.calls, len(result["runs"])


def test_statements_do_not_grow_with_fan_out_or_history(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = measure(engine, monkeypatch, dependents=1, history=0)
    _reset(engine)
    wide = measure(engine, monkeypatch, dependents=100, history=0)
    _reset(engine)
    deep = measure(engine, monkeypatch, dependents=100, history=10_000)
    assert (small[2], wide[2], deep[2]) == (1, 100, 100)  # runs opened
    assert small[0] == wide[0] == deep[0], (small, wide, deep)  # SQL statements
    assert (small[1], wide[1], deep[1]) == (1, 100, 100)  # one schedule write per run opened


def _reset(engine: Engine) -> None:
    from controller.db.base import Base

    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
