"""The console's Cognito ID token check (DESIGN §9): real RS256 tokens signed with keys made here, a
local key set in place of Cognito's, a fake clock, and no network (the HTTPS fetch gets a fake opener).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from controller.api.identity import caller_from
from controller.console.tokens import (
    InvalidToken,
    KeyCache,
    TokenVerifier,
    fetch_jwks,
    jwks_url,
)
from controller.core.access import Caller
from tests.cognito_support import CLIENT, ISSUER, NOW, claims, jwk, private_key, sign

ANA = Caller("ana", kind="cognito", groups=frozenset({"leads", "ops"}))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: Mapping[str, Any], payload: Mapping[str, Any], secret: bytes | None) -> str:
    """A token PyJWT would refuse to make: ``secret`` None leaves it unsigned, else HMAC-SHA256."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest() if secret is not None else b""
    return f"{signing_input}.{b64(mac)}"


def signed(header: str, payload: str, key: str = "a", digest: hashes.HashAlgorithm | None = None) -> str:
    """The segments ``header`` and ``payload`` exactly as given, PKCS#1 v1.5-signed over ``digest``
    (SHA-256 unless told): a token whose signature holds whatever its encoding or contents."""
    signing_input = f"{header}.{payload}".encode()
    signature = private_key(key).sign(signing_input, padding.PKCS1v15(), digest or hashes.SHA256())
    return f"{header}.{payload}.{b64(signature)}"


def segment(value: Any) -> str:
    return b64(json.dumps(value).encode())


RS256_K1 = segment({"alg": "RS256", "typ": "JWT", "kid": "k1"})


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class KeySource:
    """A local key set that counts how often it is fetched; ``fail`` makes it act like a network error."""

    def __init__(self, *entries: dict[str, Any]) -> None:
        self.jwks: dict[str, Any] = {"keys": list(entries)}
        self.calls = 0
        self.fail = False

    def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        if self.fail:
            raise OSError("connection timed out")
        return self.jwks


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys() -> KeySource:
    return KeySource(jwk("a", "k1"))


@pytest.fixture
def verifier(keys: KeySource, clock: Clock) -> TokenVerifier:
    return TokenVerifier(ISSUER, CLIENT, keys, leeway_seconds=30, clock=clock)


def refused(verifier: TokenVerifier, token: str) -> str:
    """The reason ``token`` is refused; also that the reason never quotes it or chains a traceback."""
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token)
    assert not token or token not in caught.value.reason
    assert caught.value.__cause__ is None
    return caught.value.reason


def test_a_good_token_is_the_callers_name_and_groups(verifier: TokenVerifier) -> None:
    assert verifier.verify(sign(claims())) == ANA


def test_the_caller_is_the_one_the_api_builds_from_the_same_claims(verifier: TokenVerifier) -> None:
    # A REST Cognito authorizer passes groups as "leads,ops": same user, same Caller, either door.
    api = caller_from({"authorizer": {"claims": claims(**{"cognito:groups": "leads,ops"})}}, None, False)
    assert api == verifier.verify(sign(claims())) == ANA
    assert verifier.verify(sign(claims(**{"cognito:groups": "leads,ops"}))) == ANA


def test_the_name_falls_back_like_the_apis_and_no_groups_is_none(verifier: TokenVerifier) -> None:
    token = sign(claims(**{"cognito:username": None, "cognito:groups": None}))
    assert verifier.verify(token) == Caller("ana@example.com", kind="cognito")


def test_a_token_naming_nobody_is_refused(verifier: TokenVerifier) -> None:
    token = sign(claims(**{"cognito:username": None, "email": None, "sub": " "}))
    assert refused(verifier, token) == "the token names no user"


def test_a_tampered_payload_or_signature_is_refused(verifier: TokenVerifier) -> None:
    header, _, signature = sign(claims()).split(".")
    boss = b64(json.dumps(claims(**{"cognito:username": "boss"})).encode())
    assert refused(verifier, f"{header}.{boss}.{signature}") == "bad signature"
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    assert refused(verifier, f"{header}.{sign(claims()).split('.')[1]}.{flipped}") == "bad signature"


def test_a_token_signed_by_another_key_is_refused(verifier: TokenVerifier) -> None:
    assert refused(verifier, sign(claims(), key="b", kid="k1")) == "bad signature"
    # Nor does a key the token carries in its own header count: only the pool's key set does.
    carried = sign(claims(), key="b", kid="k1", jwk=jwk("b", "k1"))
    assert refused(verifier, carried) == "bad signature"


def test_an_unsigned_token_is_refused_before_any_key_is_fetched(
    verifier: TokenVerifier, keys: KeySource
) -> None:
    for alg in ("none", "None", "HS256", "RS512", "ES256"):
        assert refused(verifier, forge({"alg": alg, "kid": "k1"}, claims(), None)) == (
            "only RS256 tokens are accepted"
        )
    assert keys.calls == 0


