"""Nothing stuck, nothing lost (issue 16; DESIGN §5 and §8): the sweep survives a bad run, a completion
always settles its run, an interrupted dispatch is settled from what is stored, a committed change is
answered 200, no schedule outlives its run, and no fire comes early. Through ``lambda_handler``, on
SQLite and PostgreSQL (the ``engine`` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from controller.core.errors import Unavailable
from controller.db.postgresql_store import PostgresqlSession
from controller.db.run_models import RunEventRow, RunRow
from controller.db.sqlite_store import SqliteSession
from controller.reconciler import apply
from controller.services import dispatch, firing
from controller.services.dispatch import STUCK_REASON
from tests.factories import StatementLog, states, table_doc
from tests.runtime_support import START, Lambda, glue_event, partitions, running_lambda, schedules

DAY = "2026-11-28"
TASK = [{"alias": "load", "type": "glue", "target": "job-down"}]
TABLES = [
    table_doc("up_a"),
    table_doc("up_b"),
    # Without tasks: a fire succeeds it at once and registers its execution.
    table_doc("flag", debounce_seconds=60, dependencies=[{"dependency_name": "up_a"}]),
    table_doc("down", debounce_seconds=60, dependencies=[{"dependency_name": "up_b"}], tasks=TASK),
    table_doc(
        "now",
        debounce_seconds=0,
        dependencies=[{"dependency_name": "up_b"}],
        tasks=[{"alias": "load", "type": "glue", "target": "job-now"}],
    ),
    table_doc(
        "gated",
        debounce_seconds=600,
        requires_approval=True,
        dependencies=[{"dependency_name": "up_a"}],
        tasks=TASK,
    ),
]


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def register(flux: Lambda, table: str, day: str = DAY) -> dict[str, Any]:
    return flux.ok(
        "POST", "/register_execution", {"data": [{"table_name": table, "partitions": partitions(dt=day)}]}
    )


def run_of(flux: Lambda, table: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    [run] = [r for r in runs if r["table_name"] == table]
    return run


def detail(flux: Lambda, run_id: int) -> dict[str, Any]:
    run: dict[str, Any] = flux.ok("GET", f"/runs/{run_id}")["run"]
    return run


def redefine(engine: Engine, tables: list[dict[str, Any]], revision: str) -> None:
    """A reconcile of the definitions, as CI would apply after a merge."""
    apply(engine, desired=states(tables), revision=revision, actor="test", now=START, allow_delete=True)


def changed(name: str, **fields: Any) -> list[dict[str, Any]]:
    """TABLES with table ``name`` redefined by ``fields`` (or deleted: ``fields`` empty)."""
    return [
        t if t["name"] != name else table_doc(name, **fields) for t in TABLES if t["name"] != name or fields
    ]


def events_of(engine: Engine, run_id: int) -> list[tuple[str | None, str]]:
    with Session(engine) as session:
        rows = session.scalars(
            select(RunEventRow).where(RunEventRow.run_id == run_id).order_by(RunEventRow.id)
        )
        return [(row.detail["old_state"], row.detail["new_state"]) for row in rows]


def glue_runs() -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = boto3.client("glue").get_job_runs(JobName="job-down")["JobRuns"]
    return runs


# --- the sweep survives one bad run ---------------------------------------------------------------


def test_a_task_less_run_whose_key_no_longer_fits_succeeds_with_the_reason_and_the_sweep_goes_on(
    flux: Lambda, engine: Engine
) -> None:
    bad = run_of(flux, "flag", register(flux, "up_a")["runs"])
    good = run_of(flux, "down", register(flux, "up_b")["runs"])
    # A valid change: flag's partition renamed (it no longer depends on up_a's dt).
    redefine(engine, changed("flag", partitions=[{"name": "day", "type": "date"}]), "renamed")
    flux.clock.advance(60 + 121)  # both overdue: their schedules did not fire (none in moto's time)

    counts = flux.invoke({"flux_action": "sweep"})

    assert counts["overdue_fired"] == 2
    settled = detail(flux, bad["id"])
    assert settled["status"] == "succeeded"
    assert settled["reason"].startswith("execution not registered: the partitions of 'flag' changed")
    assert detail(flux, good["id"])["status"] == "running"  # the other overdue run fired
    assert events_of(engine, bad["id"])[-2:] == [("scheduled", "dispatching"), ("dispatching", "succeeded")]
    assert flux.ok("GET", "/executions", query={"table": "flag"})["executions"] == []


def test_a_run_whose_fire_raises_is_cancelled_with_the_reason_and_the_others_fire(
    flux: Lambda, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = run_of(flux, "flag", register(flux, "up_a")["runs"])
    good = run_of(flux, "down", register(flux, "up_b")["runs"])
    real = dispatch.claim

    def claim(tx: Any, catalog: Any, run_id: int, *args: Any) -> Any:
        if run_id == bad["id"]:
            raise RuntimeError("a bug that every fire of this run hits")
        return real(tx, catalog, run_id, *args)

    monkeypatch.setattr(dispatch, "claim", claim)
    flux.clock.advance(60 + 121)

    counts = flux.invoke({"flux_action": "sweep"})

    assert (counts["overdue_fired"], counts["overdue_given_up"]) == (1, 1)
    cancelled = detail(flux, bad["id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["reason"] == "the sweep could not fire it: a bug that every fire of this run hits"
    assert events_of(engine, bad["id"])[-1] == ("scheduled", "cancelled")
    assert detail(flux, good["id"])["status"] == "running"
    assert flux.invoke({"flux_action": "sweep"})["overdue_given_up"] == 0  # not found again


# --- a completion always settles its run ------------------------------------------------------------


def _running_down(flux: Lambda) -> tuple[dict[str, Any], str]:
    run = run_of(flux, "down", register(flux, "up_b")["runs"])
    flux.clock.advance(60)
    assert flux.invoke({"flux_action": "fire", "run_id": run["id"]}) == {"status": "running"}
    [task] = detail(flux, run["id"])["tasks"]
    return run, task["external_id"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, "execution not registered: table 'down' is no longer defined"),
        (
            {"partitions": [{"name": "dt", "type": "date"}, {"name": "region", "type": "string"}]},
            "execution not registered: the partitions of 'down' changed since the run opened",
        ),
    ],
    ids=["table-deleted", "partition-added"],
)
def test_a_glue_success_settles_its_run_whatever_the_definitions_became(
    flux: Lambda, engine: Engine, change: dict[str, Any], reason: str
) -> None:
    run, job_run_id = _running_down(flux)
    fields = {**change, "tasks": TASK} if change else {}
    redefine(engine, changed("down", **fields), "changed")

    outcome = flux.invoke(glue_event("job-down", job_run_id, "SUCCEEDED"))

    assert outcome["status"].startswith("run succeeded; " + reason)
    settled = detail(flux, run["id"])
    assert (settled["status"], settled["reason"][: len(reason)]) == ("succeeded", reason)
    assert events_of(engine, run["id"])[-1] == ("running", "succeeded")
    runs = flux.ok("GET", "/runs", query={"table": "down"})["runs"] if change else []
    assert [r["status"] for r in runs] == (["succeeded"] if change else [])  # no open run holds the key


def test_a_run_id_report_for_a_deleted_table_settles_the_run(flux: Lambda, engine: Engine) -> None:
    run, _ = _running_down(flux)
    redefine(engine, changed("down"), "deleted")
    item = {"table_name": "down", "partitions": partitions(dt=DAY), "run_id": run["id"]}

    answer = flux.ok("POST", "/register_execution", {"data": [item]})

    reason = "execution not registered: table 'down' is no longer defined"
    assert answer["executions"] == []
    assert answer["not_registered"] == [
        {"index": 0, "run_id": run["id"], "status": "succeeded", "reason": reason}
    ]
    assert detail(flux, run["id"])["status"] == "succeeded"
    # A report naming no such run is refused as before, nothing written.
    status, body = flux.call("POST", "/register_execution", {"data": [{**item, "run_id": run["id"] + 99}]})
    assert (status, body["error"]["code"]) == (404, "not_found")


# --- an interrupted dispatch whose task ids committed -------------------------------------------------


def interrupted_fire(
    flux: Lambda, monkeypatch: pytest.MonkeyPatch, owner: object, step: str, error: Exception
) -> dict[str, Any]:
    """A due run of ``down`` whose fire dies at ``owner.step`` (raising ``error``), then 15 minutes:
    the run as the sweep finds it, stuck in ``dispatching``."""
    run = run_of(flux, "down", register(flux, "up_b")["runs"])
    flux.clock.advance(60)

    def dies(*_args: Any) -> None:
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(owner, step, dies)
        with pytest.raises(type(error)):
            flux.invoke({"flux_action": "fire", "run_id": run["id"]})
    flux.clock.advance(15 * 60)
    stuck = detail(flux, run["id"])
    assert stuck["status"] == "dispatching"
    return stuck


def test_a_dispatch_interrupted_after_its_tasks_started_is_settled_running_not_unknown(
    flux: Lambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost = Unavailable("the connection was lost while committing")
    flux.deps.poll_after_seconds = 3600  # the sweep settles the dispatch; it does not ask Glue yet
    stuck = interrupted_fire(flux, monkeypatch, dispatch, "finish", lost)
    job_run_id = stuck["tasks"][0]["external_id"]
    assert job_run_id  # its start was recorded: only the dispatch's end was lost

    counts = flux.invoke({"flux_action": "sweep"})

    assert (counts["stuck_settled"], counts["stuck_failed"]) == (1, 0)
    assert detail(flux, stuck["id"])["status"] == "running"
    assert len(glue_runs()) == 1  # never started twice
    assert flux.invoke(glue_event("job-down", job_run_id, "SUCCEEDED"))["status"] == "run succeeded"


def test_a_dispatch_interrupted_before_a_start_was_recorded_still_fails_as_unknown(
    flux: Lambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    died = RuntimeError("the Lambda died before recording the start")
    stuck = interrupted_fire(flux, monkeypatch, firing, "record_start", died)

    assert flux.invoke({"flux_action": "sweep"})["stuck_failed"] == 1
    failed = detail(flux, stuck["id"])
    assert (failed["status"], failed["error"]) == ("failed", STUCK_REASON)


# --- 200 after commit ---------------------------------------------------------------------------------


def test_a_registration_whose_immediate_fire_fails_after_commit_is_200_and_the_sweep_fires_it(
    flux: Lambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    def outage(*_args: Any) -> str:
        raise Unavailable("the database is unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(firing, "fire", outage)
        answer = register(flux, "up_b")

    [execution] = answer["executions"]
    assert execution["table_name"] == "up_b"
    now = run_of(flux, "now", answer["runs"])
    assert detail(flux, now["id"])["status"] == "scheduled"  # committed, not yet fired
    flux.clock.advance(121)
    assert flux.invoke({"flux_action": "sweep"})["overdue_fired"] >= 1
    assert detail(flux, now["id"])["status"] == "running"


def test_an_approval_whose_answer_cannot_be_read_after_commit_is_200(
    flux: Lambda, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = run_of(flux, "gated", register(flux, "up_a")["runs"])

    def outage(*_args: Any) -> Any:
        raise Unavailable("the database is unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(firing, "fire", outage)  # the approved run is due at once: its fire fails too
        for session_type in (PostgresqlSession, SqliteSession):
            patch.setattr(session_type, "run_state", outage)  # reading the answer again fails
        flux.clock.advance(601)
        answer = flux.ok("POST", "/approve", {"approval_status_id": gated["approval_id"]}, user="ana")

    assert answer["approval"] == {"id": gated["approval_id"], "status": "approved"}
    assert answer["run"]["status"] == "scheduled"
    status, body = flux.call("POST", "/approve", {"approval_status_id": gated["approval_id"]}, user="ana")
    assert (status, body["error"]["code"]) == (409, "conflict")  # decided once, and the caller knows it


# --- no schedule outlives its run ----------------------------------------------------------------------


def test_an_approve_racing_a_cancel_leaves_no_schedule_after_the_sweep(flux: Lambda) -> None:
    from controller.services import run_actions  # the cancel runs inside the approve's schedule write

    gated = run_of(flux, "gated", register(flux, "up_a")["runs"])
    scheduler = flux.deps.scheduler
    real_put = scheduler.put

    def put_after_a_cancel(request: Any) -> None:
        run_actions.cancel_run(flux.deps, gated["id"], "cancelled meanwhile")
        real_put(request)

    scheduler.put = put_after_a_cancel  # type: ignore[method-assign]
    try:
        flux.ok("POST", "/approve", {"approval_status_id": gated["approval_id"]}, user="ana")
    finally:
        scheduler.put = real_put  # type: ignore[method-assign]
    assert detail(flux, gated["id"])["status"] == "cancelled"
    name = f"flux-run-{gated['id']}-gated"
    assert name in schedules()  # the approve's write landed after the cancel's delete

    counts = flux.invoke({"flux_action": "sweep"})

    assert counts["schedules_deleted"] == 1
    assert name not in schedules()
    assert flux.invoke({"flux_action": "sweep"})["schedules_deleted"] == 0


def test_a_cancelled_run_whose_schedule_could_not_be_deleted_loses_it_at_the_sweep(flux: Lambda) -> None:
    down = run_of(flux, "down", register(flux, "up_b")["runs"])
    assert len(schedules()) == 1  # down's ("now" fired at once, without a schedule)
    scheduler = flux.deps.scheduler
    real_delete = scheduler.delete

    def unreachable(name: str) -> None:
        raise ConnectionError("scheduler endpoint unreachable")

    scheduler.delete = unreachable  # type: ignore[method-assign]
    try:
        flux.ok("POST", f"/runs/{down['id']}/cancel", {"reason": "not today"})
    finally:
        scheduler.delete = real_delete  # type: ignore[method-assign]
    before = len(schedules())

    assert flux.invoke({"flux_action": "sweep"})["schedules_deleted"] == 1
    assert len(schedules()) == before - 1


# --- no early fire undoes a push -------------------------------------------------------------------------


def test_an_early_fire_dispatches_nothing_and_writes_the_schedule_again(flux: Lambda, engine: Engine) -> None:
    down = run_of(flux, "down", register(flux, "up_b")["runs"])
    flux.clock.advance(30)
    register(flux, "up_b")  # a push: the fire time moves 30 s later
    flux.clock.advance(31)  # the old fire time has passed, the new one has not

    assert flux.invoke({"flux_action": "fire", "run_id": down["id"]})["status"].startswith(
        "ignored: not due yet"
    )

    assert detail(flux, down["id"])["status"] == "scheduled"
    assert glue_runs() == []
    with Session(engine) as session:
        row = session.get(RunRow, down["id"])
        assert row is not None and row.fire_at is not None
        assert row.scheduled_fire_at == row.fire_at  # written again
    flux.clock.now = row.fire_at + timedelta(seconds=1)
    assert flux.invoke({"flux_action": "fire", "run_id": down["id"]}) == {"status": "running"}


# --- what the sweep costs ------------------------------------------------------------------------------


def test_an_idle_sweep_costs_the_same_statements_whatever_the_history(flux: Lambda, engine: Engine) -> None:
    def idle_sweep() -> list[str]:
        with StatementLog(flux.deps.store) as log:  # what the store sends, BEGIN and COMMIT apart
            counts = flux.invoke({"flux_action": "sweep"})
        assert counts.pop("status") == "swept" and not any(counts.values()), counts
        return log.statements

    empty = idle_sweep()
    for day in range(1, 21):  # history: runs fired, cancelled, succeeded; schedules written and gone
        runs = register(flux, "up_b", f"2026-10-{day:02d}")["runs"]
        down = run_of(flux, "down", runs)
        if day % 2:
            flux.ok("POST", f"/runs/{down['id']}/cancel", {"reason": "history"})
    flux.clock.advance(3600)
    flux.invoke({"flux_action": "sweep"})  # fires the overdue ones, deletes the cancelled' schedules

    assert idle_sweep() == empty
    # Eight reads: unsynced schedules, overdue runs, leftover schedules, the outbox, stuck dispatches,
    # tables with queued runs, failed runs whose key must run again, started tasks due for a check.
    assert len(empty) == 8, empty
