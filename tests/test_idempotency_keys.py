"""An ``idempotency_key`` names one registration item (issue 16): the same key for the same table and
partitions is a replay of the first answer; the same key for another partition or another table is a
409 naming the first registration, and nothing of the request is written. The database holds each key
once, whatever the table, so that two concurrent registrations cannot both take it.

Through ``lambda_handler``, on SQLite and PostgreSQL (the ``engine`` fixture).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.db.definition_models import TableRow
from controller.db.migrate import alembic_config, upgrade
from controller.db.run_models import ExecutionRow, RunRow
from controller.reconciler import apply
from controller.services.registration import ExecutionInput, register_executions
from tests.api_support import TABLES, error_of, item
from tests.factories import StatementLog, states, table_doc
from tests.runtime_support import START, Lambda, running_lambda, schedules


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def keyed(table: str, month: int | str, key: str = "load-1") -> dict[str, Any]:
    """A registration item of ``table`` for ``ano_mes=month`` carrying ``key``."""
    return {**item(table, ano_mes=month), "idempotency_key": key}


def registered(flux: Lambda, *items: dict[str, Any]) -> dict[str, Any]:
    return flux.ok("POST", "/register_execution", {"data": list(items)})


def counts(engine: Engine) -> tuple[int, int]:
    """(executions, runs) in the database."""
    with Session(engine) as session:
        executions = session.execute(select(func.count()).select_from(ExecutionRow)).scalar_one()
        runs = session.execute(select(func.count()).select_from(RunRow)).scalar_one()
    return executions, runs


def test_the_same_key_for_the_same_partitions_replays_and_for_another_partition_is_409(
    flux: Lambda,
) -> None:
    first = registered(flux, keyed("tb_a", 202305))
    # The same item spelled otherwise ("0202305" is 202305 once canonical) is the same item: a replay.
    assert registered(flux, keyed("tb_a", "0202305")) == first

    status, error = error_of(flux, "POST", "/register_execution", {"data": [keyed("tb_a", 202306)]})
    assert (status, error["code"]) == (409, "conflict"), error
    assert [e["id"] for e in flux.ok("GET", "/executions")["executions"]] == [first["executions"][0]["id"]]


def test_the_same_key_for_another_table_is_409(flux: Lambda) -> None:
    first = registered(flux, keyed("tb_a", 202305))
    status, error = error_of(flux, "POST", "/register_execution", {"data": [keyed("tb_manual", 202305)]})
    assert (status, error["code"]) == (409, "conflict"), error
    assert [e["id"] for e in flux.ok("GET", "/executions")["executions"]] == [first["executions"][0]["id"]]


def test_the_409_names_the_first_registration_and_the_item(flux: Lambda) -> None:
    [first] = registered(flux, keyed("tb_a", 202305))["executions"]
    body = {"data": [item("tb_a", ano_mes=202307), keyed("tb_typed", 1)]}
    body["data"][1]["partitions"] = [
        {"partition_name": "dt", "value": "2026-01-02"},
        {"partition_name": "n", "value": 7},
    ]
    status, error = error_of(flux, "POST", "/register_execution", body)
    assert status == 409
    assert error["message"] == (
        f"data[1]: idempotency_key 'load-1' was used by execution {first['id']} "
        '(table tb_a, partitions {"ano_mes": 202305}); this item is table tb_typed, '
        'partitions {"dt": "2026-01-02", "n": 7}: a key names one registration item'
    )
    assert error["details"] == {
        "index": 1,
        "execution_id": first["id"],
        "table_name": "tb_a",
        "partitions": {"ano_mes": 202305},
    }


def test_a_refused_key_writes_nothing_of_the_request(flux: Lambda, engine: Engine) -> None:
    registered(flux, keyed("tb_a", 202305))
    before, runs = counts(engine), flux.ok("GET", "/runs")["runs"]
    assert before == (1, 1)  # tb_a's execution and the run of tb_b it opened
    scheduled = schedules()

    flux.clock.advance(60)
    # A fresh item first (it would open tb_b's run for 202306), then the key reused for another table.
    body = {"data": [item("tb_a", ano_mes=202306), keyed("tb_manual", 202305)]}
    with StatementLog(engine, flux.deps.store) as log:
        status, error = error_of(flux, "POST", "/register_execution", body)
    assert (status, error["details"]["index"]) == (409, 1), error
    assert [s for s in log.statements if "INSERT" in s.upper() or s.upper().startswith("UPDATE")] == []
    assert counts(engine) == before
    assert flux.ok("GET", "/runs")["runs"] == runs
    assert schedules() == scheduled


def test_one_key_on_two_tables_of_one_request_is_refused(flux: Lambda, engine: Engine) -> None:
    body = {"data": [keyed("tb_a", 202305, "same"), keyed("tb_manual", 202305, "same")]}
    status, error = error_of(flux, "POST", "/register_execution", body)
    assert status == 422, error
    assert error["message"] == "data[1]: idempotency_key 'same' is also used by data[0]"
    assert error["details"] == {"index": 1}
    assert counts(engine) == (0, 0)


def test_the_database_holds_a_key_once_whatever_the_table(flux: Lambda, engine: Engine) -> None:
    """The unique index is on the key alone: the guard of concurrent registrations (the loser's insert
    fails, its retry finds the winner) now covers the key on every table."""
    [first] = registered(flux, keyed("tb_a", 202305))["executions"]
    with Session(engine) as session:
        other = session.execute(select(TableRow.id).where(TableRow.name == "tb_manual")).scalar_one()
    row = {
        "table_id": other,
        "partition_key": '[["ano_mes",202305]]',
        "partitions": {"ano_mes": 202305},
        "source": "test",
        "idempotency_key": "load-1",
        "registered_at": START,
    }
    with pytest.raises(IntegrityError, match="idempotency"), engine.begin() as connection:
        connection.execute(insert(ExecutionRow), [row])
    # Keys stay optional: any number of executions carry none.
    with engine.begin() as connection:
        connection.execute(insert(ExecutionRow), [{**row, "idempotency_key": None}] * 2)
    assert counts(engine)[0] == 3
    assert first["id"] in [e["id"] for e in flux.ok("GET", "/executions")["executions"]]


# PostgreSQL only: SQLite serialises writers from ``BEGIN IMMEDIATE`` (the lookup sees every
# committed key), so the race cannot happen there.
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)
def test_a_concurrent_registration_that_took_the_key_for_another_table_makes_the_loser_409(
    flux: Lambda, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The race itself: another registration takes the key for another table after this one looked
    the key up and before it inserts."""
    winner: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    raced: list[bool] = []

    def compete() -> None:
        try:
            item = ExecutionInput("tb_manual", {"ano_mes": 202305}, "api", idempotency_key="load-1")
            winner.append(register_executions(flux.deps, [item], None))
        except BaseException as exc:  # asserted below
            failures.append(exc)

    def before_the_first_insert(statement: str, _connection: object) -> None:
        if "INSERT INTO executions" in statement and not raced:
            raced.append(True)  # once: the competitor's own insert passes here too
            thread = threading.Thread(target=compete)
            thread.start()
            thread.join(60)

    flux.deps.store.listeners.append(before_the_first_insert)
    try:
        with caplog.at_level(logging.INFO, logger="flux_control.runtime"):
            status, error = error_of(flux, "POST", "/register_execution", {"data": [keyed("tb_a", 202305)]})
    finally:
        flux.deps.store.listeners.remove(before_the_first_insert)
    assert failures == []
    [theirs] = winner[0]["executions"]
    assert (status, error["details"]["execution_id"]) == (409, theirs["id"]), error
    assert counts(engine) == (1, 0)
    # The loser's insert hit the index (unique_violation), and its retry found the winner.
    retries = [r for r in caplog.records if r.getMessage() == "retrying the transaction"]
    assert [r.__dict__["sqlstate"] for r in retries] == ["23505"]


