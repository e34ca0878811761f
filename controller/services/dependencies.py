"""What the services work with: the database (a store for writes, reads for the GET routes), the AWS
ports, the clock and the settings, built once per process by :mod:`controller.wiring`."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from controller.core.catalog import Catalog, CatalogCache
from controller.services.ports import EventPublisher, Reads, Scheduler, Store, TaskStarter, Transaction


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


def new_task_token() -> str:
    """A task's token (``flux.token``): 32 random bytes, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


@dataclass
class Dependencies:
    """The adapters behind the services' ports, the clock and the settings."""

    store: Store
    reads: Reads
    scheduler: Scheduler
    tasks: TaskStarter
    events: EventPublisher
    clock: Callable[[], datetime] = utcnow
    #: A new token for each task of each attempt a dispatch records (random; a test may pass its own).
    new_token: Callable[[], str] = new_task_token
    #: Trust the ``user`` of a request body (local use only; never behind API Gateway).
    trust_body_user: bool = False
    #: The AWS account the function runs in: IAM users match ``approvers`` (and the other lists) only
    #: when of this account (DESIGN §7); None (unknown) matches no IAM user.
    own_account: str | None = None
    catalogs: CatalogCache = field(default_factory=CatalogCache)
    #: The sweep asks AWS about a task running longer than this (its completion event may be lost),
    #: at most ``poll_batch`` tasks per sweep, oldest check first (DESIGN §8).
    poll_after_seconds: int = 900
    poll_batch: int = 50

    def catalog(self, tx: Transaction) -> Catalog:
        """The current definitions, checked against the newest reconcile revision in ``tx``."""
        return self.catalogs.at(tx.newest_revision(), tx.load_catalog)
