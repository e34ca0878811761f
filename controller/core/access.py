"""Who may do what (DESIGN §7). Pure: a caller, a table's lists and the function's account in, a
decision out; the services ask, the API builds the caller (:func:`controller.api.identity.caller_from`).

An entry of ``approvers``, ``producers`` or ``operators`` is one of:

- ``group:NAME``: a member of the Cognito group NAME (``cognito:groups``), nothing else;
- an ARN (anything starting ``arn:``): an IAM user ARN matches that exact user, of the function's own
  account only; an IAM role ARN matches any session of that role (``assumed-role/NAME/…``, same
  partition and account: role paths are not in session ARNs, so only the role's name is compared).
  Only callers AWS itself authenticated (``kind == "iam"``) match an ARN: a Cognito user or a Lambda
  authorizer's principal *named* like an ARN matches no ARN entry, since such a name is the caller's
  to choose. Any other ARN (a session, a group, a typo) matches nobody;
- anything else is a name, compared exactly (case, spaces and look-alikes count: no normalisation)
  with a Cognito/JWT/authorizer/trusted-body caller's name, or with the user name of an IAM user of
  the function's own account.

The function's own account may be unknown (``own_account=None``): then no IAM *user* matches at all,
neither a bare name nor a user ARN, since "of the own account" cannot be checked; role entries do not
depend on it. Failing closed there is deliberate: the deployment always knows its account (see
:func:`own_account_from`), so an unknown one is a wiring mistake, and it must not widen access.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal, get_args

CallerKind = Literal["cognito", "jwt", "authorizer", "iam", "body"]
Action = Literal["register", "decide", "operate", "complete"]
KINDS: tuple[CallerKind, ...] = get_args(CallerKind)
ACTIONS: tuple[Action, ...] = get_args(Action)

GROUP_PREFIX = "group:"

# Partitions: aws, aws-cn, aws-us-gov, aws-iso, aws-iso-b, ... IAM names: [\w+=,.@-]+ (ASCII). A path is
# "/" or "/…/" of printable ASCII, so the name is what follows the last "/". re.ASCII keeps \w ASCII: a
# Cyrillic 'а' in an ARN makes it no IAM ARN at all rather than a near miss.
_PARTITION = r"aws(?:-[a-z]+)*"
_NAME = r"[\w+=,.@-]+"
_IAM_ARN = re.compile(rf"arn:({_PARTITION}):iam::(\d{{12}}):(user|role)/(?:[!-~]*/)?({_NAME})", re.ASCII)
_SESSION_ARN = re.compile(rf"arn:({_PARTITION}):sts::(\d{{12}}):assumed-role/({_NAME})/{_NAME}", re.ASCII)
_FUNCTION_ARN = re.compile(
    rf"arn:{_PARTITION}:lambda:[a-z0-9-]+:(\d{{12}}):function:[A-Za-z0-9_-]+(?::[A-Za-z0-9_$-]+)?", re.ASCII
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as API Gateway (or, in trusted mode, the body) identified them.

    ``name`` is what :func:`controller.api.identity.caller_identity` returns (and what writes record as
    their actor); ``groups`` the Cognito groups; ``arn`` and ``account`` the IAM caller's ARN and
    account (``kind == "iam"`` only).
    """

    name: str
    _: KW_ONLY
    kind: CallerKind
    groups: frozenset[str] = frozenset()
    arn: str | None = None
    account: str | None = None

    def __post_init__(self) -> None:
        # A blank name identifies nobody (§7): refuse to build such a caller rather than match it.
        if not self.name.strip():
            raise ValueError("a caller needs a name that is not blank")
        if self.kind not in KINDS:
            raise ValueError(f"unknown caller kind {self.kind!r} (one of {', '.join(KINDS)})")


@dataclass(frozen=True, slots=True)
class _Principal:
    """An IAM identity as ARNs name it: a user, a role (entries) or a role's session (callers)."""

    partition: str
    account: str
    type: Literal["user", "role", "session"]
    name: str


def _entry_principal(entry: str) -> _Principal | None:
    found = _IAM_ARN.fullmatch(entry)
    if found is None:
        return None
    partition, account, type_, name = found.groups()
    return _Principal(partition, account, "user" if type_ == "user" else "role", name)


def _caller_principal(caller: Caller) -> _Principal | None:
    """The IAM user or role session behind an IAM caller; None for any other caller, or when the ARN
    and the account API Gateway reported disagree (they never do unless something is forged)."""
    if caller.kind != "iam" or caller.arn is None:
        return None
    principal: _Principal | None = None
    if (session := _SESSION_ARN.fullmatch(caller.arn)) is not None:
        principal = _Principal(session.group(1), session.group(2), "session", session.group(3))
    elif (user := _IAM_ARN.fullmatch(caller.arn)) is not None and user.group(3) == "user":
        principal = _Principal(user.group(1), user.group(2), "user", user.group(4))
    if principal is None or caller.account not in (None, principal.account):
        return None
    return principal


