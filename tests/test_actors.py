"""Who did what (DESIGN §7): every write route refuses a caller without identity and writes nothing;
every state change records its actor, shown by ``GET /runs/{id}``'s timeline and carried by the run
events. Through ``lambda_handler``, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from controller.db.run_models import ApprovalRow, ExecutionRow, RunEventRow, RunRow
from tests.api_support import TABLES, api_event, error_of, item, run_detail, send
from tests.runtime_support import ACCOUNT, Lambda, glue_event, partitions, running_lambda


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def written(engine: Engine) -> tuple[int, ...]:
    """Rows of everything a write can add or change."""
    with Session(engine) as session:
        counts = [
            session.scalar(select(func.count()).select_from(m)) or 0
            for m in (ExecutionRow, RunRow, ApprovalRow, RunEventRow)
        ]
        changed = session.scalar(select(func.max(RunRow.updated_at)))
    return (*counts, hash(changed))


def timeline(flux: Lambda, run_id: int) -> list[tuple[str | None, str, str | None]]:
    return [(e["old_state"], e["new_state"], e["actor"]) for e in run_detail(flux, run_id)["events"]]


def test_every_write_route_refuses_a_caller_without_identity_and_writes_nothing(
    flux: Lambda, engine: Engine
) -> None:
    failed = flux.ok("POST", "/runs", {"table_name": "tb_manual", "partitions": partitions(ano_mes=1)})["run"]
    flux.ok("POST", f"/runs/{failed['id']}/fail", {"reason": "broken"})
    gated = flux.ok("POST", "/runs", {"table_name": "tb_open_gate", "partitions": partitions(ano_mes=1)})[
        "run"
    ]
    before = written(engine)
    writes: list[tuple[str, dict[str, Any]]] = [
        ("/register_execution", {"data": [item("tb_a", ano_mes=202305)], "user": "ana"}),
        ("/approve", {"approval_status_id": gated["approval_id"]}),
        ("/reject", {"approval_status_id": gated["approval_id"]}),
        ("/runs", {"table_name": "tb_manual", "partitions": partitions(ano_mes=2)}),
        (f"/runs/{gated['id']}/cancel", {"reason": "no"}),
        (f"/runs/{failed['id']}/retry", {}),
        (f"/runs/{failed['id']}/fail", {"reason": "again"}),
    ]
    for path, body in writes:
        status, error = error_of(flux, "POST", path, body, user=None)
        assert (status, error["code"]) == (403, "forbidden"), (path, error)
        assert error["message"].startswith("no caller identity"), error
    assert written(engine) == before
    # In trusted mode (serve) the body's user identifies; without one a write is refused there too.
    flux.deps.trust_body_user = True
    status, error = error_of(flux, "POST", "/runs", writes[3][1], user=None)
    assert (status, error["code"]) == (403, "forbidden")
    assert "the body's user" in error["message"]
    assert (
        flux.ok("POST", "/runs", {**writes[3][1], "user": "oliver"}, user=None)["run"]["table_name"]
        == "tb_manual"
    )


def test_each_state_change_records_who_asked_for_it(flux: Lambda, engine: Engine) -> None:
    opened = flux.ok(
        "POST", "/runs", {"table_name": "tb_open_gate", "partitions": partitions(ano_mes=1)}, user="oliver"
    )["run"]
    flux.ok("POST", "/approve", {"approval_status_id": opened["approval_id"]}, user="ana")
    assert timeline(flux, opened["id"])[:2] == [
        (None, "awaiting_approval", "oliver"),
        ("awaiting_approval", "scheduled", "ana"),
    ]

    run = flux.ok(
        "POST", "/runs", {"table_name": "tb_manual", "partitions": partitions(ano_mes=3)}, user="oliver"
    )["run"]
    flux.ok("POST", f"/runs/{run['id']}/fail", {"reason": "the job hung"}, user="glue-role")
    flux.ok("POST", f"/runs/{run['id']}/retry", {"reason": "fixed"}, user="paula")
    steps = timeline(flux, run["id"])
    assert steps[0] == (None, "scheduled", "oliver")
    assert ("running", "failed", "glue-role") in steps
    assert ("failed", "scheduled", "paula") in steps
    assert ("scheduled", "dispatching", None) in steps  # the fire: Flux Control itself
    [job] = [t for t in run_detail(flux, run["id"])["tasks"] if t["attempt"] == 2]
    flux.invoke(glue_event("job-manual", job["external_id"], "SUCCEEDED"))
    assert timeline(flux, run["id"])[-1] == ("running", "succeeded", None)  # AWS's state change

    registered = flux.ok("POST", "/register_execution", {"data": [item("tb_a", ano_mes=202305)]}, user="etl")
    [dependent] = registered["runs"]
    assert timeline(flux, dependent["id"]) == [(None, "scheduled", "etl")]  # opened by the producer
    cancelled = flux.ok("POST", f"/runs/{dependent['id']}/cancel", {"reason": "not now"}, user="ana")["run"]
    assert cancelled["status"] == "cancelled"
    assert timeline(flux, dependent["id"])[-1] == ("scheduled", "cancelled", "ana")
    # The published events carry the actor too (the outbox holds what was published).
    with Session(engine) as session:
        details = session.scalars(
            select(RunEventRow.detail).where(RunEventRow.run_id == dependent["id"])
        ).all()
    assert [d["actor"] for d in details] == ["etl", "ana"]


@pytest.mark.parametrize(
    ("account", "expected"),
    [(ACCOUNT, 200), ("999999999999", 403)],
    ids=["own-account", "another-account"],
)
def test_an_iam_user_named_like_an_approver_approves_only_from_the_functions_own_account(
    flux: Lambda, account: str, expected: int
) -> None:
    run = flux.ok("POST", "/runs", {"table_name": "tb_gated", "partitions": partitions(ano_mes=1)})["run"]
    identity = {"userArn": f"arn:aws:iam::{account}:user/ana", "accountId": account}
    event = api_event("POST", "/approve", {"approval_status_id": run["approval_id"]}, identity=identity)
    status, raw = send(flux, event)
    assert status == expected, raw
    assert run_detail(flux, run["id"])["approval"]["status"] == ("approved" if expected == 200 else "pending")
