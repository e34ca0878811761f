"""The AWS calls the function's code makes, found two ways: by reading the code, and by recording them.

- :func:`calls_in_code` scans ``controller/`` (but for ``controller/local``, the stand-ins ``serve``
  uses) for calls of boto3 client methods: the services a module makes clients for (``client("glue")``)
  and every attribute call named like one of their operations (``start_job_run``), or a paginator
  (``get_paginator("get_job_runs")``); and for the Powertools utilities that call AWS
  (``parameters.get_secret``).
- :func:`recorded` records, through botocore's ``before-call`` event, every call made while
  ``lambda_handler`` is on the stack: what the deployed function does, not what a test sets up.

Both give IAM actions (``glue:StartJobRun``): the service's signing name, and the operation's name where
IAM uses another one.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any

import botocore.handlers
import botocore.session
from botocore import xform_name

from tests.conftest import REPO_ROOT

#: Operations whose IAM action has another name (the AWS Service Authorization Reference).
IAM_NAMES = {("lambda", "Invoke"): "InvokeFunction"}
#: Powertools utilities the code calls AWS through, and the call each makes.
POWERTOOLS_CALLS = {"get_secret": "secretsmanager:GetSecretValue"}
_CLIENT_FACTORIES = {"client", "default_client", "_client"}


@cache
def _session() -> Any:
    return botocore.session.get_session()


def iam_action(service: str, operation: str) -> str:
    model = _session().get_service_model(service)
    return f"{model.signing_name}:{IAM_NAMES.get((model.service_name, operation), operation)}"


def _factory_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _services(tree: ast.AST) -> set[str]:
    """The services a module makes clients for: ``client("glue")``, ``self._client("sqs")``."""
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and _factory_name(node.func) in _CLIENT_FACTORIES
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def calls_in_code(root: Path = REPO_ROOT / "controller") -> dict[str, list[str]]:
    """IAM action → the places (``file:line``) the code calls it."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        if "local" in path.relative_to(root).parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        methods: dict[str, list[tuple[str, str]]] = {}
        for service in _services(tree):
            for operation in _session().get_service_model(service).operation_names:
                methods.setdefault(xform_name(operation), []).append((service, operation))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            place = f"{path.relative_to(root.parent)}:{node.lineno}"
            if name in POWERTOOLS_CALLS:
                found.setdefault(POWERTOOLS_CALLS[name], []).append(place)
            if name == "get_paginator" and node.args and isinstance(node.args[0], ast.Constant):
                name = str(node.args[0].value)
            for service, operation in methods.get(name, ()):
                found.setdefault(iam_action(service, operation), []).append(place)
    return found


def _in_lambda_handler() -> bool:
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "lambda_handler" and code.co_filename.endswith("controller/lambda_function.py"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def recorded() -> Iterator[set[str]]:
    """The IAM actions of the calls made inside ``lambda_handler`` while the block runs (clients created
    in it: botocore copies its built-in handlers into each new session)."""
    found: set[str] = set()

    def record(model: Any, **_: Any) -> None:
        if _in_lambda_handler():
            found.add(iam_action(model.service_model.service_name, model.name))

    entry = ("before-call", record)
    botocore.handlers.BUILTIN_HANDLERS.append(entry)
    try:
        yield found
    finally:
        botocore.handlers.BUILTIN_HANDLERS.remove(entry)
