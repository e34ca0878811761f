"""``POST /tables``: check an original payload against the reconciled definitions; never writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from controller.db.definitions_store import read_state
from controller.db.engine import read_only
from controller.payloads import PayloadError, as_source, payload_tables
from controller.plans import make_plan, state_of
from controller.runtime.context import Runtime
from controller.runtime.errors import BadRequest
from controller.validation import validate_sources


def check_payload(runtime: Runtime, payload: Any) -> dict[str, Any]:
    """The validation result of the payload's tables among the current ones, and the plan they imply.

    Definitions change through Git: this answers what a pull request with these tables would do.
    """
    try:
        tables = payload_tables(payload)
    except PayloadError as exc:
        raise BadRequest(str(exc)) from None
    with Session(read_only(runtime.engine)) as session:
        current = read_state(session).tables
    names = {t.get("name") for t in tables}
    others = [
        {"version": 1, **{k: v for k, v in state.items() if v is not None}}  # null = unset in a definition
        for name, state in sorted(current.items())
        if name not in names
    ]
    sources = [as_source(tables, "payload")] + ([as_source(others, "database")] if others else [])
    result = validate_sources(sources)
    problems = [p.as_dict() for p in result.problems]
    if not result.valid:
        return {"valid": False, "problems": problems, "plan": None}
    desired = {spec.name: state_of(spec) for spec in result.specs}
    plan = make_plan(current, desired)
    return {"valid": True, "problems": [], "plan": plan.as_dict()}
