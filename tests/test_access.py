"""Who may do what (issue 17, DESIGN §7): every entry form against every kind of caller, pure.

The matrix test checks every (caller, entry) pair: the pairs in :data:`MATCHES` match, every other pair
does not. Look-alikes, the unknown own account, the action table and its messages follow; hypothesis
checks that nothing is normalised and that an unknown account never widens access.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core.access import (
    ACTIONS,
    RULES,
    Action,
    Caller,
    CallerKind,
    Decision,
    allowed,
    matches,
    may,
    own_account_from,
    shown,
)

OWN = "123456789012"
OTHER = "210987654321"
USER = f"arn:aws:iam::{OWN}:user/ana"


def iam(arn: str, account: str | None = None) -> Caller:
    return Caller(arn, kind="iam", arn=arn, account=account)


CALLERS: dict[str, Caller] = {
    "cognito ana": Caller("ana", kind="cognito", groups=frozenset({"leads", "ops"})),
    "jwt ana": Caller("ana", kind="jwt", groups=frozenset({"leads"})),
    "authorizer ana": Caller("ana", kind="authorizer"),
    "body ana": Caller("ana", kind="body"),
    "cognito bob, no group": Caller("bob", kind="cognito"),
    "iam user ana": iam(USER, OWN),
    "iam user ana, account from the arn": iam(USER),
    "iam user ana, with a path": iam(f"arn:aws:iam::{OWN}:user/data/team/ana", OWN),
    "iam user ana of another account": iam(f"arn:aws:iam::{OTHER}:user/ana", OTHER),
    "iam user ana, accountId disagrees": iam(USER, OTHER),
    "iam user ana, aws-cn": iam(f"arn:aws-cn:iam::{OWN}:user/ana", OWN),
    "glue session": iam(f"arn:aws:sts::{OWN}:assumed-role/glue-job/GlueJobRunnerSession", OWN),
    "glue session of another account": iam(f"arn:aws:sts::{OTHER}:assumed-role/glue-job/s", OTHER),
    "session named ana": iam(f"arn:aws:sts::{OWN}:assumed-role/AnyRole/ana", OWN),
    "iam caller without an arn": Caller("us-east-1:0f0e-cognito-identity", kind="iam", account=OWN),
    "cognito user named like a user arn": Caller(USER, kind="cognito"),
    "authorizer named like a role arn": Caller(f"arn:aws:iam::{OWN}:role/glue-job", kind="authorizer"),
    "authorizer named like a session": Caller(f"arn:aws:sts::{OWN}:assumed-role/x/y", kind="authorizer"),
    "cognito user named group:leads": Caller("group:leads", kind="cognito"),
}

ENTRIES: dict[str, str] = {
    "name ana": "ana",
    "name bob": "bob",
    "group leads": "group:leads",
    "group ops": "group:ops",
    "empty group": "group:",
    "user arn": USER,
    "user arn with the path": f"arn:aws:iam::{OWN}:user/data/team/ana",
    "user arn of another account": f"arn:aws:iam::{OTHER}:user/ana",
    "user arn, aws-cn": f"arn:aws-cn:iam::{OWN}:user/ana",
    "role arn": f"arn:aws:iam::{OWN}:role/glue-job",
    "role arn with a path": f"arn:aws:iam::{OWN}:role/service/etl/glue-job",
    "role arn of another account": f"arn:aws:iam::{OTHER}:role/glue-job",
    "role arn named ana": f"arn:aws:iam::{OWN}:role/ana",
    "role arn of AnyRole": f"arn:aws:iam::{OWN}:role/AnyRole",
    "session arn": f"arn:aws:sts::{OWN}:assumed-role/glue-job/GlueJobRunnerSession",
    "iam group arn": f"arn:aws:iam::{OWN}:group/leads",
    "broken arn": "arn:aws:iam::1234:user/ana",
    "the name of the arn-less caller": "us-east-1:0f0e-cognito-identity",
}

#: The only (caller, entry) pairs that match, with own_account = OWN; every other pair must not.
MATCHES: set[tuple[str, str]] = {
    *((who, "name ana") for who in ("cognito ana", "jwt ana", "authorizer ana", "body ana")),
    ("cognito bob, no group", "name bob"),
    ("cognito ana", "group leads"),
    ("cognito ana", "group ops"),
    ("jwt ana", "group leads"),
    # An IAM user of the own account: by its user name or its exact ARN (path included: "user arn"
    # does not match the user with a path). Callers named like ARNs or like group entries match none.
    ("iam user ana", "name ana"),
    ("iam user ana", "user arn"),
    ("iam user ana, account from the arn", "name ana"),
    ("iam user ana, account from the arn", "user arn"),
    ("iam user ana, with a path", "name ana"),
    ("iam user ana, with a path", "user arn with the path"),
    # The same partition's own account: aws-cn's account OWN is "own" when the function runs there.
    ("iam user ana, aws-cn", "name ana"),
    ("iam user ana, aws-cn", "user arn, aws-cn"),
    # A role entry matches its sessions, path or not; a role of another account its own sessions.
    ("glue session", "role arn"),
    ("glue session", "role arn with a path"),
    ("glue session of another account", "role arn of another account"),
    ("session named ana", "role arn of AnyRole"),
}


def test_the_expected_matches_name_real_callers_and_entries() -> None:
    assert {who for who, _ in MATCHES} <= set(CALLERS)
    assert {what for _, what in MATCHES} <= set(ENTRIES)


@pytest.mark.parametrize("who", CALLERS)
@pytest.mark.parametrize("what", ENTRIES)
def test_every_entry_form_against_every_caller(who: str, what: str) -> None:
    expected = (who, what) in MATCHES
    assert matches(CALLERS[who], ENTRIES[what], OWN) is expected, (who, what)


# --- look-alikes: nothing is normalised ------------------------------------------------------------

LOOK_ALIKES = [
    "Ana",
    "ANA",
    " ana",
    "ana ",
    "ana\n",
    "\u0430na",  # Cyrillic а
    "an\u0430",
    "ana\u200b",  # zero-width space
    "a\u0301na",  # combining accent
    "\uff41na",  # fullwidth a
    "ana\x00",
    "an",
    "anaa",
    "ana@example.com",
    "*",
]
NAME_KINDS: tuple[CallerKind, ...] = ("cognito", "jwt", "authorizer", "body")


@pytest.mark.parametrize("kind", NAME_KINDS)
@pytest.mark.parametrize("name", LOOK_ALIKES)
def test_a_look_alike_name_is_not_the_name(kind: CallerKind, name: str) -> None:
    caller = Caller(name, kind=kind)
    assert not matches(caller, "ana", OWN)
    assert matches(caller, name, OWN)  # the control: its own exact text


@pytest.mark.parametrize("name", [n for n in LOOK_ALIKES if n.strip() == n and "\x00" not in n])
def test_a_look_alike_iam_user_is_not_the_user(name: str) -> None:
    caller = iam(f"arn:aws:iam::{OWN}:user/{name}", OWN)
    assert not matches(caller, "ana", OWN)
    assert not matches(caller, USER, OWN)


@pytest.mark.parametrize(
    "arn",
    [
        f"arn:aws:iam::{OWN}:user/ana/",  # a path, no name
        f"arn:aws:iam::{OWN}:user/ana\n",
        f" arn:aws:iam::{OWN}:user/ana",
        f"xarn:aws:iam::{OWN}:user/ana",
        f"arn:aws:iam::{OWN}:group/ana",
        f"arn:aws:iam::{OWN}:role/ana",  # a role is never the caller: its sessions are
        f"arn:aws:iam::{OWN}:root",
        f"arn:aws:sts::{OWN}:federated-user/ana",
        "arn:aws:iam::1234:user/ana",
        f"arn:aws:iam:eu-west-1:{OWN}:user/ana",
    ],
)
def test_malformed_or_other_iam_arns_are_no_user(arn: str) -> None:
    caller = iam(arn, OWN)
    assert not any(matches(caller, entry, OWN) for entry in ENTRIES.values())


@pytest.mark.parametrize("group", ["Leads", "leads ", " leads", "l\u0435ads", "lead", "leads,ops", "[leads]"])
def test_a_look_alike_group_is_not_the_group(group: str) -> None:
    assert not matches(Caller("ana", kind="cognito", groups=frozenset({group})), "group:leads", OWN)


def test_a_group_entry_needs_the_group_not_a_name() -> None:
    assert not matches(Caller("leads", kind="cognito"), "group:leads", OWN)
    assert not matches(Caller("ana", kind="cognito", groups=frozenset({"leads"})), "leads", OWN)


# --- the function's own account, unknown -----------------------------------------------------------


@pytest.mark.parametrize("entry", ["ana", USER])
def test_without_a_known_own_account_no_iam_user_matches(entry: str) -> None:
    assert matches(CALLERS["iam user ana"], entry, OWN)
    assert not matches(CALLERS["iam user ana"], entry, None)


def test_without_a_known_own_account_roles_names_and_groups_still_match() -> None:
    assert matches(CALLERS["glue session"], f"arn:aws:iam::{OWN}:role/glue-job", None)
    assert matches(CALLERS["cognito ana"], "ana", None)
    assert matches(CALLERS["cognito ana"], "group:ops", None)


def test_the_own_account_is_the_entrys_for_a_user_arn() -> None:
    # An exact user ARN of another account is still another account's user: refused (§7).
    foreign = CALLERS["iam user ana of another account"]
    assert not matches(foreign, f"arn:aws:iam::{OTHER}:user/ana", OWN)
    assert matches(foreign, f"arn:aws:iam::{OTHER}:user/ana", OTHER)
    assert matches(foreign, "ana", OTHER)  # the same user, seen from a function in its account


# --- allowed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", CALLERS)
def test_an_empty_list_allows_any_identified_caller(who: str) -> None:
    assert allowed(CALLERS[who], [], OWN)
    assert allowed(CALLERS[who], (), None)


def test_any_entry_of_the_list_allows() -> None:
    entries = ["bob", "group:ops", f"arn:aws:iam::{OWN}:role/glue-job"]
    assert allowed(CALLERS["cognito bob, no group"], entries, OWN)
    assert allowed(CALLERS["cognito ana"], entries, OWN)  # by group
    assert allowed(CALLERS["glue session"], entries, OWN)
    assert not allowed(CALLERS["jwt ana"], entries, OWN)  # leads, not ops
    assert not allowed(CALLERS["iam user ana"], entries, OWN)


def test_the_bug_of_issue_17_an_iam_user_of_another_account() -> None:
    assert not allowed(CALLERS["iam user ana of another account"], ["ana"], OWN)
    assert allowed(CALLERS["iam user ana"], ["ana"], OWN)


# --- the action table ------------------------------------------------------------------------------

ANA = CALLERS["cognito ana"]
BOB = CALLERS["cognito bob, no group"]


def ask(action: Action, caller: Caller | None, lists: dict[str, list[str]]) -> Decision:
    """``may`` for a table tb_x with ``lists`` (approvers, producers, operators; missing: empty)."""
    return may(
        action,
        caller,
        table="tb_x",
        approvers=lists.get("approvers", []),
        producers=lists.get("producers", []),
        operators=lists.get("operators", []),
        own_account=OWN,
    )


@pytest.mark.parametrize(
    ("action", "lists", "decider"),
    [
        ("register", {"producers": ["bob"]}, "producers"),
        ("decide", {"approvers": ["bob"]}, "approvers"),
        ("operate", {"operators": ["bob"]}, "operators"),
        ("operate", {"approvers": ["bob"]}, "approvers"),
        ("operate", {"operators": ["bob"], "approvers": ["ana"]}, "operators"),
        ("complete", {"operators": ["bob"]}, "operators"),
        ("complete", {"approvers": ["bob"]}, "approvers"),
        ("complete", {"operators": ["bob"], "approvers": ["ana"]}, "operators"),
    ],
)
def test_the_list_that_decides_each_action(action: Action, lists: dict[str, list[str]], decider: str) -> None:
    assert ask(action, BOB, lists).allowed
    refused = ask(action, ANA, lists)
    assert not refused.allowed
    assert refused.details == {"action": action, "table": "tb_x", "list": decider, "entries": ["bob"]}


@pytest.mark.parametrize("action", ACTIONS)
def test_lists_of_other_actions_do_not_count(action: Action) -> None:
    lists = ("approvers", "producers", "operators")
    others = {name: ["bob"] for name in lists if name not in RULES[action].lists}
    assert others
    assert ask(action, ANA, others).allowed


@pytest.mark.parametrize("action", ACTIONS)
def test_a_table_listing_nobody_allows_any_identified_caller_and_no_one_else(action: Action) -> None:
    for caller in CALLERS.values():
        assert ask(action, caller, {}).allowed
        assert may(action, caller, table="tb_x").allowed
    refused = ask(action, None, {})
    assert not refused.allowed
    assert refused.message.startswith("no caller identity: only an authenticated caller may ")


def test_refusals_name_who_may() -> None:
    decide = may("decide", ANA, table="tb_x", approvers=["bob", "group:leads_"])
    assert decide.message == "ana may not approve or reject runs of tb_x (approvers: bob, group:leads_)"
    register = may("register", ANA, table="tb_x", producers=["etl"])
    assert register.message == "ana may not register executions of tb_x (producers: etl)"
    operate = may("operate", ANA, table="tb_x", approvers=["bob"])
    assert operate.message == (
        "ana may not start, backfill, cancel or retry runs of tb_x (approvers: bob; no operators listed)"
    )
    complete = may("complete", ANA, table="tb_x", operators=["bob"], approvers=["ana"])
    assert complete.message == "ana may not complete or fail runs of tb_x (operators: bob)"
    nobody = may("decide", None, table="tb_x", approvers=["bob"])
    assert nobody.message == (
        "no caller identity: only an authenticated caller may approve or reject runs of tb_x"
    )
    assert may("decide", BOB, table="tb_x", approvers=["bob"]) == may("decide", BOB, table="t", approvers=[])


def test_refusals_show_look_alikes_escaped() -> None:
    message = may("decide", Caller("\u0430na ", kind="cognito"), table="tb_x", approvers=["ana"]).message
    assert message == "'\\u0430na ' may not approve or reject runs of tb_x (approvers: ana)"
    assert shown("ana") == "ana"
    assert shown("ana ") == "'ana '"
    assert shown("ana\n") == "'ana\\n'"
    assert shown("") == "''"


def test_a_refused_iam_user_hears_that_the_own_account_is_unknown() -> None:
    refused = may("decide", CALLERS["iam user ana"], table="tb_x", approvers=["ana"], own_account=None)
    assert refused.message == (
        f"{USER} may not approve or reject runs of tb_x (approvers: ana); "
        "the function's own account is unknown, so no IAM user matches"
    )
    assert may("decide", CALLERS["iam user ana"], table="tb_x", approvers=["ana"], own_account=OWN).allowed


# --- Caller ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", " ", "\t\n"])
def test_a_blank_name_is_no_caller(name: str) -> None:
    with pytest.raises(ValueError, match="not blank"):
        Caller(name, kind="cognito")


def test_a_caller_kind_is_one_of_the_five() -> None:
    with pytest.raises(ValueError, match="unknown caller kind 'saml'"):
        Caller("ana", kind="saml")  # type: ignore[arg-type]


# --- own_account_from ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arn", "account"),
    [
        (f"arn:aws:lambda:eu-west-1:{OWN}:function:flux-control", OWN),
        (f"arn:aws:lambda:eu-west-1:{OWN}:function:flux-control:live", OWN),  # an alias
        (f"arn:aws:lambda:eu-west-1:{OWN}:function:flux-control:$LATEST", OWN),
        (f"arn:aws:lambda:eu-west-1:{OWN}:function:flux-control:7", OWN),
        (f"arn:aws-us-gov:lambda:us-gov-west-1:{OWN}:function:f", OWN),
        (f"arn:aws-cn:lambda:cn-north-1:{OWN}:function:f", OWN),
        (f"  arn:aws:lambda:eu-west-1:{OWN}:function:f\n", OWN),  # an environment variable's spaces
        ("", None),
        (None, None),
        ("   ", None),
        ("arn:aws:lambda:eu-west-1:1234:function:f", None),
        (f"arn:aws:iam::{OWN}:role/f", None),
        (f"arn:aws:lambda:eu-west-1:{OWN}:layer:f", None),
        (f"arn:aws:lambda:eu-west-1:{OWN}:function:", None),
        (f"arn:aws:lambda:eu-west-1:{OWN}:function:f:live:extra", None),
        ("flux-control", None),
    ],
)
def test_the_own_account_of_a_function_arn(arn: str | None, account: str | None) -> None:
    assert own_account_from(arn) == account


# --- properties ------------------------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(lambda t: bool(t.strip()))
prefixed = st.sampled_from(["", "group:", "arn:", "arn:aws:iam::123456789012:user/"])


@given(name=texts, prefix=prefixed, tail=texts, same=st.booleans(), kind=st.sampled_from(NAME_KINDS))
def test_a_plain_entry_matches_exactly_its_own_text(
    name: str, prefix: str, tail: str, same: bool, kind: CallerKind
) -> None:
    # The caller may itself be named like a group or an ARN entry: that never makes it match one.
    entry = prefix + tail
    caller = Caller(entry if same else name, kind=kind)
    plain = not entry.startswith(("group:", "arn:"))
    assert matches(caller, entry, OWN) is (plain and caller.name == entry)


@given(
    who=st.sampled_from(sorted(CALLERS)),
    entries=st.lists(st.sampled_from(sorted(ENTRIES.values())) | texts, max_size=5),
    extra=st.sampled_from(sorted(ENTRIES.values())) | texts,
)
def test_an_unknown_account_never_widens_and_more_entries_never_narrow(
    who: str, entries: list[str], extra: str
) -> None:
    caller = CALLERS[who]
    if entries and allowed(caller, entries, None):
        assert allowed(caller, entries, OWN)
    if allowed(caller, entries, OWN) and entries:
        assert allowed(caller, [*entries, extra], OWN)


def test_a_refused_role_session_hears_nothing_of_the_account() -> None:
    refused = may("operate", CALLERS["glue session"], table="tb_x", operators=["ana"], own_account=None)
    assert refused.message.endswith("(operators: ana)")
