"""Routes of DESIGN §5 on Powertools' ``APIGatewayRestResolver``, with the JSON error model.

Every error answer is ``{"error": {"code", "message", "details"}}``; an unexpected exception is
logged with its stack trace and answered with a 500 that carries only a reference id. A database that
cannot be reached is no such exception: the database adapters raise
:class:`~controller.core.errors.Unavailable` for it, answered 503 with ``Retry-After``.

Importing this module (part of a Lambda cold start) loads only what routes and validates a request:
Powertools and the pydantic request bodies. Each route imports the runtime module it calls when it
runs: those load SQLAlchemy's ORM, the models, and (``POST /tables``) the whole validation pipeline.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from pydantic import BaseModel

from controller import __version__
from controller.api import answers, openapi
from controller.api.identity import caller_from, resolved_caller
from controller.api.models import (
    MAX_ID,
    BackfillRequest,
    DecisionRequest,
    FailRequest,
    ManualRunRequest,
    ReasonRequest,
    RegisterRequest,
    TablesPayload,
    as_mapping,
)
from controller.core.access import Caller
from controller.core.errors import Forbidden, ServiceError, Unavailable
from controller.core.problems import json_path
from controller.telemetry import count, logger
from controller.wiring import dependencies

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
    """The JSON body Powertools validates against a route's model, an object but for ``POST /tables``.

    Powertools validates the first item of an array in place of the array (it unwraps lists, meant for
    form fields): ``[{"reason": "x"}, 1]`` cancelled a run. An array is refused instead, except where
    the route's body may be one (its model says so, and Powertools then leaves it whole).
    """
    value = json_body(text)
    if isinstance(value, list) and app.current_event.path not in _ARRAY_BODIES:
        message = "Input should be a JSON object, not an array"
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",), "msg": message}])
    return value


app = APIGatewayRestResolver(enable_validation=True, json_body_deserializer=_validated_body)
#: Paths whose body may be a JSON array (the original POST /tables payload may be a list of tables).
_ARRAY_BODIES = frozenset({"/tables"})
#: Every route as written (``/runs/<run_id>``) → the paths it matches and its methods, for the 405
#: answer's ``Allow``.
ROUTES: dict[str, tuple[re.Pattern[str], set[str]]] = {}
#: Error types that mean the request is malformed (400), not that a value is invalid (422).
_MALFORMED = frozenset({"json_invalid", "model_attributes_type", "missing", "payload_shape"})
#: ``Retry-After`` of a 503 (the database unreachable, or its connection lost), in seconds: a dropped
#: connection or a failover is over in seconds; callers meeting a longer outage back off from there
#: (a long fixed wait would delay every caller of a short one).
RETRY_AFTER_SECONDS = 5


def route(
    method: str, rule: str, answer: type[BaseModel], operation_id: str, summary: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``app.route`` with the route's OpenAPI operationId, answer model and error statuses, recorded
    too so that a known path asked with another method is a 405."""
    pattern = re.compile(re.sub(r"<[^>]+>", "[^/]+", re.escape(rule)) + "$")  # re.escape keeps < and >
    ROUTES.setdefault(rule, (pattern, set()))[1].add(method)

    def decorator(handler: Callable[..., Any]) -> Callable[..., Any]:
        has_parameters = any(name != "body" for name in inspect.signature(handler).parameters)
        declared = openapi.responses(rule, method, answer, has_parameters=has_parameters, summary=summary)
        registered: Callable[..., Any] = app.route(
            rule, method, summary=summary, responses=declared, operation_id=operation_id
        )(handler)
        return registered

    return decorator


def allowed_methods(path: str) -> list[str]:
    """The methods of the routes whose rule matches ``path`` (none: the path is unknown)."""
    found: set[str] = set()
    for pattern, methods in ROUTES.values():
        if pattern.match(path):
            found |= methods
    return sorted(found)


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> Response[str]:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return Response(status_code=status, content_type="application/json", body=json.dumps(body))


@app.exception_handler(ServiceError)
def _problem(exc: ServiceError) -> Response[str]:
    answer = error_response(exc.status, exc.code, exc.message, exc.details)
    if isinstance(exc, Unavailable):
        answer.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return answer


@app.exception_handler(RequestValidationError)
def _invalid(exc: RequestValidationError) -> Response[str]:
    errors = [
        {"location": _location(e.get("loc", ())), "message": str(e.get("msg", ""))} for e in exc.errors()
    ]
    malformed = any(e.get("type") in _MALFORMED for e in exc.errors())
    status, code = (400, "bad_request") if malformed else (422, "invalid")
    first = errors[0] if errors else {"location": "body", "message": "invalid request"}
    return error_response(status, code, f"{first['location']}: {first['message']}", {"errors": errors})


