"""DESIGN §7 through ``lambda_handler``, on SQLite and PostgreSQL: each action × each kind of identity
(listed, not listed, no identity, wrong account, role session, group member). The matching rule
itself is unit-tested in ``tests/test_access.py``; here, that every write route asks it and writes
nothing when refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from controller.reconciler import apply
from tests.api_support import api_event, run_detail, send
from tests.factories import states, table_doc
from tests.runtime_support import (
    ACCOUNT,
    START,
    Lambda,
    glue_event,
    partitions,
    running_lambda,
    stored_token,
)

OTHER = "999999999999"
MONTH = [{"name": "ano_mes", "type": "int"}]
GLUE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/glue-etl"
TASKS = [{"alias": "load", "type": "glue", "target": "job-guarded"}]
TABLES = [
    table_doc(
        "guarded",
        partitions=MONTH,
        producers=[GLUE_ROLE, "group:loaders"],
        operators=["group:ops"],
        approvers=["ana"],
        tasks=TASKS,
    ),
    table_doc(
        "gated", partitions=MONTH, requires_approval=True, approvers=["ana", "group:leads"], tasks=TASKS
    ),
    table_doc("open", partitions=MONTH, tasks=TASKS),  # lists nobody: any identified caller
]

#: Request contexts of each kind of caller, as API Gateway builds them.
WHO: dict[str, dict[str, Any]] = {
    "nobody": {"authorizer": {}},
    "glue-session": {
        "identity": {"userArn": f"arn:aws:sts::{ACCOUNT}:assumed-role/glue-etl/jr_42", "accountId": ACCOUNT}
    },
    "glue-session-other-account": {
        "identity": {"userArn": f"arn:aws:sts::{OTHER}:assumed-role/glue-etl/jr_42", "accountId": OTHER}
    },
    "loader": {"authorizer": {"claims": {"cognito:username": "lia", "cognito:groups": "loaders"}}},
    "ops": {"authorizer": {"claims": {"cognito:username": "otto", "cognito:groups": "ops,readers"}}},
    "lead": {"authorizer": {"claims": {"cognito:username": "lee", "cognito:groups": "leads"}}},
    "ana": {"authorizer": {"claims": {"cognito:username": "ana"}}},
    "ana-iam-own": {"identity": {"userArn": f"arn:aws:iam::{ACCOUNT}:user/ana", "accountId": ACCOUNT}},
    "ana-iam-other": {"identity": {"userArn": f"arn:aws:iam::{OTHER}:user/ana", "accountId": OTHER}},
    "stranger": {"authorizer": {"claims": {"cognito:username": "sam"}}},
}


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def post(flux: Lambda, who: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, raw = send(flux, api_event("POST", path, body, **WHO[who]))
    return status, json.loads(raw)


def registration(table: str, month: int = 202305, **extra: Any) -> dict[str, Any]:
    return {"data": [{"table_name": table, "partitions": partitions(ano_mes=month), **extra}]}


def executions(flux: Lambda, table: str) -> int:
    return len(flux.ok("GET", "/executions", query={"table": table})["executions"])


@pytest.mark.parametrize(
    ("who", "table", "allowed"),
    [
        ("glue-session", "guarded", True),  # a session of the listed role
        ("glue-session-other-account", "guarded", False),  # same role name, another account
        ("loader", "guarded", True),  # a member of the listed group
        ("ops", "guarded", False),  # an operator is not a producer
        ("stranger", "guarded", False),
        ("nobody", "guarded", False),
        ("stranger", "open", True),  # the table lists no producers
        ("nobody", "open", False),  # but a write needs someone
    ],
)
def test_registering_an_execution_needs_a_producer(flux: Lambda, who: str, table: str, allowed: bool) -> None:
    status, answer = post(flux, who, "/register_execution", registration(table))
    assert status == (200 if allowed else 403), answer
    assert executions(flux, table) == (1 if allowed else 0)
    if not allowed:
        assert answer["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    ("who", "allowed"),
    [
        ("ana", True),
        ("lead", True),
        ("ana-iam-own", True),
        ("ana-iam-other", False),
        ("ops", False),
        ("nobody", False),
    ],
)
def test_approving_needs_an_approver_of_the_functions_account(flux: Lambda, who: str, allowed: bool) -> None:
    run = post(flux, "lead", "/runs", {"table_name": "gated", "partitions": partitions(ano_mes=1)})[1]["run"]
    status, answer = post(flux, who, "/approve", {"approval_status_id": run["approval_id"]})
    assert status == (200 if allowed else 403), answer
    assert run_detail(flux, run["id"])["approval"]["status"] == ("approved" if allowed else "pending")


@pytest.mark.parametrize(
    ("who", "allowed"),
    # guarded lists operators (group:ops): its approvers do not operate it.
    [("ops", True), ("ana", False), ("loader", False), ("stranger", False), ("nobody", False)],
)
def test_manual_runs_cancels_and_retries_need_an_operator(flux: Lambda, who: str, allowed: bool) -> None:
    expected = 200 if allowed else 403
    body = {"table_name": "guarded", "partitions": partitions(ano_mes=7)}
    status, answer = post(flux, who, "/runs", body)
    assert status == expected, answer
    # The operator opens and fails a run; then each caller tries to retry it.
    opened = post(flux, "ops", "/runs", {**body, "partitions": partitions(ano_mes=8)})[1]["run"]
    post(flux, "ops", f"/runs/{opened['id']}/fail", {"reason": "broken"})
    status, answer = post(flux, who, f"/runs/{opened['id']}/retry", {"reason": "again"})
    assert status == expected, answer
    assert run_detail(flux, opened["id"])["attempt"] == (2 if allowed else 1)


@pytest.mark.parametrize(
    ("who", "token", "allowed"),
    [
        ("glue-session", "right", True),  # the task's own token: whoever reports it
        ("stranger", "right", True),
        ("ops", "older", False),  # a token of an older attempt: refused, even to an operator
        ("ops", None, True),  # an operator, without a token
        ("stranger", None, False),
        ("nobody", "right", False),  # a write needs someone, token or not
    ],
)
def test_completing_or_failing_a_run_needs_its_token_or_an_operator(
    flux: Lambda, who: str, token: str | None, allowed: bool
) -> None:
    run = post(flux, "ops", "/runs", {"table_name": "guarded", "partitions": partitions(ano_mes=9)})[1]["run"]
    attempt = 1
    if token == "older":
        post(flux, "ops", f"/runs/{run['id']}/fail", {"reason": "first"})
        post(flux, "ops", f"/runs/{run['id']}/retry", {})
        attempt = 2
    assert run_detail(flux, run["id"])["status"] == "running"
    # The tokens the task was started with, attempt by attempt (what its Glue job run received).
    sent = {
        "right": stored_token(flux, run["id"], "load", attempt),
        "older": stored_token(flux, run["id"], "load"),
    }
    extra = {"token": sent[token]} if token else {}
    status, answer = post(flux, who, f"/runs/{run['id']}/fail", {"reason": "it broke", **extra})
    assert status == (200 if allowed else 403), answer
    assert run_detail(flux, run["id"])["status"] == ("failed" if allowed else "running")
    if allowed:
        return
    item = registration("guarded", 9, run_id=run["id"], **extra)
    status, answer = post(flux, who, "/register_execution", item)
    assert status == 403, answer
    assert run_detail(flux, run["id"])["status"] == "running"


def test_a_retry_asks_for_approval_when_the_table_requires_it_now(flux: Lambda, engine: Engine) -> None:
    run = post(flux, "ops", "/runs", {"table_name": "open", "partitions": partitions(ano_mes=3)})[1]["run"]
    post(flux, "ops", f"/runs/{run['id']}/fail", {"reason": "broken"})
    now_gated = [t if t["name"] != "open" else {**t, "requires_approval": True} for t in TABLES]
    apply(engine, desired=states(now_gated), revision="gated", actor="test", now=START)

    status, answer = post(flux, "ops", f"/runs/{run['id']}/retry", {"reason": "fixed"})

    assert status == 200, answer
    retried = run_detail(flux, run["id"])
    assert (retried["status"], retried["attempt"], retried["fire_at"]) == ("awaiting_approval", 2, None)
    assert retried["approval"]["status"] == "pending"
    assert retried["tasks"] == [t for t in retried["tasks"] if t["attempt"] == 1]  # nothing started
    post(flux, "ops", "/approve", {"approval_status_id": retried["approval"]["id"]})
    assert run_detail(flux, run["id"])["status"] == "running"


def test_a_retry_of_an_approved_run_keeps_its_approval(flux: Lambda) -> None:
    run = post(flux, "lead", "/runs", {"table_name": "gated", "partitions": partitions(ano_mes=4)})[1]["run"]
    post(flux, "ana", "/approve", {"approval_status_id": run["approval_id"]})
    post(flux, "lead", f"/runs/{run['id']}/fail", {"reason": "broken"})

    status, answer = post(flux, "lead", f"/runs/{run['id']}/retry", {})

    assert status == 200, answer
    retried = run_detail(flux, run["id"])
    assert (retried["status"], retried["attempt"]) == ("running", 2)
    assert retried["approval"]["status"] == "approved"


READS = ["/approvals", "/runs", "/runs/1", "/executions", "/tables", "/tables/open"]


@pytest.mark.parametrize("path", READS)
def test_reading_needs_an_identified_caller_outside_trusted_mode(flux: Lambda, path: str) -> None:
    post(flux, "ops", "/runs", {"table_name": "open", "partitions": partitions(ano_mes=5)})
    status, answer = flux.call("GET", path, user=None)
    assert (status, answer["error"]["code"]) == (403, "forbidden"), answer
    assert "reading needs an identified caller" in answer["error"]["message"]
    # Any identified caller reads everything (DESIGN §7: no finer read model), an IAM session too.
    assert send(flux, api_event("GET", path, None, **WHO["glue-session"]))[0] == 200
    assert flux.call("GET", path, user="sam")[0] == 200


@pytest.mark.parametrize("path", ["/health", "/openapi.json"])
def test_the_health_check_and_the_document_need_no_identity(flux: Lambda, path: str) -> None:
    assert flux.call("GET", path, user=None)[0] == 200


@pytest.mark.parametrize("path", READS)
def test_trusted_mode_reads_openly(flux: Lambda, path: str) -> None:
    post(flux, "ops", "/runs", {"table_name": "open", "partitions": partitions(ano_mes=5)})
    flux.deps.trust_body_user = True
    assert flux.call("GET", path, user=None)[0] == 200


def test_every_execution_shows_who_registered_it(flux: Lambda) -> None:
    session = f"arn:aws:sts::{ACCOUNT}:assumed-role/glue-etl/jr_42"
    assert post(flux, "glue-session", "/register_execution", registration("guarded", 1))[0] == 200
    assert post(flux, "stranger", "/register_execution", registration("open", 1))[0] == 200
    # A run completed through the API with its token: who reported it.
    run = post(flux, "ops", "/runs", {"table_name": "open", "partitions": partitions(ano_mes=2)})[1]["run"]
    item = registration("open", 2, run_id=run["id"], token=stored_token(flux, run["id"], "load"))
    assert post(flux, "glue-session", "/register_execution", item)[0] == 200
    # A run completed on its Glue job's event: Flux Control registers the execution itself.
    other = post(flux, "ops", "/runs", {"table_name": "open", "partitions": partitions(ano_mes=3)})[1]["run"]
    job_run = run_detail(flux, other["id"])["tasks"][0]["external_id"]
    assert flux.invoke(glue_event("job-guarded", job_run, "SUCCEEDED")) == {"status": "run succeeded"}

    listed = flux.ok("GET", "/executions")["executions"]

    assert [(e["table_name"], e["partitions"], e["run_id"], e["registered_by"]) for e in listed] == [
        ("open", {"ano_mes": 3}, other["id"], "flux-control"),
        ("open", {"ano_mes": 2}, run["id"], session),
        ("open", {"ano_mes": 1}, None, "sam"),
        ("guarded", {"ano_mes": 1}, None, session),
    ]


@pytest.mark.parametrize(
    ("who", "allowed"),
    # guarded lists operators (group:ops): its approvers and producers do not backfill it.
    [("ops", True), ("ana", False), ("loader", False), ("stranger", False), ("nobody", False)],
)
def test_a_backfill_needs_an_operator_and_records_who_asked(flux: Lambda, who: str, allowed: bool) -> None:
    body = {"table_name": "guarded", "partitions": {"ano_mes": [202301, 202302]}}
    status, answer = post(flux, who, "/backfills", body)
    assert status == (200 if allowed else 403), answer
    runs = flux.ok("GET", "/runs", query={"table": "guarded"})["runs"]
    assert len(runs) == (2 if allowed else 0)
    if allowed:
        backfill = flux.ok("GET", f"/backfills/{answer['backfill']['id']}")["backfill"]
        assert backfill["requested_by"] == "otto"
        assert send(flux, api_event("GET", f"/backfills/{backfill['id']}", None, **WHO["nobody"]))[0] == 403
