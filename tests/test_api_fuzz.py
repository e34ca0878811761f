"""API fuzzing (issue 8): every operation of the published OpenAPI document, through the Lambda handler.

schemathesis generates requests from the document: ones that conform to it and, in negative mode, ones
that violate it. hypothesis adds requests aimed at what exists (the seeded tables, runs and approvals)
and bodies no schema describes: not JSON, wrong types, control characters, lone surrogates, huge
numbers, deep nesting, other media types, ``POST /tables`` payloads. Each request becomes an API Gateway
REST proxy event through the project's one event builder (:func:`controller.local.http.to_event`) and is
answered in-process by ``lambda_handler`` with moto behind it, on SQLite and on PostgreSQL.

Every answer must be below 500, JSON, in the error model ``{"error": {"code", "message", "details"}}``
when it is an error, and free of stack traces and internals; schemathesis's response checks must pass;
a rejected request (4xx) and every read leave the database (every row of every table) and the
schedules as they were.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import boto3
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.errors import InvalidSchema
from schemathesis.core.result import Err, Result
from schemathesis.core.transport import Response as CheckedResponse
from schemathesis.generation.case import Case as GeneratedCase
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine, MetaData, make_url, text

from controller.api.app import openapi_document
from controller.api.refusals import MAX_BODY_BYTES
from controller.db.engine import make_engine
from controller.lambda_function import lambda_handler
from controller.local.http import to_event
from tests.api_support import MONTH, QUEUE_NAME, TABLES, item, manual, register
from tests.conftest import postgres_schema
from tests.runtime_support import GROUP, REGION, Lambda, partitions, running_lambda

DOCUMENT: dict[str, Any] = json.loads(openapi_document())
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
Operation = APIOperation[Any, Any, Any, Any]
#: Named as before it was parametrised: derandomized hypothesis seeds each test from its source.
Case = GeneratedCase[Operation]


def _operation(result: Result[Operation, InvalidSchema]) -> Operation:
    """The operation, or the document's problem with it raised (the document is the app's own)."""
    if isinstance(result, Err):
        raise result.err()
    return result.ok()


OPERATIONS = {f"{op.method.upper()} {op.path}": op for op in map(_operation, SCHEMA.get_all_operations())}
#: Operations that take a JSON body whose schema violations are refused. ``POST /tables`` answers the
#: problems of its tables with a 200 (it is a validator): its payloads are fuzzed apart, below.
BODY_OPERATIONS = sorted(
    label
    for label, op in OPERATIONS.items()
    if "requestBody" in DOCUMENT["paths"][op.path][op.method] and label != "POST /tables"
)
#: Operations with something to get wrong (schemathesis has no invalid request for the others; any
#: string is a table name, so ``GET /tables/{name}`` has none either: it is left out where it is used).
WITH_INPUT = sorted(
    label
    for label, op in OPERATIONS.items()
    if {"parameters", "requestBody"} & set(DOCUMENT["paths"][op.path][op.method])
)
BASE_URL = "https://flux.test"
#: schemathesis's checks of one response that need no second request (not_a_server_error is asserted
#: directly). status_code_conformance holds the answers to the statuses the document declares.
CHECKS = [
    negative_data_rejection,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: Examples per operation on SQLite: schema-conforming, schema-violating, aimed at what exists, bodies
#: no schema describes; and ``POST /tables`` payloads. PostgreSQL runs POSTGRES_SHARE of each (what
#: differs there is how values bind and are stored, not the routing), to keep the file well under a
#: minute. FLUX_FUZZ_SCALE multiplies them all for a longer run (e.g. 10 before a release).
POSITIVE, NEGATIVE, SEEDED, INVALID, PAYLOADS_EXAMPLES = 15, 15, 10, 15, 30
POSTGRES_SHARE = 0.35
SCALE = float(os.environ.get("FLUX_FUZZ_SCALE") or 1)
_requests = itertools.count(1)


def fuzz_settings(examples: int, target: Target) -> settings:
    share = 1.0 if target.engine.dialect.name == "sqlite" else POSTGRES_SHARE
    return settings(
        max_examples=max(5, round(examples * share * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


# --- the target: a seeded database behind the handler -----------------------------------------------


@dataclass
class Target:
    flux: Lambda
    engine: Engine
    url: str
    run_ids: list[int] = field(default_factory=list)
    approval_ids: list[int] = field(default_factory=list)
    scheduler: Any = None
    snapshot: Any = None

    def state(self) -> tuple[Any, ...]:
        """Every row of every table (a digest per table), and the schedules: what a rejection leaves."""
        if self.snapshot is None:
            self.snapshot = text(_snapshot_sql(self.engine))
        with self.engine.connect() as connection:
            rows = tuple(connection.execute(self.snapshot).all())
        listed = self.scheduler.list_schedules(GroupName=GROUP)["Schedules"]
        return rows, tuple(sorted(s["Name"] for s in listed))


def _snapshot_sql(engine: Engine) -> str:
    """One statement: each table's name, row count and full contents (a digest on PostgreSQL)."""
    metadata = MetaData()
    metadata.reflect(engine)
    parts = []
    for name, table in sorted(metadata.tables.items()):
        if engine.dialect.name == "postgresql":
            content = "md5(coalesce(string_agg(r::text, ',' ORDER BY r::text), ''))"
            parts.append(f"SELECT '{name}', count(*), {content} FROM \"{name}\" r")
        else:
            row = " || '|' || ".join(f'quote("{column.name}")' for column in table.columns)
            ordered = f'SELECT * FROM "{name}" ORDER BY rowid'
            parts.append(f"SELECT '{name}', count(*), group_concat({row}, ';') FROM ({ordered})")
    return " UNION ALL ".join(parts)


