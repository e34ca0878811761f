"""The error answers of every operation, written into the OpenAPI document Powertools generates.

Powertools documents one error only, its own 422 shape (``{"detail": [...]}``), which this API never
sends: every error is ``{"error": {"code", "message", "details"}}`` (DESIGN §5). A client generated
from the document, or a contract test, must see the statuses each operation can answer and that shape.
"""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "stable, machine-readable (e.g. not_found)"},
                "message": {"type": "string", "description": "for people; names the field or item"},
                "details": {"type": "object", "description": "structured context (index, errors, …)"},
            },
        }
    },
}
DESCRIPTIONS = {
    400: "Malformed request: invalid JSON, a missing parameter, a body that is not an object",
    403: "The caller may not decide this approval",
    404: "Unknown table, run, approval or partition",
    409: "Conflicts with the current state (already decided, not in progress, …)",
    413: "Request body over the size limit",
    415: "Request body is not application/json",
    422: "Invalid values",
    500: "Unexpected error; the answer carries only a reference id, the details are logged",
    503: "The database is unavailable; repeat the request (with an idempotency key for registrations)",
}
_WITHOUT_DATABASE = {"/health", "/openapi.json"}
_DECISIONS = {"/approve", "/reject"}


def statuses(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    """The error statuses ``method path`` can answer."""
    found = {413, 500}
    if path not in _WITHOUT_DATABASE:
        found |= {404, 503}
    if operation.get("parameters"):
        found |= {400, 422}
    if method.lower() not in ("get", "head", "options"):
        found |= {400, 404, 409, 415, 422}
    if path in _DECISIONS:
        found.add(403)
    return sorted(found)


def with_error_responses(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with each operation's error answers, all pointing at one ``Error`` schema."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):  # Powertools' 422 shape, never sent
        schemas.pop(name, None)
    reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in statuses(path, method, operation):
                responses[str(status)] = {"description": DESCRIPTIONS[status], "content": reference}
    return document
