"""Shared fixtures: a scratch definitions directory and helpers to validate it."""

from __future__ import annotations

import io
import logging
import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from controller.telemetry import logger

REPO_ROOT = Path(__file__).resolve().parent.parent

WriteDefs = Callable[..., Path]


@pytest.fixture
def defs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``defs/`` directory; the working directory is its parent so paths print as defs/…"""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "defs"
    root.mkdir()
    return root


@pytest.fixture
def write_defs(defs_dir: Path) -> WriteDefs:
    """Write ``{relative path: YAML text}`` into ``defs/`` (text is dedented) and return ``defs``."""

    def write(files: dict[str, str | bytes] | None = None, **named: str) -> Path:
        for name, content in {**(files or {}), **named}.items():
            target = defs_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
        return Path("defs")

    return write


# --- databases ---------------------------------------------------------------------------------------
# Every database test runs on SQLite and on PostgreSQL. PostgreSQL tests skip only on a developer
# machine without PostgreSQL; when FLUX_TEST_POSTGRES_URL is set (CI sets it) or CI=true, an
# unreachable PostgreSQL fails them instead.

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_URL = os.environ.get("FLUX_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
POSTGRES_REQUIRED = bool(os.environ.get("FLUX_TEST_POSTGRES_URL")) or os.environ.get("CI") == "true"


def _postgres_admin() -> Engine:
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        message = f"PostgreSQL at {POSTGRES_URL} is not reachable: {exc.orig}"
        if POSTGRES_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return engine


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    engine = _postgres_admin()
    yield engine
    engine.dispose()


@contextmanager
def postgres_schema(admin: Engine, prefix: str = "flux_test") -> Iterator[str]:
    """A URL to a fresh PostgreSQL schema (the search path of every connection), dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'flux.db'}"
        return
    with postgres_schema(request.getfixturevalue("postgres_admin")) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    from controller.db.engine import make_engine

    created = make_engine(database_url)
    yield created
    created.dispose()


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """What the function logs (its Powertools handlers, which every module logger shares)."""
    stream = io.StringIO()
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    assert handlers
    previous = [h.setStream(stream) for h in handlers]
    try:
        yield stream
    finally:
        for handler, old in zip(handlers, previous, strict=True):
            handler.setStream(old)
