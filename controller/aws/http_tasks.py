"""``http`` tasks: one HTTPS ``POST`` of the task's message to its ``target`` (DESIGN §4, Dispatch).

Not an AWS service, but a task target like the others: :class:`~controller.aws.tasks.AwsTaskStarter`
calls :func:`post`, and the secret an endpoint may want is read from AWS Secrets Manager.

**The request.** ``POST target`` with, as JSON, the same message SQS and Lambda tasks get
(:func:`controller.aws.tasks.payload`, which the starter passes in): the rendered params, plus
``flux`` with ``run_id``, ``attempt``, ``table``, ``alias``, ``partitions`` and ``token``, which the
endpoint reports completion with (``POST /register_execution`` with ``run_id`` and ``token``, or
``POST /runs/{id}/fail``)::

    {"--ano_mes": "202401", "flux": {"run_id": 42, "attempt": 1, "table": "t", "alias": "notify",
                                     "partitions": {"ano_mes": 202401}, "token": "…"}}

Headers: ``Content-Type: application/json``, ``User-Agent: flux-control/<version>``,
``Idempotency-Key: <token>`` (one per task and attempt: an endpoint that sees a key again has seen
this start), and with ``auth_secret`` ``Authorization: <the secret's string>``. The secret is read
through Powertools' parameters utility, cached for ``FLUX_SECRET_MAX_AGE`` seconds (300) as the
database secret is (:mod:`controller.aws.secrets`); its value is never logged and never part of an
error message (an answer that echoes it back has it replaced by ``***``).

**Where it may go.** ``https://`` only, but for a local host (``localhost``, ``127.0.0.1``, ``::1``:
plain ``http://`` is allowed there). ``FLUX_HTTP_ALLOWED_HOSTS`` (comma-separated host names;
``*.example.com`` matches every name under example.com, not example.com itself): when set, only those
hosts, local ones included; unset or empty, any host. Unset means any host because the targets are
reviewed in Git like every other target (a queue URL, a function name), and a list that silently
defaulted to nothing would fail every http task of a deployment that never heard of it; the list is
the hardening for a deployment that wants it (the SAM template's ``HttpAllowedHosts``). One exception:
inside AWS Lambda (``AWS_LAMBDA_RUNTIME_API`` set) a local host must be listed explicitly, since
127.0.0.1 there is the Lambda runtime's own API. Credentials in the URL (``user:pw@``) are refused:
they would be stored and shown with the target; ``auth_secret`` is the way.

**Time.** ``FLUX_HTTP_CONNECT_TIMEOUT`` (default 5 s, at most 10: TCP and TLS) and
``FLUX_HTTP_READ_TIMEOUT`` (default 10 s, at most 15: the wait for each part of the answer), capped so
that a start stays within the function's 28 s (API Gateway's 29 s) with time for the database. No
retry: a failure fails the start (a timeout after the request was sent may have reached the endpoint;
its next attempt carries a new token and key).

**The answer.** A 2xx is "started"; its external id is the answer's ``X-Request-Id`` header, else its
``Location``, else ``http-<status>-<dispatch id>`` (never derived from the token: external ids are
stored and shown by ``GET /runs``). Redirects are not followed (a 3xx is a failed start: following one
would send the message, and the ``Authorization`` header, to a host nobody reviewed). A 429 is the
endpoint's own limit: the run is queued, not failed (DESIGN §8). Any other answer, a timeout or a
connection error fails the start with the status and up to 200 characters of the body, control
characters removed.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import SplitResult, urlsplit

from controller import __version__
from controller.aws.secrets import max_age
from controller.core.effects import TaskRequest, TaskStartError
from controller.core.specs import LOCAL_HOSTS

ALLOWED_HOSTS_VARIABLE = "FLUX_HTTP_ALLOWED_HOSTS"
CONNECT_TIMEOUT_VARIABLE = "FLUX_HTTP_CONNECT_TIMEOUT"
READ_TIMEOUT_VARIABLE = "FLUX_HTTP_READ_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
#: Caps of the two timeouts: 10 + 15 s leave a 28 s invocation time to record the start.
MAX_CONNECT_TIMEOUT = 10.0
MAX_READ_TIMEOUT = 15.0
#: Set by AWS Lambda in every function: there, 127.0.0.1 is the runtime's API, not a task endpoint.
LAMBDA_RUNTIME_VARIABLE = "AWS_LAMBDA_RUNTIME_API"
USER_AGENT = f"flux-control/{__version__}"
#: Characters of a failed answer's body quoted in the error; bytes of it read to find them.
EXCERPT_LIMIT = 200
BODY_READ_LIMIT = 4096
#: Answer headers that name what the endpoint started, first found wins; at most this long.
EXTERNAL_ID_HEADERS = ("X-Request-Id", "Location")
EXTERNAL_ID_LIMIT = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_SPACES = re.compile(r"\s+")

SecretReader = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Where http tasks may go and how long a start may take (see the module's docstring)."""

    #: Lower-case host names and ``*.`` patterns; empty: any host.
    allowed_hosts: tuple[str, ...] = ()
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    #: In AWS Lambda: a local host must be listed to be reached.
    in_lambda: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HttpSettings:
        """The settings from ``FLUX_HTTP_ALLOWED_HOSTS``, ``FLUX_HTTP_CONNECT_TIMEOUT`` and
        ``FLUX_HTTP_READ_TIMEOUT`` (``os.environ`` unless given). A timeout that is not a positive
        number raises :class:`ValueError` naming the variable; one above its cap is the cap."""
        env = os.environ if environ is None else environ
        hosts = tuple(
            _normal_host(entry) for entry in env.get(ALLOWED_HOSTS_VARIABLE, "").split(",") if entry.strip()
        )
        return cls(
            allowed_hosts=hosts,
            connect_timeout=_seconds(
                env, CONNECT_TIMEOUT_VARIABLE, DEFAULT_CONNECT_TIMEOUT, MAX_CONNECT_TIMEOUT
            ),
            read_timeout=_seconds(env, READ_TIMEOUT_VARIABLE, DEFAULT_READ_TIMEOUT, MAX_READ_TIMEOUT),
            in_lambda=bool(env.get(LAMBDA_RUNTIME_VARIABLE, "").strip()),
        )

    def allows(self, host: str) -> bool:
        """Whether a task may reach ``host`` (a URL's host name, any case)."""
        name = _normal_host(host)
        if not self.allowed_hosts:
            return not (self.in_lambda and name in LOCAL_HOSTS)
        return any(
            fnmatchcase(name, entry) if entry.startswith("*.") else name == entry
            for entry in self.allowed_hosts
        )


