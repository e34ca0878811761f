"""``POST /tables``: check an original payload against the reconciled definitions; never writes."""

from __future__ import annotations

import re
from typing import Any

from controller.core.errors import BadRequest
from controller.core.payloads import PayloadDocument, PayloadError, payload_documents
from controller.core.plans import make_plan, state_of
from controller.core.problems import Problem
from controller.files.validation import validate_documents
from controller.services.dependencies import Dependencies

#: Problems in reconciled tables (not in the payload) are located as ``database:NAME.field``.
DATABASE_ROOT = "database:"
_NUMBER = re.compile(r"(\d+)")


def check_payload(deps: Dependencies, payload: Any) -> dict[str, Any]:
    """The validation result of the payload's tables among the current ones, and the plan they imply.

    Definitions change through Git: this answers what a pull request with these tables would do.
    Each problem is located by its JSON path in the payload (``data[1].dependencies[0]``).
    """
    try:
        documents = payload_documents(payload)
    except PayloadError as exc:
        raise BadRequest(str(exc)) from None
    current, _ = deps.reads.definitions()
    names = {document.data.get("name") for document in documents}
    others = [
        PayloadDocument(_definition(state), root=f"{DATABASE_ROOT}{name}")
        for name, state in sorted(current.items())
        if name not in names
    ]
    result = validate_documents([*documents, *others])
    if not result.valid:
        problems = sorted(result.problems, key=_in_payload_order)
        return {"valid": False, "problems": [p.as_dict() for p in problems], "plan": None}
    desired = {spec.name: state_of(spec) for spec in result.specs}
    plan = make_plan(current, desired)
    return {"valid": True, "problems": [], "plan": plan.as_dict()}


def _definition(state: dict[str, Any]) -> dict[str, Any]:
    """A reconciled table as the definition it came from (null means unset in a definition)."""
    return {"version": 1, **{k: v for k, v in state.items() if v is not None}}


def _in_payload_order(problem: Problem) -> tuple[bool, list[Any], str]:
    """The payload's problems first, in document order (``data[2]`` before ``data[10]``)."""
    path = problem.location.path
    # re.split with a group alternates text and digits: numbers compare as numbers.
    parts = [int(p) if i % 2 else p for i, p in enumerate(_NUMBER.split(path))]
    return path.startswith(DATABASE_ROOT), parts, problem.message