def test_the_migration_keeps_a_key_shared_by_several_tables_on_its_oldest_execution(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows of the per-table index may hold one key on several tables: the upgrade keeps it on the
    oldest execution, clears it from the newer ones and says so; downgrade restores the old index."""
    tables = states([table_doc("a"), table_doc("b"), table_doc("c")])
    apply(engine, desired=tables, revision="r", actor="t", now=START)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0003")
        ids: dict[str, int] = dict(connection.execute(select(TableRow.name, TableRow.id)).all())
        rows = [("a", "shared"), ("b", "shared"), ("c", "shared"), ("a", "own"), ("b", None), ("c", None)]
        for table, key in rows:  # one by one: the ids in this order
            row = {"table_id": ids[table], "partition_key": "[]", "partitions": {}, "source": "test"}
            connection.execute(
                insert(ExecutionRow), [{**row, "idempotency_key": key, "registered_at": START}]
            )
    with caplog.at_level(logging.WARNING, logger="flux_control.migrations"):
        upgrade(engine)
    with Session(engine) as session:
        kept = list(
            session.execute(select(ExecutionRow.id, ExecutionRow.idempotency_key).order_by(ExecutionRow.id))
        )
    assert [key for _, key in kept] == ["shared", None, None, "own", None, None]
    [warning] = caplog.records
    assert warning.getMessage() == (
        "1 idempotency keys were used by executions of several tables; an idempotency key now names one "
        "registration, so each stays with its oldest execution and is cleared from the 2 newer ones (a "
        f"repeat of those registrations is answered 409): 'shared' kept by execution {kept[0][0]}"
    )
    with engine.begin() as connection:  # and back: the per-table index holds what the global one does
        command.downgrade(alembic_config(connection), "0003")
    upgrade(engine)
