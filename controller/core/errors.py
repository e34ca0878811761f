"""Errors the runtime reports to callers, each with its HTTP status and a stable code."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request the runtime refuses; the API turns it into ``{"error": {code, message, details}}``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class TooLarge(ServiceError):
    status, code = 413, "too_large"


class Unprocessable(ServiceError):
    status, code = 422, "invalid"


class Unavailable(ServiceError):
    """The database could not be reached or the connection broke; the request may be repeated."""

    status, code = 503, "unavailable"
