"""Faults around AWS calls: the database stays the truth and the sweep repairs what AWS missed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from controller.core.effects import ScheduleRequest
from controller.db.run_models import RunEventRow, RunRow
from tests.factories import table_doc
from tests.runtime_support import REGION, Lambda, partitions, running_lambda, schedule_of, schedules

TABLES = [
    table_doc("up", partitions=[{"name": "dt", "type": "date"}]),
    table_doc(
        "down",
        partitions=[{"name": "dt", "type": "date"}],
        debounce_seconds=600,
        dependencies=[{"dependency_name": "up"}],
        tasks=[{"alias": "load", "type": "glue", "target": "job-down"}],
    ),
]


class FlakyScheduler:
    """Fails the first ``failures`` writes, like a throttled or unreachable EventBridge Scheduler."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def put(self, request: ScheduleRequest) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("scheduler endpoint unreachable")
        self.inner.put(request)

    def delete(self, name: str) -> None:
        self.inner.delete(name)


class BrokenPublisher:
    def __init__(self) -> None:
        self.calls = 0

    def publish(self, events: Any) -> None:
        self.calls += 1
        raise ConnectionError("events endpoint unreachable")


@pytest.fixture
def flux(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(engine, TABLES, monkeypatch) as handler:
        yield handler


def _register(flux: Lambda) -> dict[str, Any]:
    body = flux.ok(
        "POST",
        "/register_execution",
        {"data": [{"table_name": "up", "partitions": partitions(dt="2026-11-28")}]},
    )
    [run] = body["runs"]
    return dict(run)


def _synced(engine: Engine, run_id: int) -> bool:
    with Session(engine) as session:
        run = session.get(RunRow, run_id)
        assert run is not None
        return run.scheduled_fire_at == run.fire_at


def test_a_failed_schedule_write_is_retried_by_the_sweep_and_the_run_fires_once(
    flux: Lambda, engine: Engine
) -> None:
    real = flux.deps.scheduler
    flux.deps.scheduler = FlakyScheduler(real, failures=1)
    run = _register(flux)  # still 200: the database has the run
    assert run["status"] == "scheduled"
    assert schedules() == []
    assert not _synced(engine, run["id"])
    detail = flux.ok("GET", f"/runs/{run['id']}")
    assert detail["run"]["schedule_synced"] is False

    assert flux.invoke({"flux_action": "sweep"})["schedules_written"] == 1
    assert _synced(engine, run["id"])
    fire = json.loads(schedule_of(run["id"], "down")["Target"]["Input"])
    flux.clock.advance(600)
    assert flux.invoke(fire) == {"status": "running"}
    assert flux.invoke(fire)["status"] == "ignored: run is running"
    assert flux.invoke({"flux_action": "sweep"})["overdue_fired"] == 0
    assert len(boto3.client("glue", region_name=REGION).get_job_runs(JobName="job-down")["JobRuns"]) == 1


def test_an_overdue_run_whose_schedule_never_existed_is_fired_by_the_sweep(flux: Lambda) -> None:
    flux.deps.scheduler = FlakyScheduler(flux.deps.scheduler, failures=10)
    run = _register(flux)
    flux.clock.advance(600 + 180)  # past the fire time and the grace period
    assert flux.invoke({"flux_action": "sweep"})["overdue_fired"] == 1
    detail = flux.ok("GET", f"/runs/{run['id']}")
    assert detail["run"]["status"] == "running"
    assert flux.invoke({"flux_action": "sweep"})["overdue_fired"] == 0
    assert len(boto3.client("glue", region_name=REGION).get_job_runs(JobName="job-down")["JobRuns"]) == 1


def test_events_that_could_not_be_published_stay_in_the_outbox_until_the_sweep(
    flux: Lambda, engine: Engine
) -> None:
    real = flux.deps.events
    broken = BrokenPublisher()
    flux.deps.events = broken
    _register(flux)
    assert broken.calls == 1
    with Session(engine) as session:
        pending = (
            session.execute(select(RunEventRow.detail).where(RunEventRow.published_at.is_(None)))
            .scalars()
            .all()
        )
    assert [(d["table"], d["old_state"], d["new_state"]) for d in pending] == [("down", None, "scheduled")]
    flux.deps.events = real
    flux.clock.advance(60)
    assert flux.invoke({"flux_action": "sweep"})["events_published"] == 1
    with Session(engine) as session:
        assert session.execute(select(RunEventRow).where(RunEventRow.published_at.is_(None))).first() is None


def test_a_sweep_whose_publish_fails_still_repairs_the_rest_and_keeps_the_outbox(
    flux: Lambda, engine: Engine
) -> None:
    real_events, real_scheduler = flux.deps.events, flux.deps.scheduler
    flux.deps.events = BrokenPublisher()
    flux.deps.scheduler = FlakyScheduler(real_scheduler, failures=1)
    run = _register(flux)  # its schedule is not written, its event not published
    flux.clock.advance(60)
    counts = flux.invoke({"flux_action": "sweep"})
    assert counts["schedules_written"] == 1 and counts["events_published"] == 0
    assert schedule_of(run["id"], "down")["ScheduleExpression"] == "at(2026-11-29T12:10:00)"
    flux.deps.events = real_events
    assert flux.invoke({"flux_action": "sweep"})["events_published"] == 1


def test_a_push_moves_the_existing_schedule(flux: Lambda) -> None:
    run = _register(flux)
    assert schedule_of(run["id"], "down")["ScheduleExpression"] == "at(2026-11-29T12:10:00)"
    flux.clock.advance(120)
    pushed = _register(flux)
    assert pushed["id"] == run["id"]
    assert schedule_of(run["id"], "down")["ScheduleExpression"] == "at(2026-11-29T12:12:00)"
    assert len(schedules()) == 1
