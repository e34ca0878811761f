"""Cold start: what a new Lambda container pays before and during its first request.

Each figure comes from a fresh interpreter (``python -c``), timed with ``time.perf_counter()`` around
the import inside it, so interpreter start-up is not counted; the median of several. One untimed run
of each first writes the bytecode caches, as a deployed package ships them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from bench.common import Table

REPO = Path(__file__).resolve().parent.parent
#: What the handler needs at run time, imported alone: the floor the project adds to.
DEPENDENCIES = (
    "boto3",
    "sqlalchemy",
    "sqlalchemy.orm",
    "pydantic",
    "pydantic.main",  # `import pydantic` alone defers everything; BaseModel is what a user loads
    "aws_lambda_powertools.event_handler",
    "aws_lambda_powertools.metrics",
    "jinja2",
    "yaml",
    "jsonschema",
    "psycopg",
)
_TOP_LEVEL = sorted({name.split(".")[0] for name in DEPENDENCIES})
MARK = "BENCH-RESULT "

_IMPORT = """
import json, sys, time
started = time.perf_counter()
{imports}
elapsed = time.perf_counter() - started
loaded = [m for m in {top_level!r} if m in sys.modules]
print({mark!r} + json.dumps({{"import": elapsed, "loaded": loaded, "modules": len(sys.modules)}}), flush=True)
"""

_FIRST_REQUEST = """
import json, sys, time
started = time.perf_counter()
from controller.lambda_function import lambda_handler
imported = time.perf_counter() - started

class Context:
    function_name = "flux-control"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:flux-control"
    memory_limit_in_mb = 512
    aws_request_id = "bench-1"
    log_group_name = "/aws/lambda/flux-control"
    log_stream_name = "bench"

def event(request_id):
    return {{
        "resource": "/health", "path": "/health", "httpMethod": "GET",
        "headers": {{"accept": "application/json"}}, "multiValueHeaders": {{}},
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": None, "stageVariables": None,
        "requestContext": {{"requestId": request_id, "stage": "bench", "httpMethod": "GET",
                            "path": "/health", "resourcePath": "/health",
                            "identity": {{"sourceIp": "127.0.0.1"}}}},
        "body": None, "isBase64Encoded": False,
    }}

started = time.perf_counter()
first = lambda_handler(event("bench-1"), Context())
first_request = time.perf_counter() - started
started = time.perf_counter()
second = lambda_handler(event("bench-2"), Context())
second_request = time.perf_counter() - started
assert first["statusCode"] == 200 and second["statusCode"] == 200, (first, second)
loaded = [m for m in {top_level!r} if m in sys.modules]
print({mark!r} + json.dumps({{"import": imported, "first": first_request, "second": second_request,
                             "loaded": loaded, "modules": len(sys.modules)}}), flush=True)
