"""Who is calling: from the API Gateway authorizer context, never from the body (outside trusted mode)."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

_CLAIMS = ("cognito:username", "username", "email", "sub")
#: The caller the route being served identified (the access line names it).
resolved_caller: ContextVar[str | None] = ContextVar("resolved_caller", default=None)


def caller_identity(
    request_context: Mapping[str, Any], body_user: str | None, trust_body_user: bool
) -> str | None:
    """The caller's identity: Cognito/JWT claims, a Lambda authorizer's principal, or the IAM user ARN.

    The body's ``user`` counts only when the deployment trusts it (``FLUX_TRUST_BODY_USER``, local serve).
    A blank value (empty or only whitespace) identifies nobody and is skipped.
    """
    if trust_body_user and _named(body_user):
        return body_user
    authorizer = request_context.get("authorizer") or {}
    claims = authorizer.get("claims") or (authorizer.get("jwt") or {}).get("claims") or {}
    for name in _CLAIMS:
        if _named(claims.get(name)):
            return str(claims[name])
    if _named(authorizer.get("principalId")):
        return str(authorizer["principalId"])
    identity = request_context.get("identity") or {}
    for name in ("userArn", "cognitoIdentityId", "user"):
        if _named(identity.get(name)):
            return str(identity[name])
    return None


def _named(value: Any) -> bool:
    return bool(value) and bool(str(value).strip())
