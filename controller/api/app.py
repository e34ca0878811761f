"""Routes of DESIGN §5 on Powertools' ``APIGatewayRestResolver``, with the JSON error model.

Every error answer is ``{"error": {"code", "message", "details"}}``; an unexpected exception is
logged with its stack trace and answered with a 500 that carries only a reference id.

Importing this module (part of a Lambda cold start) loads only what routes and validates a request:
Powertools and the pydantic request bodies. Each route imports the runtime module it calls when it
runs: those load SQLAlchemy's ORM, the models, and (``POST /tables``) the whole validation pipeline.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from controller import __version__
from controller.api.identity import caller_identity
from controller.api.models import (
    MAX_ID,
    DecisionRequest,
    ManualRunRequest,
    ReasonRequest,
    RegisterRequest,
    as_mapping,
)
from controller.runtime.errors import BadRequest, RuntimeProblem, TooLarge
from controller.wiring import runtime

MAX_BODY_BYTES = 256 * 1024
#: A run id in a path: a positive BIGINT (a larger integer names no run and cannot be bound in a query).
RunId = Annotated[int, Path(ge=1, le=MAX_ID)]


def json_body(text: str) -> Any:
    """``json.loads`` whose every failure is a ``JSONDecodeError``, which Powertools answers with a 400.

    A body nested too deeply raises ``RecursionError`` and an integer of more than 4,300 digits a
    plain ``ValueError``: both were 500s.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        raise json.JSONDecodeError(str(exc), text, 0) from None


def _validated_body(text: str) -> Any:
    """The JSON body Powertools validates against a route's model, which is always an object.

    Powertools validates the first item of an array in place of the array (it unwraps lists, meant for
    form fields): ``[{"reason": "x"}, 1]`` cancelled a run. An array is refused instead.
    """
    value = json_body(text)
    if isinstance(value, list):
        message = "Input should be a JSON object, not an array"
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",), "msg": message}])
    return value


logger = Logger(service="flux-control")
app = APIGatewayRestResolver(enable_validation=True, json_body_deserializer=_validated_body)


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> Response[str]:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return Response(status_code=status, content_type="application/json", body=json.dumps(body))


@app.exception_handler(RuntimeProblem)
def _problem(exc: RuntimeProblem) -> Response[str]:
    return error_response(exc.status, exc.code, exc.message, exc.details)


@app.exception_handler(RequestValidationError)
def _invalid(exc: RequestValidationError) -> Response[str]:
    errors = [
        {"location": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    malformed = any(
        e.get("type") in ("json_invalid", "model_attributes_type", "missing") for e in exc.errors()
    )
    status, code = (400, "bad_request") if malformed else (422, "invalid")
    first = errors[0] if errors else {"location": "body", "message": "invalid request"}
    return error_response(status, code, f"{first['location']}: {first['message']}", {"errors": errors})


@app.not_found
def _not_found(exc: Exception) -> Response[str]:
    event = app.current_event
    return error_response(404, "not_found", f"no route {event.http_method} {event.path}", {})


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[str]:
    reference = app.current_event.request_context.request_id if app.current_event else None
    logger.exception("unexpected error", extra={"reference": reference})
    return error_response(500, "internal", f"internal error (reference {reference}); it was logged", {})


def refused(event: dict[str, Any]) -> dict[str, Any] | None:
    """The answer to a request refused before anything parses its body (every route), if it is."""
    return too_large(event) or unsupported_media_type(event)


def too_large(event: dict[str, Any]) -> dict[str, Any] | None:
    """The 413 answer for a body over the limit."""
    body = event.get("body") or ""
    if len(body.encode("utf-8") if isinstance(body, str) else body) <= MAX_BODY_BYTES:
        return None
    problem = TooLarge(f"request body is larger than {MAX_BODY_BYTES:,} bytes")
    return _refusal(413, problem.code, problem.message)


def unsupported_media_type(event: dict[str, Any]) -> dict[str, Any] | None:
    """The 415 answer for a request that may carry a body and says it is not JSON.

    Bodies are JSON (DESIGN §5). Powertools would answer another media type with an unhandled
    exception, and raises on a multipart body without a boundary: both were 500s.
    """
    if event.get("httpMethod") in ("GET", "HEAD", "OPTIONS"):
        return None
    headers = event.get("headers") or {}
    media = next((str(v) for k, v in headers.items() if k.lower() == "content-type"), "").strip()
    if not media or media.lower().startswith("application/json"):
        return None
    return _refusal(415, "unsupported_media_type", f"request body must be application/json, not {media!r}")


def _refusal(status: int, code: str, message: str) -> dict[str, Any]:
    answer = {"error": {"code": code, "message": message, "details": {}}}
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(answer)}


def _identity(body_user: str | None) -> str | None:
    context = app.current_event.raw_event.get("requestContext") or {}
    return caller_identity(context, body_user, runtime().trust_body_user)


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/register_execution")
def register_execution(body: RegisterRequest) -> dict[str, Any]:
    """Register that tables produced partitions (all items or none); opens the gates that opens."""
    from controller.runtime import registration  # lazy: see the module docstring

    items = [
        registration.ExecutionInput(
            item.table_name, as_mapping(item.partitions), item.source, item.run_id, item.idempotency_key
        )
        for item in body.data
    ]
    return registration.register_executions(runtime(), items, _identity(body.user))


@app.post("/approve")
def approve(body: DecisionRequest) -> dict[str, Any]:
    from controller.runtime import approvals  # lazy: see the module docstring

    return approvals.decide(runtime(), body.approval_status_id, _identity(body.user), True, body.comment)


@app.post("/reject")
def reject(body: DecisionRequest) -> dict[str, Any]:
    from controller.runtime import approvals  # lazy: see the module docstring

    return approvals.decide(runtime(), body.approval_status_id, _identity(body.user), False, body.comment)


@app.get("/approvals")
def list_approvals(
    status: Annotated[str | None, Query()] = "pending", limit: Annotated[int, Query()] = 100
) -> dict[str, Any]:
    from controller.runtime import queries  # lazy: see the module docstring

    return queries.list_approvals(runtime(), status, limit)


@app.get("/runs")
def list_runs(
    table: Annotated[str | None, Query()] = None,
    status: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query()] = 100,
) -> dict[str, Any]:
    from controller.runtime import queries  # lazy: see the module docstring

    return queries.list_runs(runtime(), table, status, limit)


