"""Several Lambdas at once (threads sharing the database, like containers do): no lost or double runs."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import boto3
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from controller.core.runs import OPEN_STATES
from controller.db.engine import make_engine
from controller.db.run_models import ExecutionRow, RunRow
from controller.services.registration import ExecutionInput, register_executions
from tests.factories import table_doc
from tests.runtime_support import GROUP, REGION, Lambda, running_lambda

KEY = [{"name": "k", "type": "int"}]
TABLES = [
    table_doc("up_one", partitions=KEY),
    table_doc("up_two", partitions=KEY),
    table_doc(
        "joined",
        partitions=KEY,
        debounce_seconds=600,
        dependencies=[{"dependency_name": "up_one"}, {"dependency_name": "up_two"}],
        tasks=[{"alias": "t", "type": "glue", "target": "job-joined"}],
    ),
]
WORKERS = 8
ROUNDS = 50


@pytest.fixture
def pooled_engine(database_url: str) -> Iterator[Engine]:
    engine = (
        make_engine(database_url, pool_size=WORKERS + 2)
        if "postgresql" in database_url
        else make_engine(database_url)
    )
    yield engine
    engine.dispose()


@pytest.fixture
def flux(pooled_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    with running_lambda(pooled_engine, TABLES, monkeypatch) as handler:
        yield handler


def test_eight_workers_registering_both_upstreams_open_exactly_one_run_per_key(
    flux: Lambda, pooled_engine: Engine
) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(WORKERS)

    def worker(index: int) -> None:
        table = "up_one" if index % 2 == 0 else "up_two"
        for round_ in range(ROUNDS):
            barrier.wait()
            try:
                register_executions(
                    flux.deps, [ExecutionInput(table, {"k": round_}, f"worker-{index}")], None
                )
            except BaseException as exc:  # collected and asserted below: no caller may see an error
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    with Session(pooled_engine) as session:
        assert session.execute(select(func.count()).select_from(ExecutionRow)).scalar() == WORKERS * ROUNDS
        runs = session.execute(select(RunRow.partition_key, RunRow.status)).all()
    per_key = Counter(key for key, status in runs if status in OPEN_STATES)
    assert len(per_key) == ROUNDS  # every key got its run: no lost gate
    assert set(per_key.values()) == {1}  # and only one
    assert len(runs) == ROUNDS
    names = boto3.client("scheduler", region_name=REGION).list_schedules(GroupName=GROUP, MaxResults=100)[
        "Schedules"
    ]
    assert len(names) == ROUNDS
    assert len({s["Name"] for s in names}) == ROUNDS
