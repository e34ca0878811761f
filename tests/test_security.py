"""Security (issue 8): who may approve, what a template may do, what a client may send, what leaks.

Everything goes through the real Lambda handler (API Gateway events) and the real validator. The
threat model and the list of what is checked where are in SECURITY.md. Covered elsewhere and not
repeated here: the body's ``user`` refused outside trusted mode and IAM user ARNs
(tests/test_api_approvals_and_reads.py), the 413 before parsing (tests/test_api_errors.py), YAML
tags/aliases/size limits (tests/test_yaml_documents.py, tests/test_validation_catalogue.py), the
database secret's format errors (tests/test_deploy.py), the CLI's masked URL
(tests/test_cli_reconcile.py).
"""

from __future__ import annotations

import io
import json
import logging
import traceback
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from click.testing import CliRunner
from moto import mock_aws
from sqlalchemy import Engine, func, inspect, select

from controller import wiring
from controller.cli import main
from controller.core.errors import ServiceError
from controller.db.run_models import ApprovalRow, ExecutionRow, RunRow
from controller.files.validation import validate_directory
from controller.lambda_function import lambda_handler
from tests.api_support import MONTH, TABLES, api_event, error_of, glue_runs, manual, run_detail, send
from tests.factories import StatementLog, table_doc, write_tables
from tests.runtime_support import (
    ACCOUNT,
    REGION,
    Lambda,
    aws_environment,
    glue_event,
    partitions,
    running_lambda,
)

TEXT = [{"name": "nome", "type": "string"}]
SECURITY_TABLES = [
    *TABLES,
    table_doc("tb_text", partitions=TEXT),
    table_doc(
        "tb_text_gated",
        partitions=TEXT,
        requires_approval=True,
        approvers=["ana"],
        dependencies=[{"dependency_name": "tb_text"}],
    ),
    # Task parameters that echo client data: a value must arrive as data, never as a template.
    table_doc(
        "tb_render",
        partitions=TEXT,
        tasks=[
            {
                "alias": "echo",
                "type": "glue",
                "target": "job-render",
                "params": {"--nome": "{{ partitions.nome }}", "--why": "{{ run.reason }}"},
            }
        ],
    ),
    # Applied without validation (the fixture bypasses it), as a tampered database would hold them.
    table_doc(
        "tb_escape",
        partitions=MONTH,
        tasks=[
            {
                "alias": "t",
                "type": "glue",
                "target": "job-escape",
                "params": {"--x": "{{ table|attr('__class__') }}"},
            }
        ],
    ),
    table_doc(
        "tb_crash",
        partitions=MONTH,
        tasks=[
            {
                "alias": "t",
                "type": "glue",
                "target": "job-crash",
                "params": {"--x": "{{ partitions.ano_mes + 'x' }}"},
            }
        ],
    ),
]

#: Text a hostile or careless client may send: SQL, quotes, terminal escapes, CR/LF (log forging),
#: bidirectional overrides, a template, format strings, invisible and wide characters.
HOSTILE = [
    "'; DROP TABLE runs; --",
    '" OR 1=1 --',
    "x' OR '1'='1",
    "\x1b[31mred\x1b[0m\x1b]0;title\x07",
    'forged\r\n{"level":"ERROR","message":"fake"}\n',
    "\u202eevil\u202c.exe",
    "{{ 7*7 }}{% raw %}",
    "%s %(x)s {0} $1 \\ \\\\",
    "a\u200bb \ufeff \U0001f680 \uff53\uff45\uff4c\uff45\uff43\uff54",
    "\t\x08\x7f\x85",
]
ARN = f"arn:aws:iam::{ACCOUNT}:"


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, SECURITY_TABLES, monkeypatch) as handler:
        yield handler


def decide(flux: Lambda, route: str, body: dict[str, Any], **context: Any) -> tuple[int, str]:
    return send(flux, api_event("POST", route, body, **context))