@app.get("/runs/<run_id>")
def get_run(run_id: RunId) -> dict[str, Any]:
    from controller.runtime import queries  # lazy: see the module docstring

    return queries.get_run(runtime(), run_id)


@app.post("/runs")
def manual_run(body: ManualRunRequest) -> dict[str, Any]:
    """Open the run of (table, key) now: skips the gate and the debounce, not the approval."""
    from controller.runtime import run_actions  # lazy: see the module docstring

    return {
        "run": run_actions.manual_run(runtime(), body.table_name, as_mapping(body.partitions), body.reason)
    }


@app.post("/runs/<run_id>/cancel")
def cancel_run(run_id: RunId, body: ReasonRequest) -> dict[str, Any]:
    from controller.runtime import run_actions  # lazy: see the module docstring

    return {"run": run_actions.cancel_run(runtime(), run_id, body.reason)}


@app.post("/runs/<run_id>/retry")
def retry_run(run_id: RunId, body: ReasonRequest) -> dict[str, Any]:
    from controller.runtime import run_actions  # lazy: see the module docstring

    return {"run": run_actions.retry_run(runtime(), run_id, body.reason)}


@app.post("/runs/<run_id>/fail")
def fail_run(run_id: RunId, body: ReasonRequest) -> dict[str, Any]:
    """A task reports failure (the path for SQS and Lambda tasks)."""
    from controller.runtime import completion  # lazy: see the module docstring

    return {"run": completion.fail_run(runtime(), run_id, body.reason)}


@app.get("/executions")
def list_executions(
    table: Annotated[str | None, Query()] = None, limit: Annotated[int, Query()] = 100
) -> dict[str, Any]:
    from controller.runtime import queries  # lazy: see the module docstring

    return queries.list_executions(runtime(), table, limit)


@app.get("/tables")
def list_tables() -> dict[str, Any]:
    from controller.runtime import queries  # lazy: see the module docstring

    return queries.list_tables(runtime())


@app.get("/tables/<name>")
def get_table(name: str) -> dict[str, Any]:
    from controller.runtime import queries  # lazy: see the module docstring

    return queries.list_tables(runtime(), name)


@app.post("/tables")
def post_tables() -> dict[str, Any]:
    """Validate an original ``POST /tables`` payload and show the plan it would make; never writes."""
    try:
        payload = json_body(app.current_event.body or "")
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    # Lazy (see the module docstring): checking a payload loads YAML, JSON Schema, Jinja and the planner.
    from controller.api.tables_payload import check_payload

    return check_payload(runtime(), payload)


@app.get("/openapi.json")
def openapi() -> dict[str, Any]:
    # A dict, not the JSON text: the document then says this route answers an object, not a string.
    document: dict[str, Any] = json.loads(openapi_document())
    return document


def openapi_document() -> str:
    """The API's OpenAPI 3.1 document (also printed by ``flux-control openapi``), with its errors."""
    from controller.api.openapi_errors import with_error_responses

    generated = app.get_openapi_json_schema(
        title="Flux Control",
        version=__version__,
        description="Decides when data tables may be rebuilt: executions, gates, runs, approvals.",
    )
    return json.dumps(with_error_responses(json.loads(generated)), indent=2)
