"""Shared set-up of the HTTP API tests: the tables, the Lambda fixture's definitions and helpers."""

from __future__ import annotations

import itertools
import json
from typing import Any

import boto3

from controller.local.http import to_event
from tests.factories import table_doc
from tests.runtime_support import (
    ACCOUNT,
    REGION,
    TESTER,
    Lambda,
    partitions,
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
    # The tests' default caller operates it (manual runs, cancels, retries); only ana approves.
    table_doc("tb_gated", partitions=MONTH, requires_approval=True, approvers=["ana"], operators=[TESTER]),
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
    """An API Gateway REST proxy event, shaped like ``Lambda.call``'s, with a settable request context:
    from :data:`TESTER` (a Cognito user) unless ``authorizer`` or ``identity`` says otherwise
    (``authorizer={}``: no identity at all)."""
    if authorizer is None and identity is None:
        authorizer = {"claims": {"cognito:username": TESTER}}
    text = raw_body if raw_body is not None else (json.dumps(body) if body is not None else "")
    return to_event(
        method,
        path,
        {"content-type": "application/json"},
        text.encode(),
        "127.0.0.1",
        authorizer=authorizer,
        identity=identity,
        request_id=f"api-test-{next(_request_ids)}",
    )


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
    user: str | None = TESTER,
) -> tuple[int, dict[str, Any]]:
    """Send a request that must fail; checks the error model and returns (status, the error object)."""
    authorizer = {"claims": {"cognito:username": user}} if user else {}
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
