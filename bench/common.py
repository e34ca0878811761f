"""What every benchmark shares: result tables, repeated timings, peak memory, SQL statement counts."""

from __future__ import annotations

import gc
import os
import statistics
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

from sqlalchemy import Engine, create_engine, event, text

POSTGRES_URL = os.environ.get("FLUX_TEST_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass
class Table:
    """One result table of BENCHMARKS.md."""

    title: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |"]
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + "|")
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class Timing:
    median: float
    runs: list[float]


def timed(work: Callable[[], Any], repeat: int, setup: Callable[[], Any] | None = None) -> Timing:
    """Median wall time of ``work`` over ``repeat`` runs (``setup`` before each, not timed)."""
    runs = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        gc.collect()
        started = time.perf_counter()
        work()
        runs.append(time.perf_counter() - started)
    return Timing(statistics.median(runs), runs)


def peak_memory(work: Callable[[], Any]) -> int:
    """Peak Python heap allocated while ``work`` runs (tracemalloc), in bytes."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class Listened(Protocol):
    """What sends statements and tells its listeners first: the runtime's stores (PostgreSQL's and
    SQLite's), called with (statement text, connection) before every statement, BEGIN and COMMIT
    included."""

    listeners: list[Callable[[str, Any], None]]


def transaction_control(statement: str) -> str | None:
    """``"BEGIN"`` or ``"COMMIT"`` when ``statement`` is one (SQLite's ``BEGIN IMMEDIATE`` is a BEGIN),
    else None."""
    words = statement.split(maxsplit=1)
    verb = words[0].upper() if words else ""
    return verb if verb in ("BEGIN", "COMMIT") else None


class StatementCounter:
    """Counts the SQL statements sent while attached.

    On a store (:class:`Listened`), through its ``listeners``: ``count`` is every statement but BEGIN
    and COMMIT, ``begins`` the transactions begun, ``commits`` the COMMITs. On an engine (what the
    reconciler uses), one per cursor execute (``before_cursor_execute``): SQLAlchemy begins and commits
    through the DBAPI, not as statements, so ``begins`` and ``commits`` stay 0.
    """

    def __init__(self, target: Engine | Listened) -> None:
        self.target = target
        self.count = self.begins = self.commits = 0

    def __enter__(self) -> Self:
        if isinstance(self.target, Engine):
            event.listen(self.target, "before_cursor_execute", self._executed)
        else:
            self.target.listeners.append(self._heard)
        return self

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.target, Engine):
            event.remove(self.target, "before_cursor_execute", self._executed)
        else:
            self.target.listeners.remove(self._heard)

    def _executed(self, *_args: Any) -> None:
        self.count += 1

    def _heard(self, statement: str, connection: Any) -> None:
        control = transaction_control(statement)
        if control == "BEGIN":
            self.begins += 1
        elif control == "COMMIT":
            self.commits += 1
            self.committing(connection)
        else:
            self.count += 1
            self.sending(statement, connection)

    def sending(self, statement: str, connection: Any) -> None:
        """Called before each statement but BEGIN and COMMIT (for subclasses)."""

    def committing(self, connection: Any) -> None:
        """Called before each COMMIT (for subclasses)."""


@contextmanager
def database(kind: str, directory: str) -> Iterator[str]:
    """A fresh empty database URL: a SQLite file in ``directory`` or a PostgreSQL schema (dropped after)."""
    if kind == "sqlite":
        path = str(Path(directory) / f"bench-{uuid.uuid4().hex[:8]}.db")
        yield f"sqlite:///{path}"
        return
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        separator = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