def _seed(flux: Lambda) -> None:
    """Runs in the states the routes distinguish, pending approvals, executions, a failed run.

    The body's ``user`` is trusted (as by ``serve``), so generated approvals can be decided.
    """
    flux.deps.trust_body_user = True
    boto3.client("sqs", region_name=REGION).create_queue(QueueName=QUEUE_NAME)
    register(flux, item("tb_a", ano_mes=202401), item("tb_typed", dt="2024-01-31", n=1))
    for month in (202401, 202402, 202403):
        manual(flux, "tb_gated", month)
    manual(flux, "tb_open_gate", 202401)
    manual(flux, "tb_manual", 202401)
    failed = manual(flux, "tb_manual", 202402)
    flux.ok("POST", f"/runs/{failed['id']}/fail", {"reason": "seeded failure"})
    manual(flux, "tb_queue", 202401)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def fuzz_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One database per backend for the whole module (the seeding is done once)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'flux.db'}"
        return
    with postgres_schema(request.getfixturevalue("postgres_admin"), "flux_fuzz") as url:
        yield url


@pytest.fixture(scope="module")
def target(fuzz_url: str) -> Iterator[Target]:
    engine = make_engine(fuzz_url)
    with pytest.MonkeyPatch.context() as monkeypatch, running_lambda(engine, TABLES, monkeypatch) as flux:
        _seed(flux)
        found = Target(flux, engine, fuzz_url, scheduler=boto3.client("scheduler", region_name=REGION))
        found.run_ids = [r["id"] for r in flux.ok("GET", "/runs")["runs"]]
        found.approval_ids = [a["id"] for a in flux.ok("GET", "/approvals")["approvals"]]
        assert found.run_ids and found.approval_ids
        yield found
    engine.dispose()


# --- one request, and what every answer must be -------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str
    document: Any