def _location(loc: Any) -> str:
    """Where a request error is, as the caller wrote it: ``data[0].partitions[1].value`` in the body,
    ``query parameter 'limit'``, ``path parameter 'run_id'``."""
    parts = [p for p in loc if isinstance(p, str | int)]
    if parts and parts[0] == "body":
        return json_path(parts[1:]) or "body"
    if len(parts) == 2 and parts[0] in ("query", "path", "header", "cookie"):
        return f"{parts[0]} parameter {parts[1]!r}"
    return json_path(parts) or "request"


@app.not_found
def _not_found(exc: Exception) -> Response[str]:
    event = app.current_event
    allowed = allowed_methods(event.path)
    # With its own method among them, the path only looked like a route's (a value it cannot hold).
    if allowed and event.http_method not in allowed:
        answer = error_response(
            405,
            "method_not_allowed",
            f"{event.http_method} is not allowed on {event.path} (allowed: {', '.join(allowed)})",
            {"allowed": allowed},
        )
        answer.headers["Allow"] = ", ".join(allowed)
        return answer
    return error_response(404, "not_found", f"no route {event.http_method} {event.path}", {})


@app.exception_handler(Exception)
def _unexpected(exc: Exception) -> Response[str]:
    reference = app.current_event.request_context.request_id if app.current_event else None
    logger.exception("unexpected error", extra={"reference": reference})
    return error_response(500, "internal", f"internal error (reference {reference}); it was logged", {})


def _writer(body_user: str | None) -> Caller:
    """The caller who writes; 403 without one (DESIGN §7), before anything is read or written. In
    trusted mode (``serve``) that is the body's ``user``, which a write must then carry."""
    context = app.current_event.raw_event.get("requestContext") or {}
    caller = caller_from(context, body_user, dependencies().trust_body_user)
    resolved_caller.set(caller.name if caller else None)
    if caller is None:
        where = (
            "the body's user" if dependencies().trust_body_user else "the API Gateway authorizer's identity"
        )
        raise Forbidden(f"no caller identity: a write needs an identified caller ({where})")
    return caller


def _reader() -> None:
    """403 for a read without an identified caller outside trusted mode (DESIGN §7): reads show
    everything, so they need someone to show it to. ``serve`` (trusted mode) reads openly; ``/health``
    and ``/openapi.json`` are open everywhere (a health check and the document describe no data)."""
    if dependencies().trust_body_user:
        return
    context = app.current_event.raw_event.get("requestContext") or {}
    caller = caller_from(context, None, False)
    resolved_caller.set(caller.name if caller else None)
    if caller is None:
        raise Forbidden(
            "no caller identity: reading needs an identified caller (the API Gateway authorizer's identity)"
        )


@route("GET", "/health", answers.Health, "getHealth", "Check that the service answers")
def health() -> dict[str, str]:
    return {"status": "ok"}


@route(
    "POST",
    "/register_execution",
    answers.Registered,
    "registerExecution",
    "Register that tables produced partitions",
)
def register_execution(body: RegisterRequest) -> dict[str, Any]:
    """Register that tables produced partitions (all items or none); opens the gates that opens."""
    from controller.services import registration  # lazy: see the module docstring

    items = [
        registration.ExecutionInput(
            item.table_name,
            as_mapping(item.partitions),
            item.source,
            item.run_id,
            item.idempotency_key,
            item.token,
        )
        for item in body.data
    ]
    result = registration.register_executions(dependencies(), items, _writer(body.user))
    # Counted here, where the answer is still a dict (not parsed again from the response body).
    count("Registrations", len(result["executions"]))
    count("RunsOpenedOrPushed", len(result["runs"]))
    return result


@route("POST", "/approve", answers.Decided, "approve", "Approve a pending approval")
def approve(body: DecisionRequest) -> dict[str, Any]:
    from controller.services import approvals  # lazy: see the module docstring

    return approvals.decide(dependencies(), body.approval_status_id, _writer(body.user), True, body.comment)


@route("POST", "/reject", answers.Decided, "reject", "Reject a pending approval")
def reject(body: DecisionRequest) -> dict[str, Any]:
    from controller.services import approvals  # lazy: see the module docstring

    return approvals.decide(dependencies(), body.approval_status_id, _writer(body.user), False, body.comment)


@route("GET", "/approvals", answers.Approvals, "listApprovals", "List approvals, newest first")
def list_approvals(
    status: Annotated[str | None, Query()] = "pending", limit: Annotated[int, Query()] = 100
) -> dict[str, Any]:
    _reader()
    from controller.services import queries  # lazy: see the module docstring

    return queries.list_approvals(dependencies(), status, limit)


@route("GET", "/runs", answers.Runs, "listRuns", "List runs, newest first")
def list_runs(
    table: Annotated[str | None, Query()] = None,
    status: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query()] = 100,
) -> dict[str, Any]:
    _reader()
    from controller.services import queries  # lazy: see the module docstring

    return queries.list_runs(dependencies(), table, status, limit)


@route("GET", "/runs/<run_id>", answers.RunWithDetail, "getRun", "Get a run with its tasks and triggers")
def get_run(run_id: RunId) -> dict[str, Any]:
    _reader()
    from controller.services import queries  # lazy: see the module docstring

    return queries.get_run(dependencies(), run_id)