def test_hs256_signed_with_the_public_key_is_refused(verifier: TokenVerifier) -> None:
    # The classic confusion: a verifier that lets the header pick HMAC uses the (public) RSA key as secret.
    pem = (
        private_key("a")
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    forged = forge({"alg": "HS256", "typ": "JWT", "kid": "k1"}, claims(), pem)
    assert refused(verifier, forged) == "only RS256 tokens are accepted"
    # Claiming RS256 over an HMAC signature gets no further.
    assert refused(verifier, forge({"alg": "RS256", "kid": "k1"}, claims(), pem)) == "bad signature"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"iss": "https://cognito-idp.sa-east-1.amazonaws.com/sa-east-1_Other"}, "another issuer"),
        ({"iss": None}, "another issuer"),
        ({"aud": "another-client"}, "another application"),
        ({"aud": None}, "another application"),
        # An access token: client_id instead of aud, token_use access.
        ({"aud": None, "client_id": CLIENT, "token_use": "access"}, "not an ID token"),
        ({"token_use": None}, "not an ID token"),
    ],
)
def test_a_token_for_someone_else_is_refused(
    verifier: TokenVerifier, changes: dict[str, Any], reason: str
) -> None:
    assert reason in refused(verifier, sign(claims(**changes)))


def test_expiry_allows_the_leeway_and_no_more(verifier: TokenVerifier, clock: Clock) -> None:
    token = sign(claims(exp=int(NOW) + 3600))
    clock.now = NOW + 3600 + 29
    assert verifier.verify(token) == ANA
    clock.now = NOW + 3600 + 31
    assert refused(verifier, token) == "the token has expired; sign in again"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"iat": int(NOW) + 31}, "the token is issued in the future"),
        ({"nbf": int(NOW) + 31}, "the token is not yet valid"),
        ({"exp": None}, "the token lacks its expiry or issue time"),
        ({"iat": None}, "the token lacks its expiry or issue time"),
        ({"exp": True}, "the token's exp is not a time"),
        ({"exp": "tomorrow"}, "the token's exp is not a time"),
    ],
)
def test_bad_times_are_refused(verifier: TokenVerifier, changes: dict[str, Any], reason: str) -> None:
    assert refused(verifier, sign(claims(**changes))) == reason


def test_a_clock_a_little_behind_cognitos_is_tolerated(verifier: TokenVerifier) -> None:
    assert verifier.verify(sign(claims(iat=int(NOW) + 29, nbf=int(NOW) + 29))) == ANA


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 20_000, sign(claims())[:-1] + "!"])
def test_malformed_tokens_are_refused(verifier: TokenVerifier, token: str) -> None:
    assert refused(verifier, token) == "malformed token"


def test_only_the_exact_compact_base64url_form_is_read(verifier: TokenVerifier) -> None:
    good = signed(RS256_K1, segment(claims()))
    assert verifier.verify(good) == ANA
    header, payload, signature = good.split(".")
    # Each of these is signed properly over exactly its text: only the encoding is wrong, and a lenient
    # decoder (which pads, maps +/ to -_, or skips what it does not know) would let it through.
    standard = base64.b64encode(json.dumps(claims(note="~~~~~~")).encode()).decode().rstrip("=")
    assert "+" in standard  # "~~~" is "fn5+" in standard base64, "fn5-" in base64url
    raw = json.dumps(claims()).encode()
    padded = base64.urlsafe_b64encode(raw + b" " * (len(raw) % 3 == 0)).decode()  # JSON may end in a space
    assert padded.endswith("=")
    for token in (
        f"{good}.{signature}",  # four parts
        f"{header}.{payload}.{signature}.",
        f"{header}.{payload}",  # two
        f"{header}..{payload}.{signature}",
        signed(RS256_K1, standard),
        signed(RS256_K1, padded),
        signed(RS256_K1, payload[:10] + "\n" + payload[10:]),
        signed(RS256_K1, payload[:10] + " " + payload[10:]),
        signed(RS256_K1, payload[:10] + "\u0661" + payload[10:]),  # an Arabic-Indic digit one: no ASCII
        signed(RS256_K1, payload[:-1] + "*"),
        signed(RS256_K1, payload + "A"),  # one character too many: no whole byte
        f"{header}.{payload}.{signature}==",
        f"{header}.{payload}.{signature[:-1]}%",
    ):
        assert refused(verifier, token) == "malformed token"


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (RS256_K1, segment([claims()])),  # claims in a JSON array
        (RS256_K1, segment("ana")),
        (RS256_K1, segment(None)),
        (RS256_K1, b64(b"\xff\xfe not UTF-8")),
        (RS256_K1, b64(json.dumps(claims()).encode()[:-1])),  # cut short
        (RS256_K1, b64(json.dumps(claims()).replace(str(int(NOW) + 3600), "NaN").encode())),
        (RS256_K1, b64(b"[" * 5_000 + b"]" * 5_000)),
        (segment([{"alg": "RS256", "kid": "k1"}]), segment(claims())),  # a header in a JSON array
        (segment("RS256"), segment(claims())),
        (b64(b'{"alg": "RS256", "kid": "k1"'), segment(claims())),
        (segment({"alg": "RS256", "kid": 1}), segment(claims())),  # a key id, but no string
        (segment({"alg": "RS256", "kid": "k1", "crit": ["exp"], "exp": 1}), segment(claims())),
        (segment({"alg": "RS256", "kid": "k1", "b64": False}), ""),  # a detached payload
    ],
)
def test_a_signed_token_that_is_no_jws_of_claims_is_malformed(
    verifier: TokenVerifier, header: str, payload: str
) -> None:
    assert refused(verifier, signed(header, payload)) == "malformed token"


