"""Errors the runtime reports to callers, each with its HTTP status and a stable code."""

from __future__ import annotations

from typing import Any


class RuntimeProblem(Exception):
    """A request the runtime refuses; the API turns it into ``{"error": {code, message, details}}``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class BadRequest(RuntimeProblem):
    status, code = 400, "bad_request"


class Forbidden(RuntimeProblem):
    status, code = 403, "forbidden"


class NotFound(RuntimeProblem):
    status, code = 404, "not_found"


class Conflict(RuntimeProblem):
    status, code = 409, "conflict"


class TooLarge(RuntimeProblem):
    status, code = 413, "too_large"


class Unprocessable(RuntimeProblem):
    status, code = 422, "invalid"


class Unavailable(RuntimeProblem):
    """The database could not be reached or the connection broke; the request may be repeated."""

    status, code = 503, "unavailable"