def _leaks(target: Target) -> list[str]:
    """Text an answer must never contain unless the request did: stack traces, internals, the URL."""
    return [
        "Traceback",
        'File "',
        target.url,
        make_url(target.url).render_as_string(hide_password=True),
        "sqlalchemy",
        "psycopg",
        "sqlite3",
        "pydantic_core",
        "[SQL:",
        "Background on this error",
        "aws_lambda_powertools",
        "site-packages",
    ]


#: ``module.path.SomethingError`` (an exception's class path).
EXCEPTION_PATH = re.compile(r"\b[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+\.[A-Z]\w*(?:Error|Exception)\b")


def exchange(target: Target, method: str, path_url: str, headers: dict[str, str], body: bytes) -> Answer:
    """Send one request through the handler; assert what any answer must be; return it."""
    before = target.state()
    event = to_event(method, path_url, headers, body, "203.0.113.9", request_id=f"fuzz-{next(_requests)}")
    response = lambda_handler(event, None)
    status, text_ = response["statusCode"], response["body"]
    sent = f"{method} {path_url} {headers.get('content-type')!r} {body[:500]!r}"
    assert status < 500, f"{sent} -> {status} {text_}"
    answer_headers = {k.lower(): str(v) for k, v in (response.get("headers") or {}).items()}
    answer_headers.update(
        {k.lower(): str(v[-1]) for k, v in (response.get("multiValueHeaders") or {}).items() if v}
    )
    assert answer_headers.get("content-type", "").startswith("application/json"), (sent, answer_headers)
    document = json.loads(text_)
    request_text = f"{path_url}\n{body.decode('utf-8', 'replace')}"
    for marker in _leaks(target):
        assert marker in request_text or marker not in text_, f"{sent} -> {marker!r} in {text_}"
    leaked = EXCEPTION_PATH.search(text_)
    assert leaked is None or leaked.group() in request_text, f"{sent} -> {text_}"
    if status >= 400:
        assert isinstance(document, dict) and list(document) == ["error"], f"{sent} -> {text_}"
        error = document["error"]
        assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, f"{sent} -> {text_}"
        assert isinstance(error["code"], str) and error["code"], text_
        assert isinstance(error["message"], str) and error["message"], text_
        assert isinstance(error["details"], dict), text_
    reads = method == "GET" or path_url.split("?")[0] == "/tables"
    if status >= 400 or reads:
        assert target.state() == before, f"{sent} -> {status} {text_}: it wrote"
    return Answer(status, answer_headers, text_, document)


