"""Who is looking at a console page (DESIGN §7, §9), found in this order:

1. the API Gateway authorizer's identity, as for the API (a deployment that puts one in front);
2. in AWS, the browser login's Cognito ID token (a cookie), verified by the function: signature,
   issuer, audience, expiry (:mod:`controller.console.tokens`);
3. in trusted mode (``serve``), the name the local login keeps in a cookie.

None when nobody is signed in: pages then ask to sign in, and nothing is written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cache
from typing import Any
from urllib.parse import unquote

from controller.api.identity import caller_from
from controller.console.security import ID_TOKEN_COOKIE, USER_COOKIE
from controller.core.access import Caller

logger = logging.getLogger("flux_control.console")


def console_caller(
    request_context: Mapping[str, Any], cookies: Mapping[str, str], *, trusted: bool
) -> Caller | None:
    """The caller of a console request (see the module docstring)."""
    found = caller_from(request_context, None, False)
    if found is not None:
        return found
    token = cookies.get(ID_TOKEN_COOKIE)
    if token:
        verifier = _verifier()
        if verifier is not None:
            from controller.console.tokens import InvalidToken  # lazy: PyJWT only with a token

            try:
                verified: Caller = verifier.verify(token)
                return verified
            except InvalidToken as exc:
                logger.info("console token refused", extra={"reason": str(exc)})
    if trusted:
        name = unquote(cookies.get(USER_COOKIE, "")).strip()
        if name:
            return Caller(name, kind="body")
    return None


class InvalidLogin(Exception):
    """A browser login's ID token that does not verify (or no verifier is configured)."""


def verified_caller(token: str) -> Caller:
    """The caller a freshly issued ID token names, verified; :class:`InvalidLogin` otherwise."""
    verifier = _verifier()
    if verifier is None:
        raise InvalidLogin("no token verifier is configured (FLUX_COGNITO_ISSUER, FLUX_COGNITO_CLIENT_ID)")
    from controller.console.tokens import InvalidToken  # lazy: rsa only with a browser login

    try:
        verified: Caller = verifier.verify(token)
    except InvalidToken as exc:
        raise InvalidLogin(str(exc)) from None
    return verified


@cache
def _verifier() -> Any:
    """The deployment's token verifier (None without a browser login configured), made once."""
    from controller.console.tokens import TokenVerifier  # lazy: PyJWT only with a browser login

    return TokenVerifier.from_env()
