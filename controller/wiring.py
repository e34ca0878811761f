"""Builds the services' dependencies from the environment once per process (a Lambda container, a
serve process), choosing the store for the database once, here.

Importing this module is cheap on purpose: the Lambda handler imports it, and everything the
dependencies are built from (SQLAlchemy and the models, the database driver, the AWS adapters) is
imported by :func:`dependencies` on first use, so a cold start pays for it on the first request that
needs it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from controller.core.access import own_account_from

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from controller.services.dependencies import Dependencies
    from controller.services.ports import EventPublisher, Scheduler, Store, TaskStarter

_lock = threading.Lock()
_dependencies: Dependencies | None = None


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def positive_int(name: str, default: int) -> int:
    """The environment variable ``name`` as a positive integer (``default`` when unset); a clear
    error naming it otherwise."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, not {text!r}")
    return value


def dependencies() -> Dependencies:
    """The process's dependencies, built on first use from FLUX_* and AWS_* environment variables."""
    global _dependencies
    with _lock:
        if _dependencies is None:
            _dependencies = _build()
        return _dependencies


def _build() -> Dependencies:
    # Imported here, not at the top: they load SQLAlchemy, the models and botocore, which the
    # handler's import (a Lambda cold start) should not pay for before a request needs them.
    from controller.aws.events import EventBridgePublisher
    from controller.aws.scheduler import EventBridgeScheduler
    from controller.aws.secrets import database_url_from_secret, runtime_database_url, secret_arn
    from controller.aws.settings import AwsSettings
    from controller.aws.tasks import AwsTaskStarter
    from controller.db.engine import make_engine

    settings = AwsSettings.from_env()
    url = runtime_database_url()  # FLUX_DATABASE_URL, else the FLUX_DATABASE_SECRET_ARN secret
    engine = (
        make_engine(url, pool_size=1, max_overflow=2) if not url.startswith("sqlite") else make_engine(url)
    )
    arn = secret_arn()
    if arn is not None:
        follow_secret(engine, arn)
    current_url = (lambda: database_url_from_secret(arn)) if arn is not None else (lambda: url)
    return dependencies_for(
        engine,
        EventBridgeScheduler(settings),
        AwsTaskStarter(),
        EventBridgePublisher(settings),
        trust_body_user=truthy(os.environ.get("FLUX_TRUST_BODY_USER")),
        current_url=current_url,
        function_arn=settings.function_arn,
    )


def dependencies_for(
    engine: Engine,
    scheduler: Scheduler,
    tasks: TaskStarter,
    events: EventPublisher,
    *,
    clock: Callable[[], datetime] | None = None,
    trust_body_user: bool = False,
    current_url: Callable[[], str] | None = None,
    function_arn: str | None = None,
) -> Dependencies:
    """The services' dependencies on ``engine``'s database with these AWS ports (``serve``, tests,
    benchmarks). ``current_url`` gives the URL new PostgreSQL store connections open (credentials that
    rotate); by default the engine's. ``function_arn`` (by default ``FLUX_FUNCTION_ARN``) gives the
    function's own account."""
    # SQLAlchemy and the services load with the first request that needs them (the cold start).
    from controller.db.reads import SqlReads
    from controller.services.dependencies import Dependencies

    built = Dependencies(
        store=store_for(engine, current_url),
        reads=SqlReads(engine),
        scheduler=scheduler,
        tasks=tasks,
        events=events,
        trust_body_user=trust_body_user,
        own_account=own_account_from(function_arn or os.environ.get("FLUX_FUNCTION_ARN")),
        poll_after_seconds=positive_int("FLUX_POLL_AFTER_SECONDS", 900),
        poll_batch=positive_int("FLUX_POLL_BATCH", 50),
    )
    if clock is not None:
        built.clock = clock
    return built


def store_for(engine: Engine, current_url: Callable[[], str] | None = None) -> Store:
    """The store of ``engine``'s database: PostgreSQL's on psycopg directly (its own connections;
    definitions read through ``engine``), or SQLite's on ``engine``."""
    if engine.dialect.name == "postgresql":
        # Only the store of this database is loaded (psycopg, or SQLAlchemy's SQLite dialect).
        from controller.db.catalog_store import catalog_loader
        from controller.db.postgresql_store import PostgresqlStore, conninfo_from_url

        url = current_url or (lambda: engine.url.render_as_string(hide_password=False))
        return PostgresqlStore(lambda: conninfo_from_url(url()), catalog_loader(engine))
    from controller.db.sqlite_store import SqliteStore  # see above: one store loaded

    return SqliteStore(engine)


def follow_secret(engine: Engine, arn: str) -> None:
    """Connect each new database connection with the credentials the secret holds now (read through the
    secrets cache, so Secrets Manager is asked at most once per max age): after a rotation, connections
    opened once the cache expired use the new password, without a redeploy. Pooled connections, already
    authenticated, are unaffected. (PostgreSQL only: an embedded SQLite file has no credentials.)"""
    if engine.dialect.name != "postgresql":
        return
    # Deferred like the rest of the build (see _build).
    from sqlalchemy import event
    from sqlalchemy.engine import make_url

    from controller.aws.secrets import database_url_from_secret

    @event.listens_for(engine, "do_connect")
    def _current_credentials(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        current = make_url(database_url_from_secret(arn))
        cparams.update(current.translate_connect_args(username="user", database="dbname"))


def use(replacement: Dependencies | None) -> None:
    """Install dependencies (tests, ``serve``); None resets to building from the environment."""
    global _dependencies
    with _lock:
        _dependencies = replacement
