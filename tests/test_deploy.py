"""The AWS deployment: the SAM template (cfn-lint, checkov and its structure), its alarms, the database secret."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from moto import mock_aws
from sqlalchemy import make_url, text

from controller import wiring
from controller.aws.clients import client
from controller.aws.secrets import SecretFormatError, database_url_from_secret, runtime_database_url
from controller.core.effects import schedule_name
from controller.lambda_function import GLUE_EVENT, STEP_FUNCTIONS_EVENT
from controller.services.completion import GLUE_FAILURE, GLUE_SUCCESS, SFN_FAILURE, SFN_SUCCESS
from tests.conftest import POSTGRES_URL
from tests.deploy_support import NO_VALUE, TEMPLATE, as_list, load_builder, load_template, statements

REPO = Path(__file__).resolve().parent.parent
FUNCTION_ARN = {
    "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${FunctionName}"
}
#: What every route of the API integrates with: the function, named by the name the stack gives it.
INVOCATIONS = {
    "Fn::Sub": "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/"
    "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${FunctionName}/invocations"
}
#: The console's URL as the API serves it (its REST API id, the region, the stage).
CONSOLE_URL = "https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${StageName}/console"


# --- loading -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: body for name, body in template["Resources"].items() if body["Type"] == type_}


def references(node: Any) -> set[str]:
    """Names a node refers to: ``Ref``, ``Fn::GetAtt`` and ``${Name}`` / ``${Name.Attribute}`` in ``Fn::Sub``."""
    if isinstance(node, list):
        return set().union(*map(references, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found: set[str] = set()
    for key, value in node.items():
        if key == "Ref" and isinstance(value, str):
            found.add(value)
        elif key == "Fn::GetAtt":
            found.add(value[0])
        elif key == "Fn::Sub":
            text = value if isinstance(value, str) else value[0]
            found |= {match.split(".")[0] for match in re.findall(r"\$\{([^}!]+)\}", text)}
            found |= references(value[1:] if isinstance(value, list) else [])
        elif key == "DependsOn":
            found |= set(as_list(value))
        else:
            found |= references(value)
    return found


def depends_on(template: dict[str, Any], name: str) -> set[str]:
    """Every resource ``name`` needs before it can be created, transitively."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        for referenced in references(template["Resources"][pending.pop()]) & set(template["Resources"]):
            if referenced not in seen:
                seen.add(referenced)
                pending.append(referenced)
    return seen


# --- cfn-lint ----------------------------------------------------------------------------------------


def cfn_lint_command() -> str:
    """cfn-lint beside the running Python (the venv's), else on PATH; missing is a failure, not a skip."""
    beside = Path(sys.executable).parent / "cfn-lint"
    found = str(beside) if beside.is_file() else shutil.which("cfn-lint")
    if found is None:
        pytest.fail("cfn-lint is not installed; it is in the dev extra: pip install -e '.[dev]'")
    return found


