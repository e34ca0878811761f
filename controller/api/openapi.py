"""What the OpenAPI document says of each route: its operationId, its answers (the 200 model and every
error status it can answer), and how callers authenticate.

Powertools writes the document from the routes; :func:`responses` gives each route its answers as
Powertools' per-route ``responses=``. The one thing left to mend afterwards is Powertools' own default: a
422 in its ``{"detail": [...]}`` shape on every route, which this API never sends (its errors are
``{"error": {...}}``, DESIGN §5). A route that can answer 422 declares its own; on the others the default
is removed, with the schemas only it referred to.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from controller.api.answers import Error

DESCRIPTIONS = {
    400: "Malformed request: invalid JSON or UTF-8, a missing field, a body that is not an object",
    403: "No caller identity, or the caller may not do this (DESIGN §7)",
    404: "Unknown table, run, approval or partition",
    409: "Conflicts with the current state (already decided, not in progress, …)",
    413: "Request body over the size limit",
    415: "Request body is not application/json",
    422: "Invalid values",
    500: "Unexpected error; the answer carries only a reference id, the details are logged",
    503: "The database is unavailable; repeat the request (with an idempotency key for registrations)",
}
_WITHOUT_DATABASE = {"/health", "/openapi.json"}
_READS_ONLY = {"/tables"}  # POST /tables checks a payload and writes nothing
#: How callers authenticate: deploy/template.yaml puts one of them in front of every route.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "sigv4": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "AWS Signature Version 4 (IAM): the caller needs execute-api:Invoke on the route",
        "x-amazon-apigateway-authtype": "awsSigv4",
    },
    "cognito": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An ID token of the Cognito user pool the stack is deployed with",
    },
}
#: Either scheme, whichever the deployment chose.
SECURITY: list[dict[str, list[str]]] = [{"sigv4": []}, {"cognito": []}]
_SCHEMAS = "#/components/schemas/"
_POWERTOOLS_422 = f"{_SCHEMAS}HTTPValidationError"


def statuses(rule: str, method: str, *, has_parameters: bool) -> list[int]:
    """The error statuses ``method rule`` can answer."""
    found = {413, 500}
    if rule not in _WITHOUT_DATABASE:
        found |= {404, 503}
    if has_parameters:
        found |= {400, 422}
    if method.upper() not in ("GET", "HEAD", "OPTIONS"):
        found |= {400, 404, 409, 415, 422}
        if rule not in _READS_ONLY:
            found.add(403)
    return sorted(found)


def responses(
    rule: str, method: str, answer: type[BaseModel], *, has_parameters: bool, summary: str
) -> dict[int, Any]:
    """Powertools' ``responses=`` for a route: its answer model, then its error statuses."""
    found: dict[int, Any] = {
        200: {"description": summary, "content": {"application/json": {"model": answer}}}
    }
    for status in statuses(rule, method, has_parameters=has_parameters):
        found[status] = {
            "description": DESCRIPTIONS[status],
            "content": {"application/json": {"model": Error}},
        }
    return found


def without_powertools_422(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` without the default 422 of routes that never answer one, and without the schemas
    no operation refers to any more (``HTTPValidationError``, ``ValidationError``, …)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answers = operation.get("responses", {})
            schema = answers.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref") == _POWERTOOLS_422:
                del answers["422"]
    schemas = document.get("components", {}).get("schemas", {})
    used = _reachable(document.get("paths", {}), schemas)
    for name in [name for name in schemas if name not in used]:
        del schemas[name]
    return document


def _reachable(paths: Any, schemas: dict[str, Any]) -> set[str]:
    """The component schemas the paths refer to, directly or through other schemas."""
    found: set[str] = set()
    pending = [paths]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith(_SCHEMAS):
                name = reference.removeprefix(_SCHEMAS)
                if name not in found and name in schemas:
                    found.add(name)
                    pending.append(schemas[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found
