"""The Lambda's logs (issue 14): every logger writes one JSON record a line through Powertools, with the
correlation id, ``cold_start`` and the request id; one access line per API request; ``extra=`` fields
kept; an exception as a field, never a plain traceback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine

from controller.lambda_function import lambda_handler
from controller.telemetry import MODULE_LOGGERS, logger
from tests.api_support import TABLES, api_event, item
from tests.runtime_support import Lambda, running_lambda


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def context(request_id: str) -> Any:
    """A Lambda context as AWS passes one."""
    return SimpleNamespace(
        aws_request_id=request_id,
        function_name="flux-control",
        function_version="$LATEST",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:flux-control",
        memory_limit_in_mb=512,
        get_remaining_time_in_millis=lambda: 30_000,
    )


@pytest.fixture
def output(logs: io.StringIO) -> io.StringIO:
    """What the function's log handlers write (to stdout in Lambda), captured at those very handlers
    (``logs``): the Powertools logger's, which the module loggers share."""
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    # Shared, not copied (pytest adds its own capture handlers to every non-propagating logger too).
    assert handlers and set(handlers) <= set(logging.getLogger(MODULE_LOGGERS).handlers)
    assert logging.getLogger(MODULE_LOGGERS).propagate is False  # no second, plain copy via the root
    return logs


def records(output: io.StringIO) -> list[dict[str, Any]]:
    """Every line written so far, each of which must be a JSON object (then forgotten)."""
    lines = [line for line in output.getvalue().splitlines() if line.strip()]
    output.seek(0)
    output.truncate()
    assert not [line for line in lines if line.startswith("Traceback") or line.startswith("  File ")]
    return [json.loads(line) for line in lines]


def test_an_api_request_writes_one_access_line(flux: Lambda, output: io.StringIO) -> None:
    event = api_event(
        "POST",
        "/register_execution",
        {"data": [item("tb_a", ano_mes=202305)]},
        authorizer={"claims": {"cognito:username": "ana"}},
    )
    event["requestContext"]["requestId"] = "api-req-1"
    records(output)
    response = lambda_handler(event, context("lambda-req-1"))
    assert response["statusCode"] == 200
    [access] = [r for r in records(output) if r["message"] == "request"]
    assert {k: access[k] for k in ("method", "path", "status", "caller")} == {
        "method": "POST",
        "path": "/register_execution",
        "status": 200,
        "caller": "ana",
    }
    assert isinstance(access["duration_ms"], int | float) and access["duration_ms"] >= 0
    assert access["correlation_id"] == "api-req-1"
    assert access["function_request_id"] == "lambda-req-1"
    assert access["function_name"] == "flux-control"
    assert isinstance(access["cold_start"], bool)
    assert access["service"] == "flux-control"


def test_refused_and_unknown_requests_are_logged_too(flux: Lambda, output: io.StringIO) -> None:
    records(output)
    too_large = api_event("POST", "/approve", raw_body="x" * 300_000, authorizer={})
    assert lambda_handler(too_large, context("r-1"))["statusCode"] == 413
    nowhere = api_event("GET", "/nowhere", authorizer={})
    assert lambda_handler(nowhere, context("r-2"))["statusCode"] == 404
    statuses = [
        (r["path"], r["status"], r.get("caller")) for r in records(output) if r["message"] == "request"
    ]
    assert statuses == [("/approve", 413, None), ("/nowhere", 404, None)]  # nobody: no caller key


def test_module_loggers_write_the_same_json_with_their_extra_fields_and_exception(
    flux: Lambda, output: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime's own logger (not Powertools') logs a failed schedule write: same keys, one line."""

    def refuse(_request: Any) -> None:
        raise RuntimeError("scheduler is down")

    monkeypatch.setattr(flux.deps.scheduler, "put", refuse)
    event = api_event("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202306)]})
    event["requestContext"]["requestId"] = "api-req-2"
    records(output)
    assert lambda_handler(event, context("lambda-req-2"))["statusCode"] == 200
    found = records(output)
    [failure] = [r for r in found if r["message"] == "could not write schedule; the sweep will retry"]
    assert failure["name"] == "flux_control.runtime"
    assert failure["level"] == "ERROR"
    assert isinstance(failure["run_id"], int)  # extra= kept
    assert "RuntimeError: scheduler is down" in failure["exception"]
    assert (failure["correlation_id"], failure["function_request_id"]) == ("api-req-2", "lambda-req-2")
    assert "cold_start" in failure


def test_scheduler_and_state_change_events_are_logged_with_their_correlation(
    flux: Lambda, output: io.StringIO
) -> None:
    records(output)
    lambda_handler({"flux_action": "fire", "run_id": 999}, context("fire-1"))
    found = records(output)
    fired = [r for r in found if r["message"] == "fire"]
    assert [(r["correlation_id"], r["run_id"], r["function_request_id"]) for r in fired] == [
        ("run-999", 999, "fire-1")
    ]