@contextmanager
def json_log() -> Iterator[io.StringIO]:
    """What the Lambda's Powertools logger writes (its own JSON formatter), one record a line."""
    from controller.telemetry import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        # Powertools proxies the stdlib Logger's other methods through a __getattr__ hidden from type checkers.
        logger.removeHandler(handler)  # type: ignore[attr-defined]


def count(engine: Engine, column: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count(column))).scalar_one())


# --- approvals: only the table's approvers, identified by API Gateway --------------------------------


def claims(name: str) -> dict[str, Any]:
    return {"authorizer": {"claims": {"cognito:username": name}}}


LOOK_ALIKES = [
    claims("Ana"),
    claims("ANA"),
    claims(" ana"),
    claims("ana "),
    claims("ana\n"),
    claims("\u0430na"),  # Cyrillic а
    claims("ana\u200b"),  # zero-width space
    claims("an"),
    claims("anaa"),
    claims("xana"),
    claims("ana@example.com"),
    claims("ana\x00"),
    claims("*"),
    {"authorizer": {"principalId": "Ana"}},
    {"authorizer": {"principalId": f"{ARN}role/ana"}},
    {"identity": {"userArn": f"{ARN}role/ana"}},
    {"identity": {"userArn": f"arn:aws:sts::{ACCOUNT}:assumed-role/ana/ana"}},
    {"identity": {"userArn": f"{ARN}group/ana"}},
    {"identity": {"userArn": f"{ARN}user/ana/"}},
    {"identity": {"userArn": f"{ARN}user/Ana"}},
    {"identity": {"userArn": f"{ARN}user/ana-admin"}},
    {"identity": {"userArn": f"{ARN}user/\u0430na"}},
    {"identity": {"userArn": f"{ARN}user/ana\n"}},
    {"identity": {"userArn": "arn:aws:iam::1234:user/ana"}},
    {"identity": {"userArn": f"x{ARN}user/ana"}},
]


def test_look_alikes_of_an_approver_are_403_and_change_nothing(flux: Lambda, engine: Engine) -> None:
    run = manual(flux, "tb_gated", 202305)  # approvers: [ana]
    body = {"approval_status_id": run["approval_id"], "comment": "looks fine"}
    for context in LOOK_ALIKES:
        for route in ("/approve", "/reject"):
            status, raw = decide(flux, route, body, **context)
            assert status == 403, (route, context, raw)
            assert json.loads(raw)["error"]["code"] == "forbidden"
    detail = run_detail(flux, run["id"])
    assert detail["status"] == "awaiting_approval"
    assert detail["approval"]["status"] == "pending"
    assert (detail["approval"]["decided_by"], detail["approval"]["comment"]) == (None, None)
    assert count(engine, ApprovalRow.decided_by) == 0

    # The control: the approver herself, through a Lambda authorizer.
    status, raw = decide(flux, "/approve", body, authorizer={"principalId": "ana"})
    assert status == 200, raw
    assert run_detail(flux, run["id"])["approval"]["decided_by"] == "ana"


def test_a_blank_identity_is_no_identity_even_where_anyone_may_decide(flux: Lambda) -> None:
    """Regression: a whitespace-only claim or body user used to count as a caller named '   '."""
    run = manual(flux, "tb_open_gate", 202305)  # no approvers: any identified caller may decide
    body = {"approval_status_id": run["approval_id"]}
    blanks: list[dict[str, Any]] = [
        claims(""),
        claims("   "),
        claims("\t\n"),
        {"authorizer": {"principalId": " "}},
        {"identity": {"userArn": "  "}},
    ]
    for context in blanks:
        status, raw = decide(flux, "/approve", body, **context)
        assert status == 403, (context, raw)
        assert "no caller identity" in json.loads(raw)["error"]["message"]
    flux.deps.trust_body_user = True
    status, raw = decide(flux, "/approve", {**body, "user": "   "}, authorizer={})
    assert status == 403, raw
    assert run_detail(flux, run["id"])["approval"]["status"] == "pending"

    # A blank claim does not hide a real identity behind it either.
    flux.deps.trust_body_user = False
    context = {"authorizer": {"claims": {"cognito:username": " ", "email": "zoe@example.com"}}}
    status, raw = decide(flux, "/approve", body, **context)
    assert status == 200, raw
    assert run_detail(flux, run["id"])["approval"]["decided_by"] == "zoe@example.com"


