"""``register_execution``: record that tables produced partitions, and open the gates that opens.

All items of a request are registered in one transaction or none is (see
:mod:`controller.services.registering` for what a registration does inside it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controller.core.access import Caller
from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit
from controller.core.errors import Unprocessable
from controller.services.dependencies import Dependencies
from controller.services.firing import perform
from controller.services.ports import Transaction
from controller.services.registering import ExecutionInput, StaleCatalog, register_in

MAX_ITEMS = 500


def register_executions(
    deps: Dependencies, items: list[ExecutionInput], caller: Caller | None
) -> dict[str, Any]:
    """Register every item (all or none) as ``caller`` (a producer of each table, or completing a run:
    DESIGN §7; None: unchecked, Flux Control itself); returns ``{"executions": […], "runs": […]}``."""
    if not items:
        raise Unprocessable("data must hold at least one execution")
    if len(items) > MAX_ITEMS:
        raise Unprocessable(f"at most {MAX_ITEMS} executions per request, got {len(items)}")

    def work(tx: Transaction, after: AfterCommit) -> dict[str, Any]:
        return _register_current(tx, deps, items, caller, deps.clock(), after)

    return perform(deps, work)


def _register_current(
    tx: Transaction,
    deps: Dependencies,
    items: list[ExecutionInput],
    caller: Caller | None,
    now: datetime,
    after: AfterCommit,
) -> dict[str, Any]:
    """:func:`register_in` with the current definitions, checked without a round trip of its own.

    The cached definitions are used first: the gate-lock statement also reads the newest reconcile
    revision, and a newer one (or an item the cached definitions refuse) means deciding again with
    the definitions reloaded, in the same transaction and before anything was written. The locks the
    first decision took stay held to commit (harmless: a deadlock they could cause with another
    order is detected by PostgreSQL and the transaction runs again).
    """
    own = deps.own_account
    cached: Catalog | None = deps.catalogs.cached()
    if cached is not None:
        try:
            return register_in(tx, cached, items, caller, now, after, verified=False, own_account=own)
        except StaleCatalog:
            pass
    return register_in(tx, deps.catalog(tx), items, caller, now, after, own_account=own)


#: ExecutionInput is part of this entry point (the API builds the items with it).
__all__ = ["ExecutionInput", "register_executions"]
