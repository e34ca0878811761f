"""The reconciled definitions as the services use them (:class:`~controller.core.catalog.Catalog`),
read with SQLAlchemy on either database."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from controller.core.catalog import Catalog
from controller.core.gates import Graph
from controller.core.specs import TableSpec
from controller.db.definition_models import ReconcileRevision
from controller.db.definitions_store import read_state
from controller.db.engine import read_only
from controller.db.retries import connected


def newest_revision(session: Session) -> int | None:
    """The id of the newest reconcile revision: the version stamp of the definitions (None: none yet)."""
    return session.execute(select(func.max(ReconcileRevision.id))).scalar()


def load_catalog(session: Session, revision: int | None) -> Catalog:
    """The live definitions, read now and stamped ``revision``."""
    state = read_state(session)
    specs = [TableSpec.model_validate({"version": 1, **table}) for table in state.tables.values()]
    ids = {name: state.ids[name] for name in state.tables}
    return Catalog(Graph(specs), ids, {v: k for k, v in ids.items()}, revision)


def catalog_loader(engine: Engine) -> Callable[[int | None], Catalog]:
    """:func:`load_catalog` on a connection of its own (for a store whose connections are not
    SQLAlchemy's; the definitions change only by a reconcile, which records a newer revision). A
    database refusing the connection, or losing it, raises :class:`~controller.core.errors.Unavailable`."""

    def load(revision: int | None) -> Catalog:
        # A refused or lost connection is Unavailable here too, not the driver's error: it is raised
        # inside the store's unit of work, which passes a ServiceError on as it is.
        with connected(read_only(engine)) as connection, Session(connection) as session:
            return load_catalog(session, revision)

    return load
