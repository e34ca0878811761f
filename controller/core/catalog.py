"""The reconciled definitions as the services use them: live tables with their database ids, at a
reconcile revision, and a per-process cache of them. Pure: loading is the caller's (a store's)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from controller.core.gates import Graph
from controller.core.specs import TableSpec


@dataclass(frozen=True)
class Catalog:
    """Live tables (deleted ones have left every gate), with their database ids, as of ``revision``
    (the newest reconcile revision's id; None before the first apply)."""

    graph: Graph
    ids: dict[str, int]
    names: dict[int, str]
    revision: int | None

    def table(self, name: str) -> TableSpec | None:
        return self.graph.tables.get(name)


class CatalogCache:
    """The definitions, loaded again only when a newer reconcile revision exists.

    Every apply that changes definitions records a revision, so the newest revision id is a complete
    version stamp for the definition tables.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None

    def cached(self) -> Catalog | None:
        """The definitions last loaded, unchecked (None before the first load)."""
        with self._lock:
            return self._catalog

    def at(self, revision: int | None, load: Callable[[int | None], Catalog]) -> Catalog:
        """The definitions at ``revision``: the cached ones if current, else ``load(revision)``."""
        with self._lock:
            if self._catalog is not None and self._catalog.revision == revision:
                return self._catalog
        loaded = load(revision)
        with self._lock:
            self._catalog = loaded
        return loaded
