"""The console's pages over big histories (DESIGN §9): every page through ``lambda_handler`` over
1,000 tables and up to 100,000 runs, its server-side time and the SQL statements it sends.

Each history is a fresh database: the 1,000-table DAG of :func:`tests.factories.generated` applied (every
tenth table requiring approval), then one run a day per table, bulk-inserted straight into the run
models (:func:`load_history`): the older days succeeded (a few failed, some approved, a few rejected), the
newest day what a working deployment shows (runs awaiting approval with their pending approvals, queued,
running with their tasks started, failed, succeeded). Every run carries its run events (so a run page
has a timeline), its tasks, the executions of its upstreams that triggered it, and a succeeded run its
execution. PostgreSQL is ANALYZEd after the load, as autovacuum would soon after.

Each page is requested through :func:`controller.lambda_function.lambda_handler` in-process, as API
Gateway would call it with an authorizer's identity (an approver of the approval tables), once to warm up
and then ``REPEAT`` times, each timed (wall time of the handler: routing, the reads, the template) and
counted: the SQL statements the reads' engine and the runtime's store sent (``before_cursor_execute``
and the store's ``listeners``, BEGIN and COMMIT left out). The runtime is wired as ``serve`` and the
tests wire it (:func:`controller.wiring.dependencies_for`) with recording fakes for the AWS ports
(:class:`bench.sweep.RecordingAws`): no page calls AWS.

The floors, measured in the same run on the same database: the same page over the smallest history
(the ratio column), and one ``SELECT 1`` round trip per statement the page sends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Engine, bindparam, event, insert, text, update

from bench.common import Table, database, transaction_control
from bench.sweep import RecordingAws, round_trip
from controller import wiring
from controller.core.effects import schedule_name
from controller.core.keys import key_text
from controller.core.plans import state_of
from controller.core.records import TASK_FAILED, TASK_STARTED, TASK_SUCCEEDED
from controller.core.runs import (
    AWAITING_APPROVAL,
    DISPATCHING,
    FAILED,
    QUEUED,
    REJECTED,
    RUNNING,
    SCHEDULED,
    SUCCEEDED,
)
from controller.core.specs import TableSpec
from controller.db.engine import make_engine
from controller.db.run_models import (
    ApprovalRow,
    ExecutionRow,
    ExecutionValueRow,
    RunEventRow,
    RunRow,
    RunTriggerRow,
    TaskDispatchRow,
)
from controller.reconciler import apply
from controller.services.dependencies import Dependencies
from tests.factories import generated

#: Runs in each history measured (each a fresh database); the smallest is the floor of the ratio. At
#: 1,000 runs every table has one, so every list a page shows is as full at the smallest size as at
#: the largest: the statements of a page are compared like with like.
SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 2_000)
TABLES = 1_000
REPEAT = 31
QUICK_REPEAT = 3

#: The clock of every request; the newest day's runs were opened this morning.
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
#: The newest partition: one run of it per table (older days before it, one a day).
NEWEST_DAY = date(2026, 11, 28)
#: Who looks at the pages: an approver of the tables that require approval.
VIEWER = "bench-approver"
#: A table in the middle of the DAG (its lineage has upstreams and downstreams), and the table of the
#: run whose page is measured (running on the newest day, its tasks started).
MIDDLE = 500
RUN_TABLE = 502
#: Runs inserted per transaction (and per batch of rows built in memory).
CHUNK = 10_000
#: The statements' text shown for the slowest one (from ``FROM``), cut at this length.
SHOWN = 110


def table_name(index: int) -> str:
    return f"t{index:05d}"


def requires_approval(index: int) -> bool:
    return index % 10 == 0


def definitions() -> list[dict[str, Any]]:
    """The 1,000 generated tables, every tenth one requiring approval by :data:`VIEWER`."""
    documents = generated(TABLES)
    for index, document in enumerate(documents):
        if requires_approval(index):
            document.update(requires_approval=True, approvers=[VIEWER])
    return documents


# --- the history: which state each run is in -----------------------------------------------------------


def state_of_run(table: int, age: int) -> str:
    """The state of the run of table ``table`` for the day ``age`` days before :data:`NEWEST_DAY`."""
    if age == 0:  # the newest day: what a working deployment shows
        if requires_approval(table):
            return AWAITING_APPROVAL if table % 20 == 0 else SUCCEEDED
        return {1: QUEUED, 2: RUNNING, 3: RUNNING, 4: FAILED}.get(table % 25, SUCCEEDED)
    if requires_approval(table) and (table // 10 + age) % 31 == 0:
        return REJECTED
    return FAILED if (table + 7 * age) % 33 == 0 else SUCCEEDED


#: The run events of each state, in order (DESIGN §8); a run that needed approval starts awaiting it.
PATHS: dict[str, tuple[str, ...]] = {
    AWAITING_APPROVAL: (),
    QUEUED: (SCHEDULED, QUEUED),
    RUNNING: (SCHEDULED, DISPATCHING, RUNNING),
    FAILED: (SCHEDULED, DISPATCHING, RUNNING, FAILED),
    SUCCEEDED: (SCHEDULED, DISPATCHING, RUNNING, SUCCEEDED),
    REJECTED: (REJECTED,),
}
FINISHED = (SUCCEEDED, FAILED, REJECTED)


@dataclass(frozen=True)
class Planned:
    """One run to insert: its table, its day and its state."""

    table: int
    age: int
    state: str

    @property
    def day(self) -> date:
        return NEWEST_DAY - timedelta(days=self.age)

    @property
    def created(self) -> datetime:
        """Opened the morning after its day, the tables a few seconds apart."""
        return datetime.combine(self.day + timedelta(days=1), datetime.min.time(), UTC) + timedelta(
            hours=2, seconds=20 * self.table
        )

    @property
    def partitions(self) -> dict[str, Any]:
        return {"dt": self.day.isoformat()}

    def states(self) -> list[tuple[str | None, str]]:
        """Its run events as (old state, new state)."""
        path = [AWAITING_APPROVAL] if requires_approval(self.table) else []
        path += PATHS[self.state]
        return list(zip([None, *path[:-1]], path, strict=True))


def planned(size: int) -> list[Planned]:
    """The runs of a history of ``size`` runs, oldest day first (so ids grow with time), each day one
    run per table in table order."""
    days = -(-size // TABLES)
    runs = [
        Planned(table, age, state_of_run(table, age))
        for age in range(days - 1, -1, -1)
        for table in range(TABLES)
    ]
    return runs[len(runs) - size :]


# --- the history: bulk-inserted --------------------------------------------------------------------------


def install(engine: Engine) -> dict[int, int]:
    """Apply the 1,000 definitions; table index → table id."""
    desired = {d["name"]: state_of(TableSpec.model_validate(d)) for d in definitions()}
    apply(engine, desired=desired, revision="bench", actor="bench", now=NOW - timedelta(days=400))
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, name FROM tables")).all()
    return {int(name[1:]): int(table_id) for table_id, name in rows}


def load_history(engine: Engine, ids: dict[int, int], size: int) -> dict[tuple[int, int], int]:
    """Insert a history of ``size`` runs (:func:`planned`) with their events, tasks, approvals,
    executions and triggers; (table index, age) → run id."""
    runs = planned(size)
    run_ids: dict[tuple[int, int], int] = {}
    produced: dict[tuple[int, int], int] = {}  # (table, age) → the execution its success registered
    for start in range(0, len(runs), CHUNK):
        with engine.begin() as connection:
            _load_chunk(connection, ids, runs[start : start + CHUNK], run_ids, produced)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:  # as autovacuum would soon after a bulk load
            connection.execute(
                text(
                    "ANALYZE tables, runs, task_dispatches, run_events, approvals, executions, "
                    "execution_values, run_triggers"
                )
            )
    return run_ids


def _load_chunk(
    connection: Any,
    ids: dict[int, int],
    runs: Sequence[Planned],
    run_ids: dict[tuple[int, int], int],
    produced: dict[tuple[int, int], int],
) -> None:
    """One chunk of runs (days in order, so the upstreams of a run were inserted before it)."""
    rows = []
    for run in runs:
        created = run.created
        final = run.state in FINISHED
        rows.append(
            {
                "table_id": ids[run.table],
                "partition_key": key_text(run.partitions),
                "partitions": run.partitions,
                "status": run.state,
                "attempt": 1,
                "manual": False,
                "rerun_requested": False,
                "reason": None,
                "first_trigger_at": created,
                "last_trigger_at": created,
                "fire_at": created + timedelta(minutes=5),
                "error": "task0: Job failed (bench)" if run.state == FAILED else None,
                "created_at": created,
                "updated_at": created + timedelta(minutes=30 if final else 6),
                "finished_at": created + timedelta(minutes=30) if final else None,
            }
        )
    inserted = connection.execute(
        insert(RunRow).returning(RunRow.id, sort_by_parameter_order=True), rows
    ).scalars()
    chunk_ids = list(inserted)
    for run, run_id in zip(runs, chunk_ids, strict=True):
        run_ids[(run.table, run.age)] = run_id
    fired = [(run, rid) for run, rid in zip(runs, chunk_ids, strict=True) if run.state not in _UNFIRED]
    if fired:  # the schedule that fired them (deleted by then: ``scheduled_fire_at`` is NULL)
        connection.execute(
            update(RunRow).where(RunRow.id == bindparam("run_id")).values(schedule_name=bindparam("name")),
            [{"run_id": rid, "name": schedule_name(rid, table_name(run.table))} for run, rid in fired],
        )
    _approvals(connection, runs, chunk_ids)
    _tasks(connection, runs, chunk_ids)
    _events(connection, runs, chunk_ids)
    _executions(connection, ids, runs, chunk_ids, produced)


#: States of runs never fired (no schedule fired them, no task started).
_UNFIRED = (AWAITING_APPROVAL, REJECTED)


def _approvals(connection: Any, runs: Sequence[Planned], run_ids: Sequence[int]) -> None:
    rows = []
    for run, run_id in zip(runs, run_ids, strict=True):
        if not requires_approval(run.table):
            continue
        pending = run.state == AWAITING_APPROVAL
        status = "pending" if pending else ("rejected" if run.state == REJECTED else "approved")
        rows.append(
            {
                "run_id": run_id,
                "status": status,
                "requested_at": run.created,
                "decided_at": None if pending else run.created + timedelta(minutes=3),
                "decided_by": None if pending else VIEWER,
                "comment": None if pending else "checked the upstreams",
            }
        )
    if rows:
        connection.execute(insert(ApprovalRow), rows)


def _tasks(connection: Any, runs: Sequence[Planned], run_ids: Sequence[int]) -> None:
    rows = []
    for run, run_id in zip(runs, run_ids, strict=True):
        if run.state not in (RUNNING, SUCCEEDED, FAILED):
            continue
        started = run.created + timedelta(minutes=5)
        for k in range(1 + run.table % 2):
            if run.state == RUNNING:
                status, finished = TASK_STARTED, None
            elif run.state == FAILED and k == 0:
                status, finished = TASK_FAILED, started + timedelta(minutes=25)
            else:
                status, finished = TASK_SUCCEEDED, started + timedelta(minutes=25)
            rows.append(
                {
                    "run_id": run_id,
                    "attempt": 1,
                    "alias": f"task{k}",
                    "type": "glue",
                    "target": f"job-{run.table}-{k}",
                    "status": status,
                    "request": {"--dt": run.day.isoformat()},
                    "external_id": f"jr_{run_id:012d}_{k}",
                    "error": "Job failed (bench)" if status == TASK_FAILED else None,
                    "started_at": started,
                    "finished_at": finished,
                    "token": None,
                    "check_at": started + timedelta(minutes=15) if status == TASK_STARTED else None,
                    "deadline_at": started + timedelta(days=1) if status == TASK_STARTED else None,
                }
            )
    if rows:
        connection.execute(insert(TaskDispatchRow), rows)


def _events(connection: Any, runs: Sequence[Planned], run_ids: Sequence[int]) -> None:
    rows = []
    for run, run_id in zip(runs, run_ids, strict=True):
        for step, (old, new) in enumerate(run.states()):
            at = run.created + timedelta(minutes=step)
            actor = VIEWER if old == AWAITING_APPROVAL else None
            detail = {
                "run_id": run_id,
                "table": table_name(run.table),
                "partitions": run.partitions,
                "old_state": old,
                "new_state": new,
                "approval_id": None,
                "reason": None,
                "at": at.isoformat(),
                "actor": actor,
            }
            rows.append(
                {
                    "run_id": run_id,
                    "created_at": at,
                    "batch": f"bench-{run_id}-{step}",
                    "detail": detail,
                    "published_at": at,
                }
            )
    connection.execute(insert(RunEventRow), rows)


def _executions(
    connection: Any,
    ids: dict[int, int],
    runs: Sequence[Planned],
    run_ids: Sequence[int],
    produced: dict[tuple[int, int], int],
) -> None:
    """The executions of the succeeded runs (with their partition values), and each run's triggers:
    the executions of its upstreams for its day."""
    done = [(run, rid) for run, rid in zip(runs, run_ids, strict=True) if run.state == SUCCEEDED]
    if done:
        execution_ids = connection.execute(
            insert(ExecutionRow).returning(ExecutionRow.id, sort_by_parameter_order=True),
            [
                {
                    "table_id": ids[run.table],
                    "partition_key": key_text(run.partitions),
                    "partitions": run.partitions,
                    "source": "glue",
                    "run_id": rid,
                    "idempotency_key": None,
                    "registered_at": run.created + timedelta(minutes=30),
                    "registered_by": None,
                }
                for run, rid in done
            ],
        ).scalars()
        values = []
        for (run, _), execution_id in zip(done, list(execution_ids), strict=True):
            produced[(run.table, run.age)] = execution_id
            values.append(
                {
                    "execution_id": execution_id,
                    "name": "dt",
                    "table_id": ids[run.table],
                    "value": run.day.isoformat(),
                }
            )
        connection.execute(insert(ExecutionValueRow), values)
    triggers = [
        {"run_id": rid, "execution_id": produced[(up, run.age)]}
        for run, rid in zip(runs, run_ids, strict=True)
        for up in (run.table - 1, run.table - 7)
        if (up, run.age) in produced
    ]
    if triggers:
        connection.execute(insert(RunTriggerRow), triggers)


# --- one page, timed and counted --------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """A console page: its name in the table, and its path with its query."""

    name: str
    path: str
    query: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"{self.path}?{urlencode(self.query)}" if self.query else self.path


def pages(run_id: int) -> list[Page]:
    """Every page of the console (the run page: ``run_id``'s)."""
    middle = table_name(MIDDLE)
    key = f"dt={NEWEST_DAY.isoformat()}"
    return [
        Page("front page", "/console/"),
        Page("approvals", "/console/approvals"),
        Page("runs", "/console/runs"),
        Page("runs of a table", "/console/runs", {"table": middle}),
        Page("run", f"/console/runs/{run_id}"),
        Page("tables", "/console/tables"),
        Page("table", f"/console/tables/{middle}"),
        Page("table, lineage of a key", f"/console/tables/{middle}", {"key": key}),
        Page("table, explain a key", f"/console/tables/{middle}", {"p_dt": NEWEST_DAY.isoformat()}),
        Page("executions", "/console/executions"),
    ]


class Browser:
    """Requests pages through ``lambda_handler`` as API Gateway would, with an authorizer's identity,
    keeping the cookies the console sets (its CSRF token), as a browser does."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.cookies: dict[str, str] = {}
        self.requests = 0

    def event(self, page: Page) -> dict[str, Any]:
        from controller.local.http import to_event

        self.requests += 1
        headers = {"accept": "text/html"}
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return to_event(
            "GET",
            page.target,
            headers,
            b"",
            "127.0.0.1",
            authorizer={"claims": {"cognito:username": self.user}},
            request_id=f"bench-{self.requests}",
        )

    def keep_cookies(self, response: dict[str, Any]) -> None:
        for value in (response.get("multiValueHeaders") or {}).get("Set-Cookie", []):
            name, _, rest = str(value).partition("=")
            self.cookies[name] = rest.split(";", 1)[0]


def described(statement: str) -> str:
    """A statement as shown in the table: its verb and what it reads (from ``FROM``), cut short."""
    words = " ".join(statement.split())
    verb = words.split(" ", 1)[0].upper()
    at = words.upper().find(" FROM ")
    shown = f"{verb} … {words[at + 1 :]}" if at > 0 else words
    return shown if len(shown) <= SHOWN else shown[: SHOWN - 1] + "…"


class PageStatements:
    """The statements one request sends, from the reads' engine (its cursor events: each one's time
    from execute to its result) and from the runtime's store (its listeners: from sending to the next
    statement or the end of the request); and the connections the reads checked out of the engine's
    pool (on PostgreSQL each checkout pings the server first: ``pool_pre_ping``, a round trip the
    cursor events do not see)."""

    def __init__(self, engine: Engine, store: Any) -> None:
        self.engine, self.store = engine, store
        self.count = self.checkouts = 0
        self.spans: dict[str, float] = {}
        self.times: dict[str, int] = {}
        self._started: dict[int, tuple[float, str]] = {}
        self._store_mark: tuple[float, str] | None = None

    def __enter__(self) -> PageStatements:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        event.listen(self.engine, "checkout", self._checkout)
        self.store.listeners.append(self._heard)
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_store_mark(time.perf_counter())
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)
        event.remove(self.engine, "checkout", self._checkout)
        self.store.listeners.remove(self._heard)

    @property
    def in_sql(self) -> float:
        """Seconds spent in the statements."""
        return sum(self.spans.values())

    def _checkout(self, *_args: Any) -> None:
        self.checkouts += 1

    def _before(self, _conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if transaction_control(statement) is not None:
            return  # SQLite's reads begin with a BEGIN statement (PostgreSQL's through the driver)
        self.count += 1
        shown = described(statement)
        self.times[shown] = self.times.get(shown, 0) + 1
        self._started[id(cursor)] = (time.perf_counter(), shown)

    def _after(self, _conn: Any, cursor: Any, *_args: Any) -> None:
        started = self._started.pop(id(cursor), None)
        if started is not None:
            at, shown = started
            self.spans[shown] = self.spans.get(shown, 0.0) + time.perf_counter() - at

    def _heard(self, statement: str, _connection: Any) -> None:
        now = time.perf_counter()
        self._close_store_mark(now)
        if transaction_control(statement) is None:
            self.count += 1
            shown = "store: " + described(statement)
            self.times[shown] = self.times.get(shown, 0) + 1
            self._store_mark = (now, shown)

    def _close_store_mark(self, now: float) -> None:
        if self._store_mark is not None:
            at, shown = self._store_mark
            self.spans[shown] = self.spans.get(shown, 0.0) + now - at
            self._store_mark = None


@dataclass
class Measured:
    """A page over one history: the wall time of each request and what each sent."""

    page: str
    runs: int
    seconds: list[float] = field(default_factory=list)
    statements: list[int] = field(default_factory=list)
    checkouts: list[int] = field(default_factory=list)
    in_sql: list[float] = field(default_factory=list)
    spans: list[dict[str, float]] = field(default_factory=list)
    times: dict[str, int] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_in_sql(self) -> float:
        return statistics.median(self.in_sql)

    def constant(self, values: Sequence[int] | None = None) -> int | str:
        """The statements of every request (or ``values``), or their range when they differ."""
        found = sorted(set(self.statements if values is None else values))
        return found[0] if len(found) == 1 else f"{found[0]}–{found[-1]}"

    def slowest(self) -> str:
        """The statement that took longest (median over the requests)."""
        shown = {s for spans in self.spans for s in spans}
        if not shown:
            return "—"
        medians = {s: statistics.median(spans.get(s, 0.0) for spans in self.spans) for s in shown}
        worst = max(medians, key=lambda s: medians[s])
        times = self.times.get(worst, 1)
        return f"{medians[worst] * 1000:.3f} ms" + (f" ({times}×)" if times > 1 else "") + f": `{worst}`"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The handler's access lines and metrics (printed to stdout) sent to /dev/null, still written."""
    from controller.telemetry import logger

    handler = logger.registered_handler
    stream = handler if isinstance(handler, logging.StreamHandler) else None
    with Path(os.devnull).open("w") as sink, contextlib.redirect_stdout(sink):
        previous = stream.setStream(sink) if stream is not None else None
        try:
            yield
        finally:
            if stream is not None and previous is not None:
                stream.setStream(previous)


