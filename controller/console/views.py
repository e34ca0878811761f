"""What each console page shows, read through the same services and read port as the API (DESIGN
§9), with what the caller may do there decided by the same rule (§7, :func:`controller.core.access.may`).

Each function returns the page's template context; none writes. The number of statements a page
sends does not grow with the history: every read is bounded (pages of :data:`PAGE` rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from controller.console import lineage
from controller.core.access import Action, Caller
from controller.core.catalog import Catalog
from controller.core.errors import NotFound, Unprocessable
from controller.core.graphs import table_edges
from controller.core.keys import InvalidPartition, key_text, make_key
from controller.core.plans import state_of
from controller.core.runs import ALL_STATES, CANCELLABLE_STATES, FAILED, Run
from controller.services import authorization, queries
from controller.services.answers import run_summary
from controller.services.dependencies import Dependencies
from controller.services.explain import explain, render

PAGE = 50
#: Rows of each list on the front page.
FRONT = 20


def decision(deps: Dependencies, catalog: Catalog, caller: Caller | None, action: Action, table: str) -> str:
    """Why ``caller`` may not do ``action`` on ``table`` (empty: they may)."""
    if caller is None:
        return "Sign in to act on this table."
    answer = authorization.decide(action, caller, catalog, table, deps.own_account)
    return "" if answer.allowed else answer.message


def home(deps: Dependencies) -> dict[str, Any]:
    """What needs a person: pending approvals, failed, queued and dispatching runs."""
    pending = queries.list_approvals(deps, "pending", FRONT)["approvals"]
    lists = {state: queries.list_runs(deps, None, state, FRONT)["runs"] for state in ("failed", "queued")}
    stuck = queries.list_runs(deps, None, "dispatching", FRONT)["runs"]
    return {"pending": pending, "failed": lists["failed"], "queued": lists["queued"], "stuck": stuck}


def approvals(deps: Dependencies, caller: Caller | None) -> dict[str, Any]:
    """Pending approvals, each with whether the caller may decide it (else why not), then decided ones."""
    catalog = deps.reads.catalog()
    waiting = deps.reads.approvals("pending", PAGE)
    triggers = deps.reads.triggers([approval.run_id for approval, _, _ in waiting])
    pending = []
    for approval, table, partitions in waiting:
        why_not = decision(deps, catalog, caller, "decide", table)
        pending.append(
            {
                "id": approval.id,
                "run_id": approval.run_id,
                "table_name": table,
                "partitions": partitions,
                "waiting_since": approval.requested_at.isoformat(),
                "triggers": [
                    {"table_name": name, "partitions": key} for _, name, key in triggers[approval.run_id]
                ],
                "may_decide": not why_not,
                "why_not": why_not,
            }
        )
    decided = [
        {
            "id": a.id,
            "run_id": a.run_id,
            "table_name": table,
            "partitions": partitions,
            "status": a.status,
            "decided_by": a.decided_by,
            "decided_at": a.decided_at.isoformat() if a.decided_at else None,
            "comment": a.comment,
        }
        for a, table, partitions in deps.reads.approvals(None, PAGE)
        if a.status != "pending"
    ]
    return {"pending": pending, "decided": decided}


def runs(deps: Dependencies, table: str, status: str, key: str, before: int | None) -> dict[str, Any]:
    """A page of the newest runs (older than run ``before``), of a table, in a state and of a key
    (``name=value, …``, with a table) if asked; ``next`` is the next page's ``before``, if any."""
    if key and not table:
        raise Unprocessable("key: choose a table too (a key is a table's)")
    if status:
        queries.list_runs(deps, None, status, 1)  # refuses an unknown state (422), as the API does
    if key:
        catalog = deps.reads.catalog()
        if table not in catalog.ids:
            raise NotFound(f"unknown table {table!r}")
        found = [
            summary(run, table, approval.id if approval else None)
            for run, approval in deps.reads.runs_of_key(
                catalog.ids[table], _key_text(catalog, table, key), PAGE
            )
            if (not status or run.status == status) and (before is None or run.id < before)
        ]
    else:
        rows = deps.reads.runs(table or None, status or None, PAGE, before=before)
        if not rows and table and not deps.reads.table_exists(table):
            raise NotFound(f"unknown table {table!r}")
        found = [summary(run, name, approval_id) for run, name, approval_id in rows]
    following = found[-1]["id"] if len(found) == PAGE else None
    context = {"table": table, "status": status, "key": key}
    return {"runs": found, **context, "states": ALL_STATES, "next": following}


def summary(run: Run, table: str, approval_id: int | None) -> dict[str, Any]:
    """A run as the API summarises it."""
    return run_summary(run.id, table, run.partitions, run.status, run.fire_at, approval_id)


def run(deps: Dependencies, run_id: int, caller: Caller | None) -> dict[str, Any]:
    """One run in full, with the actions the caller may take on it (cancel, retry) or why not."""
    detail = queries.get_run(deps, run_id)["run"]
    catalog = deps.reads.catalog()
    why_not = decision(deps, catalog, caller, "operate", detail["table_name"])
    actions = []
    if detail["status"] in CANCELLABLE_STATES:
        actions.append("cancel")
    if detail["status"] == FAILED:
        actions.append("retry")
    for task in detail["tasks"]:
        task["console_url"] = _aws_console_url(task["type"], task["target"], task["external_id"])
    return {"run": detail, "actions": actions, "why_not": why_not}


#: Tables per page of the tables' list.
TABLES_PAGE = 100


