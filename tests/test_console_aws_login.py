"""The console's browser login in AWS, end to end through ``lambda_handler`` (DESIGN §9): the sign-in
goes to the hosted UI with PKCE, the callback trades the code at the token endpoint (a local server
standing in for Cognito's), the ID token — signed by a locally generated key — is verified by the
function (signature, issuer, audience, expiry) and kept in a cookie, and the pages then know the
caller by it; a token signed by another key, or expired, signs nobody in."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import Engine

from controller.console import callers, routes
from controller.console.tokens import TokenVerifier
from tests.cognito_support import CLIENT, ISSUER, TokenEndpoint, claims, jwk, sign, token_endpoint, tokens
from tests.console_support import Visitor, page, squash
from tests.factories import table_doc
from tests.runtime_support import Lambda, running_lambda

CONSOLE_URL = "https://abc123.execute-api.us-east-1.amazonaws.com/v1/console"


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    with token_endpoint() as server:
        yield server


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch, endpoint: TokenEndpoint) -> Iterator[Lambda]:
    tables = [table_doc("raw", partitions=[{"name": "mes", "type": "int"}])]
    with running_lambda(engine, tables, monkeypatch) as handler:
        monkeypatch.setenv("FLUX_COGNITO_DOMAIN", endpoint.url)
        monkeypatch.setenv("FLUX_COGNITO_CLIENT_ID", CLIENT)
        monkeypatch.setenv("FLUX_COGNITO_ISSUER", ISSUER)
        monkeypatch.setenv("FLUX_CONSOLE_URL", CONSOLE_URL)
        # The key set Cognito would publish, with the key the test signs with (no network).
        verifier = TokenVerifier(ISSUER, CLIENT, lambda: {"keys": [jwk("a", "k1")]}, clock=time.time)
        routes._browser_login.cache_clear()
        monkeypatch.setattr(callers, "_verifier", lambda: verifier)
        try:
            yield handler
        finally:
            routes._browser_login.cache_clear()


def now_claims(**changes: object) -> dict[str, object]:
    moment = int(time.time())
    return claims(**{"iat": moment - 5, "auth_time": moment - 5, "exp": moment + 3600, **changes})


def sign_in(visitor: Visitor, endpoint: TokenEndpoint, id_token: str) -> tuple[int, str]:
    """Follow the sign-in as a browser: to the hosted UI, and back to the callback with a code."""
    start = visitor.get("/console/login")
    assert start.status == 303
    authorize = urlsplit(start.header("Location"))
    asked = {k: v[-1] for k, v in parse_qs(authorize.query).items()}
    assert authorize.path == "/oauth2/authorize" and asked["code_challenge_method"] == "S256"
    endpoint.reply(200, tokens(id_token=id_token))
    back = visitor.get("/console/callback", code="the-code", state=asked["state"])
    return back.status, back.header("Location") or back.text


def test_a_person_signs_in_through_the_hosted_ui_and_the_pages_know_them(
    flux: Lambda, endpoint: TokenEndpoint
) -> None:
    visitor = Visitor(None, stage="/v1")
    status, location = sign_in(visitor, endpoint, sign(now_claims()))
    assert (status, location) == (303, f"{CONSOLE_URL}/")
    [exchange] = endpoint.seen
    assert exchange.form["code"] == ["the-code"] and exchange.form["code_verifier"]
    assert "flux_id_token" in visitor.cookies
    shown = squash(page(visitor.get("/console/approvals")))
    assert "Signed in as ana" in shown


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: sign(now_claims(), key="b"), "bad signature"),
        (lambda: sign(now_claims(exp=int(time.time()) - 3600)), "expired"),
        (lambda: sign(now_claims(aud="another-client")), "another application"),
    ],
)
def test_a_token_that_does_not_verify_signs_nobody_in(
    flux: Lambda, endpoint: TokenEndpoint, make: object, reason: str
) -> None:
    visitor = Visitor(None, stage="/v1")
    assert callable(make)
    status, text = sign_in(visitor, endpoint, make())
    assert status == 403 and reason in squash(text)
    assert "flux_id_token" not in visitor.cookies
    assert visitor.get("/console/approvals").status == 303  # still nobody: sent to sign in


def test_a_forged_cookie_is_nobody_and_is_sent_to_sign_in(flux: Lambda) -> None:
    visitor = Visitor(None, cookies={"flux_id_token": sign(now_claims(), key="b")}, stage="/v1")
    answer = visitor.get("/console/runs", status="failed")
    assert answer.status == 303
    assert answer.header("Location") == "/v1/console/login?next=%2Fconsole%2Fruns%3Fstatus%3Dfailed"