def test_identities_from_the_body_or_headers_are_ignored_outside_trusted_mode(
    flux: Lambda, engine: Engine
) -> None:
    run = manual(flux, "tb_gated", 202305)
    # No field of the body names the decider: an unknown one is refused, not read.
    for smuggled in ({"decided_by": "ana"}, {"requestContext": {"authorizer": {"principalId": "ana"}}}):
        status, error = error_of(
            flux, "POST", "/approve", {"approval_status_id": run["approval_id"], **smuggled}
        )
        assert (status, error["code"]) == (422, "invalid"), smuggled
    # Headers are the caller's to choose; only API Gateway's request context identifies.
    event = api_event("POST", "/approve", {"approval_status_id": run["approval_id"], "user": "ana"})
    for name in ("X-User", "X-Forwarded-User", "X-Amzn-Oidc-Identity", "Authorization"):
        event["headers"][name] = "ana"
        event["multiValueHeaders"][name] = ["ana"]
    status, raw = send(flux, event)
    assert status == 403, raw
    assert run_detail(flux, run["id"])["approval"]["status"] == "pending"

    # Registrations record who registered: the authorizer's identity, never the body's user; without
    # an identity the body's user does not make one (403, nothing written).
    for month, user, expected in [(202301, None, 403), (202302, "zoe", 200)]:
        body = {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=month)}], "user": "ana"}
        context = claims(user) if user else {"authorizer": {}}
        status, raw = send(flux, api_event("POST", "/register_execution", body, **context))
        assert status == expected, raw
    flux.deps.trust_body_user = True
    body = {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=202303)}], "user": "ana"}
    assert send(flux, api_event("POST", "/register_execution", body, **claims("zoe")))[0] == 200
    with engine.connect() as connection:
        recorded = connection.execute(select(ExecutionRow.registered_by).order_by(ExecutionRow.id)).scalars()
        assert list(recorded) == ["zoe", "ana"]


@pytest.mark.parametrize(
    ("value", "trusted"),
    [
        (None, False),
        ("", False),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
        ("ana", False),
        ("true", True),
        (" TRUE ", True),
        ("1", True),
        ("yes", True),
    ],
)
def test_trusted_mode_is_on_only_when_flux_trust_body_user_says_so(value: str | None, trusted: bool) -> None:
    assert wiring.truthy(value) is trusted


# --- templates: sandboxed, checked by validation, never evaluated before dispatch --------------------

ESCAPES = [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "'__subclasses__'"),
    ("{{ self._TemplateReference__context }}", "'_TemplateReference__context'"),
    ("{{ cycler.__init__.__globals__.os }}", "'__globals__'"),
    ("{{ joiner.__init__.__globals__ }}", "'__init__'"),
    ("{{ lipsum.__globals__['os'].popen('id').read() }}", "'__globals__'"),
    ("{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}", "'__base__'"),
    ("{% set t = table %}{{ t.__class__ }}", "'__class__'"),
    ("{{ table['__cla' ~ 'ss__'] }}", "'__class__'"),
    ("{{ table|attr('__class__') }}", "'__class__'"),
    ("{{ table|attr('_' ~ '_dict__') }}", "'__dict__'"),
    ("{{ [table]|map(attribute='__class__')|list }}", "'__class__'"),
    ("{{ [table]|map(attribute='name.__class__')|first }}", "'__class__'"),
    ("{{ [table]|selectattr('__class__')|list }}", "'__class__'"),
    ("{{ [table]|sort(attribute='__init__')|list }}", "'__init__'"),
    ("{{ [table]|map(**{'attribute': '__class__'})|list }}", "'__class__'"),
    ("{{ '{0.__class__}'.format(table) }}", "'__class__'"),
    ("{{ '{0:{1.__init__}}'.format(1, table) }}", "'__init__'"),
    ("{{ '{t.__class__.__mro__}'.format_map(partitions) }}", "'__mro__'"),
    ("{{ '%s'|format(table.__class__) }}", "'__class__'"),
    ("{{ request.application.__globals__ }}", "unknown variable 'request'"),
    ("{{ config.items() }}", "unknown variable 'config'"),
    ("{{ self.__init__.__globals__.__builtins__ }}", "'__builtins__'"),
]


