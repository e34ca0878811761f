"""The caller from API Gateway's request context (issue 17): each authorizer's shape, as API Gateway
sends it, to :func:`caller_from`; its name is always :func:`caller_identity`'s (what writes record).

The contexts are trimmed copies of real ones: a REST API with a Cognito user pool authorizer (claims
as strings, ``cognito:groups`` comma-separated), a REST API with a JWT authorizer (claims keep their
JSON types), an HTTP API with a JWT authorizer (payload 2.0: ``authorizer.jwt.claims``, arrays as
``"[a b]"``), a REST Lambda authorizer (``principalId``), and IAM (SigV4) users and role sessions.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.api.identity import caller_from, caller_identity, groups_from
from controller.core.access import Caller, may, own_account_from

OWN = "123456789012"
OTHER = "210987654321"
API_OWNER = "999999999999"  # requestContext.accountId: the API's account, never the caller's
#: What a REST API sends in ``identity`` when no IAM credentials signed the request.
ANONYMOUS = {
    "cognitoIdentityPoolId": None,
    "accountId": None,
    "cognitoIdentityId": None,
    "caller": None,
    "sourceIp": "203.0.113.7",
    "principalOrgId": None,
    "accessKey": None,
    "cognitoAuthenticationType": None,
    "cognitoAuthenticationProvider": None,
    "userArn": None,
    "userAgent": "curl/8.4.0",
    "user": None,
}


def rest(authorizer: dict[str, Any] | None = None, **identity: Any) -> dict[str, Any]:
    """A REST API proxy event's ``requestContext``."""
    return {
        "resourceId": "abc123",
        "resourcePath": "/approve",
        "httpMethod": "POST",
        "path": "/prod/approve",
        "accountId": API_OWNER,
        "protocol": "HTTP/1.1",
        "stage": "prod",
        "requestTimeEpoch": 1717000000000,
        "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
        "identity": {**ANONYMOUS, **identity},
        "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
        "apiId": "abc",
        **({"authorizer": authorizer} if authorizer is not None else {}),
    }


def cognito_claims(**extra: Any) -> dict[str, Any]:
    """A Cognito user pool ID token's claims as a REST Cognito authorizer passes them: all strings."""
    return {
        "sub": "7d8ca528-4931-4254-9273-ea5ee853f271",
        "email_verified": "true",
        "iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Ab12Cd34E",
        "cognito:username": "ana",
        "origin_jti": "0b1d7e3a-5a7d-4a53-9b1e-1f2e3d4c5b6a",
        "aud": "4s2k8h1l0j9g7f6d5s4a3q2w1e",
        "event_id": "bbd4b1f0-1a2b-4c5d-8e9f-0a1b2c3d4e5f",
        "token_use": "id",
        "auth_time": "1717000000",
        "exp": "Wed May 29 17:26:40 UTC 2024",
        "iat": "Wed May 29 16:26:40 UTC 2024",
        "jti": "a1b2c3d4-e5f6-4a5b-8c7d-9e0f1a2b3c4d",
        "email": "ana@example.com",
        **extra,
    }


def http_api(authorizer: dict[str, Any]) -> dict[str, Any]:
    """An HTTP API (payload format 2.0) event's ``requestContext``: no ``identity`` at all."""
    return {
        "accountId": API_OWNER,
        "apiId": "api-id",
        "authorizer": authorizer,
        "domainName": "api-id.execute-api.eu-west-1.amazonaws.com",
        "http": {
            "method": "POST",
            "path": "/approve",
            "protocol": "HTTP/1.1",
            "sourceIp": "203.0.113.7",
            "userAgent": "curl/8.4.0",
        },
        "requestId": "JKJaXmPLvHcESHA=",
        "routeKey": "POST /approve",
        "stage": "$default",
        "timeEpoch": 1717000000000,
    }


def access_token_claims(**extra: Any) -> dict[str, Any]:
    """A Cognito access token's claims as an HTTP API JWT authorizer passes them (``username``)."""
    return {
        "auth_time": "1717000000",
        "client_id": "4s2k8h1l0j9g7f6d5s4a3q2w1e",
        "cognito:groups": "[leads ops]",
        "exp": "1717003600",
        "iat": "1717000000",
        "iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Ab12Cd34E",
        "jti": "a1b2c3d4-e5f6-4a5b-8c7d-9e0f1a2b3c4d",
        "scope": "aws.cognito.signin.user.admin",
        "sub": "7d8ca528-4931-4254-9273-ea5ee853f271",
        "token_use": "access",
        "username": "ana",
        **extra,
    }