def tables(deps: Dependencies, search: str, page: int) -> dict[str, Any]:
    """A page of the tables as reconciled (whose name holds ``search``), with the last reconcile:
    from the read port's cached definitions, so a page costs the same whatever the number of tables."""
    catalog = deps.reads.catalog()
    names = sorted(n for n in catalog.graph.tables if search.lower() in n.lower())
    shown = [catalog.graph.tables[n] for n in names[(page - 1) * TABLES_PAGE : page * TABLES_PAGE]]
    rows = [
        {
            "name": spec.name,
            "partitions": [p.name for p in spec.partitions],
            "dependencies": [r.label for r in spec.requirements],  # a group: "any_of(a, b)"
            "requires_approval": spec.requires_approval,
        }
        for spec in shown
    ]
    more = page * TABLES_PAGE < len(names)
    return {
        "tables": rows,
        "count": len(names),
        "search": search,
        "page": page,
        "more": more,
        **_reconciled(deps),
    }


def _reconciled(deps: Dependencies) -> dict[str, Any]:
    """The last reconcile, for a page to say what it shows."""
    found = deps.reads.last_reconcile()
    if found is None:
        return {"revision": None}
    revision, actor, applied_at = found
    return {"revision": {"revision": revision, "applied_by": actor, "applied_at": applied_at.isoformat()}}


def table(deps: Dependencies, name: str, key: str, root: str = "/console") -> dict[str, Any]:
    """One table: its definition, its recent runs, and its lineage coloured by the state of ``key``
    (a key text ``name=value, …``; empty: the newest run of each table), its nodes linking to the
    table pages under ``root`` (the console's path, behind any API stage)."""
    catalog = deps.reads.catalog()
    spec = catalog.table(name)
    if spec is None:
        raise NotFound(f"unknown table {name!r}")
    recent = queries.list_runs(deps, name, None, PAGE)["runs"]
    index = _adjacency(catalog)
    drawn = lineage.neighbourhood(name, index)
    states = _states_of(deps, catalog, drawn, key)
    picture = lineage.render(name, index, states, lambda t: table_href(t, root))
    partitions = [p.name for p in spec.partitions]
    # JSON, not YAML: the function's package has no YAML library (the command line reads the files).
    # As reconciled: the state the catalog holds (no read of every other table's definition).
    text = json.dumps(state_of(spec), indent=2, ensure_ascii=False)
    return {
        **_reconciled(deps),
        "name": name,
        "definition_text": text,
        "recent": recent,
        "lineage": picture,
        "key": key,
        "partitions": partitions,
    }


def table_href(name: str, root: str = "/console") -> str:
    """The console page of table ``name``."""
    return f"{root}/tables/{quote(name, safe='')}"


def explain_key(deps: Dependencies, name: str, values: Mapping[str, str]) -> str:
    """The ``explain`` answer for (table, key) as text, as the CLI prints it."""
    try:
        return render(explain(deps.reads, name, dict(values)))
    except (ValueError, InvalidPartition) as exc:
        raise Unprocessable(str(exc)) from None


def executions(deps: Dependencies, table: str | None) -> dict[str, Any]:
    """The newest executions, of a table if asked."""
    found = queries.list_executions(deps, table or None, PAGE)["executions"]
    return {"executions": found, "table": table or ""}


#: The lineage index of the last definitions drawn, with them: the read port hands the same
#: ``Catalog`` object out until a reconcile, so the index is built once per revision.
_indexed: list[tuple[Catalog, lineage.Adjacency]] = []


def _adjacency(catalog: Catalog) -> lineage.Adjacency:
    """The lineage index of ``catalog``'s definitions (built again only for other definitions)."""
    if _indexed and _indexed[0][0] is catalog:
        return _indexed[0][1]
    # Every upstream edge, an any_of member's labelled with its group (known tables or not).
    edges = (edge for spec in catalog.graph.tables.values() for edge in table_edges(spec))
    built = lineage.adjacency(edges)
    _indexed[:] = [(catalog, built)]
    return built


def _states_of(deps: Dependencies, catalog: Catalog, drawn: Mapping[str, int], key: str) -> dict[str, str]:
    """The state of each drawn table's newest run of ``key`` (or its newest run at all): one read."""
    wanted = [
        (catalog.ids[name], _key_text(catalog, name, key) if key else None)
        for name in drawn
        if name in catalog.ids
    ]
    found = deps.reads.newest_states(wanted)
    return {catalog.names[table_id]: state for table_id, state in found.items()}


def _key_text(catalog: Catalog, name: str, key: str) -> str:
    """``dt=2026-01-01, region=eu`` as the stored key of table ``name`` (unparseable: as given)."""
    spec = catalog.table(name)
    values = dict(part.split("=", 1) for part in key.split(",") if "=" in part)
    values = {k.strip(): v.strip() for k, v in values.items()}
    if spec is None:
        return key
    try:
        return key_text(
            make_key(spec, {k: v for k, v in values.items() if k in {p.name for p in spec.partitions}})
        )
    except InvalidPartition:
        return key


def _aws_console_url(task_type: str, target: str, external_id: str | None) -> str | None:
    """A link to the task in the AWS console (Glue job runs and Step Functions executions)."""
    if not external_id:
        return None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    base = f"https://{region}.console.aws.amazon.com"
    if task_type == "glue":
        job, run = quote(target, safe=""), quote(external_id, safe="")
        return f"{base}/gluestudio/home?region={region}#/job/{job}/run/{run}"
    if task_type == "step_function":
        return f"{base}/states/home?region={region}#/v2/executions/details/{quote(external_id, safe='')}"
    return None
