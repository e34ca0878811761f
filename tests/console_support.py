"""A console visitor through ``lambda_handler``: it keeps the cookies the console sets (as a browser
would), posts forms with the page's CSRF token, and checks every page is HTML a strict parser
accepts, with the console's security headers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import html5lib
import pytest

from controller.console.security import CONTENT_SECURITY_POLICY, CSRF_FIELD
from controller.lambda_function import lambda_handler
from controller.local.http import to_event
from tests.conftest import REPO_ROOT

_TOKEN = re.compile(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"')
_COOKIE = re.compile(r"^([^=;]+)=([^;]*)")


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]]
    text: str

    def header(self, name: str) -> str:
        values = {k.lower(): v for k, v in self.headers.items()}.get(name.lower(), [])
        return values[-1] if values else ""


@dataclass
class Visitor:
    """One browser: ``user`` is the identity an authorizer gives it (None: nobody)."""

    user: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)
    #: API Gateway's stage in the browser's paths (``/v1``): ``requestContext.path`` keeps it.
    stage: str = ""
    requests: int = 0

    def get(self, path: str, **query: str) -> Answer:
        target = f"{path}?{urlencode(query)}" if query else path
        return self._send("GET", target, b"")

    def post(self, path: str, fields: dict[str, str], *, token: str | None = None) -> Answer:
        """Post ``fields`` with the CSRF token of the last page (or ``token``)."""
        body = {CSRF_FIELD: token if token is not None else self.cookies.get("flux_csrf", ""), **fields}
        return self._send("POST", path, urlencode(body).encode(), form=True)

    def _send(self, method: str, target: str, body: bytes, *, form: bool = False) -> Answer:
        self.requests += 1
        headers = {"accept": "text/html"}
        if form:
            headers["content-type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        authorizer = {"claims": {"cognito:username": self.user}} if self.user else {}
        event = to_event(
            method, target, headers, body, "127.0.0.1", authorizer=authorizer, request_id=f"c-{self.requests}"
        )
        event["requestContext"]["path"] = self.stage + event["path"]
        response = lambda_handler(event, None)
        merged: dict[str, list[str]] = {k: [str(v)] for k, v in (response.get("headers") or {}).items()}
        for name, values in (response.get("multiValueHeaders") or {}).items():
            merged[name] = [str(v) for v in values]
        for set_cookie in merged.get("Set-Cookie", []):
            match = _COOKIE.match(set_cookie)
            if match:
                self.cookies[match.group(1)] = match.group(2)
        return Answer(int(response["statusCode"]), merged, str(response.get("body") or ""))


def page(answer: Answer, status: int = 200) -> str:
    """The answer's HTML, checked: the status, the console's headers, and HTML a strict parser takes."""
    assert answer.status == status, (answer.status, answer.text[:2000])
    assert answer.header("Content-Type").startswith("text/html")
    assert answer.header("Content-Security-Policy") == CONTENT_SECURITY_POLICY
    html5lib.HTMLParser(strict=True).parse(answer.text)
    return answer.text


def csrf_of(html: str) -> str:
    match = _TOKEN.search(html)
    assert match, "the page has no form"
    return match.group(1)


def squash(html: str) -> str:
    """The page's text, tags removed and whitespace folded, for assertions on what a person reads."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def run_id_from(location: str) -> int:
    match = re.match(r"/console/runs/(\d+)", location)
    assert match, location
    return int(match.group(1))


VNU = REPO_ROOT / "node_modules" / "vnu-jar" / "build" / "dist" / "vnu.jar"
#: Under CI the Nu validator must run (npm ci installs it; the machine has Java).
VALIDATOR_REQUIRED = os.environ.get("CI") == "true" or bool(os.environ.get("FLUX_TEST_CHROMIUM"))


def nu_validator_errors(pages: dict[str, str], workdir: Path) -> dict[str, list[str]]:
    """The Nu HTML Checker's errors (``vnu.jar``, the W3C validator) for each page, by name; a skip
    (a failure under CI) when Java or the checker is missing."""
    java = shutil.which("java")
    if java is None or not VNU.is_file():
        message = f"the Nu HTML Checker needs Java and {VNU} (npm ci)"
        if VALIDATOR_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    files = {}
    for index, (name, html) in enumerate(pages.items()):
        path = workdir / f"page-{index}.html"
        path.write_text(html, encoding="utf-8")
        files[str(path.resolve())] = name
    done = subprocess.run(
        [java, "-jar", str(VNU), "--errors-only", "--format", "json", *files],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    messages = json.loads(done.stderr or '{"messages": []}')["messages"]
    found: dict[str, list[str]] = {name: [] for name in files.values()}
    for message in messages:
        where = files.get(message.get("url", "").removeprefix("file:"), "?")
        found.setdefault(where, []).append(f"line {message.get('lastLine')}: {message.get('message')}")
    return found