def test_only_sha_256_signatures_pass_as_rs256(verifier: TokenVerifier) -> None:
    # rsa.verify accepts PKCS#1 v1.5 over any hash it knows and says which: RS256 means SHA-256 only.
    payload = segment(claims())
    assert verifier.verify(signed(RS256_K1, payload, digest=hashes.SHA256())) == ANA
    for digest in (hashes.SHA512(), hashes.SHA384(), hashes.SHA224(), hashes.SHA1()):
        assert refused(verifier, signed(RS256_K1, payload, digest=digest)) == "bad signature"


def test_a_signature_of_the_wrong_length_is_bad(verifier: TokenVerifier) -> None:
    header, payload, signature = sign(claims()).split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    for wrong in (b"", raw[1:], b"\x00" + raw, raw + b"\x00", raw * 2):
        assert refused(verifier, f"{header}.{payload}.{b64(wrong)}") == "bad signature"


def test_a_key_shorter_than_2048_bits_is_ignored(clock: Clock) -> None:
    assert private_key("short", bits=1024).key_size == 1024  # a real RSA key, only too short
    keys = KeySource(jwk("a", "k1"), jwk("short", "k2"))
    verifier = TokenVerifier(ISSUER, CLIENT, keys, clock=clock)
    token = signed(segment({"alg": "RS256", "kid": "k2"}), segment(claims()), key="short")
    assert refused(verifier, token) == "the token's signing key is unknown"
    assert verifier.verify(sign(claims())) == ANA  # the rest of the set still counts


@pytest.mark.parametrize(
    "changes",
    [
        {"e": "AQ"},  # e = 1: every padded message would be its own signature
        {"e": "Ag"},  # even
        {"e": ""},
        {"e": 65537},
        {"n": None},
        {"n": "not base64url!"},
        {"n": "AQAB"},  # far too short
    ],
)
def test_a_malformed_or_weak_rsa_key_is_ignored(clock: Clock, changes: dict[str, Any]) -> None:
    entry = {name: value for name, value in {**jwk("a", "k1"), **changes}.items() if value is not None}
    verifier = TokenVerifier(ISSUER, CLIENT, KeySource(entry, jwk("b", "k2")), clock=clock)
    assert refused(verifier, sign(claims())) == "the token's signing key is unknown"
    assert verifier.verify(sign(claims(), key="b", kid="k2")) == ANA


def test_the_module_needs_neither_pyjwt_nor_cryptography() -> None:
    # The Lambda zip has no room for cryptography's native wheel: the runtime verifies with `rsa`.
    check = (
        "import sys, controller.console.tokens; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jwt', 'cryptography'}))"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_token_without_a_key_id_is_refused(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), private_key("a"), algorithm="RS256")
    assert refused(verifier, token) == "the token names no signing key"


def test_only_rsa_signing_keys_of_the_set_count(clock: Clock) -> None:
    secret = {"kty": "oct", "kid": "k1", "k": b64(b"public-key-as-secret")}
    encryption = {**jwk("a", "k2"), "use": "enc"}
    verifier = TokenVerifier(ISSUER, CLIENT, KeySource(secret, encryption, {"kid": "k3"}), clock=clock)
    for kid in ("k1", "k2", "k3"):
        assert refused(verifier, sign(claims(), kid=kid)) == "the token's signing key is unknown"


def test_a_new_key_id_triggers_one_refetch(verifier: TokenVerifier, keys: KeySource, clock: Clock) -> None:
    assert verifier.verify(sign(claims())) == ANA
    keys.jwks["keys"].append(jwk("b", "k2"))  # Cognito rotated; the cached set does not know k2 yet
    clock.now += 61
    assert verifier.verify(sign(claims(), key="b", kid="k2")) == ANA
    assert verifier.verify(sign(claims(), key="b", kid="k2")) == ANA
    assert keys.calls == 2


