"""The HTTP client of the operator commands (DESIGN §8): the Flux Control API over ``urllib``.

Requests go to ``--api-url`` (``FLUX_API_URL``) with a timeout on connecting and on every read. When
the URL is an API Gateway one (``*.execute-api.REGION.amazonaws.com``, or any host with ``--sigv4``),
each request is signed with SigV4 for ``execute-api`` from the usual AWS credentials (environment,
profile, SSO, instance role: botocore's chain). Every failure is an :class:`ApiError` with one line
for people: the API's own error message and status, or what went wrong reaching it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from controller import __version__
from controller.core.terminal_text import printable

DEFAULT_TIMEOUT = 30.0
#: The default execute-api host of a REST API (also a private API's VPC endpoint host), with its region.
_API_GATEWAY_HOST = re.compile(
    r"[a-z0-9-]+\.execute-api\.([a-z0-9-]+)\.(?:vpce\.)?amazonaws\.com(?:\.cn)?", re.IGNORECASE | re.ASCII
)
#: How much of an answer that is not the API's error model is shown (an HTML page from a proxy, …).
_EXCERPT = 200


class ApiError(Exception):
    """A request that did not succeed: the API refused it (``status``), or it could not be sent."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})" if self.status is not None else self.message


def api_gateway_region(host: str) -> str | None:
    """The region of an API Gateway host (``abc123.execute-api.eu-west-1.amazonaws.com``), else None."""
    found = _API_GATEWAY_HOST.fullmatch(host.rstrip("."))
    return found.group(1).lower() if found else None


@dataclass(frozen=True)
class ApiClient:
    """Requests to one API: ``base_url`` (scheme, host and any stage path), signed or not."""

    base_url: str
    sign: bool = False
    region: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def for_url(cls, url: str, sigv4: bool | None = None, timeout: float = DEFAULT_TIMEOUT) -> ApiClient:
        """A client of the API at ``url``; ``sigv4`` None signs exactly when the host is API Gateway's.

        Raises :class:`ValueError` for a URL that is not ``http(s)://host[:port][/path]``.
        """
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s):// URL")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r} has a query or fragment: give the API's base URL only")
        host_region = api_gateway_region(parts.hostname)
        sign = host_region is not None if sigv4 is None else sigv4
        region = (host_region or _configured_region()) if sign else None
        base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        return cls(base, sign, region, timeout)

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer of ``GET path?query`` (None values are left out)."""
        return self._send(self.build("GET", path, query))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """The decoded JSON answer of ``POST path`` with a JSON body (None values are left out)."""
        return self._send(self.build("POST", path, body=body))

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        """The full URL of ``path`` under the base URL."""
        pairs = {k: v for k, v in (query or {}).items() if v is not None}
        return f"{self.base_url}{path}" + (f"?{urlencode(pairs)}" if pairs else "")

    def build(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> urllib.request.Request:
        """The request as it will be sent: headers, JSON body and, when signing, SigV4's headers."""
        url = self.url(path, query)
        headers = {"Accept": "application/json", "User-Agent": f"flux-control/{__version__}"}
        data = None
        if body is not None:
            content = {k: v for k, v in body.items() if v is not None}
            data = json.dumps(content, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.sign:
            headers = sigv4_headers(method, url, headers, data, self.region or "")
        return urllib.request.Request(url, data=data, headers=headers, method=method)

    def _send(self, request: urllib.request.Request) -> Any:
        where = request.full_url.split("?", 1)[0]
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raw = _read(error)
            error.close()
            if 300 <= error.code < 400:
                location = printable(error.headers.get("Location") or "elsewhere")
                raise ApiError(
                    f"the API at {where} redirects to {location}: give the final URL as --api-url", error.code
                ) from None
            raise refusal(error.code, raw, error.reason) from None
        except urllib.error.URLError as error:
            raise ApiError(f"cannot reach the API at {where}: {_why(error.reason, self.timeout)}") from None
        except TimeoutError:
            raise ApiError(f"the API at {where} did not answer within {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as error:
            raise ApiError(
                f"the connection to the API at {where} failed: {_why(error, self.timeout)}"
            ) from None
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise ApiError(
                f"the API at {where} answered something that is not JSON: {_excerpt(raw)}"
            ) from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: a signed request (its session token) never goes to another host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def refusal(status: int, raw: bytes, reason: str = "") -> ApiError:
    """The error of an answer with a status ≥ 400: the API's ``{"error": {"code", "message"}}``, API
    Gateway's own ``{"message": …}`` (a missing or refused signature), or an excerpt of the body."""
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            code = error.get("code")
            return ApiError(printable(error["message"]), status, code if isinstance(code, str) else None)
        for key in ("message", "Message"):
            if isinstance(answer.get(key), str):
                return ApiError(printable(answer[key]), status)
    text = _excerpt(raw) if raw.strip() else printable(reason or "no answer body")
    return ApiError(text, status)


def sigv4_headers(
    method: str, url: str, headers: dict[str, str], body: bytes | None, region: str
) -> dict[str, str]:
    """``headers`` with SigV4's (``Authorization``, ``X-Amz-Date``, ``X-Amz-Security-Token``) for
    ``execute-api`` in ``region`` (else the profile's region), from botocore's credential chain."""
    # botocore is imported only here: the other commands, --help and unsigned calls never load it.
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.exceptions import BotoCoreError
    from botocore.session import get_session

    try:
        session = get_session()
        region = region or session.get_config_variable("region") or ""
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except BotoCoreError as error:
        raise ApiError(f"cannot get AWS credentials to sign the request (SigV4): {error}") from None
    if not region:
        raise ApiError(
            "cannot sign the request (SigV4): no AWS region; set AWS_REGION (or a profile's region), "
            "or use the API's execute-api URL, which names it"
        )
    if frozen is None or not frozen.access_key:
        raise ApiError(
            "cannot sign the request (SigV4): no AWS credentials found (set AWS_PROFILE or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run `aws sso login`); --no-sigv4 sends it unsigned"
        )
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    SigV4Auth(frozen, "execute-api", region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}


def _configured_region() -> str | None:
    """The region to sign for when the host does not name one: AWS_REGION, AWS_DEFAULT_REGION."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def _why(reason: object, timeout: float) -> str:
    """A connection failure in a few words."""
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the API running there?)"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error: {getattr(reason, 'reason', None) or reason}"
    if isinstance(reason, OSError) and reason.strerror:
        return printable(reason.strerror)
    return printable(str(reason) or type(reason).__name__)


def _read(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read()
    except (OSError, http.client.HTTPException):
        return b""


def _excerpt(raw: bytes) -> str:
    text = " ".join(raw.decode("utf-8", "replace").split())
    return printable(text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…")
