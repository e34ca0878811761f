"""Who is calling: from the API Gateway authorizer context, never from the body (outside trusted mode).

:func:`caller_from` builds the whole :class:`~controller.core.access.Caller` (name, Cognito groups, IAM
ARN and account) that the rule of who may do what (:mod:`controller.core.access`) needs;
:func:`caller_identity` is its name alone, what writes record as their actor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from controller.core.access import Caller, CallerKind

_CLAIMS = ("cognito:username", "username", "email", "sub")
_GROUPS_CLAIM = "cognito:groups"
# Cognito group names are [\p{L}\p{M}\p{S}\p{N}\p{P}]+: never whitespace, so splitting on it is safe.
_SEPARATORS = re.compile(r"[\s,]+")
_ARN_ACCOUNT = re.compile(r"arn:[^:]*:(?:iam|sts)::(\d{12}):.*", re.ASCII | re.DOTALL)
#: The caller the route being served identified (the access line names it).
resolved_caller: ContextVar[str | None] = ContextVar("resolved_caller", default=None)


def caller_identity(
    request_context: Mapping[str, Any], body_user: str | None, trust_body_user: bool
) -> str | None:
    """The caller's identity: Cognito/JWT claims, a Lambda authorizer's principal, or the IAM user ARN.

    The body's ``user`` counts only when the deployment trusts it (``FLUX_TRUST_BODY_USER``, local serve).
    A blank value (empty or only whitespace) identifies nobody and is skipped.
    """
    caller = caller_from(request_context, body_user, trust_body_user)
    return caller.name if caller is not None else None


def caller_from(
    request_context: Mapping[str, Any], body_user: str | None, trust_body_user: bool
) -> Caller | None:
    """The caller, found where :func:`caller_identity` finds its name (the same name, in the same order):

    1. trusted mode only: the body's ``user`` (kind ``body``);
    2. Cognito or JWT claims, ``cognito:username``, ``username``, ``email`` then ``sub``: a REST API's
       Cognito or JWT authorizer puts them in ``authorizer.claims`` (kind ``cognito``), an HTTP API's
       JWT authorizer in ``authorizer.jwt.claims`` (kind ``jwt``); groups from ``cognito:groups``;
    3. a Lambda authorizer's ``authorizer.principalId`` (kind ``authorizer``);
    4. IAM (SigV4) callers: ``identity.userArn`` (else ``cognitoIdentityId``, ``user``), with the ARN
       and the account, ``identity.accountId`` or the ARN's (kind ``iam``).

    None when nothing names the caller; blank values are skipped.
    """
    if trust_body_user and body_user is not None and _named(body_user):
        return Caller(str(body_user), kind="body")
    authorizer = _mapping(request_context.get("authorizer"))
    rest_claims = _mapping(authorizer.get("claims"))
    kind: CallerKind = "cognito" if rest_claims else "jwt"
    claims = rest_claims or _mapping(_mapping(authorizer.get("jwt")).get("claims"))
    for claim in _CLAIMS:
        if _named(claims.get(claim)):
            return Caller(str(claims[claim]), kind=kind, groups=groups_from(claims.get(_GROUPS_CLAIM)))
    if _named(authorizer.get("principalId")):
        return Caller(str(authorizer["principalId"]), kind="authorizer")
    identity = _mapping(request_context.get("identity"))
    for field in ("userArn", "cognitoIdentityId", "user"):
        if _named(identity.get(field)):
            arn = str(identity["userArn"]) if _named(identity.get("userArn")) else None
            return Caller(str(identity[field]), kind="iam", arn=arn, account=_account(identity, arn))
    return None


def groups_from(claim: Any) -> frozenset[str]:
    """The Cognito groups of a ``cognito:groups`` claim, in each form API Gateway passes it:

    - a JSON array (a REST API's JWT authorizer keeps claim types): ``["leads", "ops"]``;
    - a REST API Cognito authorizer's string, comma-separated: ``"leads,ops"`` (one group: ``"leads"``);
    - an HTTP API JWT authorizer's string, bracketed and space-separated: ``"[leads ops]"``;
    - a JSON array written as a string: ``'["leads","ops"]'``.

    Names are kept exactly (no case folding); blanks are dropped. The string forms cannot tell a group
    named ``a,b`` from groups ``a`` and ``b``: keep commas and brackets out of group names that
    ``group:`` entries rely on (or use a JWT authorizer, which passes a real array).
    """
    if isinstance(claim, list | tuple):
        return frozenset(item for item in claim if isinstance(item, str) and item.strip())
    if not isinstance(claim, str):
        return frozenset()
    text = claim.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        if isinstance(decoded, list):
            return groups_from(decoded)
        text = text[1:-1]
    return frozenset(part for part in _SEPARATORS.split(text) if part)


def _account(identity: Mapping[str, Any], arn: str | None) -> str | None:
    """The IAM caller's account: API Gateway's ``accountId``, else the one in its ARN. When both are
    there and disagree, ``accountId`` is kept and :mod:`controller.core.access` trusts neither."""
    if _named(identity.get("accountId")):
        return str(identity["accountId"])
    found = _ARN_ACCOUNT.fullmatch(arn) if arn else None
    return found.group(1) if found else None


def _mapping(value: Any) -> Mapping[str, Any]:
    # API Gateway sends objects here; anything else (null, a string) identifies nobody rather than crash.
    return value if isinstance(value, Mapping) else {}


def _named(value: Any) -> bool:
    return bool(value) and bool(str(value).strip())
