"""Requests refused before anything parses their body, on every route: too large (413), not JSON by
their media type (415), not UTF-8 (400). Each answer is an API Gateway proxy response in the error
model, made without Powertools (they come first, and Powertools would fail on some of them)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from controller.core.errors import TooLarge

MAX_BODY_BYTES = 256 * 1024


def refused(event: dict[str, Any]) -> dict[str, Any] | None:
    """The answer to a request refused before anything parses its body (every route), if it is."""
    try:
        body = body_bytes(event)
    except ValueError as exc:
        return _refusal(400, "bad_request", str(exc))
    return too_large(body) or unsupported_media_type(event) or not_utf8(body)


def body_bytes(event: dict[str, Any]) -> bytes:
    """The request body as sent: base64-decoded when API Gateway encoded it (a binary body)."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("request body is marked base64-encoded but is not base64") from None
    try:
        return body.encode("utf-8") if isinstance(body, str) else bytes(body)
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 text holds it
        raise ValueError("request body is not valid UTF-8 (a lone surrogate)") from None


def too_large(body: bytes) -> dict[str, Any] | None:
    """The 413 answer for a body over the limit."""
    if len(body) <= MAX_BODY_BYTES:
        return None
    problem = TooLarge(f"request body is larger than {MAX_BODY_BYTES:,} bytes")
    return _refusal(413, problem.code, problem.message)


def not_utf8(body: bytes) -> dict[str, Any] | None:
    """The 400 answer for a body that is not UTF-8 (JSON text is, RFC 8259 §8.1)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _refusal(
            400, "bad_request", f"request body is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        )
    return None


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
    message = (
        f"request body must be application/json, not {media!r} "
        "(curl -d sends a form: add -H 'Content-Type: application/json')"
    )
    return _refusal(415, "unsupported_media_type", message)


def _refusal(status: int, code: str, message: str) -> dict[str, Any]:
    answer = {"error": {"code": code, "message": message, "details": {}}}
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(answer)}
