"""The console's browser login (DESIGN §9): the authorization-code flow with PKCE against a Cognito
hosted UI, whose token endpoint is played by a local HTTP server on 127.0.0.1 (no network, no Cognito).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from controller.console.browser_login import (
    STATE_COOKIE,
    BrowserLogin,
    LoginFailed,
    code_challenge,
    console_page,
)
from controller.console.security import ID_TOKEN_COOKIE
from tests.cognito_support import CLIENT, ID_TOKEN, TokenEndpoint, token_endpoint, tokens

CONSOLE = "https://abc123.execute-api.eu-west-1.amazonaws.com/prod/console"
CODE = "9f0c2d4e-0b7a-4c55-8f3e-2a1b7c6d5e4f"


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    with token_endpoint() as server:
        yield server


@pytest.fixture
def login(endpoint: TokenEndpoint) -> BrowserLogin:
    return BrowserLogin(endpoint.url, CLIENT, CONSOLE, timeout=2.0)


def authorize_query(url: str) -> dict[str, str]:
    values = parse_qs(urlsplit(url).query, keep_blank_values=True, strict_parsing=True)
    assert all(len(v) == 1 for v in values.values()), values  # each parameter once
    return {name: v[0] for name, v in values.items()}


# --- the authorize URL ---------------------------------------------------------------------------------


def test_the_authorize_url_asks_for_a_code_with_a_pkce_s256_challenge_of_the_verifier_it_keeps(
    login: BrowserLogin, endpoint: TokenEndpoint
) -> None:
    url, cookie = login.start("/console/approvals")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "http",
        endpoint.url.removeprefix("http://"),
        "/oauth2/authorize",
    )
    query = authorize_query(url)
    assert set(query) == {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    }
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT
    assert query["redirect_uri"] == f"{CONSOLE}/callback"
    assert query["scope"] == "openid email profile"
    assert query["code_challenge_method"] == "S256"
    assert len(query["state"]) >= 43  # 256 random bits
    assert query["state"] not in url.replace(f"state={query['state']}", "")  # nowhere else in the URL
    # The verifier itself never leaves in the URL: it reaches the token endpoint only, where the
    # challenge must be its S256 (base64url without padding of its SHA-256).
    login.finish(CODE, query["state"], cookie)
    (request,) = endpoint.seen
    (verifier,) = request.form["code_verifier"]
    assert 43 <= len(verifier) <= 128
    assert verifier not in url
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert query["code_challenge"] == expected == code_challenge(verifier)


def test_every_sign_in_gets_its_own_state_and_verifier(login: BrowserLogin) -> None:
    (first, first_cookie), (second, second_cookie) = login.start(), login.start()
    assert authorize_query(first)["state"] != authorize_query(second)["state"]
    assert authorize_query(first)["code_challenge"] != authorize_query(second)["code_challenge"]
    assert first_cookie != second_cookie
    # A cookie belongs to its own sign-in: the other one's state does not match it.
    with pytest.raises(LoginFailed, match="does not match"):
        login.finish(CODE, authorize_query(second)["state"], first_cookie)


def test_the_s256_challenge_is_rfc_7636s_example() -> None:
    # RFC 7636, appendix B.
    assert (
        code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


# --- the exchange --------------------------------------------------------------------------------------


def test_a_good_callback_trades_the_code_and_verifier_for_the_id_token_and_returns_to_the_page(
    login: BrowserLogin, endpoint: TokenEndpoint
) -> None:
    url, cookie = login.start("/console/runs/7?done=approved")
    state = authorize_query(url)["state"]
    assert login.finish(CODE, state, cookie) == (ID_TOKEN, "/console/runs/7?done=approved")
    (request,) = endpoint.seen
    assert (request.method, request.path) == ("POST", "/oauth2/token")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in request.headers  # a public client: no secret, no basic auth
    assert set(request.form) == {"grant_type", "client_id", "code", "redirect_uri", "code_verifier"}
    assert request.form["grant_type"] == ["authorization_code"]
    assert request.form["client_id"] == [CLIENT]
    assert request.form["code"] == [CODE]
    assert request.form["redirect_uri"] == [f"{CONSOLE}/callback"]  # the very one the authorize URL named


def test_a_wrong_state_is_refused_before_the_code_is_spent(
    login: BrowserLogin, endpoint: TokenEndpoint
) -> None:
    url, cookie = login.start()
    state = authorize_query(url)["state"]
    one_off = state[:-1] + ("A" if state[-1] != "A" else "B")
    for given in (one_off, "", None, state + "x", "é" * 43):
        with pytest.raises(LoginFailed) as refused:
            login.finish(CODE, given, cookie)
        assert (
            refused.value.reason == "this sign-in does not match the one this browser started: sign in again"
        )
    assert endpoint.seen == []


@pytest.mark.parametrize(
    "cookie",
    [None, "", "garbage", "a.b.c", "a.b", "x" * 5000],
    ids=["missing", "empty", "no-dots", "short-parts", "two-parts", "huge"],
)
def test_a_missing_or_malformed_login_cookie_is_refused(
    login: BrowserLogin, endpoint: TokenEndpoint, cookie: str | None
) -> None:
    url, _ = login.start()
    with pytest.raises(LoginFailed, match="expired or was started in another browser"):
        login.finish(CODE, authorize_query(url)["state"], cookie)
    assert endpoint.seen == []


def test_a_callback_without_a_code_is_refused(login: BrowserLogin, endpoint: TokenEndpoint) -> None:
    url, cookie = login.start()
    for code in (None, "", "two words", "x" * 3000):
        with pytest.raises(LoginFailed, match="no usable code"):
            login.finish(code, authorize_query(url)["state"], cookie)
    assert endpoint.seen == []


def test_a_refused_code_gives_the_oauth_error_and_never_the_code_or_the_services_text(
    login: BrowserLogin, endpoint: TokenEndpoint
) -> None:
    endpoint.reply(400, {"error": "invalid_grant", "error_description": f"code {CODE} was already used"})
    url, cookie = login.start()
    with pytest.raises(LoginFailed) as refused:
        login.finish(CODE, authorize_query(url)["state"], cookie)
    assert refused.value.reason == "the sign-in service refused the code (invalid_grant): sign in again"
    assert str(refused.value) == refused.value.reason
    assert CODE not in repr(refused.value) and "already used" not in refused.value.reason
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # no chained HTTPError
    assert len(endpoint.seen) == 1


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, {"error": "<script>"}, "the sign-in service refused the code (HTTP 400): sign in again"),
        (401, b"not json", "the sign-in service refused the code (HTTP 401): sign in again"),
        (
            503,
            {"error": "temporarily_unavailable"},
            "the sign-in service failed (HTTP 503): try again shortly",
        ),
        (302, b"", "the sign-in service refused the code (HTTP 302): sign in again"),
        (307, b"", "the sign-in service refused the code (HTTP 307): sign in again"),
    ],
)
def test_other_refusals_give_the_status_only(
    login: BrowserLogin, endpoint: TokenEndpoint, status: int, body: object, reason: str
) -> None:
    # A redirect points elsewhere: it is not followed (the code and verifier go nowhere else).
    endpoint.reply(status, body, headers={"Location": f"{endpoint.url}/elsewhere"})
    url, cookie = login.start()
    with pytest.raises(LoginFailed) as refused:
        login.finish(CODE, authorize_query(url)["state"], cookie)
    assert refused.value.reason == reason
    assert [seen.path for seen in endpoint.seen] == ["/oauth2/token"]


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>Bad gateway</body></html>",
        b"",
        b"[]",
        b'{"id_token": NaN}',
        json.dumps(tokens(id_token=None)).encode(),
        json.dumps(tokens(id_token="not a jwt")).encode(),
        json.dumps({"access_token": "a.b.c", "token_type": "Bearer"}).encode(),
    ],
    ids=["html", "empty", "array", "nan", "null-token", "not-a-jwt", "access-token-only"],
)
def test_an_answer_that_is_no_json_with_an_id_token_is_refused(
    login: BrowserLogin, endpoint: TokenEndpoint, body: bytes
) -> None:
    endpoint.reply(200, body, content_type="text/html")
    url, cookie = login.start()
    with pytest.raises(LoginFailed, match="answered without an ID token"):
        login.finish(CODE, authorize_query(url)["state"], cookie)


def test_an_answer_too_large_is_refused(login: BrowserLogin, endpoint: TokenEndpoint) -> None:
    endpoint.reply(200, tokens(padding="x" * 70_000))
    url, cookie = login.start()
    with pytest.raises(LoginFailed, match="answered without an ID token"):
        login.finish(CODE, authorize_query(url)["state"], cookie)


def test_a_token_endpoint_slower_than_the_timeout_is_given_up_on(endpoint: TokenEndpoint) -> None:
    endpoint.reply(200, tokens(), delay=5.0)
    login = BrowserLogin(endpoint.url, CLIENT, CONSOLE, timeout=0.3)
    url, cookie = login.start()
    started = time.monotonic()
    with pytest.raises(LoginFailed) as refused:
        login.finish(CODE, authorize_query(url)["state"], cookie)
    assert time.monotonic() - started < 2.0
    assert refused.value.reason == "the sign-in service did not answer in time: try again"
    assert len(endpoint.seen) == 1


def test_a_token_endpoint_that_is_down_is_unreachable(endpoint: TokenEndpoint) -> None:
    endpoint.server.shutdown()
    endpoint.server.server_close()  # nothing listens on the port any more
    login = BrowserLogin(endpoint.url, CLIENT, CONSOLE, timeout=1.0)
    url, cookie = login.start()
    with pytest.raises(LoginFailed, match="could not be reached"):
        login.finish(CODE, authorize_query(url)["state"], cookie)


# --- where a sign-in returns to ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "next_path",
    [
        "https://evil.example/console/",
        "//evil.example/console/",
        "/\\evil.example",
        "/console\\..\\runs",
        "/consolex",
        "/runs",
        "",
        "console/",
        "/console//evil.example",
        "/console/../runs",
        "/console/%2e%2e/runs",
        "/console/.%2E/runs",
        "/console/%2f%2fevil.example",
        "/console/%5cevil.example",
        "/console/runs\r\nSet-Cookie: a=b",
        "/console/runs?x=%0d%0aSet-Cookie",
        "/console/runs#frag",
        "/console/" + "a" * 2000,
    ],
)
def test_a_page_outside_the_console_is_refused_as_the_place_to_return_to(
    login: BrowserLogin, next_path: str
) -> None:
    with pytest.raises(LoginFailed, match="not a page of this console"):
        login.start(next_path)


@pytest.mark.parametrize(
    ("asked", "returned"),
    [
        ("/console", "/console/"),
        ("/console?done=approved", "/console/?done=approved"),
        ("/console/", "/console/"),
        ("/console/runs?table=tb_a&status=failed", "/console/runs?table=tb_a&status=failed"),
        ("/console/tables/tb%20a", "/console/tables/tb%20a"),
    ],
)
def test_a_console_page_is_where_the_sign_in_returns(
    login: BrowserLogin, endpoint: TokenEndpoint, asked: str, returned: str
) -> None:
    assert console_page(asked) == returned
    url, cookie = login.start(asked)
    assert login.finish(CODE, authorize_query(url)["state"], cookie)[1] == returned


def test_a_tampered_cookie_cannot_send_the_browser_elsewhere(
    login: BrowserLogin, endpoint: TokenEndpoint
) -> None:
    """The cookie is not signed (see the module): the page it names is checked again on the way back."""
    url, cookie = login.start("/console/runs")
    state, verifier, _ = cookie.split(".")
    evil = base64.urlsafe_b64encode(b"https://evil.example/").rstrip(b"=").decode()
    with pytest.raises(LoginFailed):
        login.finish(CODE, authorize_query(url)["state"], f"{state}.{verifier}.{evil}")
    assert endpoint.seen == []


# --- logout, links and cookies ---------------------------------------------------------------------------


def test_the_logout_url_ends_the_hosted_ui_session_and_comes_back_to_the_console(login: BrowserLogin) -> None:
    parts = urlsplit(login.logout_url())
    assert parts.path == "/logout"
    assert parse_qs(parts.query) == {"client_id": [CLIENT], "logout_uri": [f"{CONSOLE}/"]}


def test_console_links_carry_the_api_stage(login: BrowserLogin) -> None:
    assert login.console_link("/console/runs/7?done=approved") == f"{CONSOLE}/runs/7?done=approved"
    assert login.console_link("/console") == f"{CONSOLE}/"
    with pytest.raises(LoginFailed):
        login.console_link("//evil.example")


def test_the_cookies_are_http_only_secure_lax_and_scoped_to_the_stages_console(login: BrowserLogin) -> None:
    state = str(login.state_cookie("v"))
    assert state.startswith(f"{STATE_COOKIE}=v;")
    for attribute in ("Path=/prod/console/callback", "Max-Age=600", "HttpOnly", "Secure", "SameSite=Lax"):
        assert attribute in state.split("; "), (attribute, state)
    token = str(login.id_token_cookie(ID_TOKEN))
    assert token.startswith(f"{ID_TOKEN_COOKIE}={ID_TOKEN};")
    for attribute in ("Path=/prod/console", "Max-Age=3600", "HttpOnly", "Secure", "SameSite=Lax"):
        assert attribute in token.split("; "), (attribute, token)
    cleared = [str(c) for c in login.cleared_cookies()]
    assert [c.split("=")[0] for c in cleared] == [STATE_COOKIE, ID_TOKEN_COOKIE]
    assert all("Max-Age=0" in c.split("; ") for c in cleared)


# --- configuration -------------------------------------------------------------------------------------


def test_from_env_is_none_without_a_cognito_domain() -> None:
    assert BrowserLogin.from_env({}) is None
    # serve sets the console URL for its links; the token verifier's client id alone is no login either
    assert BrowserLogin.from_env({"FLUX_CONSOLE_URL": CONSOLE, "FLUX_COGNITO_CLIENT_ID": CLIENT}) is None
    assert BrowserLogin.from_env({"FLUX_COGNITO_DOMAIN": "  "}) is None


def test_from_env_reads_the_three_settings() -> None:
    login = BrowserLogin.from_env(
        {
            "FLUX_COGNITO_DOMAIN": "https://flux-123.auth.eu-west-1.amazoncognito.com/",
            "FLUX_COGNITO_CLIENT_ID": f" {CLIENT} ",
            "FLUX_CONSOLE_URL": f"{CONSOLE}/",
        }
    )
    assert login is not None
    assert login.token_url == "https://flux-123.auth.eu-west-1.amazoncognito.com/oauth2/token"
    assert login.redirect_uri == f"{CONSOLE}/callback"
    assert login.client_id == CLIENT
    assert login.start()[0].startswith("https://flux-123.auth.eu-west-1.amazoncognito.com/oauth2/authorize?")


def test_a_domain_without_its_client_or_console_url_is_a_wiring_mistake() -> None:
    with pytest.raises(ValueError, match="FLUX_COGNITO_CLIENT_ID and FLUX_CONSOLE_URL unset"):
        BrowserLogin.from_env({"FLUX_COGNITO_DOMAIN": "https://flux-123.auth.eu-west-1.amazoncognito.com"})
    with pytest.raises(ValueError, match=r"^FLUX_CONSOLE_URL unset"):
        BrowserLogin.from_env(
            {
                "FLUX_COGNITO_DOMAIN": "https://flux-123.auth.eu-west-1.amazoncognito.com",
                "FLUX_COGNITO_CLIENT_ID": CLIENT,
            }
        )


@pytest.mark.parametrize(
    ("domain", "console"),
    [
        ("http://flux-123.auth.eu-west-1.amazoncognito.com", CONSOLE),  # the code in clear text
        ("ftp://flux-123.auth.eu-west-1.amazoncognito.com", CONSOLE),
        ("https://user:pw@flux-123.auth.eu-west-1.amazoncognito.com", CONSOLE),
        ("https://flux-123.auth.eu-west-1.amazoncognito.com/oauth2", CONSOLE),
        ("https://flux-123.auth.eu-west-1.amazoncognito.com?x=1", CONSOLE),
        ("https://flux-123.auth.eu-west-1.amazoncognito.com", "http://abc.example.com/prod/console"),
        ("https://flux-123.auth.eu-west-1.amazoncognito.com", "https://abc.example.com/prod"),
        ("https://flux-123.auth.eu-west-1.amazoncognito.com", "https://abc.example.com/console#x"),
    ],
)
def test_only_https_plain_urls_are_accepted_but_on_localhost(domain: str, console: str) -> None:
    with pytest.raises(ValueError):
        BrowserLogin(domain, CLIENT, console)


def test_localhost_may_speak_http() -> None:
    login = BrowserLogin("http://localhost:9000", CLIENT, "http://127.0.0.1:8000/console")
    assert login.token_url == "http://localhost:9000/oauth2/token"
    assert "Secure" not in str(login.state_cookie("v")).split("; ")  # a cookie an http page can keep