def test_cfn_lint_passes_on_the_template() -> None:
    result = subprocess.run(
        [cfn_lint_command(), "--", str(TEMPLATE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"cfn-lint exited {result.returncode}:\n{result.stdout}{result.stderr}"


def test_cfn_lint_is_not_vacuous(tmp_path: Path) -> None:
    """The same call fails on a broken copy, so a pass above means the template was really checked."""
    broken = tmp_path / "template.yaml"
    broken.write_text(
        TEMPLATE.read_text(encoding="utf-8").replace("Runtime: python3.11", "Runtime: python2.7"),
        encoding="utf-8",
    )
    result = subprocess.run(
        [cfn_lint_command(), "--", str(broken)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode != 0
    assert "python2.7" in result.stdout


# --- structure ---------------------------------------------------------------------------------------


def test_the_function_runs_the_handler_on_the_runtime_the_zip_is_built_for(template: dict[str, Any]) -> None:
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    (function,) = resources(template, "AWS::Serverless::Function").values()
    props = function["Properties"]
    assert props["Handler"] == "controller.lambda_function.lambda_handler"
    assert props["Runtime"] == f"python{load_builder().PYTHON_VERSION}"
    assert props["Architectures"] == [{"Ref": "Architecture"}]
    architecture = template["Parameters"]["Architecture"]
    assert architecture["Default"] == "x86_64"
    assert set(architecture["AllowedValues"]) == set(load_builder().PLATFORMS)  # the builder builds each
    assert props["MemorySize"] == 512
    assert (TEMPLATE.parent / props["CodeUri"]).resolve() == load_builder().DEFAULT_OUT
    assert props["FunctionName"] == {"Ref": "FunctionName"}
    assert props["Role"] == {"Fn::GetAtt": ["FunctionRole", "Arn"]}


def test_the_function_environment_names_itself_without_a_circular_reference(template: dict[str, Any]) -> None:
    variables = template["Resources"]["Function"]["Properties"]["Environment"]["Variables"]
    assert variables == {
        "FLUX_SCHEDULE_GROUP": {"Ref": "ScheduleGroup"},
        # Built from the name the stack sets, not !GetAtt Function.Arn (the function cannot name itself).
        "FLUX_FUNCTION_ARN": FUNCTION_ARN,
        "FLUX_SCHEDULER_ROLE_ARN": {"Fn::GetAtt": ["SchedulerRole", "Arn"]},
        "FLUX_EVENT_BUS": {"Ref": "EventBusName"},
        "FLUX_TRUST_BODY_USER": "false",
        "FLUX_DATABASE_SECRET_ARN": {"Ref": "DatabaseSecretArn"},
        "FLUX_DEAD_LETTER_ARN": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        # Empty by default: http tasks may post to any https host (controller/aws/http_tasks.py).
        "FLUX_HTTP_ALLOWED_HOSTS": {"Ref": "HttpAllowedHosts"},
        "FLUX_TRACING": {"Fn::If": ["UseTracing", "true", "false"]},
        "POWERTOOLS_SERVICE_NAME": "flux-control",
        "POWERTOOLS_METRICS_NAMESPACE": "FluxControl",
        # The console's browser login, only with ConsoleLogin=cognito.
        "FLUX_COGNITO_ISSUER": {
            "Fn::If": [
                "UseConsoleLogin",
                {"Fn::Sub": "https://cognito-idp.${AWS::Region}.${AWS::URLSuffix}/${ConsoleUserPool}"},
                NO_VALUE,
            ]
        },
        "FLUX_COGNITO_CLIENT_ID": {"Fn::If": ["UseConsoleLogin", {"Ref": "ConsoleUserPoolClient"}, NO_VALUE]},
        "FLUX_COGNITO_DOMAIN": {
            "Fn::If": [
                "UseConsoleLogin",
                {"Fn::Sub": "https://${ConsoleUserPoolDomain}.auth.${AWS::Region}.amazoncognito.com"},
                NO_VALUE,
            ]
        },
        "FLUX_CONSOLE_URL": {"Fn::If": ["UseConsoleLogin", {"Fn::Sub": CONSOLE_URL}, NO_VALUE]},
    }
    # The API's URL names the REST API, whose routes name the function by its name (not its Arn): the
    # function comes after the API and its user pool client, and nothing of theirs needs the function.
    assert depends_on(template, "Function") == {
        "FunctionRole",
        "SchedulerRole",
        "ScheduleGroup",
        "LogGroup",
        "DeadLetterQueue",
        "Api",
        "ApiAccessLogGroup",
        "ConsoleUserPool",
        "ConsoleUserPoolClient",
        "ConsoleUserPoolDomain",
    }
    assert "Function" not in depends_on(template, "Api") | depends_on(template, "ConsoleUserPoolClient")
    assert [name for name in template["Resources"] if name in depends_on(template, name)] == []
    assert template["Resources"]["ScheduleGroup"]["Properties"]["Name"] == {"Ref": "ScheduleGroupName"}
    assert template["Parameters"]["ScheduleGroupName"]["Default"] == "flux-control"


@pytest.mark.parametrize(
    ("rule", "source", "detail_type", "field", "final_states"),
    [
        ("GlueJobStateRule", "aws.glue", GLUE_EVENT, "state", GLUE_SUCCESS | GLUE_FAILURE),
        ("StepFunctionsStateRule", "aws.states", STEP_FUNCTIONS_EVENT, "status", SFN_SUCCESS | SFN_FAILURE),
    ],
)
def test_state_change_rules_send_the_final_states_the_runtime_settles_to_the_function(
    template: dict[str, Any], rule: str, source: str, detail_type: str, field: str, final_states: set[str]
) -> None:
    body = template["Resources"][rule]
    assert body["Type"] == "AWS::Events::Rule"
    pattern = body["Properties"]["EventPattern"]
    assert pattern["source"] == [source]
    assert pattern["detail-type"] == [detail_type]
    assert set(pattern["detail"][field]) == final_states
    (target,) = body["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["Function", "Arn"]}
    permissions = [
        props
        for props in (p["Properties"] for p in resources(template, "AWS::Lambda::Permission").values())
        if props["SourceArn"] == {"Fn::GetAtt": [rule, "Arn"]}
    ]
    assert permissions == [
        {
            "FunctionName": {"Fn::GetAtt": ["Function", "Arn"]},
            "Action": "lambda:InvokeFunction",
            "Principal": "events.amazonaws.com",
            "SourceArn": {"Fn::GetAtt": [rule, "Arn"]},
        }
    ]


def test_the_scheduler_role_is_assumable_by_the_scheduler_and_invokes_only_this_function_or_dead_letters(
    template: dict[str, Any],
) -> None:
    role = template["Resources"]["SchedulerRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    (policy,) = role["Policies"]
    assert [statement for _, statement in statements(policy["PolicyDocument"])] == [
        {
            "Sid": "InvokeThisFunctionOnly",
            "Effect": "Allow",
            "Action": "lambda:InvokeFunction",
            "Resource": FUNCTION_ARN,
        },
        {
            "Sid": "UndeliveredToTheDeadLetterQueue",
            "Effect": "Allow",
            "Action": "sqs:SendMessage",
            "Resource": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        },
    ]


def test_the_sweep_runs_every_five_minutes_with_the_sweep_action(template: dict[str, Any]) -> None:
    (schedule,) = resources(template, "AWS::Scheduler::Schedule").values()
    props = schedule["Properties"]
    assert props["ScheduleExpression"] == "rate(5 minutes)"
    assert props["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert props["GroupName"] == {"Ref": "ScheduleGroup"}
    assert json.loads(props["Target"]["Input"]) == {"flux_action": "sweep"}
    assert props["Target"]["Arn"] == {"Fn::GetAtt": ["Function", "Arn"]}
    assert props["Target"]["RoleArn"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}


def test_the_log_group_is_the_functions_with_a_retention_and_json_logs(template: dict[str, Any]) -> None:
    log_group = template["Resources"]["LogGroup"]
    assert log_group["Properties"] == {
        "LogGroupName": {"Fn::Sub": "/aws/lambda/${FunctionName}"},
        "RetentionInDays": {"Ref": "LogRetentionDays"},
    }
    assert template["Parameters"]["LogRetentionDays"]["Default"] == 30
    assert template["Resources"]["Function"]["Properties"]["LoggingConfig"] == {
        "LogFormat": "JSON",
        "LogGroup": {"Ref": "LogGroup"},  # created before the function: it is referenced
        "ApplicationLogLevel": "INFO",
        "SystemLogLevel": "WARN",
    }


#: Each statement of the function's policy and the condition it exists under: the listed targets and
#: the optional parts (a KMS key, a VPC) are granted only when given. Which actions they hold comes from
#: the code itself: tests/test_iam_from_code.py.
FUNCTION_STATEMENTS = {
    "WriteOwnLogs": None,
    "ReadDatabaseUrl": None,
    "DecryptDatabaseUrl": "HasSecretKmsKey",
    "ManageRunSchedules": None,
    "PassSchedulerRole": None,
    "PublishRunStateChanges": None,
    "StartListedGlueJobs": "HasGlueJobs",
    "StartListedStateMachines": "HasStateMachines",
    "WatchListedStateMachineExecutions": "HasStateMachines",
    "SendToListedQueues": "HasQueues",
    "InvokeListedFunctions": "HasTargetFunctions",
    "PutEventsOnListedBuses": "HasTaskEventBuses",
    "ReadListedHttpTaskSecrets": "HasHttpTaskSecrets",
    "FailedInvocationsToTheDeadLetterQueue": None,
    "WriteTraces": "UseTracing",
    "AttachToVpc": "InVpc",
}


@pytest.fixture(scope="module")
def function_statements(template: dict[str, Any]) -> dict[str, tuple[str | None, dict[str, Any]]]:
    (policy,) = template["Resources"]["FunctionRole"]["Properties"]["Policies"]
    found = {
        statement["Sid"]: (condition, statement)
        for condition, statement in statements(policy["PolicyDocument"])
    }
    assert len(found) == len(policy["PolicyDocument"]["Statement"]), "every statement has its own Sid"
    return found


def test_each_statement_of_the_function_policy_exists_under_its_condition(
    function_statements: dict[str, tuple[str | None, dict[str, Any]]],
) -> None:
    conditions = {sid: condition for sid, (condition, _) in function_statements.items()}
    assert conditions == FUNCTION_STATEMENTS
    assert all(statement["Effect"] == "Allow" for _, statement in function_statements.values())


def test_no_resource_is_a_bare_star_except_the_vpc_attachment_aws_requires(
    function_statements: dict[str, tuple[str | None, dict[str, Any]]],
) -> None:
    """ec2:CreateNetworkInterface and friends, and X-Ray's actions, support no resource-level
    permissions: Lambda's VPC attachment needs them on "*", only when the function runs in a VPC, and
    tracing only when it is on. Nothing else may.
    """
    stars = {
        sid for sid, (_, statement) in function_statements.items() if "*" in as_list(statement["Resource"])
    }
    assert stars == {"AttachToVpc", "WriteTraces"}
    assert function_statements["AttachToVpc"][0] == "InVpc"
    assert function_statements["WriteTraces"][0] == "UseTracing"


def test_each_statement_is_limited_to_this_stacks_resources_or_the_listed_ones(
    function_statements: dict[str, tuple[str | None, dict[str, Any]]],
) -> None:
    resource = {sid: statement["Resource"] for sid, (_, statement) in function_statements.items()}
    assert resource["WriteOwnLogs"] == {"Fn::Sub": "${LogGroup.Arn}"}
    assert resource["ReadDatabaseUrl"] == {"Ref": "DatabaseSecretArn"}
    assert resource["DecryptDatabaseUrl"] == {"Ref": "DatabaseSecretKmsKeyArn"}
    # Only run schedules (flux-run-…) in the group: the function cannot touch the sweep schedule.
    assert resource["ManageRunSchedules"]["Fn::Sub"].endswith(":schedule/${ScheduleGroup}/flux-run-*")
    assert schedule_name(12345, "t" * 80).startswith("flux-run-")
    assert resource["PassSchedulerRole"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    assert function_statements["PassSchedulerRole"][1]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}
    }
    assert resource["PublishRunStateChanges"]["Fn::Sub"].endswith(":event-bus/${EventBusName}")
    # Each listed name becomes arn:*:glue:*:*:job/<name>, the region pinned by a condition.
    assert references(resource["StartListedGlueJobs"]) == {"GlueJobNames"}
    assert "arn:*:glue:*:*:job/" in json.dumps(resource["StartListedGlueJobs"])
    assert function_statements["StartListedGlueJobs"][1]["Condition"] == {
        "StringEquals": {"aws:RequestedRegion": {"Ref": "AWS::Region"}}
    }
    assert resource["StartListedStateMachines"] == {"Ref": "StateMachineArns"}
    assert resource["SendToListedQueues"] == {"Ref": "QueueArns"}
    assert resource["InvokeListedFunctions"] == {"Ref": "TargetFunctionArns"}
    assert resource["PutEventsOnListedBuses"] == {"Ref": "TaskEventBusArns"}
    assert resource["ReadListedHttpTaskSecrets"] == {"Ref": "HttpTaskSecretArns"}
    assert resource["FailedInvocationsToTheDeadLetterQueue"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}


def test_the_listed_targets_default_to_none_so_nothing_is_granted_unasked(template: dict[str, Any]) -> None:
    for name, condition in [
        ("GlueJobNames", "HasGlueJobs"),
        ("StateMachineArns", "HasStateMachines"),
        ("QueueArns", "HasQueues"),
        ("TargetFunctionArns", "HasTargetFunctions"),
        ("TaskEventBusArns", "HasTaskEventBuses"),
        ("HttpTaskSecretArns", "HasHttpTaskSecrets"),
    ]:
        parameter = template["Parameters"][name]
        assert (parameter["Type"], parameter["Default"]) == ("CommaDelimitedList", "")
        assert template["Conditions"][condition] == {
            "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": name}]}, ""]}]
        }


def test_every_route_is_authorised_by_iam_unless_a_cognito_pool_is_given(template: dict[str, Any]) -> None:
    assert template["Conditions"]["UseCognito"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "CognitoUserPoolArn"}, ""]}]
    }
    assert template["Parameters"]["CognitoUserPoolArn"]["Default"] == ""
    body = template["Resources"]["Api"]["Properties"]["DefinitionBody"]
    condition, cognito, iam = body["securityDefinitions"]["flux"]["Fn::If"]
    assert condition == "UseCognito"
    assert iam["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert cognito["x-amazon-apigateway-authtype"] == "cognito_user_pools"
    assert cognito["x-amazon-apigateway-authorizer"]["providerARNs"] == [{"Ref": "CognitoUserPoolArn"}]
    assert list(body["paths"]) == ["/{proxy+}", "/console", "/console/{proxy+}"]
    (method,) = body["paths"]["/{proxy+}"].values()
    assert method["security"] == [{"flux": []}]
    assert "security" not in body, "no API-wide default: each route says how it is authorised"
    for path, methods in body["paths"].items():
        for verb, operation in methods.items():
            integration = operation["x-amazon-apigateway-integration"]
            assert integration["type"] == "aws_proxy", (path, verb)
            assert integration["uri"] == INVOCATIONS, (path, verb)
    (api_permission,) = [
        p["Properties"]
        for p in resources(template, "AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "apigateway.amazonaws.com"
    ]
    assert "${Api}" in api_permission["SourceArn"]["Fn::Sub"]


def test_only_the_console_skips_the_authoriser_and_only_with_its_browser_login(
    template: dict[str, Any],
) -> None:
    """A browser cannot sign requests: with ConsoleLogin=cognito the console's GET pages and POST forms
    go to the function unauthorised, which authenticates the login cookie itself. Nothing else does."""
    assert template["Parameters"]["ConsoleLogin"]["AllowedValues"] == ["cognito", "none"]
    assert template["Parameters"]["ConsoleLogin"]["Default"] == "cognito"
    assert template["Conditions"]["UseConsoleLogin"] == {"Fn::Equals": [{"Ref": "ConsoleLogin"}, "cognito"]}
    paths = template["Resources"]["Api"]["Properties"]["DefinitionBody"]["paths"]
    unauthorised = {
        (path, verb)
        for path, methods in paths.items()
        for verb, operation in methods.items()
        if operation["security"] != [{"flux": []}]
    }
    assert unauthorised == {(p, v) for p in ("/console", "/console/{proxy+}") for v in ("get", "post")}
    for path, verb in unauthorised:
        assert paths[path][verb]["security"] == {"Fn::If": ["UseConsoleLogin", [], [{"flux": []}]]}


@pytest.mark.parametrize(
    "path",
    ["/console/../runs", "/console/%2e%2e/runs", "/console/..%2fruns", "/console/./health", "/console"],
)
def test_a_request_the_console_routes_let_through_reaches_the_console_never_the_json_api(
    engine: Any, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """API Gateway sends the unauthorised routes only paths under /console; the function serves every
    such path with the console (HTML), whatever dot segments it holds, and without a login shows nothing."""
    from tests.api_support import TABLES, api_event
    from tests.runtime_support import running_lambda

    with running_lambda(engine, TABLES, monkeypatch) as flux:
        for method in ("GET", "POST"):
            event = api_event(method, path, authorizer={})
            event["resource"] = "/console" if path == "/console" else "/console/{proxy+}"
            answer = flux.invoke(event)
            headers = {k.lower(): str(v) for k, v in (answer.get("headers") or {}).items()}
            for name, values in (answer.get("multiValueHeaders") or {}).items():
                headers[name.lower()] = str(values[-1])
            assert headers["content-type"].startswith("text/html"), (method, path, answer)
            assert answer["statusCode"] in (403, 404), (method, path, answer["statusCode"])
            assert '"runs"' not in answer["body"] and '"status": "ok"' not in answer["body"]


def test_the_console_login_is_a_user_pool_of_invited_users_and_a_public_pkce_client(
    template: dict[str, Any],
) -> None:
    names = ("ConsoleUserPool", "ConsoleUserPoolDomain", "ConsoleUserPoolClient")
    for name in names:
        assert template["Resources"][name]["Condition"] == "UseConsoleLogin", name
    pool = template["Resources"]["ConsoleUserPool"]
    assert (pool["DeletionPolicy"], pool["UpdateReplacePolicy"]) == ("Retain", "Retain")  # users are kept
    props = pool["Properties"]
    assert props["AdminCreateUserConfig"] == {"AllowAdminCreateUserOnly": True}  # no sign-up
    # Definitions name users by cognito:username (DESIGN §7): a name of the administrator's choice, the
    # email an alias. With UsernameAttributes [email] that claim would be a random id.
    assert props["AliasAttributes"] == ["email"] and "UsernameAttributes" not in props
    assert props["MfaConfiguration"] == "OPTIONAL" and props["EnabledMfas"] == ["SOFTWARE_TOKEN_MFA"]
    assert props["DeletionProtection"] == "ACTIVE"
    password = props["Policies"]["PasswordPolicy"]
    assert password["MinimumLength"] >= 12
    assert all(password[f"Require{kind}"] for kind in ("Lowercase", "Uppercase", "Numbers", "Symbols"))
    client = template["Resources"]["ConsoleUserPoolClient"]["Properties"]
    assert client["UserPoolId"] == {"Ref": "ConsoleUserPool"}
    assert client["GenerateSecret"] is False  # public: PKCE binds the code to the browser
    assert client["AllowedOAuthFlowsUserPoolClient"] is True
    assert client["AllowedOAuthFlows"] == ["code"]
    assert client["AllowedOAuthScopes"] == ["openid", "email", "profile"]  # browser_login.SCOPES
    assert client["SupportedIdentityProviders"] == ["COGNITO"]
    # Exactly where controller/console/browser_login.py sends the browser back to.
    assert client["CallbackURLs"] == [{"Fn::Sub": f"{CONSOLE_URL}/callback"}]
    assert client["LogoutURLs"] == [{"Fn::Sub": f"{CONSOLE_URL}/"}]
    assert client["ExplicitAuthFlows"] == ["ALLOW_REFRESH_TOKEN_AUTH"]  # the hosted UI only
    assert client["PreventUserExistenceErrors"] == "ENABLED"
    assert (client["IdTokenValidity"], client["TokenValidityUnits"]["IdToken"]) == (1, "hours")
    domain = template["Resources"]["ConsoleUserPoolDomain"]["Properties"]
    assert domain["UserPoolId"] == {"Ref": "ConsoleUserPool"}
    assert domain["Domain"]["Fn::If"][:2] == [
        "HasConsoleLoginDomainPrefix",
        {"Ref": "ConsoleLoginDomainPrefix"},
    ]
    outputs = template["Outputs"]
    assert outputs["ConsoleUrl"] == {
        "Condition": "UseConsoleLogin",
        "Description": outputs["ConsoleUrl"]["Description"],
        "Value": {"Fn::Sub": f"{CONSOLE_URL}/"},
    }
    assert outputs["ConsoleUserPoolId"]["Value"] == {"Ref": "ConsoleUserPool"}


def test_the_console_login_settings_are_the_ones_the_code_reads(template: dict[str, Any]) -> None:
    from controller.console import browser_login, tokens

    variables = template["Resources"]["Function"]["Properties"]["Environment"]["Variables"]
    names = {tokens.ISSUER_ENV, tokens.CLIENT_ID_ENV, browser_login.DOMAIN_ENV, browser_login.CONSOLE_URL_ENV}
    assert names <= set(variables)
    assert browser_login.CLIENT_ID_ENV == tokens.CLIENT_ID_ENV
    client = template["Resources"]["ConsoleUserPoolClient"]["Properties"]
    assert client["AllowedOAuthScopes"] == list(browser_login.SCOPES)
    assert 3600 * client["IdTokenValidity"] == browser_login.ID_TOKEN_MAX_AGE_SECONDS


def test_the_outputs_give_the_api_url_and_the_function_arn(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert "${Api}.execute-api." in outputs["ApiUrl"]["Value"]["Fn::Sub"]
    assert outputs["FunctionArn"]["Value"] == {"Fn::GetAtt": ["Function", "Arn"]}


# --- the builder, fast parts ---------------------------------------------------------------------------


# --- hardening: time limits, dead letters, concurrency, tracing, alarms, checkov ------------------------


def test_an_api_request_never_outlives_api_gateway(template: dict[str, Any]) -> None:
    """API Gateway gives up after 29 s: the function's own limit, and its AWS calls', are shorter."""
    from controller.aws.clients import CLIENT_SETTINGS

    props = template["Resources"]["Function"]["Properties"]
    assert props["Timeout"] < 29
    assert CLIENT_SETTINGS["connect_timeout"] + CLIENT_SETTINGS["read_timeout"] < props["Timeout"]
    paths = template["Resources"]["Api"]["Properties"]["DefinitionBody"]["paths"]
    for path, methods in paths.items():
        for verb, operation in methods.items():
            assert operation["x-amazon-apigateway-integration"]["timeoutInMillis"] == 29000, (path, verb)


def test_everything_that_delivers_to_the_function_has_a_dead_letter_queue(template: dict[str, Any]) -> None:
    queue = {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    function = template["Resources"]["Function"]["Properties"]
    assert function["DeadLetterQueue"] == {"Type": "SQS", "TargetArn": queue}  # asynchronous invocations
    for name in ("GlueJobStateRule", "StepFunctionsStateRule"):
        (target,) = template["Resources"][name]["Properties"]["Targets"]
        assert target["DeadLetterConfig"] == {"Arn": queue}, name
    assert template["Resources"]["SweepSchedule"]["Properties"]["Target"]["DeadLetterConfig"] == {
        "Arn": queue
    }
    # Run schedules are written by the code: it is told where to send what it cannot deliver.
    assert function["Environment"]["Variables"]["FLUX_DEAD_LETTER_ARN"] == queue
    (policy,) = template["Resources"]["SchedulerRole"]["Properties"]["Policies"]
    assert {
        "Sid": "UndeliveredToTheDeadLetterQueue",
        "Effect": "Allow",
        "Action": "sqs:SendMessage",
        "Resource": queue,
    } in policy["PolicyDocument"]["Statement"]
    statement = template["Resources"]["DeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert template["Resources"]["DeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] is True


def test_a_run_schedule_names_the_dead_letter_queue_when_one_is_set() -> None:
    from controller.aws.scheduler import EventBridgeScheduler
    from controller.aws.settings import AwsSettings
    from controller.core.effects import ScheduleRequest

    class Recorder:
        def __init__(self) -> None:
            self.created: list[dict[str, Any]] = []

        def create_schedule(self, **params: Any) -> None:
            self.created.append(params)

    settings = AwsSettings.from_env(
        {"FLUX_FUNCTION_ARN": "arn:f", "FLUX_SCHEDULER_ROLE_ARN": "arn:r", "FLUX_DEAD_LETTER_ARN": "arn:dlq"}
    )
    recorder = Recorder()
    request = ScheduleRequest("flux-run-1-t", 1, datetime(2030, 1, 1, tzinfo=UTC))
    EventBridgeScheduler(settings, recorder).put(request)
    EventBridgeScheduler(AwsSettings("g", "arn:f", "arn:r"), recorder).put(request)
    assert recorder.created[0]["Target"]["DeadLetterConfig"] == {"Arn": "arn:dlq"}
    assert "DeadLetterConfig" not in recorder.created[1]["Target"]


def test_concurrency_is_reserved_and_its_connections_documented(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["ReservedConcurrency"]
    assert template["Resources"]["Function"]["Properties"]["ReservedConcurrentExecutions"] == {
        "Ref": "ReservedConcurrency"
    }
    assert "6 database connections" in parameter["Description"] and "RDS Proxy" in parameter["Description"]
    assert parameter["Default"] * 6 <= 100  # PostgreSQL's default max_connections, less room for CI


def test_tracing_is_an_option_for_the_function_and_the_api(template: dict[str, Any]) -> None:
    assert template["Conditions"]["UseTracing"] == {"Fn::Equals": [{"Ref": "Tracing"}, "Active"]}
    assert template["Parameters"]["Tracing"]["Default"] == "Disabled"
    props = template["Resources"]["Function"]["Properties"]
    assert props["Tracing"] == {"Fn::If": ["UseTracing", "Active", "PassThrough"]}
    assert props["Environment"]["Variables"]["FLUX_TRACING"] == {"Fn::If": ["UseTracing", "true", "false"]}
    assert template["Resources"]["Api"]["Properties"]["TracingEnabled"] == {
        "Fn::If": ["UseTracing", True, False]
    }


def test_the_api_writes_access_logs(template: dict[str, Any]) -> None:
    setting = template["Resources"]["Api"]["Properties"]["AccessLogSetting"]
    assert setting["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    line = json.loads(setting["Format"])
    assert {"requestId", "ip", "caller", "method", "path", "status", "latency"} <= set(line)
    assert template["Resources"]["ApiGatewayAccount"]["Condition"] == "CreateApiGatewayCloudWatchRole"


#: Each alarm: the metric it watches.
ALARMS = {
    "FailedRunsAlarm": ("FluxControl", "RunsFailed"),
    "SweepErrorsAlarm": ("FluxControl", "SweepErrors"),
    "DeadLettersAlarm": ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
    "Api5xxAlarm": ("AWS/ApiGateway", "5XXError"),
}


def test_the_alarms_watch_failed_runs_sweep_errors_dead_letters_and_5xx(template: dict[str, Any]) -> None:
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    assert {
        name: (a["Properties"]["Namespace"], a["Properties"]["MetricName"]) for name, a in alarms.items()
    } == ALARMS
    for alarm in alarms.values():
        props = alarm["Properties"]
        assert props["AlarmActions"] == {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], NO_VALUE]}
        assert (props["Threshold"], props["TreatMissingData"]) == (1, "notBreaching")
        if props["Namespace"] == "FluxControl":  # the function's own EMF metrics: its service dimension
            assert props["Dimensions"] == [{"Name": "service", "Value": "flux-control"}]


def test_the_function_emits_the_metrics_the_alarms_watch(
    engine: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.services import sweep
    from tests.api_support import TABLES, manual
    from tests.runtime_support import running_lambda

    with running_lambda(engine, TABLES, monkeypatch) as flux:
        glued = manual(flux, "tb_b", 202306)  # its Glue task starts, then the job fails
        job_run = flux.ok("GET", f"/runs/{glued['id']}")["run"]["tasks"][0]["external_id"]
        capsys.readouterr()
        flux.invoke(
            {"detail-type": "Glue Job State Change", "detail": {"jobRunId": job_run, "state": "FAILED"}}
        )
        emitted = _emf(capsys.readouterr().out)

        def broken(_runtime: Any) -> Any:
            raise RuntimeError("database gone")

        monkeypatch.setattr(sweep, "sweep", broken)
        with pytest.raises(RuntimeError, match="database gone"):  # raised again: the scheduler retries
            flux.invoke({"flux_action": "sweep"})
        emitted |= _emf(capsys.readouterr().out)
    watched = {metric for namespace, metric in ALARMS.values() if namespace == "FluxControl"}
    assert watched <= emitted, (watched, emitted)


def _emf(output: str) -> set[str]:
    """The metric names of the EMF lines in ``output`` whose namespace is FluxControl, with the service
    dimension the alarms name."""
    names: set[str] = set()
    for line in output.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        document = json.loads(line)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            if directive["Namespace"] == "FluxControl" and ["service"] in directive["Dimensions"]:
                assert document["service"] == "flux-control"
                names |= {m["Name"] for m in directive["Metrics"] if document.get(m["Name"])}
    return names


CHECKOV = REPO / ".venv" / "tools" / "checkov" / "bin" / "checkov"


def test_checkov_passes_and_every_skip_gives_its_reason() -> None:
    """Installed by `make install` in a venv of its own (it pins an older boto3 than the project's)."""
    checkov = shutil.which("checkov") or (str(CHECKOV) if CHECKOV.exists() else None)
    assert checkov, f"checkov is not installed: run `make install` (it installs {CHECKOV})"
    done = subprocess.run(
        [checkov, "-f", str(TEMPLATE), "--framework", "cloudformation", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = json.loads(done.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["passed"] > 20
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    # The checks the issue names pass outright: dead-letter queues, concurrency, access logs.
    assert not skipped & {"CKV_AWS_116", "CKV_AWS_115", "CKV_AWS_76"}
    for resource in template_resources_with_skips():
        for skip in resource:
            assert len(skip.get("comment", "")) > 30, skip


def template_resources_with_skips() -> list[list[dict[str, Any]]]:
    return [
        body["Metadata"]["checkov"]["skip"]
        for body in load_template()["Resources"].values()
        if "checkov" in body.get("Metadata", {})
    ]


# --- the database URL from Secrets Manager ---------------------------------------------------------------

URL = "postgresql+psycopg://flux:s3cr3t-pw@db.internal:5432/flux"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Fake credentials, a fresh client cache, moto; yields a Secrets Manager client."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "FLUX_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    client.cache_clear()
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1")
    client.cache_clear()
    parameters.clear_caches()  # type: ignore[no-untyped-call]


def secret(secrets: Any, value: str, name: str = "flux/database") -> str:
    return str(secrets.create_secret(Name=name, SecretString=value)["ARN"])


def test_a_secret_holding_the_url_itself_gives_the_url(aws: Any) -> None:
    assert database_url_from_secret(secret(aws, f"  {URL}\n")) == URL


def test_a_json_secret_gives_its_url_key(aws: Any) -> None:
    arn = secret(aws, json.dumps({"url": URL, "username": "flux", "note": "rotated monthly"}))
    assert database_url_from_secret(arn) == URL
    assert database_url_from_secret(arn, client=aws) == URL


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (json.dumps({"username": "flux", "password": "s3cr3t-pw"}), "without a non-empty string 'url'"),
        (json.dumps({"url": ""}), "without a non-empty string 'url'"),
        ('{"url": "postgresql://flux:s3cr3t-pw@db/flux"', "is not valid JSON"),
        ("   ", "is empty"),
    ],
)
def test_a_secret_of_another_shape_is_refused_without_showing_its_value(
    aws: Any, value: str, complaint: str
) -> None:
    arn = secret(aws, value)
    with pytest.raises(SecretFormatError) as raised:
        database_url_from_secret(arn)
    assert complaint in str(raised.value)
    assert arn in str(raised.value)
    assert "s3cr3t" not in str(raised.value)


def test_a_missing_secret_is_the_aws_error(aws: Any) -> None:
    with pytest.raises(GetParameterError, match="ResourceNotFoundException"):
        database_url_from_secret("arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf")


def test_the_secret_is_read_through_powertools_and_cached_for_its_max_age(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    arn = secret(aws, URL)
    assert database_url_from_secret(arn) == URL
    rotated = URL.replace("s3cr3t-pw", "n3w-pw")
    aws.put_secret_value(SecretId=arn, SecretString=rotated)
    assert database_url_from_secret(arn) == URL  # cached (FLUX_SECRET_MAX_AGE, default 300 s)
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    monkeypatch.setenv("FLUX_SECRET_MAX_AGE", "0")  # cached for no time: every read asks again
    assert database_url_from_secret(arn) == rotated
    again = rotated.replace("n3w-pw", "n3w3r-pw")
    aws.put_secret_value(SecretId=arn, SecretString=again)
    assert database_url_from_secret(arn) == again
    monkeypatch.setenv("FLUX_SECRET_MAX_AGE", "soon")
    with pytest.raises(ValueError, match="FLUX_SECRET_MAX_AGE must be a whole number of seconds"):
        database_url_from_secret(arn)


@pytest.mark.postgresql
def test_new_connections_use_the_rotated_credentials_without_a_redeploy(
    aws: Any, monkeypatch: pytest.MonkeyPatch, postgres_admin: Any
) -> None:
    """The engine used to keep the URL it was built with: after a rotation, every new connection failed
    until the Lambda was redeployed. Here the secret moves to another role; the next connection is it."""
    with postgres_admin.connect() as connection:
        connection.execute(text("DROP ROLE IF EXISTS flux_rotated"))
        connection.execute(text("CREATE ROLE flux_rotated LOGIN PASSWORD 'rotated-pw'"))
    try:
        first = make_url(POSTGRES_URL)
        arn = secret(aws, first.render_as_string(hide_password=False))
        monkeypatch.setenv("FLUX_DATABASE_SECRET_ARN", arn)
        monkeypatch.setenv("FLUX_SECRET_MAX_AGE", "0")
        wiring.use(None)
        store = wiring.dependencies().store

        def current_user(tx: Any, _after: Any) -> str:
            return str(tx.connection.execute("SELECT current_user").fetchone()[0])

        with store.session() as held:
            assert held.transact(current_user)[0] == first.username
            rotated = first.set(username="flux_rotated", password="rotated-pw")
            aws.put_secret_value(SecretId=arn, SecretString=rotated.render_as_string(hide_password=False))
            with store.session() as fresh:  # the pool has no idle connection: a new one
                assert fresh.transact(current_user)[0] == "flux_rotated"
        store.close()
    finally:
        wiring.use(None)
        with postgres_admin.connect() as connection:
            connection.execute(text("DROP ROLE IF EXISTS flux_rotated"))


def test_the_runtime_url_prefers_the_explicit_url_then_the_secret_then_sqlite(aws: Any) -> None:
    arn = secret(aws, URL)
    other = "postgresql+psycopg://local@127.0.0.1/flux"
    assert runtime_database_url({"FLUX_DATABASE_URL": other, "FLUX_DATABASE_SECRET_ARN": arn}) == other
    assert runtime_database_url({"FLUX_DATABASE_URL": " ", "FLUX_DATABASE_SECRET_ARN": arn}) == URL
    assert runtime_database_url({}) == "sqlite:///flux-control.db"


def test_the_runtime_url_reads_the_process_environment_by_default(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUX_DATABASE_SECRET_ARN", secret(aws, json.dumps({"url": URL})))
    assert runtime_database_url() == URL