def send_case(target: Target, case: Case) -> Answer:
    """A schemathesis case through the handler, then schemathesis's checks of the answer."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    allowed = {"method", "url", "headers", "files", "data", "params", "cookies", "json"}
    prepared = requests.Request(**{k: v for k, v in kwargs.items() if k in allowed}).prepare()
    # requests prepares the body given as data/json/files as str or bytes (never a stream here), and
    # keeps the header values schemathesis serialised, which are str.
    body = cast(str | bytes, prepared.body or b"")
    raw = body.encode("utf-8") if isinstance(body, str) else body
    headers = {k.lower(): cast(str, v) for k, v in prepared.headers.items()}
    answer = exchange(target, str(prepared.method), str(prepared.path_url), headers, raw)
    checked = CheckedResponse(
        status_code=answer.status,
        headers={k: [v] for k, v in answer.headers.items()},
        content=answer.body.encode("utf-8"),
        request=prepared,
        elapsed=0.0,
        verify=True,
    )
    # 413 (the body is over the size limit) rejects a request before its schema is looked at: it is
    # a rejection that schemathesis's negative_data_rejection does not list.
    checks = [c for c in CHECKS if not (answer.status == 413 and c is negative_data_rejection)]
    case.validate_response(checked, checks=checks)
    return answer


def fuzz(strategy: st.SearchStrategy[Case], examples: int, target: Target) -> None:
    @fuzz_settings(examples, target)
    @given(case=strategy)
    def one(case: Case) -> None:
        send_case(target, case)

    one()


# --- generated from the document ---------------------------------------------------------------------


def test_the_fuzzed_document_is_the_published_one(target: Target) -> None:
    assert target.flux.ok("GET", "/openapi.json") == DOCUMENT
    assert len(OPERATIONS) == sum(len(ops) for ops in DOCUMENT["paths"].values())


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_schema_conforming_requests(target: Target, label: str) -> None:
    fuzz(OPERATIONS[label].as_strategy(generation_mode=GenerationMode.POSITIVE), POSITIVE, target)


@pytest.mark.parametrize("label", [label for label in WITH_INPUT if label != "GET /tables/{name}"])
def test_schema_violating_requests_are_rejected(target: Target, label: str) -> None:
    fuzz(OPERATIONS[label].as_strategy(generation_mode=GenerationMode.NEGATIVE), NEGATIVE, target)


# --- aimed at what exists ----------------------------------------------------------------------------

TABLE_NAMES = sorted(t["name"] for t in TABLES)
#: Text a fuzzer should try: control characters, NUL, unicode beyond the BMP, SQL and template syntax.
NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=10).map(lambda s: f"{s}\x00{s}"),
    st.sampled_from(["", " ", "\t\n\r", "' OR 1=1 --", "{{ 7*7 }}", "Ω≈ç√", "🦆" * 3, "\u202e", "\ufeff"]),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=8),
)
#: Entries of approvers, producers and operators: each form of DESIGN §7, near misses, anything.
PRINCIPALS = NASTY_TEXT | st.sampled_from(
    [
        "group:",
        "group:data-platform",
        "arn:aws:iam::123456789012:role/glue-etl",
        "arn:aws:iam::123456789012:role/",
        "arn:aws:sts::123456789012:assumed-role/glue-etl/s",
        "arn:",
        "arn:aws:iam::123456789012:user/ana\x00",
    ]
)
HUGE = st.sampled_from([2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, 10**300])
PARTITION_VALUES = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**7),
    HUGE,
    st.dates().map(str),
    st.sampled_from(["2024-02-30", "2024-13-01", "0000-00-00", "202401", "1e3", "NaN"]),
    NASTY_TEXT,
    st.none(),
)


def partitions_for(table: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    declared = next(t for t in TABLES if t["name"] == table)["partitions"]
    names = [p["name"] for p in declared]
    chosen = st.lists(st.sampled_from([*names, "ghost"]), unique=True, max_size=len(names) + 1)
    return chosen.flatmap(
        lambda keys: st.tuples(*(PARTITION_VALUES for _ in keys)).map(
            lambda values: partitions(**dict(zip(keys, values, strict=True)))
        )
    )


def table_names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(TABLE_NAMES), st.sampled_from(TABLE_NAMES).map(str.upper), NASTY_TEXT)


def run_ids(target: Target) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(target.run_ids), st.sampled_from([0, -1, 2**63 - 1]), HUGE)


def aimed_bodies(label: str, target: Target) -> st.SearchStrategy[Any] | None:
    """Bodies that conform to the document but name the seeded tables, runs and approvals."""
    reason = st.one_of(st.none(), NASTY_TEXT)
    if label == "POST /register_execution":
        one = table_names().flatmap(
            lambda name: st.fixed_dictionaries(
                {
                    "table_name": st.just(name),
                    "partitions": partitions_for(name) if name in TABLE_NAMES else st.just([]),
                },
                optional={
                    "source": st.sampled_from(["api", "glue", ""]) | NASTY_TEXT,
                    "run_id": run_ids(target),
                    "idempotency_key": st.sampled_from(["k1", "k2"]) | NASTY_TEXT,
                },
            )
        )
        return st.fixed_dictionaries(
            {"data": st.lists(one, min_size=1, max_size=4)}, optional={"user": reason}
        )
    if label in ("POST /approve", "POST /reject"):
        ids = st.one_of(st.sampled_from(target.approval_ids), HUGE, st.sampled_from([0, -1]))
        return st.fixed_dictionaries(
            {"approval_status_id": ids},
            optional={"user": st.sampled_from(["ana", "zoe"]) | NASTY_TEXT, "comment": reason},
        )
    if label == "POST /runs":
        return table_names().flatmap(
            lambda name: st.fixed_dictionaries(
                {
                    "table_name": st.just(name),
                    "partitions": partitions_for(name) if name in TABLE_NAMES else st.just([]),
                },
                optional={"reason": reason},
            )
        )
    if label.startswith("POST /runs/{run_id}/"):
        return st.fixed_dictionaries({}, optional={"reason": reason})
    if label == "POST /backfills":
        values = st.lists(st.integers(-2, 2**31) | NASTY_TEXT, max_size=3) | st.fixed_dictionaries(
            {"from": st.integers(-5, 5) | NASTY_TEXT, "to": st.integers(-5, 3000)},
            optional={"step": st.sampled_from(["day", "month"])},
        )
        return st.fixed_dictionaries(
            {
                "table_name": table_names(),
                "partitions": st.dictionaries(
                    st.sampled_from(["ano_mes", "dt", "x"]) | NASTY_TEXT, values, max_size=2
                ),
            },
            optional={"reason": reason},
        )
    return None


def aimed(label: str, target: Target) -> st.SearchStrategy[Case]:
    operation = OPERATIONS[label]

    def case_with(path: dict[str, Any], body: Any) -> st.SearchStrategy[Case]:
        extra: dict[str, Any] = {} if body is None else {"body": body}
        return operation.as_strategy(generation_mode=GenerationMode.POSITIVE, path_parameters=path, **extra)

    paths: st.SearchStrategy[dict[str, Any]] = st.just({})
    if "{run_id}" in label:
        paths = run_ids(target).map(lambda run_id: {"run_id": run_id})
    elif "{name}" in label:
        paths = table_names().map(lambda name: {"name": name})
    body = aimed_bodies(label, target)
    bodies = st.none() if body is None else body
    if label in ("GET /runs", "GET /executions", "GET /approvals"):
        query = st.fixed_dictionaries(
            {},
            optional={
                "table": table_names(),
                "status": st.sampled_from(["pending", "scheduled", "running", "failed", "nope"]) | NASTY_TEXT,
                "limit": st.sampled_from(["1", "1000", "1001", "0", "-1", "1e3", str(10**30), "x"]),
            },
        ).map(lambda q: {k: v for k, v in q.items() if label != "GET /executions" or k != "status"})
        return st.tuples(paths, bodies, query).flatmap(
            lambda pbq: operation.as_strategy(path_parameters=pbq[0], query=pbq[2])
        )
    return st.tuples(paths, bodies).flatmap(lambda pb: case_with(pb[0], pb[1]))


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_requests_aimed_at_the_seeded_rows(target: Target, label: str) -> None:
    fuzz(aimed(label, target), SEEDED, target)


# --- bodies no schema describes ----------------------------------------------------------------------

MINIMAL_BODIES: dict[str, dict[str, Any]] = {
    "POST /register_execution": {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=1)}]},
    "POST /approve": {"approval_status_id": 1},
    "POST /reject": {"approval_status_id": 1},
    "POST /runs": {"table_name": "tb_a", "partitions": partitions(ano_mes=1)},
    "POST /runs/{run_id}/cancel": {"reason": "r"},
    "POST /runs/{run_id}/retry": {"reason": "r"},
    "POST /runs/{run_id}/fail": {"reason": "r"},
    "POST /backfills": {"table_name": "tb_a", "partitions": {"ano_mes": {"from": 1, "to": 2}}},
}
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _nested(depth: int) -> str:
    return '{"a":[' * depth + "1" + "]}" * depth


def _field_paths(body: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every scalar field of a body (list items included)."""
    if isinstance(body, dict):
        return [p for k, v in body.items() for p in _field_paths(v, (*prefix, k))]
    if isinstance(body, list):
        return [p for i, v in enumerate(body) for p in _field_paths(v, (*prefix, i))]
    return [prefix]


