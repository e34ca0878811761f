"""The Lambda cold start: importing the handler loads only what routes a request (issue 7).

Each check runs in a fresh interpreter, since this test process has long since imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.local.http import to_event

REPO = Path(__file__).resolve().parent.parent
#: Loaded by the first request that needs them, never by the import (nor by GET /health).
DEFERRED = (
    "boto3",
    "sqlalchemy",
    "psycopg",
    "jinja2",
    "yaml",
    "jsonschema",
    "jsonschema_rs",
    "alembic",
    "aws_xray_sdk",
    "controller.db.base",
    "controller.services.dependencies",
    "controller.services.registration",
    "controller.files.validation",
    "controller.api.tables_payload",
)


def loaded_after(code: str, **env: str) -> list[str]:
    """Which of :data:`DEFERRED` a fresh interpreter has loaded after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {DEFERRED!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_importing_the_handler_loads_none_of_the_heavy_modules() -> None:
    assert loaded_after("import controller.lambda_function") == []


def test_a_health_check_after_import_loads_none_of_them_either(tmp_path: Path) -> None:
    event = to_event("GET", "/health", {}, b"", "127.0.0.1", request_id="health-1")
    code = (
        "from controller.lambda_function import lambda_handler\n"
        f"response = lambda_handler({event!r}, None)\n"
        "assert response['statusCode'] == 200, response"
    )
    loaded = loaded_after(
        code,
        FLUX_DATABASE_URL=f"sqlite:///{tmp_path / 'never-opened.db'}",
        POWERTOOLS_METRICS_DISABLED="true",
    )
    assert loaded == []
    assert not (tmp_path / "never-opened.db").exists()


def test_the_openapi_document_needs_no_runtime_module() -> None:
    code = (
        "import json\n"
        "from controller.api.app import openapi_document\n"
        "assert '/register_execution' in json.loads(openapi_document())['paths']"
    )
    assert loaded_after(code) == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import controller.aws.clients", []),
        ("from controller.aws.clients import client; client('sqs')", ["boto3"]),
        ("import controller.wiring", []),
        (
            "from controller.wiring import dependencies; dependencies()",
            ["sqlalchemy", "controller.db.base", "controller.services.dependencies"],
        ),
    ],
)
def test_boto3_and_sqlalchemy_load_when_first_used(code: str, expected: list[str], tmp_path: Path) -> None:
    loaded = loaded_after(
        code,
        FLUX_DATABASE_URL=f"sqlite:///{tmp_path / 'flux.db'}",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    assert loaded == expected


def test_checking_a_tables_payload_never_loads_the_yaml_reader(tmp_path: Path) -> None:
    """The Lambda package ships without PyYAML: ``POST /tables`` validates JSON, not files."""
    url = f"sqlite:///{tmp_path / 'flux.db'}"
    setup = (
        "from sqlalchemy import create_engine\n"
        "from controller.db.base import Base\n"
        "import controller.db.definition_models, controller.db.run_models\n"
        f"Base.metadata.create_all(create_engine({url!r}))\n"
    )
    event = to_event(
        "POST",
        "/tables",
        {"content-type": "application/json"},
        json.dumps({"data": [{"name": "tb_x", "partitions": [{"name": "dt", "type": "date"}]}]}).encode(),
        "127.0.0.1",
        request_id="tables-1",
    )
    code = (
        f"{setup}import json\n"
        "from controller.lambda_function import lambda_handler\n"
        f"response = lambda_handler({event!r}, None)\n"
        "assert response['statusCode'] == 200, response\n"
        "assert json.loads(response['body'])['valid'] is True, response"
    )
    loaded = loaded_after(
        code, FLUX_DATABASE_URL=url, POWERTOOLS_METRICS_DISABLED="true", AWS_DEFAULT_REGION="us-east-1"
    )
    assert "yaml" not in loaded
    assert {"jsonschema", "jinja2", "controller.files.validation"} <= set(loaded)


def test_the_tracer_is_loaded_only_when_tracing_is_on(tmp_path: Path) -> None:
    """Off (the default), the X-Ray SDK is never imported; on (FLUX_TRACING, the template's Tracing
    parameter), the handler runs under Powertools' Tracer."""
    event = to_event("GET", "/health", {}, b"", "127.0.0.1", request_id="traced-1")
    code = (
        "from controller import lambda_function\n"
        "assert hasattr(lambda_function._handle, '__wrapped__'), 'not traced'\n"
        f"assert lambda_function.lambda_handler({event!r}, None)['statusCode'] == 200"
    )
    loaded = loaded_after(code, FLUX_TRACING="true", POWERTOOLS_METRICS_DISABLED="true")
    assert "aws_xray_sdk" in loaded
    assert loaded_after("import controller.lambda_function", FLUX_TRACING="false") == []
