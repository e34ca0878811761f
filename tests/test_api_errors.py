"""The HTTP API's errors (400/404/409/413/422), all-or-nothing batches and idempotency."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.api_support import TABLES, error_of, item, manual, run_detail
from tests.factories import StatementLog
from tests.runtime_support import (
    Lambda,
    partitions,
    running_lambda,
    schedule_of,
    schedules,
)


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


# --- errors: 400 -------------------------------------------------------------------------------------


def test_a_body_that_is_not_json_is_400(flux: Lambda) -> None:
    status, error = error_of(flux, "POST", "/register_execution", raw_body="{nope")
    assert status == 400
    assert error["code"] == "bad_request"
    assert flux.ok("GET", "/executions")["executions"] == []


def test_a_missing_required_field_is_400(flux: Lambda) -> None:
    status, error = error_of(
        flux, "POST", "/register_execution", {"data": [{"partitions": partitions(ano_mes=1)}]}
    )
    assert status == 400
    assert error["code"] == "bad_request"
    assert "table_name" in error["message"]

    status, error = error_of(flux, "POST", "/approve", {"comment": "no id"}, user="ana")
    assert status == 400
    assert "approval_status_id" in error["message"]


# --- errors: 404 -------------------------------------------------------------------------------------


def test_an_unknown_table_is_404_naming_it_and_its_index(flux: Lambda) -> None:
    body = {"data": [item("tb_a", ano_mes=202305), item("tb_ghost", ano_mes=202305)]}
    status, error = error_of(flux, "POST", "/register_execution", body)
    assert status == 404
    assert error["code"] == "not_found"
    assert error["message"].startswith("data[1]:")
    assert "tb_ghost" in error["message"]
    assert error["details"]["index"] == 1
    assert flux.ok("GET", "/executions")["executions"] == []


def test_an_unknown_partition_name_is_404(flux: Lambda) -> None:
    body = {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=202305, mes=5)}]}
    status, error = error_of(flux, "POST", "/register_execution", body)
    assert status == 404
    assert error["code"] == "not_found"
    assert "'mes'" in error["message"]
    assert error["details"]["index"] == 0
    assert error["details"]["partition"] == "mes"


def test_an_unknown_route_is_404_in_the_error_model(flux: Lambda) -> None:
    status, error = error_of(flux, "GET", "/nope")
    assert (status, error["code"]) == (404, "not_found")
    status, error = error_of(flux, "DELETE", "/runs")
    assert status in (404, 405)


def test_an_unknown_approval_is_404(flux: Lambda) -> None:
    status, error = error_of(flux, "POST", "/approve", {"approval_status_id": 9999}, user="ana")
    assert (status, error["code"]) == (404, "not_found")
    assert "9999" in error["message"]
    status, error = error_of(flux, "POST", "/reject", {"approval_status_id": 9999}, user="ana")
    assert (status, error["code"]) == (404, "not_found")


def test_an_unknown_run_is_404(flux: Lambda) -> None:
    for method, path in [
        ("GET", "/runs/9999"),
        ("POST", "/runs/9999/cancel"),
        ("POST", "/runs/9999/retry"),
        ("POST", "/runs/9999/fail"),
    ]:
        status, error = error_of(flux, method, path, {} if method == "POST" else None)
        assert (status, error["code"]) == (404, "not_found"), (method, path, error)
        assert "9999" in error["message"]
    # A run id given with an execution must exist too.
    status, error = error_of(
        flux, "POST", "/register_execution", {"data": [{**item("tb_queue", ano_mes=1), "run_id": 9999}]}
    )
    assert (status, error["code"]) == (404, "not_found")
    assert flux.ok("GET", "/executions")["executions"] == []


# --- errors: 409 and 413 -----------------------------------------------------------------------------


def test_deciding_an_already_decided_approval_is_409(flux: Lambda) -> None:
    run = manual(flux, "tb_gated", 202305)
    approved = flux.ok("POST", "/approve", {"approval_status_id": run["approval_id"]}, user="ana")
    assert approved["approval"] == {"id": run["approval_id"], "status": "approved"}
    for route in ("/approve", "/reject"):
        status, error = error_of(flux, "POST", route, {"approval_status_id": run["approval_id"]}, user="ana")
        assert (status, error["code"]) == (409, "conflict")
        assert error["details"] == {"status": "approved"}
    # The first decision stands.
    assert run_detail(flux, run["id"])["approval"]["status"] == "approved"


def test_a_body_over_256_kib_is_413(flux: Lambda) -> None:
    # Well-formed for the model (16 partitions of 4 KiB values per item), about 330 KiB in all.
    padded = [
        {
            "table_name": "tb_a",
            "partitions": [{"partition_name": f"p{i}", "value": "x" * 4096} for i in range(16)],
        }
        for _ in range(5)
    ]
    body = {"data": padded}
    assert len(json.dumps(body)) > 256 * 1024
    status, error = error_of(flux, "POST", "/register_execution", body)
    assert (status, error["code"]) == (413, "too_large")
    assert flux.ok("GET", "/executions")["executions"] == []


def test_a_body_over_256_kib_is_413_before_it_is_parsed(flux: Lambda) -> None:
    huge = "x" * (300 * 1024)
    for path, body in [
        ("/register_execution", {"data": [{**item("tb_a", ano_mes=1), "source": huge}]}),
        ("/approve", {"approval_status_id": 1, "comment": huge}),
        ("/runs", {"table_name": "tb_a", "partitions": [], "reason": huge}),
    ]:
        status, error = error_of(flux, "POST", path, body, user="ana")
        assert (status, error["code"]) == (413, "too_large"), (path, status, error)


# --- errors: 422 -------------------------------------------------------------------------------------


def test_an_invalid_int_value_is_422(flux: Lambda) -> None:
    status, error = error_of(flux, "POST", "/register_execution", {"data": [item("tb_a", ano_mes="2023-05")]})
    assert (status, error["code"]) == (422, "invalid")
    assert error["message"].startswith("data[0]:")
    assert "'ano_mes'" in error["message"]
    assert error["details"] == {"index": 0, "partition": "ano_mes"}


def test_an_invalid_date_value_is_422(flux: Lambda) -> None:
    for bad in ("2023-02-30", "30/01/2023", "20230130"):
        body = {"data": [item("tb_typed", dt=bad, n=1)]}
        status, error = error_of(flux, "POST", "/register_execution", body)
        assert (status, error["code"]) == (422, "invalid"), bad
        assert error["details"]["partition"] == "dt"
    assert flux.ok("GET", "/executions")["executions"] == []


def test_a_missing_required_partition_is_422(flux: Lambda) -> None:
    status, error = error_of(
        flux, "POST", "/register_execution", {"data": [item("tb_typed", dt="2023-01-30")]}
    )
    assert (status, error["code"]) == (422, "invalid")
    assert "'n'" in error["message"] and "required" in error["message"]
    assert error["details"]["partition"] == "n"
    # The same for a manual run.
    status, error = error_of(flux, "POST", "/runs", {"table_name": "tb_manual", "partitions": []})
    assert (status, error["code"]) == (422, "invalid")
    assert error["details"]["partition"] == "ano_mes"


def test_a_partition_given_twice_in_one_item_is_422(flux: Lambda) -> None:
    twice = [{"partition_name": "ano_mes", "value": 202305}, {"partition_name": "ano_mes", "value": 202306}]
    status, error = error_of(
        flux, "POST", "/register_execution", {"data": [{"table_name": "tb_a", "partitions": twice}]}
    )
    assert (status, error["code"]) == (422, "invalid")
    assert "ano_mes" in error["message"]
    assert flux.ok("GET", "/executions")["executions"] == []


# --- all items or none -------------------------------------------------------------------------------


def test_a_batch_whose_third_item_is_bad_writes_nothing(flux: Lambda) -> None:
    body = {
        "data": [
            item("tb_a", ano_mes=202301),
            item("tb_a", ano_mes=202302),
            item("tb_a", ano_mes="not-a-month"),
        ]
    }
    status, error = error_of(flux, "POST", "/register_execution", body)
    assert status == 422
    assert error["message"].startswith("data[2]:")
    assert error["details"]["index"] == 2
    assert flux.ok("GET", "/executions")["executions"] == []
    assert flux.ok("GET", "/runs")["runs"] == []
    assert schedules() == []


# --- idempotency -------------------------------------------------------------------------------------


def test_a_repeated_idempotency_key_returns_the_first_result_and_writes_nothing(
    flux: Lambda, engine: Engine
) -> None:
    keyed = {**item("tb_a", ano_mes=202305), "idempotency_key": "load-2023-05"}
    first = flux.ok("POST", "/register_execution", {"data": [keyed]})
    [execution] = first["executions"]
    [run] = first["runs"]
    assert (run["table_name"], run["status"], run["fire_at"]) == (
        "tb_b",
        "scheduled",
        "2026-11-29T12:05:00+00:00",
    )

    flux.clock.advance(120)  # a push would move fire_at to 12:07
    with StatementLog(engine, flux.deps.store) as log:
        again = flux.ok("POST", "/register_execution", {"data": [keyed]})
    assert again == first
    assert again["executions"][0]["id"] == execution["id"]
    assert [r["id"] for r in again["runs"]] == [run["id"]]
    assert log.writes() == []
    assert [e["id"] for e in flux.ok("GET", "/executions")["executions"]] == [execution["id"]]
    assert run_detail(flux, run["id"])["fire_at"] == "2026-11-29T12:05:00+00:00"
    assert schedule_of(run["id"], "tb_b")["ScheduleExpression"] == "at(2026-11-29T12:05:00)"


def test_one_idempotency_key_twice_in_a_request_is_a_client_error(flux: Lambda) -> None:
    body = {
        "data": [
            {**item("tb_a", ano_mes=202305), "idempotency_key": "same"},
            {**item("tb_a", ano_mes=202306), "idempotency_key": "same"},
        ]
    }
    status, error = error_of(flux, "POST", "/register_execution", body)
    assert status == 422, error
    assert error["message"] == "data[1]: idempotency_key 'same' is also used by data[0]"
    assert flux.ok("GET", "/executions")["executions"] == []
