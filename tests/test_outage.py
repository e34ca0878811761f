"""A database that refuses connections is an outage, not a bug (issue 16, DESIGN §5): every route answers
503 ``unavailable`` with ``Retry-After``, never a 500, and the scheduler's events raise
:class:`~controller.core.errors.Unavailable` (Lambda logs it; the schedule retries).

Everything goes through ``lambda_handler``. On PostgreSQL: a port nothing listens on; a database with
``ALLOW_CONNECTIONS false``; its backends terminated while the store and the reads hold pooled
connections (replaced when the database lets them be, else a 503). On SQLite: a database file that
cannot be opened (its directory does not exist) is the same outage, while a file that opens but holds
no tables is a bug and stays a 500 with a reference. (Elsewhere: tests/test_security.py checks that an
unreachable database leaks neither its URL nor its password; tests/test_faults.py drops the store's
connection mid-transaction.)
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url

from controller import wiring
from controller.aws.scheduler import EventBridgeScheduler
from controller.aws.settings import AwsSettings
from controller.core.errors import Unavailable
from controller.db.engine import make_engine
from controller.db.reads import SqlReads
from controller.lambda_function import lambda_handler
from controller.local.aws import ensure_schedule_group
from controller.services.explain import explain
from tests.api_support import MONTH, TABLES, api_event
from tests.conftest import POSTGRES_URL
from tests.factories import table_doc
from tests.runtime_support import (
    GROUP,
    START,
    Lambda,
    aws_environment,
    glue_event,
    partitions,
    running_lambda,
)

UNREACHABLE = "postgresql+psycopg://flux_app:pw@127.0.0.1:9/flux?connect_timeout=2"
ANA: dict[str, Any] = {"claims": {"cognito:username": "ana"}}  # an approver of tb_gated
#: Every route that reaches the database, with a body it accepts (ids need not exist: the database is
#: asked before anything is looked up).
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/runs", None),
    ("GET", "/runs?table=tb_a&status=scheduled", None),
    ("GET", "/runs/1", None),
    ("GET", "/approvals", None),
    ("GET", "/executions?table=tb_a", None),
    ("GET", "/tables", None),
    ("GET", "/tables/tb_a", None),
    ("POST", "/tables", {"data": [table_doc("tb_new", partitions=MONTH)], "user": "ana"}),
    ("POST", "/register_execution", {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=1)}]}),
    ("POST", "/approve", {"approval_status_id": 1}),
    ("POST", "/reject", {"approval_status_id": 1, "comment": "no"}),
    ("POST", "/runs", {"table_name": "tb_manual", "partitions": partitions(ano_mes=1), "reason": "backfill"}),
    ("POST", "/runs/1/cancel", {"reason": "not needed"}),
    ("POST", "/runs/1/retry", {}),
    ("POST", "/runs/1/fail", {"reason": "task failed"}),
]
#: The events without an HTTP answer: a run's schedule, the sweep, a task's state change.
EVENTS: list[dict[str, Any]] = [
    {"flux_action": "fire", "run_id": 1},
    {"flux_action": "sweep"},
    glue_event("job-b", "jr-1", "SUCCEEDED"),
]


def assert_unavailable(response: dict[str, Any], what: Any) -> None:
    """A 503 ``unavailable`` with ``Retry-After`` (whole seconds), nothing else in the body."""
    assert response["statusCode"] == 503, (what, response)
    answer = json.loads(response["body"])
    assert set(answer) == {"error"} and answer["error"]["code"] == "unavailable", (what, answer)
    assert answer["error"]["details"] == {}
    assert "nothing was written" in answer["error"]["message"]
    [retry_after] = response["multiValueHeaders"]["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) > 0, (what, retry_after)
    assert "Traceback" not in response["body"] and "OperationalError" not in response["body"]


def assert_every_route_unavailable() -> None:
    for index, (method, path, body) in enumerate(ROUTES):
        event = api_event(method, path, body, authorizer=ANA)
        event["requestContext"]["requestId"] = f"outage-{index}"
        assert_unavailable(lambda_handler(event, None), (method, path))
    for scheduled in EVENTS:
        with pytest.raises(Unavailable, match="nothing was written"):
            lambda_handler(scheduled, None)


@contextmanager
def deployed(monkeypatch: pytest.MonkeyPatch, url: str) -> Iterator[None]:
    """The handler as deployed: its dependencies built from ``FLUX_DATABASE_URL`` by the first event."""
    aws_environment(monkeypatch)
    monkeypatch.setenv("FLUX_DATABASE_URL", url)
    monkeypatch.delenv("FLUX_DATABASE_SECRET_ARN", raising=False)
    with mock_aws():
        from controller.aws import clients

        clients.client.cache_clear()
        ensure_schedule_group(EventBridgeScheduler(AwsSettings.from_env()).client, GROUP)
        wiring.use(None)
        try:
            yield
        finally:
            wiring.use(None)
            clients.client.cache_clear()


# --- PostgreSQL: nothing listening -------------------------------------------------------------------


@pytest.mark.postgresql
def test_a_port_nothing_listens_on_is_503_on_every_route_and_unavailable_to_events(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "flux_control.runtime")
    with deployed(monkeypatch, UNREACHABLE):
        assert_every_route_unavailable()
    # Operators see each outage, by the driver's error class (tests/test_security.py: never the URL).
    outages = [r for r in caplog.records if r.getMessage() == "the database is unavailable"]
    assert len(outages) >= len(ROUTES) + len(EVENTS)
    assert {getattr(r, "error", None) for r in outages} == {"OperationalError"}
    # explain (the CLI's) reads through the same adapter as the GET routes.
    engine = make_engine(UNREACHABLE)
    try:
        with pytest.raises(Unavailable):
            explain(SqlReads(engine), "tb_a", {"ano_mes": "202305"})
    finally:
        engine.dispose()


# --- PostgreSQL: a database of its own, refusing connections or losing its backends --------------------


@dataclass
class Scratch:
    """A PostgreSQL database of its own (``ALLOW_CONNECTIONS`` and terminating backends are per
    database), administered through the test server's admin engine."""

    name: str
    url: str
    admin: Engine

    def _admin(self, statement: str) -> list[Any]:
        with self.admin.connect() as connection:
            result = connection.execute(text(statement), {"name": self.name})
            return list(result) if result.returns_rows else []

    def allow_connections(self, allowed: bool) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {str(allowed).lower()}')

    def terminate(self, pid: int) -> None:
        """Terminate one backend, waiting for it to exit."""
        with self.admin.connect() as connection:
            terminated = connection.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
            assert terminated.scalar()

    def terminate_backends(self) -> int:
        """Terminate every backend connected to the database (waiting for each to exit); how many."""
        rows = self._admin(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = :name AND pid <> pg_backend_pid()"
        )
        assert all(terminated for (terminated,) in rows)
        return len(rows)


