"""The HTTP API of DESIGN §5 through ``lambda_handler`` with moto: errors, registration, debounce,
approvals and identity, manual runs, cancel, SQS/Lambda completion, deleted tables, read routes."""

from __future__ import annotations

import io
import itertools
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from moto.core.config import default_user_config
from sqlalchemy import Engine

from controller.cli import main
from controller.reconciler import apply
from tests.factories import StatementLog, states, table_doc
from tests.runtime_support import (
    ACCOUNT,
    REGION,
    START,
    Lambda,
    partitions,
    running_lambda,
    schedule_of,
    schedules,
)

MONTH = [{"name": "ano_mes", "type": "int"}]
QUEUE_NAME = "flux-tasks"
QUEUE_URL = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{QUEUE_NAME}"
FUNCTION = "fn-consumer"
TABLES = [
    table_doc("tb_a", partitions=MONTH),
    table_doc(
        "tb_b",
        partitions=MONTH,
        debounce_seconds=300,
        max_wait_seconds=600,
        dependencies=[{"dependency_name": "tb_a"}],
        tasks=[{"alias": "build", "type": "glue", "target": "job-b"}],
    ),
    table_doc("tb_typed", partitions=[{"name": "dt", "type": "date"}, {"name": "n", "type": "int"}]),
    table_doc(
        "tb_manual", partitions=MONTH, tasks=[{"alias": "load", "type": "glue", "target": "job-manual"}]
    ),
    table_doc("tb_gated", partitions=MONTH, requires_approval=True, approvers=["ana"]),
    table_doc("tb_open_gate", partitions=MONTH, requires_approval=True),
    table_doc(
        "tb_queue",
        partitions=MONTH,
        tasks=[
            {
                "alias": "notify",
                "type": "sqs",
                "target": QUEUE_URL,
                "params": {"mes": "{{ partitions.ano_mes }}"},
            }
        ],
    ),
    table_doc("tb_fn", partitions=MONTH, tasks=[{"alias": "consume", "type": "lambda", "target": FUNCTION}]),
]
AT_START = "2026-11-29T12:00:00+00:00"
_request_ids = itertools.count(1)


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


# --- helpers -----------------------------------------------------------------------------------------


def item(table: str, source: str = "api", **values: Any) -> dict[str, Any]:
    return {"table_name": table, "partitions": partitions(**values), "source": source}


def register(flux: Lambda, *items: dict[str, Any], **extra: Any) -> tuple[int, dict[str, Any]]:
    return flux.call("POST", "/register_execution", {"data": list(items), **extra})


def api_event(
    method: str,
    path: str,
    body: Any = None,
    *,
    raw_body: str | None = None,
    authorizer: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An API Gateway REST proxy event, shaped like ``Lambda.call``'s, with a settable request context."""
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {"content-type": "application/json"},
        "multiValueHeaders": {},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "requestId": f"api-test-{next(_request_ids)}",
            "stage": "test",
            "httpMethod": method,
            "path": path,
            "resourcePath": path,
            "authorizer": authorizer or {},
            "identity": {"sourceIp": "127.0.0.1", **(identity or {})},
        },
        "body": raw_body if raw_body is not None else (json.dumps(body) if body is not None else None),
        "isBase64Encoded": False,
    }


def send(flux: Lambda, event: dict[str, Any]) -> tuple[int, str]:
    """Status and raw body of an API event."""
    response = flux.invoke(event)
    return response["statusCode"], response["body"]