def _normal_host(host: str) -> str:
    """A host name as compared: lower case, without the brackets of an IPv6 literal or a final dot."""
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def _seconds(env: Mapping[str, str], name: str, default: float, cap: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value != value:  # NaN compares false with everything
        raise ValueError(f"{name} must be a positive number of seconds, not {text!r}")
    return min(value, cap)


def check_target(target: str, settings: HttpSettings) -> SplitResult:
    """The parts of an http task's ``target``, once it is one the task may reach; raises
    :class:`ValueError` saying why not (the message names the URL's host, never a credential)."""
    try:
        parts = urlsplit(target)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as error:
        raise ValueError(f"not a valid URL ({error})") from None
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("not an http(s):// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL carries credentials; name a secret in auth_secret instead")
    if parts.scheme == "http" and _normal_host(host) not in LOCAL_HOSTS:
        raise ValueError(
            f"plain http:// is only for a local host ({', '.join(sorted(LOCAL_HOSTS))}); use https://"
        )
    if not settings.allows(host):
        listed = ", ".join(settings.allowed_hosts)
        why = (
            f"{ALLOWED_HOSTS_VARIABLE} is {listed!r}"
            if listed
            else "in AWS Lambda a local host must be listed"
        )
        raise ValueError(f"host {host!r} is not allowed ({why})")
    return parts


def read_secret(name: str) -> Any:
    """The current value of secret ``name`` (name or ARN) through Powertools, cached for
    ``FLUX_SECRET_MAX_AGE`` seconds. AWS errors propagate as Powertools' ``GetParameterError``."""
    from aws_lambda_powertools.utilities import parameters  # imports boto3: on first use only

    return parameters.get_secret(name, max_age=max_age())


def excerpt(body: bytes, secret: str | None = None) -> str:
    """At most :data:`EXCERPT_LIMIT` characters of an answer's body, control characters and runs of
    white space as one space, the secret (if the endpoint echoed it) as ``***``."""
    text = body.decode("utf-8", errors="replace")
    if secret:
        text = text.replace(secret, "***")
    text = _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()
    return text if len(text) <= EXCERPT_LIMIT else text[: EXCERPT_LIMIT - 1] + "…"


def _clean(value: str) -> str:
    return _CONTROL.sub("", value).strip()[:EXTERNAL_ID_LIMIT]


def post(
    request: TaskRequest,
    message: Mapping[str, Any],
    settings: HttpSettings,
    secrets: SecretReader = read_secret,
) -> str:
    """Start an http task: check its target, read its ``auth_secret``, POST ``message`` (the task's
    params and ``flux``) as JSON; return the external id. Raises :class:`TaskStartError` (``limited``
    for a 429) for every failure."""
    prefix = f"{request.type} {request.target}"
    try:
        parts = check_target(request.target, settings)
    except ValueError as error:
        raise TaskStartError(f"{prefix}: {error}") from None
    secret = _authorization(request, prefix, secrets)
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, */*;q=0.5",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": request.token,
    }
    if secret is not None:
        headers["Authorization"] = secret
    body = json.dumps(message).encode()
    try:
        status, reason, answer_headers, answer = _send(parts, headers, body, settings)
    except TaskStartError as error:
        raise TaskStartError(_redacted(f"{prefix}: {error}", secret)) from None
    if 200 <= status < 300:
        for name in EXTERNAL_ID_HEADERS:
            found = _clean(answer_headers.get(name) or "")
            if found:
                return found
        return f"http-{status}-{request.dispatch_id}"
    if 300 <= status < 400:
        where = _clean(answer_headers.get("Location") or "")
        to = f" to {where}" if where else ""
        refused = f"{prefix}: {status} {reason}: redirects are not followed (answered a redirect{to})"
        raise TaskStartError(_redacted(refused, secret))
    quoted = excerpt(answer, secret)
    failed = f"{prefix}: {status} {reason}" + (f": {quoted}" if quoted else "")
    raise TaskStartError(_redacted(failed, secret), limited=status == 429)


def _authorization(request: TaskRequest, prefix: str, secrets: SecretReader) -> str | None:
    """The ``Authorization`` header's value from ``auth_secret``; errors name the secret, never its value."""
    if not request.auth_secret:
        return None
    try:
        value = secrets(request.auth_secret)
    except Exception as error:  # Powertools' GetParameterError, or a client error under it
        # AWS's message names the secret and the refusal; a secret value is never part of it.
        raise TaskStartError(f"{prefix}: auth_secret {request.auth_secret}: {error}") from None
    if not isinstance(value, str):
        raise TaskStartError(
            f"{prefix}: auth_secret {request.auth_secret} has no SecretString "
            "(binary secrets are not supported)"
        )
    value = value.strip()
    if not value or _CONTROL.search(value):
        # http.client would refuse it with an error quoting the value: say so without it.
        raise TaskStartError(
            f"{prefix}: auth_secret {request.auth_secret} is empty or holds characters a header cannot "
            "carry (its value is not shown)"
        )
    return value


def _redacted(message: str, secret: str | None) -> str:
    return message.replace(secret, "***") if secret else message


def _send(
    parts: SplitResult, headers: dict[str, str], body: bytes, settings: HttpSettings
) -> tuple[int, str, http.client.HTTPMessage, bytes]:
    """One request without redirects: ``(status, reason, headers, body)``, the body read only for an
    answer that is not a 2xx (and only its first :data:`BODY_READ_LIMIT` bytes)."""
    host = parts.hostname or ""
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            host, parts.port, timeout=settings.connect_timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=settings.connect_timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        try:
            connection.connect()  # TCP and TLS, within the connect timeout
        except TimeoutError:
            raise TaskStartError(f"no connection within {settings.connect_timeout:g} s") from None
        except OSError as error:  # refused, unreachable, name not found, TLS (ssl.SSLError)
            raise TaskStartError(f"could not connect: {_os_error(error)}") from None
        assert connection.sock is not None
        connection.sock.settimeout(settings.read_timeout)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            status = response.status
            answer = b"" if 200 <= status < 300 else response.read(BODY_READ_LIMIT)
        except TimeoutError:
            raise TaskStartError(
                f"no answer within {settings.read_timeout:g} s (the request may have reached the endpoint)"
            ) from None
        except (OSError, http.client.HTTPException) as error:
            raise TaskStartError(
                f"the connection failed: {_os_error(error)} (the request may have reached the endpoint)"
            ) from None
        return status, _clean(response.reason or ""), response.headers, answer
    finally:
        connection.close()


def _os_error(error: BaseException) -> str:
    """``<type>: <text>`` of a network error, its text cut short (it never holds a header's value)."""
    text = _clean(str(error) or repr(error))[:EXCERPT_LIMIT]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