@pytest.fixture
def scratch(postgres_admin: Engine) -> Iterator[Scratch]:
    name = f"flux_outage_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield Scratch(name, url, postgres_admin)
    finally:
        with postgres_admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
def scratch_engine(scratch: Scratch) -> Iterator[Engine]:
    engine = make_engine(scratch.url, pool_size=1, max_overflow=2)  # as wiring builds the runtime's
    yield engine
    engine.dispose()


@pytest.fixture
def flux(scratch_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    """The runtime on the scratch database, definitions applied (migrated first)."""
    with running_lambda(scratch_engine, TABLES, monkeypatch) as handler:
        yield handler


def register(flux: Lambda, month: int) -> dict[str, Any]:
    body = {"data": [{"table_name": "tb_a", "partitions": partitions(ano_mes=month)}]}
    return flux.ok("POST", "/register_execution", body, user="ana")


def warm_up(flux: Lambda, month: int) -> None:
    """A write and reads, so that the store and the reads' engine hold pooled connections."""
    register(flux, month)
    assert flux.ok("GET", "/runs")["runs"]
    gated = flux.ok("POST", "/runs", {"table_name": "tb_gated", "partitions": partitions(ano_mes=month)})
    assert gated["run"]["status"] == "awaiting_approval"


@pytest.mark.postgresql
def test_a_database_not_accepting_connections_is_503_until_it_accepts_them_again(
    flux: Lambda, scratch: Scratch
) -> None:
    scratch.allow_connections(False)
    scratch.terminate_backends()  # the definitions' apply left one pooled: as after a restart
    assert_every_route_unavailable()
    # Nothing to restart: the next request, once the database accepts connections, is served.
    scratch.allow_connections(True)
    register(flux, 202305)
    assert [r["table_name"] for r in flux.ok("GET", "/runs")["runs"]] == ["tb_b"]


@pytest.mark.postgresql
def test_backends_terminated_between_requests_are_replaced_and_a_read_losing_its_own_is_503(
    flux: Lambda, scratch: Scratch, scratch_engine: Engine
) -> None:
    warm_up(flux, 202301)
    assert scratch.terminate_backends() >= 2  # the store's and the reads' (and the catalog's)
    # The store finds its connection lost and runs the unit of work again on a new one; the reads'
    # pool pings its connection at checkout and replaces it.
    register(flux, 202302)
    [gated] = flux.ok("GET", "/approvals")["approvals"]
    decided = flux.ok("POST", "/approve", {"approval_status_id": gated["id"]}, user="ana")
    assert decided["approval"]["status"] == "approved"
    assert flux.ok("GET", "/tables/tb_a")["table"]["name"] == "tb_a"

    # A read whose backend is terminated while it runs (after the checkout's ping) has nothing to
    # replace: 503, and the next request is served on a new connection.
    # (The reads are on the fixture's engine; the store's connections are psycopg's own.)
    doomed = [True]

    def terminate_own_backend(connection: Any, *_: Any) -> None:
        if doomed:
            doomed.clear()
            scratch.terminate(connection.connection.dbapi_connection.info.backend_pid)

    event.listen(scratch_engine, "before_cursor_execute", terminate_own_backend)
    try:
        request = api_event("GET", "/runs", authorizer=ANA)
        assert_unavailable(lambda_handler(request, None), "GET /runs, its backend terminated")
    finally:
        event.remove(scratch_engine, "before_cursor_execute", terminate_own_backend)
    assert not doomed
    assert {r["table_name"] for r in flux.ok("GET", "/runs")["runs"]} == {"tb_b", "tb_gated"}


@pytest.mark.postgresql
def test_backends_terminated_while_the_database_refuses_new_ones_are_503_until_it_accepts_them(
    flux: Lambda, scratch: Scratch
) -> None:
    warm_up(flux, 202301)
    scratch.allow_connections(False)
    assert scratch.terminate_backends() >= 2
    # Every reconnect is refused: the store's retries and the reads' checkout alike end in a 503.
    assert_every_route_unavailable()
    scratch.allow_connections(True)
    register(flux, 202302)
    assert len(flux.ok("GET", "/executions")["executions"]) == 2


@pytest.mark.postgresql
def test_the_sweeps_bookkeeping_losing_its_connection_to_a_refusing_database_is_unavailable(
    flux: Lambda, scratch: Scratch
) -> None:
    # Statements outside a unit of work (the outbox and schedule marks) are sent again once on a new
    # connection; refused that one, they are an outage too, not the driver's error (whether the lost
    # statement was applied is unknown: the sweep sets it again next time).
    def lose_the_connection(statement: str, connection: Any) -> None:
        if statement.startswith("UPDATE run_events"):
            scratch.allow_connections(False)
            scratch.terminate(connection.info.backend_pid)  # the store's own psycopg connection

    flux.deps.store.listeners.append(lose_the_connection)
    try:
        with flux.deps.store.session() as session, pytest.raises(Unavailable, match="may or may not"):
            session.mark_published([1], START)
    finally:
        flux.deps.store.listeners.remove(lose_the_connection)
        scratch.allow_connections(True)


# --- SQLite -------------------------------------------------------------------------------------------


def test_a_sqlite_file_that_cannot_be_opened_is_503_and_one_without_tables_is_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The embedded database's "server" is its file: one that cannot be opened (a volume not mounted, a
    # directory not created, no permission) is the outage a refused connection is on PostgreSQL.
    with deployed(monkeypatch, f"sqlite:///{tmp_path / 'missing' / 'flux.db'}"):
        assert_every_route_unavailable()
    assert not (tmp_path / "missing").exists()
    # A file that opens but is not a migrated database fails on a statement: a bug (here, a deployment
    # that skipped `flux-control db upgrade`), answered with a reference and logged, not retried.
    with deployed(monkeypatch, f"sqlite:///{tmp_path / 'empty.db'}"):
        event = api_event("GET", "/runs", authorizer=ANA)
        event["requestContext"]["requestId"] = "no-tables"
        response = lambda_handler(event, None)
    assert response["statusCode"] == 500, response
    assert json.loads(response["body"])["error"] == {
        "code": "internal",
        "message": "internal error (reference no-tables); it was logged",
        "details": {},
    }
    assert "Retry-After" not in response["multiValueHeaders"]
