"""One apply at a time, on SQLite and PostgreSQL: a second apply waits or fails clearly, never mixes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from controller.core.plans import digest
from controller.db.definition_models import ReconcileRevision
from controller.db.definitions_store import read_state
from controller.db.locks import ADVISORY_KEY
from controller.reconciler import ReconcileError, apply
from tests.factories import generated, states, table_doc, write_tables


@contextmanager
def hold_apply_lock(database_url: str) -> Iterator[None]:
    """Hold the lock an apply takes, from another connection, until the block ends."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database
        holder = sqlite3.connect(url.database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    engine = create_engine(database_url)
    with engine.connect() as connection:
        connection.execute(text(f"SELECT pg_advisory_lock({ADVISORY_KEY})"))
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text(f"SELECT pg_advisory_unlock({ADVISORY_KEY})"))
            connection.commit()
    engine.dispose()


def test_a_second_apply_fails_clearly_when_the_lock_is_held_too_long(
    engine: Engine, database_url: str
) -> None:
    now = datetime.now(UTC)
    apply(engine, desired=states([table_doc("a")]), revision="r1", actor="x", now=now)
    with hold_apply_lock(database_url):
        started = time.monotonic()
        with pytest.raises(
            ReconcileError, match=r"another apply held the lock for more than 0.5s; nothing was written"
        ):
            apply(
                engine, desired=states([table_doc("b")]), revision="r2", actor="x", now=now, lock_timeout=0.5
            )
        assert time.monotonic() - started < 20
    with Session(engine) as session:
        assert set(read_state(session).tables) == {"a"}
    apply(engine, desired=states([table_doc("b")]), revision="r2", actor="x", now=now)  # free again


def _start_apply(directory: Path, database_url: str, revision: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "controller", "apply", str(directory), "--revision", revision]
    command += ["--actor", "ci", "--lock-timeout", "120", "--database-url", database_url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_applies_at_once_serialise_and_leave_exactly_one_desired_state(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """Two processes start while the lock is held, on an empty database; both must apply in turn."""
    first = generated(150)
    second = generated(120, salt=" from the second")
    write_tables(tmp_path / "first", first)
    write_tables(tmp_path / "second", second)
    with hold_apply_lock(database_url) if not database_url.startswith("sqlite") else _nothing():
        processes = [
            _start_apply(tmp_path / "first", database_url, "rev-first"),
            _start_apply(tmp_path / "second", database_url, "rev-second"),
        ]
        time.sleep(1.0)  # both are now waiting (PostgreSQL) or racing (SQLite)
    outputs = [p.communicate(timeout=180) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, (out, err)
        assert "Traceback" not in err
    with Session(engine) as session:
        final = digest(read_state(session).tables.values())
        revisions = (
            session.execute(select(ReconcileRevision.revision).order_by(ReconcileRevision.id)).scalars().all()
        )
        assert session.execute(select(func.count()).select_from(ReconcileRevision)).scalar() == 2
    assert final in {digest(states(first).values()), digest(states(second).values())}
    # The one that applied last is the one whose state is left.
    expected_last = "rev-first" if final == digest(states(first).values()) else "rev-second"
    assert revisions[-1] == expected_last


@contextmanager
def _nothing() -> Iterator[None]:
    yield