def iam_identity(arn: str, account: str | None, principal: str) -> dict[str, Any]:
    """``identity`` of a SigV4-signed REST request (``AWS_IAM`` authorization)."""
    return {
        "accountId": account,
        "caller": principal,
        "user": principal,
        "userArn": arn,
        "accessKey": "ASIAEXAMPLEEXAMPLE",
        "principalOrgId": "o-a1b2c3d4e5",
        "userAgent": "aws-sdk-python/1.34",
    }


USER_ARN = f"arn:aws:iam::{OWN}:user/ana"
SESSION_ARN = f"arn:aws:sts::{OWN}:assumed-role/glue-job/GlueJobRunnerSession"

CASES: dict[str, tuple[dict[str, Any], Caller]] = {
    "rest cognito, two groups": (
        rest({"claims": cognito_claims(**{"cognito:groups": "leads,ops"})}),
        Caller("ana", kind="cognito", groups=frozenset({"leads", "ops"})),
    ),
    "rest cognito, one group": (
        rest({"claims": cognito_claims(**{"cognito:groups": "leads"})}),
        Caller("ana", kind="cognito", groups=frozenset({"leads"})),
    ),
    "rest cognito, no group claim": (
        rest({"claims": cognito_claims()}),
        Caller("ana", kind="cognito"),
    ),
    "rest cognito, email only": (
        rest({"claims": {k: v for k, v in cognito_claims().items() if k != "cognito:username"}}),
        Caller("ana@example.com", kind="cognito"),
    ),
    "rest jwt authorizer, typed claims": (
        rest({"claims": {"sub": "u-1", "username": "ana", "cognito:groups": ["leads", "ops"], "iat": 1}}),
        Caller("ana", kind="cognito", groups=frozenset({"leads", "ops"})),
    ),
    "http api jwt, access token": (
        http_api({"jwt": {"claims": access_token_claims(), "scopes": ["aws.cognito.signin.user.admin"]}}),
        Caller("ana", kind="jwt", groups=frozenset({"leads", "ops"})),
    ),
    "http api jwt, sub only": (
        http_api({"jwt": {"claims": {"sub": "7d8ca528", "iss": "https://idp.example.com/"}, "scopes": None}}),
        Caller("7d8ca528", kind="jwt"),
    ),
    "rest lambda authorizer": (
        rest({"principalId": "ana", "integrationLatency": 12, "team": "data", "groups": "leads"}),
        Caller("ana", kind="authorizer"),  # its context is its own: groups come from Cognito only
    ),
    "iam user": (
        rest(None, **iam_identity(USER_ARN, OWN, "AIDAEXAMPLEEXAMPLE")),
        Caller(USER_ARN, kind="iam", arn=USER_ARN, account=OWN),
    ),
    "iam user, no accountId": (
        rest(None, **iam_identity(USER_ARN, None, "AIDAEXAMPLEEXAMPLE")),
        Caller(USER_ARN, kind="iam", arn=USER_ARN, account=OWN),
    ),
    "iam role session": (
        rest(None, **iam_identity(SESSION_ARN, OWN, "AROAEXAMPLEEXAMPLE:GlueJobRunnerSession")),
        Caller(SESSION_ARN, kind="iam", arn=SESSION_ARN, account=OWN),
    ),
    "iam, accountId and arn disagree": (
        rest(None, **iam_identity(USER_ARN, OTHER, "AIDAEXAMPLEEXAMPLE")),
        Caller(USER_ARN, kind="iam", arn=USER_ARN, account=OTHER),
    ),
    "cognito identity pool, no arn": (
        rest(None, cognitoIdentityId="eu-west-1:0f0e1d2c", accountId=OWN),
        Caller("eu-west-1:0f0e1d2c", kind="iam", account=OWN),
    ),
    "blank claims, a real one behind": (
        rest({"claims": {"cognito:username": " ", "email": "zoe@example.com"}}),
        Caller("zoe@example.com", kind="cognito"),
    ),
    "empty rest claims, jwt claims": (
        {"authorizer": {"claims": {}, "jwt": {"claims": {"username": "ana"}}}},
        Caller("ana", kind="jwt"),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_caller_of_each_authorizer(case: str) -> None:
    context, expected = CASES[case]
    assert caller_from(context, None, trust_body_user=False) == expected
    assert caller_identity(context, None, trust_body_user=False) == expected.name


@pytest.mark.parametrize(
    "context",
    [
        rest(),
        rest({}),
        rest({"claims": {"cognito:username": "", "email": "  "}}),
        rest({"principalId": " "}),
        rest(None, userArn="  "),
        http_api({}),
        {},
        {"authorizer": None, "identity": None},
        {"authorizer": "ana", "identity": "ana"},  # never from API Gateway: nobody, not a crash
    ],
)
def test_nothing_names_nobody(context: dict[str, Any]) -> None:
    assert caller_from(context, None, trust_body_user=False) is None
    assert caller_identity(context, None, trust_body_user=False) is None


def test_the_api_owners_account_is_not_the_callers() -> None:
    caller = caller_from(rest({"claims": cognito_claims()}), None, trust_body_user=False)
    assert caller is not None
    assert (caller.arn, caller.account) == (None, None)


def test_the_body_user_only_in_trusted_mode() -> None:
    context = rest({"claims": cognito_claims()})
    assert caller_from(context, "bob", trust_body_user=True) == Caller("bob", kind="body")
    assert caller_from(rest(), "bob", trust_body_user=True) == Caller("bob", kind="body")
    assert caller_from(context, "bob", trust_body_user=False) == Caller("ana", kind="cognito")
    assert caller_from(rest(), "bob", trust_body_user=False) is None
    # A blank body user is nobody: the context, if any, names the caller.
    assert caller_from(context, "  ", trust_body_user=True) == Caller("ana", kind="cognito")
    assert caller_from(rest(), "  ", trust_body_user=True) is None
    assert caller_identity(context, "bob", trust_body_user=True) == "bob"


@pytest.mark.parametrize(
    ("claim", "groups"),
    [
        ("leads", {"leads"}),
        ("leads,ops", {"leads", "ops"}),  # REST API Cognito authorizer
        ("leads, ops", {"leads", "ops"}),
        ("[leads ops]", {"leads", "ops"}),  # HTTP API JWT authorizer
        ("[leads]", {"leads"}),
        ("[leads, ops]", {"leads", "ops"}),
        ('["leads","ops"]', {"leads", "ops"}),  # a JSON array in a string
        ('["leads", "Data Team"]', {"leads", "Data Team"}),  # JSON keeps what a split would break
        (["leads", "ops"], {"leads", "ops"}),  # REST API JWT authorizer: a real array
        (("leads",), {"leads"}),
        (["leads", 7, None, " ", ""], {"leads"}),
        (["a,b"], {"a,b"}),  # an array is taken as it is
        ("Leads,équipe-données", {"Leads", "équipe-données"}),  # no case folding, Unicode kept
        ("[]", set()),
        ("", set()),
        ("   ", set()),
        (",,", set()),
        (None, set()),
        (42, set()),
        ({"leads": True}, set()),
        ("[leads", {"[leads"}),  # not bracketed: one odd name, which no sane entry names
    ],
)
def test_groups_in_every_form_api_gateway_passes_them(claim: Any, groups: set[str]) -> None:
    assert groups_from(claim) == frozenset(groups)


# --- from a request to a decision: what the services will do -------------------------------------


def decide(context: dict[str, Any], approvers: list[str]) -> bool:
    own = own_account_from(f"arn:aws:lambda:eu-west-1:{OWN}:function:flux-control")
    caller = caller_from(context, None, trust_body_user=False)
    return may("decide", caller, table="tb_x", approvers=approvers, own_account=own).allowed


def test_groups_from_each_token_form_allow_a_group_entry() -> None:
    assert decide(CASES["rest cognito, two groups"][0], ["group:ops"])
    assert decide(CASES["rest jwt authorizer, typed claims"][0], ["group:ops"])
    assert decide(CASES["http api jwt, access token"][0], ["group:ops"])
    assert not decide(CASES["rest cognito, one group"][0], ["group:ops"])
    assert not decide(CASES["rest lambda authorizer"][0], ["group:leads"])


def test_an_iam_user_of_another_account_does_not_approve_for_its_bare_name() -> None:
    """Issue 17's bug: IAM user ``ana`` of another account approved for ``approvers: [ana]``."""
    foreign = f"arn:aws:iam::{OTHER}:user/ana"
    assert not decide(rest(None, **iam_identity(foreign, OTHER, "AIDAOTHER")), ["ana"])
    assert not decide(rest(None, **iam_identity(foreign, None, "AIDAOTHER")), ["ana"])
    assert decide(CASES["iam user"][0], ["ana"])
    assert decide(CASES["iam user, no accountId"][0], ["ana"])
    assert not decide(CASES["iam, accountId and arn disagree"][0], ["ana"])


def test_a_glue_jobs_role_session_is_its_role() -> None:
    assert decide(CASES["iam role session"][0], [f"arn:aws:iam::{OWN}:role/service-role/glue-job"])
    assert not decide(CASES["iam role session"][0], ["glue-job", "GlueJobRunnerSession"])
