"""The console's browser login in AWS (DESIGN §9): OAuth 2.0's authorization-code flow with PKCE (RFC 7636,
S256) against a Cognito user pool's hosted UI, for a public app client (no client secret: the Lambda keeps
none, and PKCE is what binds the code to the browser that asked for it).

1. :meth:`BrowserLogin.start` makes a ``state`` and a PKCE ``code_verifier`` and answers the hosted UI's
   authorize URL (carrying the state and the verifier's S256 challenge) and the value of the login cookie
   (:data:`STATE_COOKIE`) that keeps state, verifier and the console page to return to;
2. the hosted UI signs the user in and sends the browser back to ``<FLUX_CONSOLE_URL>/callback?code&state``;
3. :meth:`BrowserLogin.finish` checks the returned state against the cookie's (constant time) and trades
   the code and the verifier for tokens at ``<domain>/oauth2/token``, answering the ID token and the page.

The ID token is *not* verified here: the caller hands it to
:class:`controller.console.tokens.TokenVerifier` (as every later request does with the cookie), so one
check decides who is signed in. Every refusal is :class:`LoginFailed` with a short human reason that
never quotes the code, a token or the sign-in service's own text.

**Why the login cookie is not signed.** It holds three values the browser already has (the state is in
the authorize URL it follows, the page it asked for is its own) and one it must keep to itself (the
verifier). What protects the flow is where the cookie lives, not a server key: it is ``HttpOnly``
(scripts cannot read the verifier), ``Secure``, scoped to the callback's path, short-lived, and
``SameSite=Lax`` (sent on the hosted UI's top-level redirect back, which ``Strict`` would drop).

- *Login CSRF* (an attacker's code pushed into a victim's browser) fails because the victim's cookie
  holds another state than the attacker's callback URL, and the states are compared in constant time.
- *A stolen code* is useless without the verifier, which never leaves the cookie and the token request.
- *A forged cookie* needs the power to write this origin's cookies; whoever has it can equally plant a
  validly signed cookie from a flow of their own (a signature proves where a value was made, not which
  browser holds it), so a signature would add a secret to manage and no protection. The page to return
  to is checked again when the cookie comes back, so even a forged one cannot redirect off the console.

No OIDC ``nonce``: the ID token comes straight from the token endpoint over TLS, in exchange for a code
bound to this browser's verifier, so no token can be injected into the callback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlencode, urlsplit

from aws_lambda_powertools.shared.cookies import Cookie, SameSite

from controller.console.security import ID_TOKEN_COOKIE

DOMAIN_ENV = "FLUX_COGNITO_DOMAIN"
CLIENT_ID_ENV = "FLUX_COGNITO_CLIENT_ID"
CONSOLE_URL_ENV = "FLUX_CONSOLE_URL"
#: The cookie that carries a sign-in from :meth:`BrowserLogin.start` to :meth:`BrowserLogin.finish`.
STATE_COOKIE = "flux_login"
#: How long a started sign-in may take (the hosted UI's own session lasts a few minutes too).
STATE_MAX_AGE_SECONDS = 600
#: How long the ID token cookie lasts: the app client's ID token validity (deploy/template.yaml).
ID_TOKEN_MAX_AGE_SECONDS = 3600
SCOPES = ("openid", "email", "profile")
TIMEOUT_SECONDS = 5.0
HOME = "/console/"
_MAX_ANSWER_BYTES = 65_536  # three tokens of a few KiB each; anything larger is no answer of Cognito's
_MAX_ID_TOKEN_CHARS = 16_384  # as tokens.py: a cookie cannot hold much more anyway
_MAX_NEXT_CHARS = 1_024
_MAX_CODE_CHARS = 2_048
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_STATE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_VERIFIER = re.compile(r"[A-Za-z0-9_-]{43,128}")  # RFC 7636: 43 to 128 unreserved characters
_CODE = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: Cognito's codes are UUIDs
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_OAUTH_ERROR = re.compile(r"[a-z_]{1,64}")  # RFC 6749 §5.2's codes: invalid_grant, invalid_client, …
#: A console page: /console, or /console/ and a path, then an optional query; RFC 3986's path and query
#: characters only (no backslash, no space, no control character, no fragment).
_NEXT = re.compile(r"/console(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*(?:\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?")

_EXPIRED = "this sign-in expired or was started in another browser: sign in again"
_MISMATCH = "this sign-in does not match the one this browser started: sign in again"
_NOT_CONSOLE = "the page to return to is not a page of this console"


class LoginFailed(Exception):
    """A sign-in that did not complete; ``reason`` is short, human and safe to show (it never quotes the
    code, a token or what the sign-in service said beyond its OAuth error code)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def code_challenge(verifier: str) -> str:
    """The S256 challenge of a PKCE verifier: base64url (no padding) of its SHA-256."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def console_page(path: str) -> str:
    """``path`` if it is a page of this console (``/console`` is ``/console/``); raises
    :class:`LoginFailed` for anything else: another site (``https://…``, ``//host``, ``/\\host``), a path
    outside ``/console/``, dot segments (also percent-encoded), doubled or encoded slashes, a fragment."""
    if not isinstance(path, str) or len(path) > _MAX_NEXT_CHARS or not _NEXT.fullmatch(path):
        raise LoginFailed(_NOT_CONSOLE)
    route, _, query = path.partition("?")
    decoded = unquote(route)
    segments = decoded.split("/")[1:]
    if "\\" in decoded or "//" in decoded or any(s in (".", "..") for s in segments):
        raise LoginFailed(_NOT_CONSOLE)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded + unquote(query)):
        raise LoginFailed(_NOT_CONSOLE)  # %0d%0a and the like: no header splitting through a redirect
    return HOME + path.removeprefix("/console") if route == "/console" else path


@dataclass(frozen=True)
class _Pending:
    """A started sign-in, as its cookie keeps it."""

    state: str
    verifier: str
    next_path: str

    def cookie_value(self) -> str:
        encoded = base64.urlsafe_b64encode(self.next_path.encode("utf-8")).rstrip(b"=").decode("ascii")
        return f"{self.state}.{self.verifier}.{encoded}"

    @classmethod
    def from_cookie(cls, value: str | None) -> _Pending:
        if not isinstance(value, str) or not value or len(value) > 4096:
            raise LoginFailed(_EXPIRED)
        parts = value.split(".")
        if len(parts) != 3 or not _STATE.fullmatch(parts[0]) or not _VERIFIER.fullmatch(parts[1]):
            raise LoginFailed(_EXPIRED)
        if not _B64URL.fullmatch(parts[2]) or len(parts[2]) % 4 == 1:
            raise LoginFailed(_EXPIRED)
        try:
            next_path = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4)).decode("utf-8")
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            raise LoginFailed(_EXPIRED) from None
        return cls(parts[0], parts[1], console_page(next_path))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The token endpoint answers; it never sends the code and the verifier on to somewhere else."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None  # urllib then raises the 3xx as an HTTPError


def _origin(url: str, name: str) -> tuple[str, bool]:
    """``url`` without a trailing slash, and whether it is HTTPS; :class:`ValueError` unless it is
    ``https://`` (or ``http://`` on this machine, for tests and ``serve``) with a host and no
    credentials, query or fragment."""
    parts = urlsplit(url)
    local = parts.scheme == "http" and (parts.hostname or "") in _LOCAL_HOSTS
    if parts.scheme != "https" and not local:
        raise ValueError(f"{name} must be an https:// URL (http:// only for localhost)")
    if not parts.hostname or "@" in parts.netloc or parts.query or parts.fragment or "?" in url:
        raise ValueError(f"{name} must be a plain URL: a host, no credentials, query or fragment")
    return url.rstrip("/"), parts.scheme == "https"


class BrowserLogin:
    """The hosted UI of one Cognito user pool domain, for one public app client and one console URL."""

    def __init__(
        self, domain: str, client_id: str, console_url: str, *, timeout: float = TIMEOUT_SECONDS
    ) -> None:
        """``domain`` is the hosted UI's origin (``https://NAME.auth.REGION.amazoncognito.com``),
        ``client_id`` the app client's id, ``console_url`` the console's own URL (``https://…/console``,
        whose ``/callback`` is the app client's callback URL). :class:`ValueError` for a malformed one."""
        self.domain, _ = _origin(domain.strip(), DOMAIN_ENV)
        if urlsplit(self.domain).path:
            raise ValueError(f"{DOMAIN_ENV} must be the hosted UI's origin, without a path")
        self.client_id = client_id.strip()
        if not self.client_id or len(self.client_id) > 128 or not _CODE.fullmatch(self.client_id):
            raise ValueError(f"{CLIENT_ID_ENV} must be an app client id")
        self.console_url, self.secure = _origin(console_url.strip(), CONSOLE_URL_ENV)
        if not urlsplit(self.console_url).path.endswith("/console"):
            raise ValueError(f"{CONSOLE_URL_ENV} must be the console's URL, ending in /console")
        if timeout <= 0:
            raise ValueError("the token request's timeout must be positive")
        self.timeout = timeout
        self.redirect_uri = f"{self.console_url}/callback"
        self.token_url = f"{self.domain}/oauth2/token"
        #: The console's path as the browser sees it (``/prod/console``: API Gateway's stage comes first).
        self.cookie_path = urlsplit(self.console_url).path
        self._opener = urllib.request.build_opener(_NoRedirects())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BrowserLogin | None:
        """The login ``FLUX_COGNITO_DOMAIN``, ``FLUX_COGNITO_CLIENT_ID`` and ``FLUX_CONSOLE_URL``
        configure; None without a domain (no browser login: ``serve`` sets the console URL alone).
        A domain without the other two is a wiring mistake: :class:`ValueError` naming what is unset."""
        env = os.environ if environ is None else environ
        domain = env.get(DOMAIN_ENV, "").strip()
        if not domain:
            return None
        client_id = env.get(CLIENT_ID_ENV, "").strip()
        console_url = env.get(CONSOLE_URL_ENV, "").strip()
        missing = [
            name for name, value in ((CLIENT_ID_ENV, client_id), (CONSOLE_URL_ENV, console_url)) if not value
        ]
        if missing:
            raise ValueError(f"{' and '.join(missing)} unset while {DOMAIN_ENV} is set")
        return cls(domain, client_id, console_url)

    # --- the flow ------------------------------------------------------------------------------------

    def start(self, next_path: str = HOME) -> tuple[str, str]:
        """``(authorize_url, state_cookie_value)`` for a sign-in that comes back to ``next_path`` (a
        console page, see :func:`console_page`; :class:`LoginFailed` otherwise). Send the browser to the
        URL and set the value as :meth:`state_cookie`."""
        pending = _Pending(secrets.token_urlsafe(32), secrets.token_urlsafe(64), console_page(next_path))
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": " ".join(SCOPES),
                "state": pending.state,
                "code_challenge": code_challenge(pending.verifier),
                "code_challenge_method": "S256",
            }
        )
        return f"{self.domain}/oauth2/authorize?{query}", pending.cookie_value()

    def finish(
        self, query_code: str | None, query_state: str | None, state_cookie_value: str | None
    ) -> tuple[str, str]:
        """``(id_token, next_path)`` for the callback's ``code`` and ``state`` and the login cookie's
        value; :class:`LoginFailed` when the cookie is missing or malformed, the state differs, or the
        token endpoint refuses, fails, is slow or answers no ID token. The token is not verified here."""
        pending = _Pending.from_cookie(state_cookie_value)
        given = (query_state or "").encode("utf-8")
        if not hmac.compare_digest(given, pending.state.encode("ascii")):
            raise LoginFailed(_MISMATCH)
        if not query_code or len(query_code) > _MAX_CODE_CHARS or not _CODE.fullmatch(query_code):
            raise LoginFailed("the sign-in service sent no usable code: sign in again")
        return self._exchange(query_code, pending.verifier), pending.next_path

    def logout_url(self) -> str:
        """The hosted UI's logout, which ends its session and comes back to the console's front page
        (``<FLUX_CONSOLE_URL>/``, the app client's sign-out URL)."""
        query = urlencode({"client_id": self.client_id, "logout_uri": f"{self.console_url}/"})
        return f"{self.domain}/logout?{query}"

    def console_link(self, path: str) -> str:
        """The absolute URL of console page ``path`` (``/console/runs`` → ``<FLUX_CONSOLE_URL>/runs``):
        where a browser behind API Gateway's stage must go."""
        return self.console_url + console_page(path).removeprefix("/console")

    # --- cookies -------------------------------------------------------------------------------------

    def state_cookie(self, value: str) -> Cookie:
        """The login cookie: HttpOnly, Secure, ``SameSite=Lax`` (the hosted UI's redirect back is a
        cross-site navigation), for the callback's path only, for :data:`STATE_MAX_AGE_SECONDS`."""
        return self._cookie(STATE_COOKIE, value, f"{self.cookie_path}/callback", STATE_MAX_AGE_SECONDS)

    def id_token_cookie(self, id_token: str) -> Cookie:
        """The cookie :mod:`controller.console.callers` reads the ID token from, for every console page:
        ``SameSite=Lax``, so that a link to a run (an email, a chat) arrives signed in (posts stay
        protected by their CSRF token, and Lax sends no cookie on another site's post)."""
        return self._cookie(ID_TOKEN_COOKIE, id_token, self.cookie_path, ID_TOKEN_MAX_AGE_SECONDS)

    def cleared_cookies(self) -> list[Cookie]:
        """What the callback (the login cookie, used once) or a logout (both) sets to forget them."""
        return [
            self._cookie(STATE_COOKIE, "", f"{self.cookie_path}/callback", 0),
            self._cookie(ID_TOKEN_COOKIE, "", self.cookie_path, 0),
        ]

    def _cookie(self, name: str, value: str, path: str, max_age: int) -> Cookie:
        return Cookie(
            name,
            value,
            path=path,
            secure=self.secure,
            http_only=True,
            max_age=max_age,
            same_site=SameSite.LAX_MODE,
        )

    # --- the token endpoint --------------------------------------------------------------------------

    def _exchange(self, code: str, verifier: str) -> str:
        form = urlencode(
            {
                "grant_type": "authorization_code",
                "client_id": self.client_id,
                "code": code,
                "redirect_uri": self.redirect_uri,
                "code_verifier": verifier,
            }
        ).encode("ascii")
        request = urllib.request.Request(
            self.token_url,
            data=form,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = _read(response, deadline)
        except HTTPError as refused:
            with refused:
                try:
                    detail = _read(refused, deadline)
                except (TimeoutError, LoginFailed):
                    detail = b""  # the status alone says enough
            raise LoginFailed(_refusal(refused.code, detail)) from None
        except TimeoutError:
            raise LoginFailed(_SLOW) from None
        except URLError as failed:
            reason = _SLOW if isinstance(failed.reason, TimeoutError) else _UNREACHABLE
            raise LoginFailed(reason) from None
        except (OSError, http.client.HTTPException):
            raise LoginFailed(_UNREACHABLE) from None
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            raise LoginFailed(_UNEXPECTED) from None
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if (
            not isinstance(id_token, str)
            or len(id_token) > _MAX_ID_TOKEN_CHARS
            or not _JWS.fullmatch(id_token)
        ):
            raise LoginFailed(_UNEXPECTED)
        return id_token


_SLOW = "the sign-in service did not answer in time: try again"
_UNREACHABLE = "the sign-in service could not be reached: try again shortly"
_UNEXPECTED = "the sign-in service answered without an ID token: sign in again"


def _read(response: Any, deadline: float) -> bytes:
    """The body, at most :data:`_MAX_ANSWER_BYTES`, before ``deadline``: a slow trickle is a timeout,
    a body too large no answer (each ``read`` is bounded by the socket's own timeout)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError
        try:
            chunk = response.read(8192)
        except TimeoutError:
            raise
        except (OSError, http.client.HTTPException):
            raise LoginFailed(_UNREACHABLE) from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > _MAX_ANSWER_BYTES:
            raise LoginFailed(_UNEXPECTED)
        chunks.append(chunk)


def _refusal(status: int, body: bytes) -> str:
    """Why the token endpoint said no: its OAuth error code when it gives one, else its status."""
    if status >= 500:
        return f"the sign-in service failed (HTTP {status}): try again shortly"
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        answer = None
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, str) and _OAUTH_ERROR.fullmatch(error):
        return f"the sign-in service refused the code ({error}): sign in again"
    return f"the sign-in service refused the code (HTTP {status}): sign in again"
