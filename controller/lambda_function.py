"""The Lambda entry point: API Gateway requests, its own scheduler events, and AWS state changes.

- API Gateway REST proxy events → the routes of :mod:`controller.api.app`;
- ``{"flux_action": "fire", "run_id": N}`` (a run's one-time schedule) → fire that run;
- ``{"flux_action": "sweep"}`` (a rate schedule) → repair unsynced schedules, overdue runs, events;
- EventBridge ``Glue Job State Change`` / ``Step Functions Execution Status Change`` → settle tasks.

Importing it is the Lambda cold start, so it loads only what routes an event (Powertools, the pydantic
request bodies); the runtime modules, SQLAlchemy, the database driver and boto3 are imported by the
first event that needs them (see :mod:`controller.api.app` and :mod:`controller.wiring`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from controller.api.app import app
from controller.api.identity import caller_identity, resolved_caller
from controller.api.refusals import body_bytes, not_utf8, refused, too_large
from controller.local.context import LocalContext
from controller.telemetry import SERVICE, count, logger, metrics, route_module_loggers
from controller.wiring import dependencies, truthy

GLUE_EVENT = "Glue Job State Change"
STEP_FUNCTIONS_EVENT = "Step Functions Execution Status Change"

route_module_loggers()


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Route ``event`` by its shape; see the module docstring. ``context`` is Lambda's (None outside
    Lambda: ``serve`` and tests get a local one, so that their logs have the same keys)."""
    answer: dict[str, Any] = _handle(event, context if context is not None else LocalContext())
    return answer


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def _handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    logger.append_keys(name="%(name)s")  # which logger wrote a record (cleared with the last state)
    count("Invocations")
    if "httpMethod" in event and "requestContext" in event:
        return _http(event, context)
    action = event.get("flux_action")
    if action == "fire":
        from controller.services import firing  # lazy: see the module docstring

        logger.set_correlation_id(f"run-{event.get('run_id')}")
        outcome = firing.fire(dependencies(), int(event["run_id"]))
        logger.info("fire", extra={"run_id": event["run_id"], "outcome": outcome})
        count(
            "RunsDispatched"
            if outcome == "running"
            else "FiresIgnored"
            if outcome.startswith("ignored")
            else ""
        )
        count("RunsFailed" if outcome.startswith("failed") else "")
        return {"status": outcome}
    if action == "sweep":
        from controller.services import sweep  # lazy: see the module docstring

        logger.set_correlation_id(f"sweep-{getattr(context, 'aws_request_id', '')}")
        try:
            counts = sweep.sweep(dependencies())
        except Exception:
            count("SweepErrors")  # alarmed on (deploy/template.yaml); the scheduler retries it
            logger.exception("the sweep failed")
            raise
        return {"status": "swept", **counts}
    detail_type = event.get("detail-type")
    if detail_type in (GLUE_EVENT, STEP_FUNCTIONS_EVENT):
        logger.set_correlation_id(event.get("id"))
        return {"status": _state_change(detail_type, event.get("detail") or {})}
    logger.warning("event of unknown shape ignored", extra={"keys": sorted(event)[:20]})
    return {"status": "ignored: unknown event"}


def traced(handler: Any) -> Any:
    """``handler`` under Powertools' Tracer (X-Ray; the AWS calls as subsegments) when ``FLUX_TRACING`` is
    on (the template's Tracing parameter). Off, the tracer is not even imported: its X-Ray SDK would
    lengthen every cold start."""
    if not truthy(os.environ.get("FLUX_TRACING")):
        return handler
    from aws_lambda_powertools import Tracer  # its X-Ray SDK only when tracing is on

    return Tracer(service=SERVICE).capture_lambda_handler(handler)


_handle = traced(_handle)


def _http(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """An API request, and its access line: method, path, status, milliseconds and caller."""
    request_context = event["requestContext"]
    logger.set_correlation_id(request_context.get("requestId"))
    started = time.perf_counter()
    resolved = resolved_caller.set(None)
    try:
        response: dict[str, Any] = (
            _console(event, context)
            if _is_console(event)
            else (refused(event) or app.resolve(event, context))
        )
        caller = resolved_caller.get() or caller_identity(request_context, None, trust_body_user=False)
    finally:
        resolved_caller.reset(resolved)
    logger.info(
        "request",
        extra={
            "method": event.get("httpMethod"),
            "path": event.get("path"),
            "status": response.get("statusCode"),
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "caller": caller,
        },
    )
    return response


def _is_console(event: dict[str, Any]) -> bool:
    path = str(event.get("path") or "")
    return path == "/console" or path.startswith("/console/")


def _console(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A console page (DESIGN §9): HTML, its forms posted as forms; too large or not UTF-8 is refused
    as on every route."""
    from controller.console import routes  # lazy: Jinja2 and the pages load with the first page

    body = body_bytes(event)
    early = too_large(body) or not_utf8(body)
    return early or routes.handle(event, context)


def _state_change(detail_type: str, detail: dict[str, Any]) -> str:
    from controller.services import completion  # lazy: see the module docstring

    if detail_type == GLUE_EVENT:
        source, external_id, state = "glue", detail.get("jobRunId"), detail.get("state")
        message = detail.get("message")
    else:
        source, external_id, state = "step_function", detail.get("executionArn"), detail.get("status")
        message = detail.get("error") or detail.get("cause")
    if not external_id or not state:
        logger.warning("state change without an id or a state ignored", extra={"detail_type": detail_type})
        return "ignored: incomplete event"
    outcome = completion.task_state_changed(dependencies(), source, str(external_id), str(state), message)
    logger.info("task state change", extra={"external_id": external_id, "state": state, "outcome": outcome})
    succeeded, failed = outcome.startswith("run succeeded"), outcome == "run failed"
    count("RunsSucceeded" if succeeded else "RunsFailed" if failed else "")
    return outcome
