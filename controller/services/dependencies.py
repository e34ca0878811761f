"""What the services work with: the database (a store for writes, reads for the GET routes), the AWS
ports, the clock and the settings, built once per process by :mod:`controller.wiring`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from controller.core.catalog import Catalog, CatalogCache
from controller.services.ports import EventPublisher, Reads, Scheduler, Store, TaskStarter, Transaction


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


@dataclass
class Dependencies:
    """The adapters behind the services' ports, the clock and the settings."""

    store: Store
    reads: Reads
    scheduler: Scheduler
    tasks: TaskStarter
    events: EventPublisher
    clock: Callable[[], datetime] = utcnow
    #: Trust the ``user`` of a request body (local use only; never behind API Gateway).
    trust_body_user: bool = False
    catalogs: CatalogCache = field(default_factory=CatalogCache)

    def catalog(self, tx: Transaction) -> Catalog:
        """The current definitions, checked against the newest reconcile revision in ``tx``."""
        return self.catalogs.at(tx.newest_revision(), tx.load_catalog)