def matches(caller: Caller, entry: str, own_account: str | None) -> bool:
    """Whether ``entry`` (of approvers, producers or operators) names ``caller``; see the module
    docstring for the forms. ``own_account`` is the function's AWS account (None: unknown)."""
    if entry.startswith(GROUP_PREFIX):
        group = entry[len(GROUP_PREFIX) :]
        return bool(group) and group in caller.groups
    if entry.startswith("arn:"):
        return _matches_arn(caller, entry, own_account)
    if caller.kind == "iam":
        # A bare name names an IAM user of this account only: user `ana` of another account is not
        # ours to trust (issue 17). Never a role session, whose session name the caller picks.
        principal = _caller_principal(caller)
        return (
            principal is not None
            and principal.type == "user"
            and own_account is not None
            and principal.account == own_account
            and principal.name == entry
        )
    return caller.name == entry


def _matches_arn(caller: Caller, entry: str, own_account: str | None) -> bool:
    target = _entry_principal(entry)
    principal = _caller_principal(caller)
    if target is None or principal is None:
        return False
    if target.type == "user":
        return principal.type == "user" and caller.arn == entry and own_account == target.account
    # Any session of the role: same partition, account and role name (the session name is the caller's).
    session_of = (principal.partition, principal.account, principal.name)
    return principal.type == "session" and session_of == (target.partition, target.account, target.name)


def allowed(caller: Caller, entries: Sequence[str], own_account: str | None) -> bool:
    """Whether ``caller`` may act under ``entries``: an empty list allows any identified caller."""
    return not entries or any(matches(caller, entry, own_account) for entry in entries)


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of §7's table: what the action is called in a refusal, and which lists decide it."""

    what: str  # "<caller> may not <what> <table>"
    lists: tuple[str, ...]  # the first of these the table fills decides; none filled: anyone identified


#: DESIGN §7's table. "complete" is completing (``run_id``) or failing a run *without* its task's
#: token: a valid token is the services' to check and allows by itself.
RULES: Mapping[Action, Rule] = {
    "register": Rule("register executions of", ("producers",)),
    "decide": Rule("approve or reject runs of", ("approvers",)),
    "operate": Rule("start, backfill, cancel or retry runs of", ("operators", "approvers")),
    "complete": Rule("complete or fail runs of", ("operators", "approvers")),
}


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :func:`may`: ``allowed``, else ``message`` (for a 403) and its ``details``."""

    allowed: bool
    message: str = ""
    details: Mapping[str, Any] | None = None


def may(
    action: Action,
    caller: Caller | None,
    *,
    table: str,
    approvers: Sequence[str] = (),
    producers: Sequence[str] = (),
    operators: Sequence[str] = (),
    own_account: str | None = None,
) -> Decision:
    """Whether ``caller`` may do ``action`` on ``table``, whose lists are given (DESIGN §7).

    ``register``: producers; ``decide`` (approve, reject): approvers; ``operate`` (manual run, backfill,
    cancel, retry) and ``complete`` (settle a run without its token): operators, else approvers. A table
    that lists nobody for the action allows any identified caller; no caller is always refused.
    """
    rule = RULES[action]
    filled = {"approvers": approvers, "producers": producers, "operators": operators}
    which = next((name for name in rule.lists if filled[name]), None)
    entries = tuple(filled[which]) if which else ()
    details = {"action": action, "table": table, "list": which, "entries": list(entries)}
    if caller is None:
        message = f"no caller identity: only an authenticated caller may {rule.what} {table}"
        return Decision(False, message, details)
    if allowed(caller, entries, own_account):
        return Decision(True)
    message = f"{shown(caller.name)} may not {rule.what} {table} ({_who(rule, which, entries)})"
    principal = _caller_principal(caller)
    if own_account is None and principal is not None and principal.type == "user":
        # Say why a listed IAM user is refused: the wiring gave no account (see own_account_from).
        message += "; the function's own account is unknown, so no IAM user matches"
    return Decision(False, message, details)


def _who(rule: Rule, which: str | None, entries: Sequence[str]) -> str:
    listed = f"{which}: {', '.join(shown(entry) for entry in entries)}"
    skipped = rule.lists[: rule.lists.index(which)] if which in rule.lists else ()
    return "; ".join([listed, *(f"no {name} listed" for name in skipped)])


def shown(name: str) -> str:
    """``name`` as a message shows it: quoted and escaped unless plain printable ASCII without outer
    spaces, so that ``'ana '`` or a Cyrillic ``'\\u0430na'`` does not read as ``ana``."""
    plain = name.isascii() and name.isprintable() and name == name.strip() and name != ""
    return name if plain else ascii(name)


def actor_of(caller: Caller | None) -> str | None:
    """Who a write records as its actor: the caller's name; None when Flux Control itself writes."""
    return caller.name if caller is not None else None


def own_account_from(function_arn: str | None) -> str | None:
    """The account of ``arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`` (``FLUX_FUNCTION_ARN``
    or Lambda's ``context.invoked_function_arn``, which may carry an alias or version); None when blank
    or not a Lambda function ARN."""
    found = _FUNCTION_ARN.fullmatch((function_arn or "").strip())
    return found.group(1) if found else None
