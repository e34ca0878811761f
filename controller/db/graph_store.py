"""The reconciled definitions as the runtime needs them, cached per process until the next apply."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controller.db.definitions_store import read_state
from controller.db.models import ReconcileRevision
from controller.gates import Graph
from controller.specs import TableSpec


@dataclass(frozen=True)
class RuntimeGraph:
    """Live tables (deleted ones have left every gate), with their database ids."""

    graph: Graph
    ids: dict[str, int]
    names: dict[int, str]
    revision: int | None

    def table(self, name: str) -> TableSpec | None:
        return self.graph.tables.get(name)


class GraphCache:
    """Reloads the definitions only when a newer reconcile revision exists (one cheap query otherwise).

    Every apply that changes definitions records a revision, so the newest revision id is a complete
    version stamp for the definition tables.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._graph: RuntimeGraph | None = None

    def cached(self) -> RuntimeGraph | None:
        """The definitions last loaded, unchecked (None before the first load)."""
        with self._lock:
            return self._graph

    def get(self, session: Session) -> RuntimeGraph:
        revision = newest_revision(session)
        with self._lock:
            if self._graph is not None and self._graph.revision == revision:
                return self._graph
        loaded = load_graph(session, revision)
        with self._lock:
            self._graph = loaded
        return loaded


def newest_revision(session: Session) -> int | None:
    """The id of the newest reconcile revision: the version stamp of the definitions (None: none yet)."""
    return session.execute(select(func.max(ReconcileRevision.id))).scalar()


def load_graph(session: Session, revision: int | None) -> RuntimeGraph:
    state = read_state(session)
    specs = [TableSpec.model_validate({"version": 1, **table}) for table in state.tables.values()]
    ids = {name: state.ids[name] for name in state.tables}
    return RuntimeGraph(Graph(specs), ids, {v: k for k, v in ids.items()}, revision)