def _replaced(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(body))
    holder = copy
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return copy


def _with_extra_key(body: Any, path: tuple[Any, ...], name: str) -> Any:
    copy = json.loads(json.dumps(body))
    holder = copy
    for key in path[:-1]:
        holder = holder[key]
    holder[f"x_{name}"] = 1
    return copy


def invalid_requests(label: str) -> st.SearchStrategy[tuple[str, dict[str, str], bytes]]:
    """(why, headers, body) of requests the route must reject, whatever the database holds."""
    json_type = {"content-type": "application/json"}
    base = MINIMAL_BODIES[label]
    fields = _field_paths(base)

    def dumped(value: Any) -> bytes:
        return json.dumps(value).encode()

    not_json = st.one_of(
        st.binary(min_size=1, max_size=64),
        st.text(min_size=1, max_size=64),
        st.sampled_from(["{", '{"a": }', "{'a': 1}", "[1,]", "NaN", '{"a": 1}}', "\x00", "\ufeff{}"]),
    ).filter(lambda raw: _is_not_json(raw))
    not_an_object = st.one_of(JSON_SCALARS, st.lists(JSON_VALUES, max_size=3)).filter(lambda v: v is not None)
    wrong_type = st.tuples(
        st.sampled_from(fields),
        st.one_of(
            st.lists(JSON_SCALARS, max_size=2), st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2)
        ),
    )
    bad_text = st.tuples(
        st.sampled_from([f for f in fields if isinstance(_get(base, f), str)] or fields),
        st.sampled_from(['"\\u0000"', '"a\\u0000b"', '"\\ud800"', '"\\udfff x"', json.dumps("x" * 5000)]),
    )
    huge_number = st.tuples(
        st.sampled_from(fields),
        st.sampled_from(["1e400", "-1e400", "1" + "0" * 5000, "1.5", str(2**63), str(-(2**63) - 1)]),
    )
    extra_key = st.tuples(st.sampled_from([(*f[:-1], "_") for f in fields]), st.text(min_size=1, max_size=5))
    media_types = st.sampled_from(
        [
            "text/plain",
            "application/xml",
            "multipart/form-data",
            "multipart/form-data; boundary=xyz",
            "application/x-www-form-urlencoded",
            "image/png",
        ]
    )
    return st.one_of(
        not_json.map(lambda raw: ("not JSON", json_type, raw if isinstance(raw, bytes) else raw.encode())),
        not_an_object.map(lambda v: ("not an object", json_type, dumped(v))),
        wrong_type.map(lambda fv: ("wrong type", json_type, dumped(_replaced(base, *fv)))),
        bad_text.map(lambda fv: ("bad text", json_type, _raw_replaced(base, *fv))),
        huge_number.map(lambda fv: ("huge number", json_type, _raw_replaced(base, *fv))),
        extra_key.map(lambda pv: ("unknown field", json_type, dumped(_with_extra_key(base, *pv)))),
        st.sampled_from([300, 900, 5_000, 40_000]).map(
            lambda depth: ("deep nesting", json_type, _nested(depth).encode())
        ),
        media_types.map(lambda media: ("media type", {"content-type": media}, dumped(base))),
    )


