"""Cold start: what a new Lambda container pays before and during its first request.

Each figure comes from a fresh interpreter (``python -c``), timed with ``time.perf_counter()`` around
the import inside it, so interpreter start-up is not counted; the median of several. One untimed run
of each first writes the bytecode caches, as a deployed package ships them.

The handler imports only what routes a request; the rest (SQLAlchemy's ORM and the models, boto3, the
database driver) is imported by the first request that needs it. So besides a first ``GET /health``,
the cost moved there is measured too: a first ``POST /register_execution`` in a fresh process, on a
fresh copy of a migrated SQLite database with definitions applied, through the real AWS adapters
against moto's server (run by this process on localhost).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import Table

REPO = Path(__file__).resolve().parent.parent
#: What the handler needs at run time to serve its requests, imported alone: the floor the project adds
#: to (the issue's natural set: boto3, SQLAlchemy, pydantic, Powertools, psycopg).
DEPENDENCIES = (
    "boto3",
    "sqlalchemy",
    "sqlalchemy.orm",
    "pydantic",
    "pydantic.main",  # `import pydantic` alone defers everything; BaseModel is what a user loads
    "aws_lambda_powertools.event_handler",
    "aws_lambda_powertools.metrics",
    "psycopg",
)
#: Needed by some requests only (``POST /tables`` validates a payload: YAML, JSON Schema, Jinja; firing
#: a run renders its params with Jinja): not part of the floor, but reported as loaded or not.
ON_DEMAND = ("jinja2", "yaml", "jsonschema")
_TOP_LEVEL = sorted({name.split(".")[0] for name in DEPENDENCIES})
_WATCHED = sorted({*_TOP_LEVEL, *ON_DEMAND})
MARK = "BENCH-RESULT "
#: The definitions of the registration processes: registering ``source`` opens one run of ``dependent``,
#: which is scheduled (EventBridge Scheduler) and announced (EventBridge PutEvents).
TABLES = ("source", "dependent")
REGISTERED_DAYS = ("2030-01-01", "2030-01-02")

_IMPORT = """
import json, sys, time
started = time.perf_counter()
{imports}
elapsed = time.perf_counter() - started
loaded = [m for m in {watched!r} if m in sys.modules]
print({mark!r} + json.dumps({{"import": elapsed, "loaded": loaded, "modules": len(sys.modules)}}), flush=True)
"""

#: Import the handler, then send it two events (built by the parent, so that building them loads
#: nothing here); what is loaded is recorded after the import and after the requests.
_FIRST_REQUEST = """
import json, sys, time
events = json.loads({events!r})
started = time.perf_counter()
from controller.lambda_function import lambda_handler
imported = time.perf_counter() - started
modules_at_import = len(sys.modules)
loaded_at_import = [m for m in {watched!r} if m in sys.modules]

class Context:
    function_name = "flux-control"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:flux-control"
    memory_limit_in_mb = 512
    aws_request_id = "bench-1"
    log_group_name = "/aws/lambda/flux-control"
    log_stream_name = "bench"

timings, responses = [], []
for event in events:
    started = time.perf_counter()
    responses.append(lambda_handler(event, Context()))
    timings.append(time.perf_counter() - started)
