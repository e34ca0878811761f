"""A run whose work is done succeeds, whatever the definitions became meanwhile.

Its execution is registered for its key, which cascades downstream
(:func:`controller.services.registering.complete_run`). When that is no longer possible
— its table was deleted, or defined again, or its partitions changed so that its key does not fit —
the run still succeeds, with the reason ``execution not registered: …``, and its key is free again
(DESIGN §8): refusing the completion would leave the run ``running`` for ever and block the key.
"""

from __future__ import annotations

from datetime import datetime

from controller.core.catalog import Catalog
from controller.core.effects import AfterCommit
from controller.core.keys import InvalidPartition, key_text, make_key
from controller.core.records import TASK_SUCCEEDED
from controller.core.runs import SUCCEEDED, Run
from controller.services.ports import Transaction
from controller.services.transitions import move

NOT_REGISTERED = "execution not registered: "


def registration_problem(catalog: Catalog, table: str, run: Run) -> str | None:
    """Why an execution of ``run``'s table for its key cannot be registered now (None: it can)."""
    spec = catalog.table(table)
    if spec is None:
        return f"table {table!r} is no longer defined"
    if catalog.ids[table] != run.table_id:
        return f"table {table!r} was deleted and defined again since the run opened"
    try:
        key = make_key(spec, dict(run.partitions))
    except InvalidPartition as exc:
        return f"the partitions of {table!r} changed since the run opened: {exc}"
    if key_text(key) != run.partition_key:
        return f"the partitions of {table!r} changed since the run opened (its key is now {key_text(key)})"
    return None


def succeed_unregistered(
    tx: Transaction,
    run: Run,
    table: str,
    problem: str,
    now: datetime,
    after: AfterCommit,
    actor: str | None = None,
) -> str:
    """End ``run`` as succeeded without an execution (``problem`` says why); returns the reason."""
    reason = NOT_REGISTERED + problem
    tx.settle_unfinished_tasks([run.id], TASK_SUCCEEDED, None, now)
    move(tx, after, run, SUCCEEDED, now, table, reason=reason, actor=actor)
    return reason
