"""Cognito played locally for the console's login tests: RSA keys made here and their key set,
ID tokens signed with them, and a token endpoint on 127.0.0.1 (no network, no Cognito)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://cognito-idp.sa-east-1.amazonaws.com/sa-east-1_AbCdEf123"
CLIENT = "4p9xkq2example7client"
NOW = 1_750_000_000.0
ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbmEifQ.c2lnbmF0dXJl"


_KEYS: dict[str, rsa.RSAPrivateKey] = {}


def private_key(name: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """One RSA key per name for the whole module (making keys is the slow part); ``bits`` sizes a new one."""
    if name not in _KEYS:
        _KEYS[name] = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return _KEYS[name]


def jwk(name: str, kid: str) -> dict[str, Any]:
    """The public half of key ``name`` as Cognito's key set lists it."""
    entry = RSAAlgorithm.to_jwk(private_key(name).public_key(), as_dict=True)
    return {**entry, "kid": kid, "alg": "RS256", "use": "sig"}


def claims(**changes: Any) -> dict[str, Any]:
    """An ID token's claims as Cognito issues them; ``None`` drops a claim."""
    base: dict[str, Any] = {
        "sub": "7c1e0c0a-0000-4000-8000-000000000001",
        "cognito:groups": ["leads", "ops"],
        "iss": ISSUER,
        "cognito:username": "ana",
        "aud": CLIENT,
        "token_use": "id",
        "auth_time": int(NOW) - 60,
        "iat": int(NOW) - 60,
        "exp": int(NOW) + 3600,
        "email": "ana@example.com",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def sign(payload: Mapping[str, Any], key: str = "a", kid: str = "k1", **headers: Any) -> str:
    return jwt.encode(dict(payload), private_key(key), algorithm="RS256", headers={"kid": kid, **headers})


@dataclass
class Answer:
    """What the fake token endpoint answers next."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    """One request the fake token endpoint received."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]


class TokenEndpoint:
    """A threaded HTTP server on a free port of 127.0.0.1 standing in for ``<domain>/oauth2/token``."""

    def __init__(self) -> None:
        self.answer = Answer(body=json.dumps(tokens()).encode())
        self.seen: list[Seen] = []
        self.released = threading.Event()  # ends a slow answer's sleep at teardown
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._serve()

            def do_GET(self) -> None:
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                endpoint.seen.append(
                    Seen(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        parse_qs(raw, keep_blank_values=True),
                    )
                )
                answer = endpoint.answer
                if answer.delay:
                    endpoint.released.wait(answer.delay)
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.content_type)
                    self.send_header("Content-Length", str(len(answer.body)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:  # the client gave up (the timeout test)
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def reply(
        self,
        status: int = 200,
        body: object = None,
        *,
        content_type: str = "application/json",
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answer = Answer(status, raw, content_type, delay, headers or {})


def tokens(**changes: object) -> dict[str, object]:
    """What Cognito's token endpoint answers for a good code."""
    answer: dict[str, object] = {
        "id_token": ID_TOKEN,
        "access_token": "eyJraWQiOiJhIn0.eyJ0b2tlbl91c2UiOiJhY2Nlc3MifQ.c2ln",
        "refresh_token": "eyJjdHkiOiJKV1QifQ.cmVmcmVzaA.c2ln",
        "expires_in": 3600,
        "token_type": "Bearer",
    }
    answer.update(changes)
    return answer


@contextmanager
def token_endpoint() -> Iterator[TokenEndpoint]:
    """A :class:`TokenEndpoint` serving until the block ends (a slow answer is cut short)."""
    server = TokenEndpoint()
    server.thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=5)