def measure_page(
    deps: Dependencies, engine: Engine, browser: Browser, page: Page, runs: int, repeat: int
) -> Measured:
    """One warm-up request of ``page``, then ``repeat`` timed and counted ones (each must answer 200)."""
    from controller.lambda_function import lambda_handler

    def request() -> dict[str, Any]:
        response: dict[str, Any] = lambda_handler(browser.event(page), None)
        if response["statusCode"] != 200:
            raise RuntimeError(f"{page.target} answered {response['statusCode']}: {response['body'][:500]}")
        browser.keep_cookies(response)
        return response

    measured = Measured(page.name, runs)
    with quiet():
        request()
        for _ in range(repeat):
            with PageStatements(engine, deps.store) as sent:
                started = time.perf_counter()
                request()
                elapsed = time.perf_counter() - started
            measured.seconds.append(elapsed)
            measured.statements.append(sent.count)
            measured.checkouts.append(sent.checkouts)
            measured.in_sql.append(sent.in_sql)
            measured.spans.append(sent.spans)
            measured.times = sent.times
    return measured


@contextlib.contextmanager
def console_runtime(engine: Engine, url: str) -> Iterator[Dependencies]:
    """The runtime on ``engine`` installed for ``lambda_handler``, the clock stopped at :data:`NOW`,
    recording fakes for the AWS ports (no page calls them)."""
    aws = RecordingAws()
    current_url = (lambda: url) if engine.dialect.name == "postgresql" else None
    deps = wiring.dependencies_for(engine, aws, aws, aws, clock=lambda: NOW, current_url=current_url)
    wiring.use(deps)
    try:
        yield deps
    finally:
        wiring.use(None)
        deps.store.close()
    if aws.calls.total:
        raise RuntimeError(f"a page called AWS: {aws.calls.snapshot()}")


