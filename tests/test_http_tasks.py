"""The http task client (:mod:`controller.aws.http_tasks`) on its own: where a task may post, the
timeouts, the excerpt of a failed answer, a secret a header cannot carry. Through the Lambda (both
databases, the endpoint's answers, the secret's absence from logs): ``tests/test_task_targets.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from controller.aws.http_tasks import HttpSettings, excerpt, post
from controller.aws.tasks import AwsTaskStarter
from controller.core.effects import TaskRequest, TaskStartError
from controller.files.validation import validate_directory
from controller.local.aws import free_port
from tests.conftest import WriteDefs
from tests.factories import table_doc
from tests.http_endpoint import Endpoint, running_endpoint


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Endpoint]:
    with running_endpoint() as running:
        yield running


@pytest.fixture
def hook(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    """The endpoint, nothing recorded yet; no http setting in the environment."""
    for name in ("FLUX_HTTP_ALLOWED_HOSTS", "FLUX_HTTP_CONNECT_TIMEOUT", "FLUX_HTTP_READ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_LAMBDA_RUNTIME_API", raising=False)
    endpoint.reset()
    return endpoint


def _request(type_: str, target: str, **fields: Any) -> TaskRequest:
    return TaskRequest(
        7, 1, "tb", "go", type_, target, {"ano_mes": 1}, {"a": 1}, token="tok-Abc123-not-shown", **fields
    )


def test_an_unreachable_endpoint_fails_the_start_with_the_connection_error(hook: Endpoint) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    request = _request("http", closed)
    with pytest.raises(TaskStartError, match=r"^http http://127\.0\.0\.1:\d+/hook: could not connect: "):
        AwsTaskStarter().start(request)


def test_a_secret_a_header_cannot_carry_is_refused_without_showing_it(hook: Endpoint) -> None:
    value = "Bearer abc\r\nX-Injected: 1"
    request = _request("http", hook.url(), auth_secret="s")
    with pytest.raises(TaskStartError) as caught:
        post(request, {}, HttpSettings(), secrets=lambda name: value)
    assert "holds characters a header cannot carry (its value is not shown)" in str(caught.value)
    assert "abc" not in str(caught.value) and hook.received == []


# --- http: where a task may post ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "http://api.example.com/hook",
            "plain http:// is only for a local host (127.0.0.1, ::1, localhost); use https://",
        ),
        (
            "https://user:pw@api.example.com/",
            "the URL carries credentials; name a secret in auth_secret instead",
        ),
        ("ftp://api.example.com/", "not an http(s):// URL with a host"),
        ("https://api.example.com:99999/", "not a valid URL (Port out of range 0-65535)"),
    ],
)
def test_a_target_that_is_not_https_or_not_local_is_refused_at_start(target: str, message: str) -> None:
    with pytest.raises(TaskStartError) as caught:
        AwsTaskStarter().start(_request("http", target))
    assert str(caught.value) == f"http {target}: {message}"


def test_validation_requires_https_for_a_host_that_is_not_local(write_defs: WriteDefs) -> None:
    def task(target: str) -> dict[str, Any]:
        return {"alias": "post", "type": "http", "target": target}

    documents = {
        "a.yaml": json.dumps(table_doc("a", tasks=[task("http://api.example.com/hook")])),
        "b.yaml": json.dumps(table_doc("b", tasks=[task("https://api.example.com/hook")])),
        "c.yaml": json.dumps(table_doc("c", tasks=[task("http://localhost:8081/hook")])),
    }
    result = validate_directory(write_defs(documents))
    assert [(p.code, str(p).split(":", 1)[0]) for p in result.problems] == [("http-target", "defs/a.yaml")]


@pytest.mark.parametrize(
    ("allowed", "host", "in_lambda", "allows"),
    [
        ("", "api.example.com", False, True),
        ("", "127.0.0.1", False, True),
        ("", "127.0.0.1", True, False),  # in Lambda, 127.0.0.1 is the runtime's own API
        ("", "::1", True, False),
        ("127.0.0.1", "127.0.0.1", True, True),
        ("API.Example.com.", "api.example.COM", False, True),
        ("api.example.com", "example.com", False, False),
        ("api.example.com", "api.example.com.evil.net", False, False),
        ("*.example.com", "a.b.example.com", False, True),
        ("*.example.com", "example.com", False, False),
        ("*.example.com", "badexample.com", False, False),
        ("*.example.com", "localhost", False, False),  # a list, once set, lists local hosts too
        (" ,  ", "api.example.com", False, True),
    ],
)
def test_allowed_hosts(allowed: str, host: str, in_lambda: bool, allows: bool) -> None:
    env = {"FLUX_HTTP_ALLOWED_HOSTS": allowed} | (
        {"AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001"} if in_lambda else {}
    )
    assert HttpSettings.from_env(env).allows(host) is allows


def test_timeouts_default_are_capped_and_a_bad_value_is_refused() -> None:
    settings = HttpSettings.from_env({})
    assert (settings.connect_timeout, settings.read_timeout) == (5.0, 10.0)
    capped = HttpSettings.from_env({"FLUX_HTTP_CONNECT_TIMEOUT": "60", "FLUX_HTTP_READ_TIMEOUT": "600"})
    assert (capped.connect_timeout, capped.read_timeout) == (10.0, 15.0)  # within the 28 s invocation
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(
            ValueError, match=f"FLUX_HTTP_READ_TIMEOUT must be a positive number of seconds, not '{bad}'"
        ):
            HttpSettings.from_env({"FLUX_HTTP_READ_TIMEOUT": bad})


def test_a_bad_timeout_setting_fails_the_start_naming_the_variable(
    hook: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUX_HTTP_CONNECT_TIMEOUT", "five")
    with pytest.raises(TaskStartError, match="FLUX_HTTP_CONNECT_TIMEOUT must be a positive number"):
        AwsTaskStarter().start(_request("http", hook.url()))
    assert hook.received == []


def test_the_excerpt_is_short_clean_and_redacted() -> None:
    assert excerpt(b"  a\tb\x00\x01c\n\nd  ") == "a b c d"
    assert excerpt(b"token=SECRET; again SECRET", "SECRET") == "token=***; again ***"
    assert excerpt("é".encode() * 300) == "é" * 199 + "…"
    assert excerpt(b"\xff\xfe") == "\ufffd\ufffd"


def test_status_and_stop_know_nothing_of_the_new_kinds() -> None:
    starter = AwsTaskStarter(lambda service: pytest.fail(f"no {service} call"))
    for kind in ("eventbridge", "http"):
        assert starter.status(kind, "t", "x") is None
        assert starter.stop(kind, "t", "x") is False
