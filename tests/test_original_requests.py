"""The first step of a migration (issue 13): the old system's three requests, verbatim, through
``lambda_handler`` — its table payload checked by ``POST /tables`` and converted by ``import``, then its
registration, then its approval.

The old README is not part of this repository: ``tests/fixtures/original_requests.json`` holds its three
bodies as DESIGN §5 and §7 describe them (the ``{"data": [...], "user": ...}`` envelope, and ``user`` on
every write, as the old system's requests carried it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from controller.cli import main
from controller.files.validation import validate_directory
from tests.conftest import REPO_ROOT
from tests.runtime_support import REGION, Lambda, glue_event, running_lambda

REQUESTS: dict[str, Any] = json.loads(
    (Path(REPO_ROOT) / "tests" / "fixtures" / "original_requests.json").read_text(encoding="utf-8")
)


def imported(tmp_path: Path) -> list[dict[str, Any]]:
    """The table payload through ``flux-control import``: the definitions it writes, validated."""
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps(REQUESTS["tables"], ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "definitions"
    result = CliRunner().invoke(main, ["import", str(payload), "--out", str(out)])
    assert result.exit_code == 0, result.output
    validated = validate_directory(out)
    assert validated.valid, [str(p) for p in validated.problems]
    return [spec.model_dump(mode="json") for spec in validated.specs]


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Lambda]:
    with running_lambda(engine, imported(tmp_path), monkeypatch) as handler:
        yield handler


def test_the_table_payload_is_checked_as_sent(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_lambda(engine, [], monkeypatch) as empty:
        answer = empty.ok("POST", "/tables", REQUESTS["tables"])
    assert (answer["valid"], answer["problems"]) == (True, [])
    assert [(a["action"], a["table"]) for a in answer["plan"]["actions"]] == [
        ("create", "tb_op_enriquecido"),
        ("create", "tbjf001_op_pdz_prep"),
    ]


@pytest.mark.parametrize("trusted", [True, False], ids=["serve (body user)", "AWS (authorizer)"])
def test_register_then_approve_as_the_old_readme_shows(flux: Lambda, trusted: bool) -> None:
    flux.deps.trust_body_user = trusted
    caller = None if trusted else "lrcxpnu"  # in AWS the identity comes from the authorizer
    registered = flux.ok("POST", "/register_execution", REQUESTS["register_execution"], user=caller)
    assert registered["executions"] == [
        {"id": 1, "table_name": "tbjf001_op_pdz_prep", "partitions": {"ano_mes_referencia": 202305}}
    ]
    [run] = registered["runs"]
    assert (run["table_name"], run["status"], run["approval_id"]) == (
        "tb_op_enriquecido",
        "awaiting_approval",
        1,
    )

    approved = flux.ok("POST", "/approve", REQUESTS["approve"], user=caller)
    assert approved["approval"] == {"id": 1, "status": "approved"}
    assert approved["run"]["status"] == "scheduled"
    assert approved["run"]["approval_id"] == 1
    assert approved["run"]["fire_at"] == "2026-11-29T12:05:00+00:00"  # last trigger + 300 s

    # The run fires, its Glue job starts and succeeds: the run succeeds and its table is registered.
    flux.clock.advance(300)
    assert flux.invoke({"flux_action": "fire", "run_id": run["id"]}) == {"status": "running"}
    [job_run] = boto3.client("glue", region_name=REGION).get_job_runs(JobName="job-enrich-operacoes")[
        "JobRuns"
    ]
    assert job_run["Arguments"]["--ano_mes"] == "202305"
    flux.invoke(glue_event("job-enrich-operacoes", job_run["Id"], "SUCCEEDED"))
    detail = flux.ok("GET", f"/runs/{run['id']}")["run"]
    assert (detail["status"], detail["approval_id"], detail["approval"]["decided_by"]) == (
        "succeeded",
        1,
        "lrcxpnu",
    )