def measure_history(
    kind: str, workdir: str, size: int, repeat: int, say: Callable[[str], None]
) -> list[Measured]:
    """A fresh database with the definitions and a history of ``size`` runs; every page measured."""
    with database(kind, workdir) as url:
        engine = make_engine(url)
        try:
            started = time.perf_counter()
            ids = install(engine)
            run_ids = load_history(engine, ids, size)
            say(f"console: {kind}, {size:,} runs loaded in {time.perf_counter() - started:.0f} s")
            browser = Browser(VIEWER)
            with console_runtime(engine, url) as deps:
                return [
                    measure_page(deps, engine, browser, page, size, repeat)
                    for page in pages(run_ids[(RUN_TABLE, 0)])
                ]
        finally:
            engine.dispose()


HEADERS = [
    "database",
    "page",
    "runs in history",
    "tables",
    "median ms",
    "× smallest history",
    "SQL statements",
    "connections checked out",
    "of which executing SQL ms",
    "floor: statements × `SELECT 1` ms",
    "slowest statement",
]
BUDGET_MS = 100.0


def _say(message: str) -> None:
    import sys

    print(f"[bench] {message}", file=sys.stderr, flush=True)


def measure_kind(
    kind: str, workdir: str, sizes: Sequence[int], repeat: int, say: Callable[[str], None] = _say
) -> tuple[dict[int, list[Measured]], float]:
    """Every page over each history of ``sizes``, and the median ``SELECT 1`` round trip."""
    by_size = {size: measure_history(kind, workdir, size, repeat, say) for size in sizes}
    with database(kind, workdir) as url:
        engine = make_engine(url)
        try:
            trip = round_trip(engine)
        finally:
            engine.dispose()
    return by_size, trip


