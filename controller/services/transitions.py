"""The one way the services change a run's state: decided by the core's state machine
(:func:`controller.core.runs.transition`), written by the store with compare-and-set, its event
recorded for the outbox."""

from __future__ import annotations

from datetime import datetime

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit
from controller.core.runs import Run, transition
from controller.services.ports import Transaction


def move(
    tx: Transaction,
    after: AfterCommit,
    run: Run,
    to: str,
    now: datetime,
    table: str,
    *,
    reason: str | None = None,
    approval_id: int | None = None,
    fire_at: datetime | None = None,
    actor: str | None = None,
) -> Run | None:
    """Move ``run`` to state ``to`` (``actor``: who asked; None: Flux Control itself); the run as
    changed, or None if it moved meanwhile (nothing done)."""
    change = transition(
        run, to, now, table, reason=reason, approval_id=approval_id, fire_at=fire_at, actor=actor
    )
    if not tx.apply(change):
        return None
    after.events.append(change.event)
    return change.applied_to(run)


def table_of(tx: Transaction, catalog: Catalog, run: Run) -> str:
    """The name of ``run``'s table, for its events and answers: live, or deleted by a reconcile."""
    return catalog.names.get(run.table_id) or tx.table_name(run.table_id) or str(run.table_id)
