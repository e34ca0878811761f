"""The console's AWS login (DESIGN §9): verify the Cognito ID token the hosted UI put in a cookie.

:class:`TokenVerifier` checks the token (RS256 only, the user pool's keys, issuer, app client, ID token,
time) and turns its claims into the same :class:`~controller.core.access.Caller` (kind ``cognito``)
that :func:`controller.api.identity.caller_from` builds for the API, so §7's rules see one identity.
Every refusal is :class:`InvalidToken` with a short reason that never quotes the token.

The token is parsed here with the standard library and its signature checked with the pure-Python
``rsa`` package: the Lambda zip has no room for ``cryptography``'s native wheel (so neither PyJWT).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, NoReturn, Protocol

import rsa

from controller.api.identity import caller_from
from controller.core.access import Caller

ALGORITHM = "RS256"  # what Cognito signs with; anything else (none, HS256) is refused before any key is used
ISSUER_ENV = "FLUX_COGNITO_ISSUER"
CLIENT_ID_ENV = "FLUX_COGNITO_CLIENT_ID"
FETCH_TIMEOUT_SECONDS = 5.0
_MAX_TOKEN_CHARS = 16_384  # Cognito ID tokens are a few KiB; a cookie cannot hold much more anyway
_MAX_JWKS_BYTES = 1_048_576
_MIN_MODULUS_BITS = 2048  # what Cognito's keys have; anything shorter is not trusted to sign a login
_HASH = "SHA-256"  # RS256 is PKCS#1 v1.5 over SHA-256; `rsa.verify` accepts whichever hash was signed
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")  # RFC 7515's base64url: no padding, no other characters

JwksSource = Callable[[], Mapping[str, Any]]


class InvalidToken(Exception):
    """The token was refused; ``reason`` is short, human and safe to show (it never quotes the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Response(Protocol):
    def read(self, amt: int, /) -> bytes: ...


class Opener(Protocol):
    """What :func:`fetch_jwks` calls to open a URL: :func:`urllib.request.urlopen`'s shape."""

    def __call__(
        self, url: urllib.request.Request, /, *, timeout: float
    ) -> AbstractContextManager[_Response]: ...


def jwks_url(issuer: str) -> str:
    """Where a Cognito user pool (its ``iss``) publishes its signing keys."""
    return issuer.rstrip("/") + "/.well-known/jwks.json"


def fetch_jwks(
    url: str, *, timeout: float = FETCH_TIMEOUT_SECONDS, opener: Opener | None = None
) -> dict[str, Any]:
    """The JSON key set at ``url`` (HTTPS only, bounded by ``timeout`` and size).

    Raises :class:`OSError` when it cannot be fetched and :class:`ValueError` when it is no key set.
    ``opener`` defaults to :func:`urllib.request.urlopen`, looked up at call time (tests replace it).
    """
    if not url.startswith("https://"):
        # Keys fetched in clear text could be swapped by anyone on the path: that is every login.
        raise ValueError("the key set URL must be https://")
    open_url: Opener = opener if opener is not None else urllib.request.urlopen
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with open_url(request, timeout=timeout) as response:
        body = response.read(_MAX_JWKS_BYTES + 1)
    if len(body) > _MAX_JWKS_BYTES:
        raise ValueError("the key set is too large")
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JSON key set")
    return data


class KeyCache:
    """The user pool's RSA signing keys by key id, fetched from ``source`` and kept ``max_age_seconds``.

    A token naming an unknown key id triggers one refetch (Cognito rotated its keys), but fetches are
    at most one per ``refetch_interval_seconds``: tokens with made-up key ids cannot hammer Cognito.
    """

    def __init__(
        self,
        source: JwksSource,
        *,
        max_age_seconds: float = 3600.0,
        refetch_interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._max_age = max_age_seconds
        self._interval = refetch_interval_seconds
        self._clock = clock
        self._keys: dict[str, rsa.PublicKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = threading.Lock()  # `serve` answers on threads; one fetch at a time is enough

    def key(self, kid: str) -> rsa.PublicKey | None:
        """The key named ``kid``, refetching the set when stale or when ``kid`` is new to it; None when
        the set does not have it. Raises :class:`InvalidToken` when the keys cannot be had."""
        with self._lock:
            now = self._clock()
            fresh = self._fetched_at is not None and now - self._fetched_at < self._max_age
            if fresh and kid in self._keys:
                return self._keys[kid]
            if self._attempted_at is not None and now - self._attempted_at < self._interval:
                if not fresh:  # a fetch just failed: stale keys are not trusted past their age
                    raise InvalidToken("the sign-in keys are unavailable; try again shortly")
                return None
            self._attempted_at = now
            try:
                self._keys = _rsa_keys(self._source())
            except (OSError, ValueError):
                raise InvalidToken("the sign-in keys are unavailable; try again shortly") from None
            self._fetched_at = now
            return self._keys.get(kid)


def _rsa_keys(jwks: Mapping[str, Any]) -> dict[str, rsa.PublicKey]:
    keys: dict[str, rsa.PublicKey] = {}
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise ValueError("not a JSON key set")
    for entry in entries:
        # Only RSA signing keys count; one odd entry (another type, an encryption key) skips itself only.
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue
        if entry.get("alg", ALGORITHM) != ALGORITHM or not isinstance(entry.get("kid"), str):
            continue
        key = _public_key(entry.get("n"), entry.get("e"))
        if key is not None:
            keys[entry["kid"]] = key
    return keys


def _public_key(n: object, e: object) -> rsa.PublicKey | None:
    """The RSA public key a JWK's ``n`` and ``e`` give; None when they are malformed or too weak."""
    if not isinstance(n, str) or not isinstance(e, str) or not n or not e:
        return None
    try:
        modulus = int.from_bytes(_b64decode(n), "big")
        exponent = int.from_bytes(_b64decode(e), "big")
    except ValueError:
        return None
    if modulus.bit_length() < _MIN_MODULUS_BITS or modulus % 2 == 0:
        return None
    if exponent < 3 or exponent % 2 == 0 or exponent >= modulus:  # with e = 1 anyone could sign
        return None
    return rsa.PublicKey(modulus, exponent)


def _b64decode(segment: str) -> bytes:
    """``segment`` as base64url without padding decodes; :class:`ValueError` for anything else."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json takes them, JSON does not


def _json_object(data: bytes) -> dict[str, Any]:
    """``data`` as a UTF-8 JSON object; :class:`ValueError` for anything else."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:  # deeply nested arrays: not a header or claims, whatever else they are
        raise ValueError("too deeply nested") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


class _Parts:
    """A compact JWS split and decoded; the payload stays bytes until its signature is checked."""

    def __init__(self, token: str) -> None:
        segments = token.split(".")
        if len(segments) != 3:
            raise ValueError("not three segments")
        header, payload, signature = segments
        self.header = _json_object(_b64decode(header))
        self.payload = _b64decode(payload)
        self.signature = _b64decode(signature)
        self.signing_input = f"{header}.{payload}".encode("ascii")


class TokenVerifier:
    """Verifies a Cognito user pool's ID tokens for one app client (``audience``)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks: JwksSource | None = None,
        *,
        leeway_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        max_age_seconds: float = 3600.0,
        refetch_interval_seconds: float = 60.0,
    ) -> None:
        """``issuer`` is ``https://cognito-idp.<region>.amazonaws.com/<pool id>``, ``audience`` the app
        client id; ``jwks`` returns the key set (default: fetched from the issuer over HTTPS)."""
        if not issuer.strip() or not audience.strip():
            raise ValueError("a token verifier needs an issuer and an audience")
        self.issuer = issuer.strip().rstrip("/")  # Cognito's iss never ends in "/"
        self.audience = audience.strip()
        self.leeway = leeway_seconds
        self._clock = clock
        source = jwks if jwks is not None else partial(fetch_jwks, jwks_url(self.issuer))
        self._keys = KeyCache(
            source,
            max_age_seconds=max_age_seconds,
            refetch_interval_seconds=refetch_interval_seconds,
            clock=clock,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenVerifier | None:
        """The verifier ``FLUX_COGNITO_ISSUER`` and ``FLUX_COGNITO_CLIENT_ID`` configure; None when both
        are unset (the console then has no AWS login). Only one of them set is a wiring mistake."""
        env = os.environ if environ is None else environ
        issuer = env.get(ISSUER_ENV, "").strip()
        client_id = env.get(CLIENT_ID_ENV, "").strip()
        if not issuer and not client_id:
            return None
        if not issuer or not client_id:
            missing = ISSUER_ENV if not issuer else CLIENT_ID_ENV
            raise ValueError(f"{missing} is unset while the other Cognito setting is set")
        return cls(issuer, client_id)

    def verify(self, token: str) -> Caller:
        """The caller a valid ID token names (kind ``cognito``, with its groups); raises
        :class:`InvalidToken` for anything else."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken("malformed token")
        try:
            parts = _Parts(token)
        except ValueError:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors too
            raise InvalidToken("malformed token") from None
        header = parts.header
        # A key id that is there but no string, or an extension the reader must understand ("crit", a
        # detached payload), makes the token malformed: no extension is understood here.
        kid_not_text = "kid" in header and not isinstance(header["kid"], str)
        if kid_not_text or "crit" in header or header.get("b64", True) is False:
            raise InvalidToken("malformed token")
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(f"only {ALGORITHM} tokens are accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("the token names no signing key")
        key = self._keys.key(kid)
        if key is None:
            raise InvalidToken("the token's signing key is unknown")
        claims = self._decode(parts, key)
        if claims.get("iss") != self.issuer:
            raise InvalidToken("the token is from another issuer")
        if claims.get("token_use") != "id":
            # An access token carries client_id, not aud: it authorises API calls, it names no user.
            raise InvalidToken("not an ID token")
        aud = claims.get("aud")
        if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
            raise InvalidToken("the token is for another application")
        self._check_times(claims)
        # The API's own mapping of claims to a caller: one identity, whichever door the caller used.
        caller = caller_from({"authorizer": {"claims": claims}}, None, False)
        if caller is None or caller.kind != "cognito":
            raise InvalidToken("the token names no user")
        return caller

    def _decode(self, parts: _Parts, key: rsa.PublicKey) -> dict[str, Any]:
        # The signature first (RS256: PKCS#1 v1.5 over SHA-256 and nothing else), then the claims it
        # covers; their values are checked by the caller, against our own clock.
        if len(parts.signature) != (key.n.bit_length() + 7) // 8:
            raise InvalidToken("bad signature")
        try:
            hash_name = rsa.verify(parts.signing_input, parts.signature, key)
        except rsa.VerificationError:
            raise InvalidToken("bad signature") from None
        if hash_name != _HASH:  # signed, but with another hash than the RS256 header says (SHA-1, …)
            raise InvalidToken("bad signature")
        try:
            return _json_object(parts.payload)
        except ValueError:
            raise InvalidToken("malformed token") from None

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        exp, iat, nbf = (_seconds(claims, name) for name in ("exp", "iat", "nbf"))
        if exp is None or iat is None:
            raise InvalidToken("the token lacks its expiry or issue time")
        if now > exp + self.leeway:
            raise InvalidToken("the token has expired; sign in again")
        if iat > now + self.leeway:
            raise InvalidToken("the token is issued in the future")
        if nbf is not None and nbf > now + self.leeway:
            raise InvalidToken("the token is not yet valid")


def _seconds(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int in Python; `"exp": true` is a broken token, not second 1 of 1970.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"the token's {name} is not a time")
    return float(value)
