"""Who may do what, asked of the core's rule (:func:`controller.core.access.may`) with a table's lists
as the definitions hold them now; a refusal is a 403 naming who may (DESIGN §7).

The API identifies every caller who writes (no identity: 403 before any service runs); a service
given no caller (``None``) is Flux Control itself — a fire, the sweep, an AWS state change, a test —
and is not checked.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.core.access import Action, Caller, Decision, may
from controller.core.catalog import Catalog
from controller.core.errors import Forbidden


def require(
    action: Action,
    caller: Caller | None,
    catalog: Catalog,
    table: str,
    own_account: str | None,
    where: str = "",
) -> None:
    """Refuse ``caller`` unless §7 lets them do ``action`` on ``table`` (a table no longer defined
    lists nobody: any identified caller)."""
    if caller is None:
        return
    decision = decide(action, caller, catalog, table, own_account)
    if not decision.allowed:
        prefix = f"{where}: " if where else ""
        raise Forbidden(prefix + decision.message, dict(decision.details or {}))


def decide(action: Action, caller: Caller, catalog: Catalog, table: str, own_account: str | None) -> Decision:
    """What §7 says of ``caller`` doing ``action`` on ``table``, by the lists of its definition now (a
    table no longer defined lists nobody). The API refuses by it; the console shows it."""
    spec = catalog.table(table)
    return may(
        action,
        caller,
        table=table,
        approvers=spec.approvers if spec else (),
        producers=spec.producers if spec else (),
        operators=spec.operators if spec else (),
        own_account=own_account,
    )


def require_registration(
    caller: Caller | None,
    catalog: Catalog,
    items: Iterable[tuple[int, str, int | None, str | None]],
    own_account: str | None,
) -> None:
    """Each item of a registration, as (index, table, run id, token): a producer's execution
    (``register``), or a run's completion without its task's token (``complete``: an operator). A
    token is checked against the run, where the run is read."""
    for index, table, run_id, token in items:
        if run_id is None:
            require("register", caller, catalog, table, own_account, f"data[{index}]")
        elif token is None:
            require("complete", caller, catalog, table, own_account, f"data[{index}]")