def _is_not_json(raw: bytes | str) -> bool:
    text_ = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        json.loads(text_)
    except ValueError:
        return True
    return False


def _get(body: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


def _raw_replaced(body: Any, path: tuple[Any, ...], literal: str) -> bytes:
    """The body as JSON text with the field at ``path`` replaced by the raw JSON ``literal``."""
    marker = "__fuzz_marker__"
    return json.dumps(_replaced(body, path, marker)).replace(f'"{marker}"', literal).encode()


def _path_of(label: str, target: Target) -> str:
    return label.split(" ", 1)[1].replace("{run_id}", str(target.run_ids[0]))


@pytest.mark.parametrize("label", BODY_OPERATIONS)
def test_invalid_bodies_are_rejected(target: Target, label: str) -> None:
    method, path = "POST", _path_of(label, target)

    @fuzz_settings(INVALID, target)
    @given(request=invalid_requests(label))
    def one(request: tuple[str, dict[str, str], bytes]) -> None:
        why, headers, body = request
        answer = exchange(target, method, path, headers, body)
        assert 400 <= answer.status < 500, f"{why}: {body[:300]!r} -> {answer.status} {answer.body}"

    one()


def test_a_body_over_the_limit_is_413_on_every_body_route(target: Target) -> None:
    huge = json.dumps({"reason": "x" * (MAX_BODY_BYTES + 1)}).encode()
    for label in [*BODY_OPERATIONS, "POST /tables"]:
        answer = exchange(target, "POST", _path_of(label, target), {"content-type": "application/json"}, huge)
        assert answer.status == 413, (label, answer.body)


# --- POST /tables payloads ---------------------------------------------------------------------------

PARTITION_TYPES = st.sampled_from(["int", "date", "string", "month", "", None, 1])
PAYLOAD_TABLES = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from([*TABLE_NAMES, "tb_new", "tb new"]), NASTY_TEXT)},
    optional={
        "version": st.sampled_from([1, 2, "1", None]),
        "description": NASTY_TEXT,
        "partitions": st.one_of(
            st.just(MONTH),
            st.lists(
                st.fixed_dictionaries({"name": NASTY_TEXT | st.just("dt"), "type": PARTITION_TYPES}),
                max_size=3,
            ),
            JSON_VALUES,
        ),
        "dependencies": st.lists(
            st.fixed_dictionaries(
                {"dependency_name": st.sampled_from([*TABLE_NAMES, "tb_ghost"]) | NASTY_TEXT},
                optional={"is_required": JSON_SCALARS},
            ),
            max_size=3,
        ),
        "tasks": st.lists(
            st.fixed_dictionaries(
                {
                    "alias": st.sampled_from(["load", "x"]) | NASTY_TEXT,
                    "type": st.sampled_from(["glue", "sqs", "lambda", "step_function", "ftp"]),
                    "target": st.sampled_from(["job-x", ""]) | NASTY_TEXT,
                },
                optional={
                    "params": st.dictionaries(
                        st.text(max_size=5),
                        st.sampled_from(
                            ["{{ partitions.ano_mes }}", "{{ 1/0 }}", "{% for %}", "{{ ''.__class__ }}", "{{"]
                        )
                        | NASTY_TEXT,
                        max_size=2,
                    )
                },
            ),
            max_size=2,
        ),
        "debounce_seconds": st.one_of(st.integers(), HUGE, st.floats(), NASTY_TEXT),
        "requires_approval": JSON_SCALARS,
        "approvers": st.lists(NASTY_TEXT, max_size=2),
        "producers": st.lists(PRINCIPALS, max_size=2),
        "operators": st.lists(PRINCIPALS, max_size=2),
    },
)
PAYLOADS = st.one_of(
    PAYLOAD_TABLES,
    st.lists(PAYLOAD_TABLES, max_size=3),
    st.lists(PAYLOAD_TABLES, max_size=2).map(lambda tables: {"tables": tables}),
    JSON_VALUES,
)


