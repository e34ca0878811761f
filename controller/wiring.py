"""Builds the runtime from the environment once per process (a Lambda container, a serve process).

Importing this module is cheap on purpose: the Lambda handler imports it, and everything the runtime is
built from (SQLAlchemy and the models, the database driver, the AWS adapters) is imported by
:func:`runtime` on first use, so a cold start pays for it on the first request that needs it.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from controller.runtime.context import Runtime

_lock = threading.Lock()
_runtime: Runtime | None = None


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def runtime() -> Runtime:
    """The process's runtime, built on first use from FLUX_* and AWS_* environment variables."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = _build()
        return _runtime


def _build() -> Runtime:
    # Imported here, not at the top: they load SQLAlchemy's ORM, the models and botocore, which the
    # handler's import (a Lambda cold start) should not pay for before a request needs them.
    from controller.aws.events import EventBridgePublisher
    from controller.aws.scheduler import EventBridgeScheduler
    from controller.aws.secrets import runtime_database_url, secret_arn
    from controller.aws.settings import AwsSettings
    from controller.aws.tasks import AwsTaskStarter
    from controller.db.engine import make_engine
    from controller.runtime.context import Runtime

    settings = AwsSettings.from_env()
    url = runtime_database_url()  # FLUX_DATABASE_URL, else the FLUX_DATABASE_SECRET_ARN secret
    engine = (
        make_engine(url, pool_size=2, max_overflow=4) if not url.startswith("sqlite") else make_engine(url)
    )
    arn = secret_arn()
    if arn is not None:
        follow_secret(engine, arn)
    return Runtime(
        engine=engine,
        scheduler=EventBridgeScheduler(settings),
        tasks=AwsTaskStarter(),
        events=EventBridgePublisher(settings),
        trust_body_user=truthy(os.environ.get("FLUX_TRUST_BODY_USER")),
    )


def follow_secret(engine: Engine, arn: str) -> None:
    """Connect each new database connection with the credentials the secret holds now (read through the
    secrets cache, so Secrets Manager is asked at most once per max age): after a rotation, connections
    opened once the cache expired use the new password, without a redeploy. Pooled connections, already
    authenticated, are unaffected. (PostgreSQL only: an embedded SQLite file has no credentials.)"""
    if engine.dialect.name != "postgresql":
        return
    from sqlalchemy import event
    from sqlalchemy.engine import make_url

    from controller.aws.secrets import database_url_from_secret

    @event.listens_for(engine, "do_connect")
    def _current_credentials(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        current = make_url(database_url_from_secret(arn))
        cparams.update(current.translate_connect_args(username="user", database="dbname"))


def use(replacement: Runtime | None) -> None:
    """Install a runtime (tests, ``serve``); None resets to building from the environment."""
    global _runtime
    with _lock:
        _runtime = replacement