def error_of(
    flux: Lambda,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw_body: str | None = None,
    user: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Send a request that must fail; checks the error model and returns (status, the error object)."""
    authorizer = {"claims": {"cognito:username": user}} if user else None
    status, raw = send(flux, api_event(method, path, body, raw_body=raw_body, authorizer=authorizer))
    assert "Traceback" not in raw
    assert 'File "' not in raw
    answer = json.loads(raw)
    assert list(answer) == ["error"], answer
    error = answer["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    return status, error


def manual(flux: Lambda, table: str, month: int, reason: str = "backfill") -> dict[str, Any]:
    answer = flux.ok(
        "POST", "/runs", {"table_name": table, "partitions": partitions(ano_mes=month), "reason": reason}
    )
    run: dict[str, Any] = answer["run"]
    return run


def run_detail(flux: Lambda, run_id: int) -> dict[str, Any]:
    detail: dict[str, Any] = flux.ok("GET", f"/runs/{run_id}")["run"]
    return detail


def glue_runs(job: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = boto3.client("glue", region_name=REGION).get_job_runs(JobName=job)["JobRuns"]
    return runs


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
    with StatementLog(engine) as log:
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


# --- runs per key, debounce, max wait, schedules ----------------------------------------------------


def test_two_partition_values_of_a_dependent_give_two_runs(flux: Lambda) -> None:
    status, body = register(flux, item("tb_a", ano_mes=202305), item("tb_a", ano_mes=202306))
    assert status == 200, body
    runs = sorted(body["runs"], key=lambda r: r["partitions"]["ano_mes"])
    assert [(r["table_name"], r["partitions"], r["status"]) for r in runs] == [
        ("tb_b", {"ano_mes": 202305}, "scheduled"),
        ("tb_b", {"ano_mes": 202306}, "scheduled"),
    ]
    assert runs[0]["id"] != runs[1]["id"]
    assert sorted(schedules()) == sorted(f"flux-run-{r['id']}-tb_b" for r in runs)
    listed = flux.ok("GET", "/runs", query={"table": "tb_b"})["runs"]
    assert sorted(r["id"] for r in listed) == sorted(r["id"] for r in runs)


def test_a_reregistered_upstream_pushes_the_same_run_and_max_wait_caps_it(flux: Lambda) -> None:
    [run] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})["runs"]
    assert run["fire_at"] == "2026-11-29T12:05:00+00:00"  # 12:00 + debounce 300 s

    flux.clock.advance(120)  # 12:02
    [pushed] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes="202305")]})["runs"]
    assert pushed["id"] == run["id"]
    assert pushed["status"] == "scheduled"
    assert pushed["fire_at"] == "2026-11-29T12:07:00+00:00"  # last trigger 12:02 + 300 s

    flux.clock.advance(240)  # 12:06: 12:11 would pass first trigger + max wait (12:00 + 600 s)
    [capped] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})["runs"]
    assert capped["id"] == run["id"]
    assert capped["fire_at"] == "2026-11-29T12:10:00+00:00"

    detail = run_detail(flux, run["id"])
    assert detail["fire_at"] == "2026-11-29T12:10:00+00:00"
    assert detail["first_trigger_at"] == AT_START
    assert detail["last_trigger_at"] == "2026-11-29T12:06:00+00:00"
    assert len(detail["triggers"]) == 3
    assert len(flux.ok("GET", "/runs", query={"table": "tb_b"})["runs"]) == 1


def test_a_pushed_run_has_one_schedule_at_the_new_fire_time(flux: Lambda) -> None:
    [run] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})["runs"]
    name = f"flux-run-{run['id']}-tb_b"
    assert schedules() == [name]
    assert schedule_of(run["id"], "tb_b")["ScheduleExpression"] == "at(2026-11-29T12:05:00)"

    flux.clock.advance(60)
    flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})
    flux.clock.advance(60)
    flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})

    assert schedules() == [name]
    schedule = schedule_of(run["id"], "tb_b")
    assert schedule["ScheduleExpression"] == "at(2026-11-29T12:07:00)"
    assert json.loads(schedule["Target"]["Input"]) == {"flux_action": "fire", "run_id": run["id"]}
    assert run_detail(flux, run["id"])["schedule_synced"] is True

    # The old fire time arriving is not the run's time any more; the new one fires it.
    flux.clock.advance(180)  # 12:05
    assert flux.invoke({"flux_action": "fire", "run_id": run["id"]})["status"].startswith("ignored: not due")
    flux.clock.advance(120)  # 12:07
    assert flux.invoke({"flux_action": "fire", "run_id": run["id"]}) == {"status": "running"}
    assert len(glue_runs("job-b")) == 1


# --- approvals and identity --------------------------------------------------------------------------


def test_approving_without_a_caller_identity_is_403(flux: Lambda) -> None:
    run = manual(flux, "tb_gated", 202305)
    status, error = error_of(flux, "POST", "/approve", {"approval_status_id": run["approval_id"]})
    assert (status, error["code"]) == (403, "forbidden")
    # Even for a table without approvers: deciding needs someone.
    open_run = manual(flux, "tb_open_gate", 202305)
    status, error = error_of(flux, "POST", "/reject", {"approval_status_id": open_run["approval_id"]})
    assert (status, error["code"]) == (403, "forbidden")
    assert flux.ok("GET", "/approvals", query={"status": "pending"})["approvals"] != []


def test_the_body_user_is_ignored_unless_the_deployment_trusts_it(flux: Lambda) -> None:
    assert flux.runtime.trust_body_user is False
    run = manual(flux, "tb_gated", 202305)
    body = {"approval_status_id": run["approval_id"], "user": "ana"}
    status, error = error_of(flux, "POST", "/approve", body)
    assert (status, error["code"]) == (403, "forbidden")
    # An identified caller who is not an approver cannot borrow an approver's name either.
    status, error = error_of(flux, "POST", "/approve", body, user="mallory")
    assert (status, error["code"]) == (403, "forbidden")
    assert "mallory" in error["message"]
    assert run_detail(flux, run["id"])["status"] == "awaiting_approval"


def test_a_trusted_body_user_counts_as_the_approver(flux: Lambda) -> None:
    flux.runtime.trust_body_user = True
    run = manual(flux, "tb_gated", 202305)
    status, answer = flux.call(
        "POST", "/approve", {"approval_status_id": run["approval_id"], "user": "ana", "comment": "ok"}
    )
    assert status == 200, answer
    assert answer["approval"] == {"id": run["approval_id"], "status": "approved"}
    approval = run_detail(flux, run["id"])["approval"]
    assert (approval["status"], approval["decided_by"], approval["comment"]) == ("approved", "ana", "ok")


def test_an_iam_caller_is_identified_by_its_user_arn(flux: Lambda) -> None:
    run = manual(flux, "tb_gated", 202305)
    body = {"approval_status_id": run["approval_id"]}
    mallory = api_event(
        "POST", "/approve", body, identity={"userArn": f"arn:aws:iam::{ACCOUNT}:user/mallory"}
    )
    status, raw = send(flux, mallory)
    assert status == 403, raw
    ana = api_event("POST", "/approve", body, identity={"userArn": f"arn:aws:iam::{ACCOUNT}:user/ana"})
    status, raw = send(flux, ana)
    assert status == 200, raw
    assert json.loads(raw)["approval"] == {"id": run["approval_id"], "status": "approved"}
    assert run_detail(flux, run["id"])["approval"]["status"] == "approved"


def test_only_an_iam_user_arn_is_shortened_to_its_user_name(flux: Lambda) -> None:
    run = manual(flux, "tb_gated", 202305)
    body = {"approval_status_id": run["approval_id"]}
    status, error = error_of(flux, "POST", "/approve", body, user="mallory/ana")
    assert status == 403, error
    session = api_event(
        "POST", "/approve", body, identity={"userArn": f"arn:aws:sts::{ACCOUNT}:assumed-role/AnyRole/ana"}
    )
    status, raw = send(flux, session)
    assert status == 403, raw


def test_a_table_without_approvers_accepts_any_identified_caller(flux: Lambda) -> None:
    run = manual(flux, "tb_open_gate", 202305)
    assert run["status"] == "awaiting_approval"
    answer = flux.ok(
        "POST", "/reject", {"approval_status_id": run["approval_id"], "comment": "no"}, user="zoe"
    )
    assert answer["approval"] == {"id": run["approval_id"], "status": "rejected"}
    assert answer["run"]["status"] == "rejected"
    assert run_detail(flux, run["id"])["approval"]["decided_by"] == "zoe"


# --- manual runs -------------------------------------------------------------------------------------


def test_a_manual_run_fires_now_and_dispatches_in_the_same_request(flux: Lambda) -> None:
    run = manual(flux, "tb_manual", 202305, reason="backfill May")
    assert (run["table_name"], run["partitions"], run["fire_at"]) == (
        "tb_manual",
        {"ano_mes": 202305},
        AT_START,
    )
    assert run["approval_id"] is None
    [job_run] = glue_runs("job-manual")
    assert job_run["Arguments"] == {"--ano_mes": "202305", "--flux_run_id": str(run["id"])}
    detail = run_detail(flux, run["id"])
    assert detail["status"] == "running"
    assert (detail["manual"], detail["reason"]) == (True, "backfill May")
    assert [(t["alias"], t["status"], t["external_id"]) for t in detail["tasks"]] == [
        ("load", "started", job_run["Id"])
    ]
    assert schedules() == []  # it fired at once: no schedule


def test_a_manual_run_of_a_table_requiring_approval_awaits_it(flux: Lambda) -> None:
    run = manual(flux, "tb_gated", 202305)
    assert (run["status"], run["fire_at"]) == ("awaiting_approval", None)
    assert run["approval_id"] is not None
    assert schedules() == []
    pending = flux.ok("GET", "/approvals", query={"status": "pending"})["approvals"]
    assert pending == [
        {
            "id": run["approval_id"],
            "status": "pending",
            "run_id": run["id"],
            "table_name": "tb_gated",
            "partitions": {"ano_mes": 202305},
        }
    ]


def test_a_manual_run_while_the_same_key_is_running_is_409(flux: Lambda) -> None:
    run = manual(flux, "tb_manual", 202305)
    assert run_detail(flux, run["id"])["status"] == "running"
    status, error = error_of(
        flux, "POST", "/runs", {"table_name": "tb_manual", "partitions": partitions(ano_mes=202305)}
    )
    assert (status, error["code"]) == (409, "conflict")
    assert error["details"] == {"run_id": run["id"]}
    assert len(glue_runs("job-manual")) == 1
    # Another key is free.
    other = manual(flux, "tb_manual", 202306)
    assert other["id"] != run["id"]
    assert len(glue_runs("job-manual")) == 2


# --- cancel ------------------------------------------------------------------------------------------


def test_cancelling_a_scheduled_run_deletes_its_schedule(flux: Lambda) -> None:
    [run] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})["runs"]
    assert schedules() == [f"flux-run-{run['id']}-tb_b"]
    answer = flux.ok("POST", f"/runs/{run['id']}/cancel", {"reason": "not needed"})
    assert answer["run"]["id"] == run["id"]
    assert answer["run"]["status"] == "cancelled"
    assert schedules() == []
    detail = run_detail(flux, run["id"])
    assert (detail["status"], detail["reason"]) == ("cancelled", "not needed")
    # A late fire is a no-op.
    flux.clock.advance(300)
    assert flux.invoke({"flux_action": "fire", "run_id": run["id"]}) == {
        "status": "ignored: run is cancelled"
    }
    assert glue_runs("job-b") == []


def test_cancelling_a_running_run_is_409(flux: Lambda) -> None:
    run = manual(flux, "tb_manual", 202305)
    status, error = error_of(flux, "POST", f"/runs/{run['id']}/cancel", {"reason": "too late"})
    assert (status, error["code"]) == (409, "conflict")
    assert run_detail(flux, run["id"])["status"] == "running"


# --- SQS and Lambda tasks ----------------------------------------------------------------------------


def test_an_sqs_task_is_completed_by_register_execution_with_its_run_id(flux: Lambda) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    assert sqs.create_queue(QueueName=QUEUE_NAME)["QueueUrl"] == QUEUE_URL
    run = manual(flux, "tb_queue", 202305)
    assert run_detail(flux, run["id"])["status"] == "running"
    [message] = sqs.receive_message(QueueUrl=QUEUE_URL, MaxNumberOfMessages=10)["Messages"]
    sent = json.loads(message["Body"])
    assert sent["flux"]["run_id"] == run["id"]
    assert (sent["flux"]["table"], sent["flux"]["alias"]) == ("tb_queue", "notify")
    assert sent["mes"] == "202305"
    [task] = run_detail(flux, run["id"])["tasks"]
    assert (task["type"], task["status"], task["external_id"]) == ("sqs", "started", message["MessageId"])

    flux.clock.advance(30)
    done = {**item("tb_queue", source="consumer", ano_mes=202305), "run_id": sent["flux"]["run_id"]}
    answer = flux.ok("POST", "/register_execution", {"data": [done]})
    [execution] = answer["executions"]
    assert (execution["table_name"], execution["partitions"]) == ("tb_queue", {"ano_mes": 202305})
    assert answer["runs"] == []
    detail = run_detail(flux, run["id"])
    assert detail["status"] == "succeeded"
    assert [t["status"] for t in detail["tasks"]] == ["succeeded"]
    executions = flux.ok("GET", "/executions", query={"table": "tb_queue"})["executions"]
    assert [(e["id"], e["source"], e["run_id"]) for e in executions] == [
        (execution["id"], "consumer", run["id"])
    ]
    # The run is over: completing it again is a conflict.
    status, error = error_of(flux, "POST", "/register_execution", {"data": [done]})
    assert (status, error["code"]) == (409, "conflict")


def test_a_lambda_task_reports_failure_through_the_fail_route(
    flux: Lambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(default_user_config, "lambda", {"use_docker": False})
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = boto3.client("iam", region_name=REGION).create_role(
        RoleName="consumer", AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return event\n")
    boto3.client("lambda", region_name=REGION).create_function(
        FunctionName=FUNCTION,
        Runtime="python3.11",
        Role=role,
        Handler="index.handler",
        Code={"ZipFile": code.getvalue()},
    )
    run = manual(flux, "tb_fn", 202305)
    detail = run_detail(flux, run["id"])
    assert detail["status"] == "running"
    [task] = detail["tasks"]
    assert (task["type"], task["status"]) == ("lambda", "started")
    assert task["external_id"]

    answer = flux.ok("POST", f"/runs/{run['id']}/fail", {"reason": "consumer crashed: disk full"})
    assert (answer["run"]["id"], answer["run"]["status"]) == (run["id"], "failed")
    detail = run_detail(flux, run["id"])
    assert (detail["status"], detail["error"]) == ("failed", "consumer crashed: disk full")
    assert [(t["status"], t["error"]) for t in detail["tasks"]] == [("failed", "consumer crashed: disk full")]
    assert flux.ok("GET", "/executions", query={"table": "tb_fn"})["executions"] == []
    status, error = error_of(flux, "POST", f"/runs/{run['id']}/fail", {"reason": "again"})
    assert (status, error["code"]) == (409, "conflict")


# --- a table deleted by a reconcile ------------------------------------------------------------------


def test_a_fire_for_a_table_deleted_by_a_reconcile_cancels_the_run(flux: Lambda, engine: Engine) -> None:
    [run] = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]})["runs"]
    assert run["table_name"] == "tb_b"
    remaining = [d for d in TABLES if d["name"] != "tb_b"]
    outcome = apply(
        engine, desired=states(remaining), allow_delete=True, revision="drop-b", actor="test", now=START
    )
    assert outcome.applied
    flux.clock.advance(300)
    assert flux.invoke({"flux_action": "fire", "run_id": run["id"]}) == {"status": "cancelled: table deleted"}
    assert glue_runs("job-b") == []
    detail = run_detail(flux, run["id"])
    assert detail["status"] == "cancelled"
    assert detail["tasks"] == []
    # tb_a has no dependent any more: registering it opens nothing.
    assert flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202306)]})["runs"] == []


# --- read routes, POST /tables, OpenAPI --------------------------------------------------------------


def test_health(flux: Lambda) -> None:
    assert flux.call("GET", "/health") == (200, {"status": "ok"})


def test_tables_are_listed_as_reconciled_with_the_revision(flux: Lambda) -> None:
    answer = flux.ok("GET", "/tables")
    expected = states(TABLES)
    assert answer["tables"] == [expected[name] for name in sorted(expected)]
    assert answer["revision"]["revision"] == "test"
    assert answer["revision"]["applied_at"] == AT_START

    one = flux.ok("GET", "/tables/tb_b")
    assert one["table"] == expected["tb_b"]
    assert one["revision"] == answer["revision"]
    status, error = error_of(flux, "GET", "/tables/tb_ghost")
    assert (status, error["code"]) == (404, "not_found")
    assert "tb_ghost" in error["message"]


def test_post_tables_checks_a_new_table_and_writes_nothing(flux: Lambda) -> None:
    before = flux.ok("GET", "/tables")
    new = {
        "name": "tb_new",
        "description": "a new table",
        "partitions": MONTH,
        "dependencies": [{"dependency_name": "tb_a"}],
    }
    answer = flux.ok("POST", "/tables", new)
    assert answer["valid"] is True
    assert answer["problems"] == []
    actions = answer["plan"]["actions"]
    assert [(a["action"], a["table"]) for a in actions] == [("create", "tb_new")]
    assert (
        actions[0]["after"]
        == states([table_doc("tb_new", **{k: v for k, v in new.items() if k != "name"})])["tb_new"]
    )
    assert flux.ok("GET", "/tables") == before


def test_post_tables_reports_the_problems_of_an_invalid_payload(flux: Lambda) -> None:
    before = flux.ok("GET", "/tables")
    bad = {"name": "tb_bad", "partitions": MONTH, "dependencies": [{"dependency_name": "tb_ghost"}]}
    answer = flux.ok("POST", "/tables", bad)
    assert answer["valid"] is False
    assert answer["plan"] is None
    assert answer["problems"]
    problems = answer["problems"]
    assert any(p["path"] == "payload" and "tb_ghost" in p["message"] for p in problems), problems
    assert flux.ok("GET", "/tables") == before


DESIGN_ROUTES = {
    ("get", "/health"),
    ("post", "/register_execution"),
    ("post", "/approve"),
    ("post", "/reject"),
    ("get", "/approvals"),
    ("get", "/runs"),
    ("get", "/runs/{}"),
    ("post", "/runs"),
    ("post", "/runs/{}/cancel"),
    ("post", "/runs/{}/retry"),
    ("get", "/executions"),
    ("get", "/tables"),
    ("get", "/tables/{}"),
    ("post", "/tables"),
}


def _routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, re.sub(r"\{[^}]+\}", "{}", path))
        for path, operations in document["paths"].items()
        for method in operations
    }


def test_the_openapi_document_has_the_routes_of_the_design(flux: Lambda) -> None:
    document = flux.ok("GET", "/openapi.json")
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "Flux Control"
    assert _routes(document) >= DESIGN_ROUTES


def test_flux_control_openapi_prints_the_document() -> None:
    result = CliRunner().invoke(main, ["openapi"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert "/register_execution" in document["paths"]
    assert _routes(document) >= DESIGN_ROUTES