@pytest.mark.parametrize(("template", "message"), ESCAPES, ids=[t for t, _ in ESCAPES])
def test_sandbox_escape_attempts_fail_validation(template: str, message: str, tmp_path: Path) -> None:
    doc = table_doc(
        "tb_evil",
        partitions=MONTH,
        tasks=[{"alias": "t", "type": "glue", "target": "j", "params": {"x": template}}],
    )
    root = write_tables(tmp_path / "defs", [doc])
    result = CliRunner().invoke(main, ["validate", str(root)])
    assert result.exit_code == 1, result.output
    if not message.startswith("unknown"):
        message = f"template accesses {message}: private attributes are not allowed"
    assert message in result.output, result.output
    assert "nothing was written" in result.output
    assert "Traceback" not in result.output


def test_validation_evaluates_nothing(tmp_path: Path) -> None:
    """Regression: Jinja2 folds constant expressions while it compiles, and validation compiled them:
    ``{{ 'x' * 200000000 }}`` allocated 200 MB inside ``validate`` (and ``POST /tables``)."""
    big = 200_000_000
    templates = [
        f"{{{{ 'x' * {big} }}}}",
        f"{{{{ 'x' * 10**{len(str(big)) - 1} * 2 }}}}",
        f"{{{{ 'x'|center({big}) }}}}",
        f"{{{{ '%0{big}d'|format(1) }}}}",
        f"{{% if 'x'|center({big}) %}}{{% endif %}}",
        f"{{{{ ['x']|join('y' * {big}) }}}}",
    ]
    doc = table_doc(
        "tb_heavy",
        partitions=MONTH,
        tasks=[
            {
                "alias": "t",
                "type": "glue",
                "target": "j",
                "params": {f"p{i}": t for i, t in enumerate(templates)},
            }
        ],
    )
    root = write_tables(tmp_path / "defs", [doc])
    tracemalloc.start()
    try:
        result = validate_directory(root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.valid, [str(p) for p in result.problems]
    assert peak < 20_000_000, f"validation allocated {peak:,} bytes"


def test_templates_render_only_in_the_sandbox_and_a_failure_fails_the_run(flux: Lambda) -> None:
    # A value is data: the template in a partition value or a reason reaches the task as typed.
    template_value = "{{ 7*7 }}"
    template_reason = "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}"
    answer = flux.ok(
        "POST",
        "/runs",
        {"table_name": "tb_render", "partitions": partitions(nome=template_value), "reason": template_reason},
    )
    assert answer["run"]["status"] == "running", answer
    [started] = glue_runs("job-render")
    assert started["Arguments"]["--nome"] == template_value
    assert started["Arguments"]["--why"] == template_reason

    # A template that escapes, or that raises, fails its run with the reason; no task starts.
    # (Regression: a template raising anything but a Jinja2 error was a 500 leaving the run scheduled.)
    for table, job, reason in [("tb_escape", "job-escape", "unsafe"), ("tb_crash", "job-crash", "TypeError")]:
        status, raw = send(
            flux, api_event("POST", "/runs", {"table_name": table, "partitions": partitions(ano_mes=1)})
        )
        assert status == 200, raw
        run = run_detail(flux, json.loads(raw)["run"]["id"])
        assert run["status"] == "failed", run
        assert run["error"].startswith("task parameters did not render: ")
        assert reason in run["error"]
        assert glue_runs(job) == []

    # POST /tables runs the same validator on a client's payload.
    payload = {
        "name": "tb_new",
        "partitions": MONTH,
        "tasks": [
            {"alias": "t", "type": "glue", "target": "j", "params": {"x": "{{ table|attr('__class__') }}"}}
        ],
    }
    checked = flux.ok("POST", "/tables", payload)
    assert checked["valid"] is False
    assert any("'__class__': private attributes" in p["message"] for p in checked["problems"]), checked


# --- request size -------------------------------------------------------------------------------------


def test_the_size_limit_counts_bytes_and_comes_before_any_database_work(flux: Lambda, engine: Engine) -> None:
    limit = 256 * 1024

    def body(reason: str) -> str:
        return json.dumps({"table_name": "tb_text", "partitions": [], "reason": reason}, ensure_ascii=False)

    at_limit = body("x" * (limit - len(body(""))))
    assert len(at_limit.encode()) == limit
    status, error = error_of(flux, "POST", "/runs", raw_body=at_limit)
    assert (status, error["code"]) == (422, "invalid")  # not too large: the reason is too long

    over = body("é" * (limit // 2))  # fewer characters than the limit, more bytes
    assert len(over) < limit < len(over.encode())
    with StatementLog(engine, flux.deps.store) as log:
        for method, path in [
            ("POST", "/runs"),
            ("POST", "/register_execution"),
            ("POST", "/nowhere"),
            ("GET", "/runs"),
        ]:
            status, error = error_of(flux, method, path, raw_body=over)
            assert (status, error["code"]) == (413, "too_large"), (method, path)
        status, error = error_of(flux, "POST", "/runs", raw_body=body("x" * limit))
        assert status == 413
    assert log.statements == []


# --- hostile text: stored and returned verbatim, or refused with a 4xx --------------------------------


def test_hostile_text_in_every_field_is_stored_verbatim_and_harmless(flux: Lambda, engine: Engine) -> None:
    schema = sorted(inspect(engine).get_table_names())
    first: dict[str, Any] = {}
    for index, text in enumerate(HOSTILE):
        item = {
            "table_name": "tb_text",
            "partitions": partitions(nome=text),
            "source": text,
            "idempotency_key": f"{text}#{index}",
        }
        answer = flux.ok("POST", "/register_execution", {"data": [item]})
        first = first or answer
        [execution] = answer["executions"]
        assert execution["partitions"] == {"nome": text}
        [run] = answer["runs"]
        assert (run["table_name"], run["partitions"], run["status"]) == (
            "tb_text_gated",
            {"nome": text},
            "awaiting_approval",
        )
    # A repeated key is the first result; keys that only look alike are not repeats.
    item = {
        "table_name": "tb_text",
        "partitions": partitions(nome=HOSTILE[0]),
        "source": HOSTILE[0],
        "idempotency_key": f"{HOSTILE[0]}#0",
    }
    assert flux.ok("POST", "/register_execution", {"data": [item]}) == first
    assert count(engine, ExecutionRow.id) == len(HOSTILE)

    executions = flux.ok("GET", "/executions", query={"table": "tb_text"})["executions"]
    assert [(e["partitions"], e["source"]) for e in reversed(executions)] == [
        ({"nome": t}, t) for t in HOSTILE
    ]
    approvals = flux.ok("GET", "/approvals")["approvals"]
    assert [a["partitions"] for a in reversed(approvals)] == [{"nome": t} for t in HOSTILE]

    # Comments and reasons, through approve, reject, cancel and a manual run.
    runs = {a["partitions"]["nome"]: (a["id"], a["run_id"]) for a in approvals}
    for index, text in enumerate(HOSTILE):
        approval_id, run_id = runs[text]
        route = "/approve" if index % 2 else "/reject"
        flux.ok("POST", route, {"approval_status_id": approval_id, "comment": text}, user="ana")
        if route == "/approve":
            flux.ok("POST", f"/runs/{run_id}/cancel", {"reason": text}, user="ana")
        detail = run_detail(flux, run_id)
        assert detail["partitions"] == {"nome": text}
        assert [t["partitions"] for t in detail["triggers"]] == [{"nome": text}]
        assert detail["approval"]["comment"] == text
        assert detail["reason"] == text
        assert detail["status"] == ("cancelled" if index % 2 else "rejected")
        manual_run = manual(flux, "tb_manual", index + 1, reason=text)
        assert run_detail(flux, manual_run["id"])["reason"] == text

    # Filters and path parameters are values too: no match, or a 4xx; never a 500.
    for text in HOSTILE:
        for route in ("/runs", "/executions"):  # no table has that name: 404 (DESIGN §5)
            status, error = error_of(flux, "GET", f"{route}?table={quote(text)}")
            assert (status, error["code"]) == (404, "not_found")
        for route in ("/runs", "/approvals"):  # no state has that name: 422
            status, error = error_of(flux, "GET", f"{route}?status={quote(text)}")
            assert (status, error["code"]) == (422, "invalid")
        for path in (f"/tables/{quote(text, safe='')}", f"/tables/{text}"):
            event = api_event("GET", "/tables/x")
            event["path"] = event["requestContext"]["path"] = path
            status, raw = send(flux, event)
            assert status == 404, (path, raw)
        status, raw = send(flux, api_event("GET", f"/runs/{quote(text, safe='')}"))
        assert status in (404, 422), raw

    # The schema is intact and the rows are the ones written.
    assert sorted(inspect(engine).get_table_names()) == schema
    assert count(engine, ExecutionRow.id) == len(HOSTILE)
    assert count(engine, RunRow.id) == 2 * len(HOSTILE)
    # Logs are JSON, one object a line: CR/LF and escapes in a logged value cannot forge a line.
    forged = HOSTILE[4]
    with json_log() as log:
        assert flux.invoke(glue_event("job-manual", forged, "SUCCEEDED"))["status"].startswith("ignored")
    records = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [r["external_id"] for r in records if r.get("message") == "task state change"] == [forged]
    assert not any(r.get("message") == "fake" for r in records)


def test_text_up_to_its_limit_is_kept_and_one_character_more_is_422(flux: Lambda, engine: Engine) -> None:
    def register(**fields: Any) -> tuple[int, dict[str, Any]]:
        item = {"table_name": "tb_text", "partitions": partitions(nome="n"), **fields}
        return flux.call("POST", "/register_execution", {"data": [item]})

    for field, limit in [("source", 64), ("idempotency_key", 256)]:
        status, answer = register(**{field: "\u00e9" * limit})
        assert status == 200, (field, answer)
        status, answer = register(**{field: "\u00e9" * (limit + 1)})
        assert (status, answer["error"]["code"]) == (422, "invalid"), field
    status, answer = flux.call(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_text", "partitions": partitions(nome="\U0001f680" * 256)}]},
    )
    assert status == 200, answer
    assert flux.ok("GET", "/executions", query={"table": "tb_text", "limit": "1"})["executions"][0][
        "partitions"
    ] == {"nome": "\U0001f680" * 256}
    status, answer = flux.call(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_text", "partitions": partitions(nome="x" * 257)}]},
    )
    assert (status, answer["error"]["code"]) == (422, "invalid")
    assert (
        run_detail(flux, manual(flux, "tb_manual", 1, reason="\u202e" * 2000)["id"])["reason"]
        == "\u202e" * 2000
    )
    status, answer = flux.call(
        "POST",
        "/runs",
        {"table_name": "tb_manual", "partitions": partitions(ano_mes=2), "reason": "x" * 2001},
    )
    assert status == 422
    status, answer = flux.call(
        "POST", "/register_execution", {"data": [{"table_name": "t" * 129, "partitions": []}]}
    )
    assert status == 422

    # Regression: a key longer than its column (control characters take 6 characters in the key's JSON)
    # was a 500 on PostgreSQL.
    status, answer = flux.call(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_text", "partitions": partitions(nome="\x1b" * 256)}]},
    )
    assert (status, answer["error"]["code"]) == (422, "invalid"), answer
    assert "too long" in answer["error"]["message"]
    status, answer = flux.call(
        "POST", "/runs", {"table_name": "tb_text", "partitions": partitions(nome="\x1b" * 256)}
    )
    assert (status, answer["error"]["code"]) == (422, "invalid"), answer
    assert count(engine, ExecutionRow.id) == 3


def test_a_nul_character_is_a_client_error_on_every_database(flux: Lambda, engine: Engine) -> None:
    """Regression: PostgreSQL cannot store U+0000 in text or jsonb; every string field answered 500."""
    nul = "a\x00b"
    answer = flux.ok(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "tb_text", "partitions": partitions(nome="ok")}]},
    )
    [gated] = answer["runs"]
    ok = {"table_name": "tb_text", "partitions": partitions(nome="ok2")}
    requests: list[tuple[str, str, Any]] = [
        ("POST", "/register_execution", {"data": [{**ok, "partitions": partitions(nome=nul)}]}),
        ("POST", "/register_execution", {"data": [{**ok, "source": nul}]}),
        ("POST", "/register_execution", {"data": [{**ok, "idempotency_key": nul}]}),
        ("POST", "/register_execution", {"data": [ok], "user": nul}),
        ("POST", "/register_execution", {"data": [{**ok, "table_name": nul}]}),
        (
            "POST",
            "/register_execution",
            {"data": [{**ok, "partitions": [{"partition_name": nul, "value": "v"}]}]},
        ),
        ("POST", "/runs", {**ok, "reason": nul}),
        ("POST", "/runs", {**ok, "partitions": partitions(nome=nul)}),
        ("POST", f"/runs/{gated['id']}/cancel", {"reason": nul}),
        ("POST", f"/runs/{gated['id']}/retry", {"reason": nul}),
        ("POST", f"/runs/{gated['id']}/fail", {"reason": nul}),
        ("POST", "/approve", {"approval_status_id": gated["approval_id"], "comment": nul}),
        ("POST", "/reject", {"approval_status_id": gated["approval_id"], "user": nul}),
        ("GET", f"/runs?table={quote(nul)}", None),
        ("GET", f"/runs?status={quote(nul)}", None),
        ("GET", f"/executions?table={quote(nul)}", None),
        ("GET", f"/approvals?status={quote(nul)}", None),
        ("GET", f"/tables/{quote(nul)}", None),
    ]
    for method, path, body in requests:
        status, error = error_of(flux, method, path, body, user="ana")
        assert status in (400, 404, 422), (method, path, body, status, error)
    # POST /tables never writes; a NUL in a payload is a problem report at worst.
    status, raw = send(
        flux, api_event("POST", "/tables", {"name": "tb_new", "description": nul, "partitions": MONTH})
    )
    assert status == 200, raw

    assert count(engine, ExecutionRow.id) == 1
    assert count(engine, RunRow.id) == 1
    detail = run_detail(flux, gated["id"])
    assert (detail["status"], detail["approval"]["status"], detail["reason"]) == (
        "awaiting_approval",
        "pending",
        None,
    )