"""


def say(message: str) -> None:
    print(f"[coldstart] {message}", file=sys.stderr, flush=True)


def _script(imports: list[str]) -> str:
    lines = "\n".join(f"import {name}" for name in imports)
    return _IMPORT.format(imports=lines, top_level=_TOP_LEVEL, mark=MARK)


def _environment(workdir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        FLUX_DATABASE_URL=f"sqlite:///{Path(workdir) / 'coldstart.db'}",
        AWS_DEFAULT_REGION=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        POWERTOOLS_METRICS_NAMESPACE="FluxControl",
    )
    return env


def _once(script: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            result: dict[str, Any] = json.loads(line[len(MARK) :])
            return result
    raise RuntimeError(f"cold start subprocess failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _interleaved(
    scripts: dict[str, str], env: dict[str, str], repeat: int
) -> dict[str, list[dict[str, Any]]]:
    """``repeat`` runs of each script, taking turns so that all of them see the same machine."""
    for label, script in scripts.items():
        say(f"{label}: warm-up (bytecode caches)")
        _once(script, env)
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in scripts}
    for attempt in range(repeat):
        for label, script in scripts.items():
            say(f"{label}: {attempt + 1}/{repeat}")
            results[label].append(_once(script, env))
    return results


def run(quick: bool, kinds: list[str], workdir: str) -> list[Table]:
    """Cold start figures (``kinds`` is unused: the first request is a health check, on SQLite)."""
    del kinds
    repeat = 2 if quick else 5
    env = _environment(workdir)
    measured = _interleaved(
        {
            "import boto3": _script(["boto3"]),
            "import the runtime dependencies": _script(list(DEPENDENCIES)),
            "import controller.lambda_function + first request": textwrap.dedent(_FIRST_REQUEST).format(
                top_level=_TOP_LEVEL, mark=MARK
            ),
        },
        env,
        repeat,
    )
    boto, dependencies, handler = measured.values()
    median = {
        "boto3": statistics.median(r["import"] for r in boto),
        "dependencies": statistics.median(r["import"] for r in dependencies),
        "handler": statistics.median(r["import"] for r in handler),
        "first": statistics.median(r["first"] for r in handler),
        "second": statistics.median(r["second"] for r in handler),
    }

    def runs(values: list[dict[str, Any]], key: str = "import") -> str:
        return " / ".join(f"{r[key]:.3f}" for r in values)

    table = Table(
        f"Cold start (median of {repeat} fresh processes)",
        ["measure", "median (s)", "runs (s)", "× import boto3", "× runtime dependencies", "modules loaded"],
    )

    def ratios(value: float) -> list[str]:
        return [f"{value / median['boto3']:.2f}", f"{value / median['dependencies']:.2f}"]

    table.rows += [
        ["import boto3", median["boto3"], runs(boto), *ratios(median["boto3"]), boto[-1]["modules"]],
        [
            "import the runtime dependencies alone",
            median["dependencies"],
            runs(dependencies),
            *ratios(median["dependencies"]),
            dependencies[-1]["modules"],
        ],
        [
            "import controller.lambda_function",
            median["handler"],
            runs(handler),
            *ratios(median["handler"]),
            handler[-1]["modules"],
        ],
        ["first request (GET /health) after import", median["first"], runs(handler, "first"), "—", "—", "—"],
        ["second request (GET /health)", median["second"], runs(handler, "second"), "—", "—", "—"],
        [
            "import + first request",
            median["handler"] + median["first"],
            "—",
            *ratios(median["handler"] + median["first"]),
            "—",
        ],
    ]
    missing = sorted(set(_TOP_LEVEL) - set(handler[-1]["loaded"]))
    table.notes += [
        "Runtime dependencies: " + ", ".join(f"`{d}`" for d in DEPENDENCIES) + ".",
        "Of those, importing the handler loads: "
        + (", ".join(handler[-1]["loaded"]) or "none")
        + (f"; not loaded until needed: {', '.join(missing)}" if missing else "")
        + ".",
        "Timed inside a fresh `python -c` with `time.perf_counter()` around the import (interpreter "
        "start-up excluded). The first request is an API Gateway `GET /health` event to `lambda_handler` "
        "with `FLUX_DATABASE_URL` on a temporary SQLite file.",
    ]
    goals = Table("Cold start goals", ["goal", "target", "measured", "met"])
    by_dependencies = median["handler"] / median["dependencies"]
    by_boto = median["handler"] / median["boto3"]
    goals.rows += [
        [
            "handler import against its runtime dependencies",
            "≤ 1.1×",
            f"{by_dependencies:.2f}× ({median['handler']:.3f} s / {median['dependencies']:.3f} s)",
            "met" if by_dependencies <= 1.1 else "not met",
        ],
        [
            "handler import against `import boto3`",
            "≤ 2.5×",
            f"{by_boto:.2f}× ({median['handler']:.3f} s / {median['boto3']:.3f} s)",
            "met" if by_boto <= 2.5 else "not met",
        ],
    ]
    return [table, goals]
