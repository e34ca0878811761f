"""What every console answer carries and every console form proves (DESIGN §9).

- A strict Content-Security-Policy: nothing but this origin's own stylesheet and images (the pages
  inline no script, no style and no handler), no framing, forms posting here only.
- CSRF protection by a double-submitted token: a random value in a ``SameSite=Strict`` cookie, repeated
  in a hidden field of every form; a post whose field does not match its cookie (or that says it comes
  from another site, ``Sec-Fetch-Site``) is refused before anything is read or written. Stateless: any
  Lambda container checks any form.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie

from aws_lambda_powertools.shared.cookies import Cookie, SameSite

CSRF_COOKIE = "flux_csrf"
CSRF_FIELD = "csrf_token"
USER_COOKIE = "flux_user"
ID_TOKEN_COOKIE = "flux_id_token"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "style-src 'self'",
        "img-src 'self' data:",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)

#: Headers of every console answer: the policy, and no sniffing, framing, referrer or caching of
#: pages that show who may do what.
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class CsrfRefused(Exception):
    """A post without the proof that this console's page sent it."""


def cookies_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's cookies by name (a malformed header counts as none)."""
    raw = next((value for name, value in headers.items() if name.lower() == "cookie"), "")
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def csrf_token(cookies: Mapping[str, str]) -> tuple[str, bool]:
    """The CSRF token of this browser, and whether it is new (then it must be set as a cookie)."""
    known = cookies.get(CSRF_COOKIE, "")
    if len(known) >= 32 and known.isalnum():
        return known, False
    return secrets.token_hex(32), True


def check_csrf(cookies: Mapping[str, str], form: Mapping[str, str], headers: Mapping[str, str]) -> None:
    """Refuse a post that another site made, or whose token does not match its cookie."""
    site = next((v for k, v in headers.items() if k.lower() == "sec-fetch-site"), "same-origin")
    if site not in ("same-origin", "none"):
        raise CsrfRefused(f"the form was sent from another site ({site})")
    expected, given = cookies.get(CSRF_COOKIE, ""), form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        raise CsrfRefused("the form's security token is missing or stale: reload the page and try again")


def console_cookie(
    name: str, value: str, *, secure: bool, path: str = "/console", max_age: int | None = None
) -> Cookie:
    """A cookie of the console: HttpOnly, SameSite=Strict, for the console's ``path`` only (behind an
    API stage, ``/<stage>/console``: the path the browser sees)."""
    return Cookie(
        name,
        value,
        path=path,
        secure=secure,
        http_only=True,
        max_age=max_age,
        same_site=SameSite.STRICT_MODE,
    )