# --- no secret, connection string or stack trace in a response or a log line -------------------------

PASSWORD = "Sup3r-S3cret-Pw"
UNREACHABLE = f"postgresql+psycopg://flux_app:{PASSWORD}@127.0.0.1:9/flux?connect_timeout=2"


@contextmanager
def runtime_from_environment(monkeypatch: pytest.MonkeyPatch, *, via_secret: bool) -> Iterator[None]:
    """The handler as deployed: the runtime built from FLUX_DATABASE_URL or the Secrets Manager secret."""
    aws_environment(monkeypatch)
    with mock_aws():
        from controller.aws import clients

        clients.client.cache_clear()
        if via_secret:
            secrets = boto3.client("secretsmanager", region_name=REGION)
            secret = json.dumps({"url": UNREACHABLE, "password": PASSWORD, "username": "flux_app"})
            arn = secrets.create_secret(Name="flux/database", SecretString=secret)["ARN"]
            monkeypatch.delenv("FLUX_DATABASE_URL", raising=False)
            monkeypatch.setenv("FLUX_DATABASE_SECRET_ARN", arn)
        else:
            monkeypatch.setenv("FLUX_DATABASE_URL", UNREACHABLE)
        wiring.use(None)
        try:
            yield
        finally:
            wiring.use(None)
            clients.client.cache_clear()