assert all(r["statusCode"] == 200 for r in responses), responses
print({mark!r} + json.dumps({{
    "import": imported, "first": timings[0], "second": timings[1],
    "loaded": loaded_at_import, "modules": modules_at_import,
    "loaded_after": [m for m in {watched!r} if m in sys.modules], "modules_after": len(sys.modules),
    "bodies": [json.loads(r["body"]) for r in responses],
}}), flush=True)
"""

#: ``(script, environment of one run)``: each run may need its own (a fresh database).
Case = tuple[str, Callable[[], dict[str, str]]]


def say(message: str) -> None:
    print(f"[coldstart] {message}", file=sys.stderr, flush=True)


def _script(imports: list[str]) -> str:
    lines = "\n".join(f"import {name}" for name in imports)
    return _IMPORT.format(imports=lines, watched=_WATCHED, mark=MARK)


def requests_script(events: list[dict[str, Any]]) -> str:
    return textwrap.dedent(_FIRST_REQUEST).format(events=json.dumps(events), watched=_WATCHED, mark=MARK)


def proxy_events(method: str, path: str, bodies: list[Any]) -> list[dict[str, Any]]:
    from controller.local.http import to_event

    return [
        to_event(
            method,
            path,
            {"accept": "application/json", "content-type": "application/json"},
            json.dumps(body).encode() if body is not None else b"",
            "127.0.0.1",
            authorizer={"claims": {"cognito:username": "bench"}},
            request_id=f"bench-{number}",
        )
        for number, body in enumerate(bodies, start=1)
    ]


def _environment(workdir: str, aws: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(name, None)  # they would send boto3 elsewhere than the local moto server
    env.update(aws)
    env.update(
        FLUX_DATABASE_URL=f"sqlite:///{Path(workdir) / 'coldstart.db'}",
        POWERTOOLS_METRICS_NAMESPACE="FluxControl",
    )
    return env


def measure_once(
    script: str, env: dict[str, str], *, cwd: Path = REPO, flags: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter (with ``flags``) and return the result it prints after MARK."""
    done = subprocess.run(
        [sys.executable, *flags, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            result: dict[str, Any] = json.loads(line[len(MARK) :])
            return result
    raise RuntimeError(f"cold start subprocess failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _interleaved(cases: dict[str, Case], repeat: int) -> dict[str, list[dict[str, Any]]]:
    """``repeat`` runs of each case, taking turns so that all of them see the same machine."""
    for label, (script, environment) in cases.items():
        say(f"{label}: warm-up (bytecode caches)")
        measure_once(script, environment())
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in cases}
    for attempt in range(repeat):
        for label, (script, environment) in cases.items():
            say(f"{label}: {attempt + 1}/{repeat}")
            results[label].append(measure_once(script, environment()))
    return results


@contextlib.contextmanager
def local_aws() -> Iterator[Any]:
    """moto's server on a free localhost port for the child processes; this process's environment is
    restored afterwards (starting the server points it at the server)."""
    from controller.local.aws import LocalAws, free_port

    local = LocalAws(free_port())
    saved = {name: os.environ.get(name) for name in local.environment()}
    local.start()
    try:
        yield local
    finally:
        local.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def template_database(workdir: str) -> Path:
    """A migrated SQLite database with :data:`TABLES` applied, copied afresh for each process."""
    from bench.runtime_setup import apply_definitions, table_doc
    from controller.db.engine import make_engine

    path = Path(workdir) / "coldstart-template.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        source, dependent = TABLES
        apply_definitions(
            engine, [table_doc(source), table_doc(dependent, dependencies=[{"dependency_name": source}])]
        )
    finally:
        engine.dispose()
    return path


def registration_environment(
    base: dict[str, str], template: Path, workdir: str, local: Any
) -> Callable[[], dict[str, str]]:
    """Each run: its own copy of the template database and its own schedule group (run ids repeat)."""
    runs = iter(range(1_000_000))

    def environment() -> dict[str, str]:
        number = next(runs)
        target = Path(workdir) / f"coldstart-{number}.db"
        target.unlink(missing_ok=True)
        with (
            contextlib.closing(sqlite3.connect(template)) as source,
            contextlib.closing(sqlite3.connect(target)) as copy,
        ):
            source.backup(copy)
        group = f"coldstart-{os.getpid()}-{number}"
        local.client("scheduler").create_schedule_group(Name=group)
        return {**base, "FLUX_DATABASE_URL": f"sqlite:///{target}", "FLUX_SCHEDULE_GROUP": group}

    return environment


def _check_registrations(results: list[dict[str, Any]]) -> None:
    """Each registration opened one run: the AWS calls measured did happen."""
    for result in results:
        opened = [len(body.get("runs", [])) for body in result["bodies"]]
        if opened != [1, 1]:
            raise RuntimeError(f"registrations opened {opened} runs, expected [1, 1]: {result['bodies']}")


def run(quick: bool, kinds: list[str], workdir: str) -> list[Table]:
    """Cold start figures (``kinds`` is unused: the first requests run on SQLite)."""
    del kinds
    repeat = 2 if quick else 5
    with local_aws() as local:
        env = _environment(workdir, local.environment())
        template = template_database(workdir)
        registrations = [
            {"data": [{"table_name": TABLES[0], "partitions": [{"partition_name": "dt", "value": day}]}]}
            for day in REGISTERED_DAYS
        ]
        measured = _interleaved(
            {
                "import boto3": (_script(["boto3"]), lambda: env),
                "import the runtime dependencies": (_script(list(DEPENDENCIES)), lambda: env),
                "import controller.lambda_function + GET /health": (
                    requests_script(proxy_events("GET", "/health", [None, None])),
                    lambda: env,
                ),
                "import controller.lambda_function + POST /register_execution": (
                    requests_script(proxy_events("POST", "/register_execution", registrations)),
                    registration_environment(env, template, workdir, local),
                ),
            },
            repeat,
        )
    boto, dependencies, handler, registering = measured.values()
    _check_registrations(registering)
    for result in (*handler, *registering):
        result["import+first"] = result["import"] + result["first"]

    def median(values: list[dict[str, Any]], key: str = "import") -> float:
        return float(statistics.median(r[key] for r in values))

    def runs(values: list[dict[str, Any]], key: str = "import") -> str:
        return " / ".join(f"{r[key]:.3f}" for r in values)

    floor = {"boto3": median(boto), "dependencies": median(dependencies)}

    def ratios(value: float) -> list[str]:
        return [f"{value / floor['boto3']:.2f}", f"{value / floor['dependencies']:.2f}"]

    def row(label: str, values: list[dict[str, Any]], key: str, modules: Any = "—") -> list[Any]:
        return [label, median(values, key), runs(values, key), *ratios(median(values, key)), modules]

    table = Table(
        f"Cold start (median of {repeat} fresh processes)",
        ["measure", "median (s)", "runs (s)", "× import boto3", "× runtime dependencies", "modules loaded"],
    )

    def request(label: str, values: list[dict[str, Any]], key: str, modules: Any = "—") -> list[Any]:
        return [label, median(values, key), runs(values, key), "—", "—", modules]

    table.rows += [
        row("import boto3", boto, "import", boto[-1]["modules"]),
        row("import the runtime dependencies alone", dependencies, "import", dependencies[-1]["modules"]),
        row("import controller.lambda_function", handler, "import", handler[-1]["modules"]),
        request("first request (GET /health) after import", handler, "first", handler[-1]["modules_after"]),
        request("second request (GET /health)", handler, "second"),
        row("import + first request", handler, "import+first"),
        request(
            "first request (POST /register_execution) after import",
            registering,
            "first",
            registering[-1]["modules_after"],
        ),
        request("second request (POST /register_execution)", registering, "second"),
        row("import + first registration", registering, "import+first"),
    ]

    def loaded(names: list[str]) -> str:
        missing = [m for m in _WATCHED if m not in names]
        return (", ".join(names) or "none") + (f"; not loaded: {', '.join(missing)}" if missing else "")

    table.notes += [
        "Runtime dependencies (the floor): "
        + ", ".join(f"`{d}`" for d in DEPENDENCIES)
        + f". Needed by some requests only, not in the floor: {', '.join(f'`{d}`' for d in ON_DEMAND)}.",
        f"Of {', '.join(_WATCHED)}, importing the handler loads: {loaded(handler[-1]['loaded'])}. "
        f"After the first registration: {loaded(registering[-1]['loaded_after'])}.",
        "Timed inside a fresh `python -c` with `time.perf_counter()` around the import (interpreter "
        "start-up excluded); a request is timed around `lambda_handler`. Events are API Gateway REST "
        "proxy events built by `controller.local.http.to_event`; `FLUX_DATABASE_URL` is a SQLite file. "
        "modules loaded: `len(sys.modules)` after the import, or after both requests on a first-request row.",
        "`import + first …` is the median of each process's sum. The registration processes each get a "
        f"fresh copy of a migrated SQLite database with `{TABLES[0]}` → `{TABLES[1]}` applied; registering "
        f"a day of `{TABLES[0]}` opens one run of `{TABLES[1]}`, so the first registration pays for the "
        "deferred imports (the services and the store, SQLAlchemy ORM and models), building the services' "
        "dependencies (`controller.wiring`: the store for the database, the AWS ports), opening the "
        "database, the transaction, and boto3 with its first `scheduler` and `events` clients "
        "(CreateSchedule, PutEvents) against moto's server on localhost (no network latency). On "
        "PostgreSQL it would also import `psycopg` (see its import alone above).",
    ]
    goals = Table("Cold start goals", ["goal", "target", "measured", "met"])
    handler_import = median(handler)
    by_dependencies = handler_import / floor["dependencies"]
    by_boto = handler_import / floor["boto3"]
    goals.rows += [
        [
            "handler import against its runtime dependencies",
            "≤ 1.1×",
            f"{by_dependencies:.2f}× ({handler_import:.3f} s / {floor['dependencies']:.3f} s)",
            "met" if by_dependencies <= 1.1 else "not met",
        ],
        [
            "handler import against `import boto3`",
            "≤ 2.5×",
            f"{by_boto:.2f}× ({handler_import:.3f} s / {floor['boto3']:.3f} s)",
            "met" if by_boto <= 2.5 else "not met",
        ],
    ]
    return [table, goals]