def run(quick: bool, kinds: list[str], workdir: str) -> list[Table]:
    """The console table: per database, every page over each history size."""
    sizes = QUICK_SIZES if quick else SIZES
    repeat = QUICK_REPEAT if quick else REPEAT
    table = Table(
        f"Console: each page through lambda_handler over {TABLES:,} tables and "
        f"{' / '.join(f'{s:,}' for s in sizes)} runs (median of {repeat})",
        HEADERS,
    )
    verdicts: list[str] = []
    for kind in kinds:
        by_size, trip = measure_kind(kind, workdir, sizes, repeat)
        floor_row = [kind, "floor: one `SELECT 1`", "—", "—", trip * 1000, "—", 1, "—", "—", "—"]
        table.rows.append([*floor_row, f"{trip * 1000:.3f} ms: `SELECT 1`"])
        smallest = by_size[sizes[0]]
        for index, floor in enumerate(smallest):
            for size in sizes:
                row = by_size[size][index]
                counts = sorted(set(row.statements))
                table.rows.append(
                    [
                        kind,
                        row.page,
                        size,
                        TABLES,
                        row.median * 1000,
                        row.median / floor.median,
                        row.constant(),
                        row.constant(row.checkouts),
                        row.median_in_sql * 1000,
                        trip * counts[-1] * 1000,
                        row.slowest(),
                    ]
                )
        verdicts.append(_verdict(kind, sizes, by_size))
    table.notes += [
        f"Each history is a fresh database: the {TABLES:,}-table DAG of `tests.factories.generated` "
        "(each table depends on up to two earlier ones, one or two Glue tasks, partitioned by `dt`; every "
        "tenth requires approval) applied, then one run a day per table, oldest day first, bulk-inserted "
        "into `runs`, `run_events`, `task_dispatches`, `approvals`, `executions`, `execution_values` and "
        "`run_triggers` (PostgreSQL: then ANALYZEd). The older days: succeeded (each with its execution), "
        "3 % failed, a few rejected, the approval tables' runs approved. The newest day, as a working "
        "deployment has it: 50 runs awaiting approval (their approvals pending), 40 queued, 80 running "
        "(their tasks started), 40 failed, the rest succeeded. Every run has its run events (its "
        "timeline) and its triggers (its upstreams' executions for its day).",
        "Each page is requested through `controller.lambda_function.lambda_handler` in-process, as API "
        "Gateway calls it, with an authorizer's identity (an approver of the approval tables): once to "
        f"warm up, then {repeat} times, each timed (the handler's wall time: routing, the reads, the "
        "template; its log line and metrics written to /dev/null) and counted. The runtime is wired by "
        "`controller.wiring.dependencies_for` with recording fakes for the AWS ports (no page calls AWS: "
        "the bench fails if one does).",
        f"Pages: the front page, approvals, the newest runs and those of `{table_name(MIDDLE)}` (a table "
        f"in the middle of the DAG), the run page of a running run of `{table_name(RUN_TABLE)}` on the "
        f"newest day (two tasks started, its timeline and triggers), the tables, `{table_name(MIDDLE)}`'s "
        f"page (its definition, recent runs and lineage), with `?key=dt={NEWEST_DAY}` (its lineage "
        f"coloured by that key) and `?p_dt={NEWEST_DAY}` (the explain answer for that key), and the "
        "executions.",
        "SQL statements: what the reads' engine (`before_cursor_execute`) and the runtime's store (its "
        "listeners) sent in one request, BEGIN and COMMIT not counted (SQLite's reads begin with a "
        "`BEGIN` statement, PostgreSQL's through the driver). Connections checked out: of the engine's "
        "pool, one per read (each read opens its own session); on PostgreSQL each checkout first pings "
        "the server (`pool_pre_ping`), a round trip the cursor events do not see.",
        "Of which executing SQL: the statements' own time (the engine's from execute to its result: on "
        "PostgreSQL the rows fetched, on SQLite the first step; the rest of the page is Python). The "
        "slowest statement: the one whose execution took longest (median over the requests; statements "
        "of the same text summed over the request, how many times shown), shown from `FROM` on.",
        "Floors, in the same run on the same database: the same page over the smallest history (× "
        "smallest history), and as many `SELECT 1` round trips (median of 200 on a SQLAlchemy connection) "
        "as the page sends statements.",
        *verdicts,
    ]
    return [table]