def test_post_tables_payloads_are_answered_and_never_written(target: Target) -> None:
    @fuzz_settings(PAYLOADS_EXAMPLES, target)
    @given(payload=PAYLOADS, surrogate=st.booleans())
    def one(payload: Any, surrogate: bool) -> None:
        raw = json.dumps(payload)
        if surrogate and '"' in raw:
            raw = raw.replace('"', '"\\ud83d', 1)  # a lone surrogate at the start of the first string
        answer = exchange(target, "POST", "/tables", {"content-type": "application/json"}, raw.encode())
        assert answer.status in (200, 400), answer.body
        if answer.status == 200:
            assert isinstance(answer.document["valid"], bool), answer.body

    one()


# --- regressions found by this fuzzing ---------------------------------------------------------------
# Each was a 500 (an unhandled exception) before the fix named beside it.

REGRESSIONS = {
    # Ids beyond BIGINT: sqlite3 and psycopg refuse to bind them (models.MAX_ID, app.RunId).
    "run id in a path beyond BIGINT": ("GET", f"/runs/{2**63}", {}, "", 422),
    "run id to cancel beyond BIGINT": ("POST", f"/runs/{10**30}/cancel", {}, "{}", 422),
    "approval id beyond BIGINT": ("POST", "/approve", {}, json.dumps({"approval_status_id": 2**63}), 422),
    "run id to complete beyond BIGINT": (
        "POST",
        "/register_execution",
        {},
        json.dumps({"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=1), "run_id": 10**30}]}),
        422,
    ),
    # json.loads raising RecursionError / a plain ValueError, not JSONDecodeError (app.json_body).
    "body nested 5000 deep": ("POST", "/register_execution", {}, _nested(5_000), 400),
    "payload nested 5000 deep": ("POST", "/tables", {}, _nested(5_000), 400),
    "integer of 5000 digits": ("POST", "/approve", {}, '{"approval_status_id": 1' + "0" * 5_000 + "}", 400),
    # A lone surrogate cannot be encoded as UTF-8 for validation (payloads.payload_documents).
    "lone surrogate in a payload": ("POST", "/tables", {}, '{"name": "\\ud800", "partitions": []}', 400),
    # Powertools raises on media types it does not parse (refusals.unsupported_media_type).
    "text/plain body": ("POST", "/approve", {"content-type": "text/plain"}, '{"approval_status_id": 1}', 415),
    "multipart without a boundary": (
        "POST",
        "/runs/1/cancel",
        {"content-type": "multipart/form-data"},
        "{}",
        415,
    ),
    "multipart, empty": ("POST", "/reject", {"content-type": "multipart/form-data; boundary=b"}, "", 415),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regressions(target: Target, name: str) -> None:
    method, path, headers, body, status = REGRESSIONS[name]
    answer = exchange(target, method, path, {"content-type": "application/json", **headers}, body.encode())
    assert answer.status == status, answer.body


def test_an_array_body_is_400_not_its_first_item(target: Target) -> None:
    """Regression: Powertools validated an array's first item in place of the array, so these wrote."""
    gated = {"table_name": "tb_gated", "partitions": partitions(ano_mes=209912), "reason": "regression"}
    status, opened = target.flux.call("POST", "/runs", gated)  # awaiting approval: it can be cancelled
    run_id = opened["run"]["id"] if status == 200 else opened["error"]["details"]["run_id"]
    json_type = {"content-type": "application/json"}
    cancel = exchange(target, "POST", f"/runs/{run_id}/cancel", json_type, b'[{"reason": "x"}, 1]')
    item_ = {"table_name": "tb_a", "partitions": partitions(ano_mes=209912)}
    register_ = exchange(
        target, "POST", "/register_execution", json_type, json.dumps([{"data": [item_]}]).encode()
    )
    for answer in (cancel, register_):
        assert (answer.status, answer.document["error"]["code"]) == (400, "bad_request"), answer.body
        assert "not an array" in answer.document["error"]["message"]


def test_the_openapi_route_is_documented_as_answering_an_object() -> None:
    """Regression: it was documented as a string, so schemathesis found every answer off its schema."""
    answer = DOCUMENT["paths"]["/openapi.json"]["get"]["responses"]["200"]
    reference = answer["content"]["application/json"]["schema"]["$ref"]
    assert DOCUMENT["components"]["schemas"][reference.rsplit("/", 1)[1]]["type"] == "object"