def test_an_unknown_key_id_after_a_refetch_is_refused_and_refetches_are_throttled(
    verifier: TokenVerifier, keys: KeySource, clock: Clock
) -> None:
    assert verifier.verify(sign(claims())) == ANA
    clock.now += 61
    assert refused(verifier, sign(claims(), kid="made-up")) == "the token's signing key is unknown"
    assert keys.calls == 2
    keys.jwks["keys"].append(jwk("b", "k2"))
    for kid in ("made-up", "other", "k2"):  # within the interval nothing is fetched, not even for k2
        assert refused(verifier, sign(claims(), key="b", kid=kid)) == "the token's signing key is unknown"
    assert keys.calls == 2
    assert verifier.verify(sign(claims())) == ANA  # known keys still work meanwhile
    clock.now += 61
    assert verifier.verify(sign(claims(), key="b", kid="k2")) == ANA
    assert keys.calls == 3


def test_the_set_is_refetched_when_old_and_a_dropped_key_stops_working(
    verifier: TokenVerifier, keys: KeySource, clock: Clock
) -> None:
    token = sign(claims(exp=int(NOW) + 7200))
    assert verifier.verify(token) == ANA
    clock.now += 3599
    assert verifier.verify(token) == ANA
    assert keys.calls == 1
    keys.jwks["keys"] = [jwk("b", "k2")]
    clock.now += 2
    assert refused(verifier, token) == "the token's signing key is unknown"
    assert keys.calls == 2


def test_unreachable_keys_refuse_without_hammering(keys: KeySource, clock: Clock) -> None:
    cache = KeyCache(keys, refetch_interval_seconds=60, clock=clock)
    keys.fail = True
    for _ in range(3):
        with pytest.raises(InvalidToken, match="unavailable"):
            cache.key("k1")
    assert keys.calls == 1
    keys.fail = False
    clock.now += 60
    assert cache.key("k1") is not None
    assert keys.calls == 2


class FakeOpener:
    """Stands in for urllib.request.urlopen: records each request and answers with ``body``."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests: list[tuple[urllib.request.Request, float]] = []

    @contextmanager
    def __call__(self, request: urllib.request.Request, /, *, timeout: float) -> Iterator[io.BytesIO]:
        self.requests.append((request, timeout))
        yield io.BytesIO(self.body)


def test_the_key_set_is_fetched_from_the_issuer_once_and_cached(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    opener = FakeOpener(json.dumps({"keys": [jwk("a", "k1")]}).encode())
    monkeypatch.setattr(urllib.request, "urlopen", opener)
    verifier = TokenVerifier(ISSUER + "/", CLIENT, clock=clock)  # the default source: HTTPS from the issuer
    for _ in range(3):
        assert verifier.verify(sign(claims())) == ANA
    assert [(request.full_url, timeout) for request, timeout in opener.requests] == [
        (f"{ISSUER}/.well-known/jwks.json", 5.0)
    ]


@pytest.mark.parametrize(
    ("url", "body", "error"),
    [
        ("http://cognito-idp.example/jwks.json", b'{"keys": []}', "https"),
        (jwks_url(ISSUER), b"<html>", "Expecting value"),
        (jwks_url(ISSUER), b'{"keys": {}}', "not a JSON key set"),
        (jwks_url(ISSUER), b'{"keys": ["' + b"x" * 1_100_000 + b'"]}', "too large"),
    ],
)
def test_fetch_refuses_what_is_no_key_set(url: str, body: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        fetch_jwks(url, opener=FakeOpener(body))


def test_fetch_returns_the_key_set_with_the_timeout_asked() -> None:
    opener = FakeOpener(b'{"keys": [{"kid": "k1"}]}')
    assert fetch_jwks(jwks_url(ISSUER), timeout=2.5, opener=opener) == {"keys": [{"kid": "k1"}]}
    assert opener.requests[0][1] == 2.5


def test_from_env() -> None:
    assert TokenVerifier.from_env({}) is None
    assert TokenVerifier.from_env({"FLUX_COGNITO_ISSUER": " ", "FLUX_COGNITO_CLIENT_ID": ""}) is None
    configured = TokenVerifier.from_env({"FLUX_COGNITO_ISSUER": ISSUER, "FLUX_COGNITO_CLIENT_ID": CLIENT})
    assert configured is not None
    assert (configured.issuer, configured.audience) == (ISSUER, CLIENT)
    with pytest.raises(ValueError, match="FLUX_COGNITO_CLIENT_ID"):
        TokenVerifier.from_env({"FLUX_COGNITO_ISSUER": ISSUER})
    with pytest.raises(ValueError, match="FLUX_COGNITO_ISSUER"):
        TokenVerifier.from_env({"FLUX_COGNITO_CLIENT_ID": CLIENT})