def _verdict(kind: str, sizes: Sequence[int], by_size: dict[int, list[Measured]]) -> str:
    """Whether each page sends as many statements (and checks out as many connections) at every
    size, and the slowest page over the largest history against the budget, with every page over it."""
    varying = []
    for index, first in enumerate(by_size[sizes[0]]):
        for what, pick in (("statements", _statements), ("connections", _checkouts)):
            counts = [pick(by_size[size][index]) for size in sizes]
            if len(set(counts)) > 1 or any(isinstance(c, str) for c in counts):
                varying.append(f"{first.page}, {what} {' / '.join(str(c) for c in counts)}")
    largest = by_size[sizes[-1]]
    worst = max(largest, key=lambda m: m.median)
    over = [m for m in largest if m.median * 1000 > BUDGET_MS]
    return (
        f"{kind}: SQL statements and connections per page "
        + (
            f"the same at every history size ({' / '.join(f'{s:,}' for s in sizes)} runs)"
            if not varying
            else f"NOT the same at every size: {'; '.join(varying)}"
        )
        + f"; the slowest page over {sizes[-1]:,} runs, {worst.page}, {worst.median * 1000:.1f} ms: "
        + ("within" if not over else "OVER")
        + f" the {BUDGET_MS:.0f} ms budget"
        + (
            f" ({len(over)} of {len(largest)} pages over it: "
            + ", ".join(f"{m.page} {m.median * 1000:.0f} ms" for m in over)
            + ")."
            if over
            else "."
        )
    )


def _statements(measured: Measured) -> int | str:
    return measured.constant()


def _checkouts(measured: Measured) -> int | str:
    return measured.constant(measured.checkouts)


__all__ = ["run"]


if __name__ == "__main__":  # python -m bench.console [--quick] [kinds…]
    import sys
    import tempfile

    quick_mode = "--quick" in sys.argv
    chosen = [a for a in sys.argv[1:] if not a.startswith("--")] or ["sqlite", "postgresql"]
    with tempfile.TemporaryDirectory() as scratch:
        for result_table in run(quick_mode, chosen, scratch):
            print(result_table.markdown())