@route("POST", "/runs", answers.OneRun, "startManualRun", "Open a manual run (backfill, re-run)")
def manual_run(body: ManualRunRequest) -> dict[str, Any]:
    """Open the run of (table, key) now: skips the gate and the debounce, not the approval."""
    from controller.services import run_actions  # lazy: see the module docstring

    caller = _writer(body.user)
    partitions = as_mapping(body.partitions)
    return {"run": run_actions.manual_run(dependencies(), body.table_name, partitions, body.reason, caller)}


@route("POST", "/runs/<run_id>/cancel", answers.OneRun, "cancelRun", "Cancel an open run")
def cancel_run(run_id: RunId, body: ReasonRequest) -> dict[str, Any]:
    from controller.services import run_actions  # lazy: see the module docstring

    return {"run": run_actions.cancel_run(dependencies(), run_id, body.reason, _writer(body.user))}


@route("POST", "/runs/<run_id>/retry", answers.OneRun, "retryRun", "Retry a failed run as its next attempt")
def retry_run(run_id: RunId, body: ReasonRequest) -> dict[str, Any]:
    from controller.services import run_actions  # lazy: see the module docstring

    return {"run": run_actions.retry_run(dependencies(), run_id, body.reason, _writer(body.user))}


@route("POST", "/runs/<run_id>/fail", answers.OneRun, "failRun", "Report that a run's task failed")
def fail_run(run_id: RunId, body: FailRequest) -> dict[str, Any]:
    """A task reports failure (the path for SQS and Lambda tasks)."""
    from controller.services import completion  # lazy: see the module docstring

    caller = _writer(body.user)
    return {"run": completion.fail_run(dependencies(), run_id, body.reason, body.token, caller)}


@route("POST", "/backfills", answers.BackfillOpened, "startBackfill", "Open manual runs for many keys")
def start_backfill(body: BackfillRequest) -> dict[str, Any]:
    """Open a manual run for every key of the partitions' product (DESIGN §8), as an operator."""
    from controller.services import backfills  # lazy: see the module docstring

    caller = _writer(body.user)
    return backfills.backfill(dependencies(), body.table_name, body.partition_request(), body.reason, caller)


@route("GET", "/backfills/<backfill_id>", answers.OneBackfill, "getBackfill", "Get a backfill and its runs")
def get_backfill(backfill_id: RunId) -> dict[str, Any]:
    _reader()
    from controller.services import backfills  # lazy: see the module docstring

    return backfills.get_backfill(dependencies(), backfill_id)


@route("GET", "/executions", answers.Executions, "listExecutions", "List executions, newest first")
def list_executions(
    table: Annotated[str | None, Query()] = None, limit: Annotated[int, Query()] = 100
) -> dict[str, Any]:
    _reader()
    from controller.services import queries  # lazy: see the module docstring

    return queries.list_executions(dependencies(), table, limit)


@route("GET", "/tables", answers.Tables, "listTables", "List the tables as reconciled")
def list_tables() -> dict[str, Any]:
    _reader()
    from controller.services import queries  # lazy: see the module docstring

    return queries.list_tables(dependencies())


@route("GET", "/tables/<name>", answers.OneTable, "getTable", "Get one table as reconciled")
def get_table(name: str) -> dict[str, Any]:
    _reader()
    from controller.services import queries  # lazy: see the module docstring

    return queries.list_tables(dependencies(), name)


@route(
    "POST",
    "/tables",
    answers.Checked,
    "checkTables",
    "Check a POST /tables payload and plan it (writes nothing)",
)
def post_tables(body: TablesPayload) -> dict[str, Any]:
    """Validate an original ``POST /tables`` payload and show the plan it would make; never writes.

    Problems are located by their JSON path in the payload (``data[1].dependencies[0].dependency_name``).
    """
    # Lazy (see the module docstring): checking a payload loads YAML, JSON Schema, Jinja and the planner.
    from controller.api.tables_payload import check_payload

    # The payload as sent (the model checked its shape): problems are located in it.
    return check_payload(dependencies(), app.current_event.json_body)


@route("GET", "/openapi.json", answers.Document, "getOpenApiDocument", "Get this OpenAPI document")
def openapi_route() -> dict[str, Any]:
    # A dict, not the JSON text: the document then says this route answers an object, not a string.
    document: dict[str, Any] = json.loads(openapi_document())
    return document


def openapi_document() -> str:
    """The API's OpenAPI 3.1 document (also printed by ``flux-control openapi``)."""
    generated = app.get_openapi_json_schema(
        title="Flux Control",
        version=__version__,
        description="Decides when data tables may be rebuilt: executions, gates, runs, approvals.",
        security_schemes=openapi.SECURITY_SCHEMES,  # type: ignore[arg-type]  # plain JSON, as the spec writes it
        security=openapi.SECURITY,
    )
    return json.dumps(openapi.without_powertools_422(json.loads(generated)), indent=2)