def assert_clean_answer(raw: str, reference: str) -> None:
    answer = json.loads(raw)
    assert answer == {
        "error": {
            "code": "internal",
            "message": f"internal error (reference {reference}); it was logged",
            "details": {},
        }
    }


def assert_no_secret(text: str) -> None:
    for secret in (PASSWORD, "flux_app:", "127.0.0.1:9", UNREACHABLE):
        assert secret not in text


@pytest.mark.parametrize("via_secret", [False, True], ids=["url", "secret"])
def test_an_unreachable_database_leaks_neither_its_url_nor_its_password(
    via_secret: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # INFO, as deployed: at DEBUG botocore logs request and response bodies, a secret's value included.
    caplog.set_level(logging.INFO)
    with runtime_from_environment(monkeypatch, via_secret=via_secret), json_log() as log:
        for index, (method, path, body) in enumerate(
            [
                ("GET", "/runs", None),
                ("POST", "/register_execution", {"data": [{"table_name": "tb_a", "partitions": []}]}),
                ("POST", "/approve", {"approval_status_id": 1}),
            ]
        ):
            event = api_event(method, path, body, **claims("ana"))
            event["requestContext"]["requestId"] = f"leak-{index}"
            response = lambda_handler(event, None)
            # An outage, not a bug: 503 with Retry-After (DESIGN §5), never a 500.
            assert response["statusCode"] == 503, response
            assert json.loads(response["body"])["error"]["code"] == "unavailable"
            [retry_after] = response["multiValueHeaders"]["Retry-After"]
            assert int(retry_after) > 0
            assert_no_secret(response["body"])
            assert "Traceback" not in response["body"] and 'File "' not in response["body"]
        # The scheduler's events have no HTTP answer: the error goes to Lambda, which logs it.
        with pytest.raises(ServiceError) as raised:  # the 503's error, never the driver's
            lambda_handler({"flux_action": "sweep"}, None)
        assert raised.value.status == 503
        assert_no_secret("".join(traceback.format_exception(raised.value)))
    # What went wrong is logged for operators (the outage, the sweep's stack trace), and no record
    # (ours, Powertools', SQLAlchemy's, botocore's) carries the URL or its password.
    records = [json.loads(line) for line in log.getvalue().splitlines()]
    assert records or caplog.records
    assert all(record["message"] != "unexpected error" for record in records)
    assert_no_secret(log.getvalue())
    assert_no_secret(caplog.text)
    assert_no_secret(json.dumps([(r.name, r.getMessage(), str(r.exc_info)) for r in caplog.records]))


def test_an_exception_inside_a_route_answers_only_a_reference(
    flux: Lambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.services import queries

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("internal detail: column runs.partition_key, /srv/app/controller/x.py line 7")

    monkeypatch.setattr(queries, "list_runs", broken)
    event = api_event("GET", "/runs")
    event["requestContext"]["requestId"] = "ref-broken"
    with json_log() as log:
        status, raw = send(flux, event)
    assert status == 500
    assert_clean_answer(raw, "ref-broken")
    for leak in ("Traceback", "internal detail", "partition_key", ".py", "RuntimeError"):
        assert leak not in raw
    records = [json.loads(line) for line in log.getvalue().splitlines()]
    [record] = [r for r in records if r["level"] == "ERROR"]
    assert record["reference"] == "ref-broken"
    assert [(r["message"], r["status"]) for r in records if r["level"] == "INFO"] == [("request", 500)]
    assert "RuntimeError: internal detail" in record["exception"]
