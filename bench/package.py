"""The Lambda package: its size, and the cold start it gives, against the packaging it replaced.

*before* is the packaging of ``deploy/build_lambda_zip.py`` until issue 14, rebuilt here in the same run:
the project with every dependency of ``pyproject.toml`` (boto3 included), no lock, no bytecode. *after*
is today's builder (``deploy/build_lambda_zip.py``): the lock, the exclusions, bytecode. Both for
x86_64 and Python 3.11, from PyPI.

Cold start runs in a fresh ``python -S`` (no site-packages) whose path is the unpacked zip only (plus,
for *after*, the boto3 and botocore of *before*'s tree, standing in for the Lambda runtime's), in a
read-only directory with ``PYTHONDONTWRITEBYTECODE``, as ``/var/task``: what is not shipped compiled is
compiled again at every cold start. Each figure is the import of the handler plus its first request,
the median of several processes, taking turns.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from bench.coldstart import (
    REGISTERED_DAYS,
    TABLES,
    local_aws,
    measure_once,
    proxy_events,
    registration_environment,
    requests_script,
    template_database,
)
from bench.common import Table

REPO = Path(__file__).resolve().parent.parent
#: What the Lambda runtime brings, taken from *before*'s tree for *after* (the same versions).
RUNTIME_SDK = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")


def say(message: str) -> None:
    print(f"[package] {message}", file=sys.stderr, flush=True)


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_lambda_zip", REPO / "deploy" / "build_lambda_zip.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _before(builder: ModuleType, workdir: Path) -> Path:
    """The packaging before issue 14: every dependency, no lock, no bytecode (its zip beside it)."""
    target = workdir / "before"
    with tempfile.TemporaryDirectory(prefix="flux-before-") as scratch:
        source = builder.copy_sources(REPO, Path(scratch))
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-warn-conflicts", "--no-warn-script-location", "--root-user-action=ignore", "--no-compile",
            "--target", str(target), "--only-binary=:all:", "--platform", builder.PLATFORMS["x86_64"],
            "--implementation", "cp", "--python-version", builder.PYTHON_VERSION, str(source),
        ]  # fmt: skip
        subprocess.run(command, check=True)
    for cache in sorted(target.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    shutil.rmtree(target / "bin", ignore_errors=True)
    builder.write_zip(target, workdir / "before.zip")
    return target


def _after(builder: ModuleType, workdir: Path) -> Path:
    """Today's zip, unpacked."""
    out = workdir / "after.zip"
    builder.build(out, architecture="x86_64")
    target = workdir / "after"
    with zipfile.ZipFile(out) as archive:
        archive.extractall(target)
    return target


def _sizes(tree: Path, zipped: Path) -> tuple[float, float, int]:
    files = [p for p in tree.rglob("*") if p.is_file()]
    return zipped.stat().st_size / 2**20, sum(p.stat().st_size for p in files) / 2**20, len(files)


def _sdk(before: Path, workdir: Path) -> Path:
    sdk = workdir / "runtime-sdk"
    sdk.mkdir()
    for name in RUNTIME_SDK:
        (sdk / name).symlink_to(before / name)
    return sdk


def run(quick: bool, kinds: list[str], workdir: str) -> list[Table]:
    """Sizes and cold starts of both packagings (``kinds`` is unused: SQLite, moto)."""
    del kinds
    repeat = 2 if quick else 5
    builder = _builder()
    work = Path(workdir) / "package"
    work.mkdir()
    say("building before (every dependency, no bytecode) and after (the lock, bytecode)")
    before, after = _before(builder, work), _after(builder, work)
    sdk = _sdk(before, work)
    for tree in (before, after):
        tree.chmod(0o555)  # read-only, as /var/task
    sizes = {"before": _sizes(before, work / "before.zip"), "after": _sizes(after, work / "after.zip")}
    paths = {"before": str(before), "after": f"{after}{os.pathsep}{sdk}"}
    with local_aws() as local:
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "PYTHONDONTWRITEBYTECODE": "1",
            "POWERTOOLS_METRICS_NAMESPACE": "FluxControl",
            **local.environment(),
        }
        template = template_database(str(work))
        registrations = [
            {"data": [{"table_name": TABLES[0], "partitions": [{"partition_name": "dt", "value": day}]}]}
            for day in REGISTERED_DAYS
        ]
        payload = {"data": [{"name": "tb_x", "partitions": [{"name": "dt", "type": "date"}]}]}
        scripts = {
            "GET /health": (requests_script(proxy_events("GET", "/health", [None, None])), None),
            "POST /tables": (requests_script(proxy_events("POST", "/tables", [payload, payload])), "tables"),
            "POST /register_execution": (
                requests_script(proxy_events("POST", "/register_execution", registrations)),
                "registration",
            ),
        }
        measured: dict[tuple[str, str], list[float]] = {}
        environments: dict[str, Callable[[], dict[str, str]]] = {}
        for packaging, path in paths.items():
            env = {**base, "PYTHONPATH": path, "FLUX_DATABASE_URL": f"sqlite:///{work / 'tables.db'}"}
            environments[f"{packaging}:registration"] = registration_environment(
                env, template, str(work), local
            )
            environments[f"{packaging}:tables"] = _copy_of(template, work, env, packaging)
            environments[f"{packaging}:plain"] = functools.partial(dict, env)
        for attempt in range(repeat):
            for label, (script, kind) in scripts.items():
                for packaging in paths:
                    say(f"{packaging} {label}: {attempt + 1}/{repeat}")
                    environment = environments[f"{packaging}:{kind or 'plain'}"]()
                    result = measure_once(script, environment, cwd=work, flags=("-S",))
                    measured.setdefault((packaging, label), []).append(result["import"] + result["first"])
    return [_table(sizes, measured, repeat)]


def _copy_of(template: Path, work: Path, env: dict[str, str], packaging: str) -> Callable[[], dict[str, str]]:
    """A fresh copy of the migrated database for each process (``POST /tables`` reads the tables)."""
    import sqlite3

    runs = iter(range(1_000_000))

    def environment() -> dict[str, str]:
        target = work / f"tables-{packaging}-{next(runs)}.db"
        with (
            contextlib.closing(sqlite3.connect(template)) as source,
            contextlib.closing(sqlite3.connect(target)) as copy,
        ):
            source.backup(copy)
        return {**env, "FLUX_DATABASE_URL": f"sqlite:///{target}"}

    return environment


def _table(
    sizes: dict[str, tuple[float, float, int]], measured: dict[tuple[str, str], list[float]], repeat: int
) -> Table:
    table = Table(
        f"Lambda package: size and cold start (median of {repeat} fresh processes)",
        ["measure", "before", "after", "after ÷ before"],
    )
    (b_zip, b_raw, b_files), (a_zip, a_raw, a_files) = sizes["before"], sizes["after"]
    table.rows += [
        ["zipped (MiB)", b_zip, a_zip, f"{a_zip / b_zip:.2f}"],
        ["unzipped (MiB)", b_raw, a_raw, f"{a_raw / b_raw:.2f}"],
        ["files", b_files, a_files, f"{a_files / b_files:.2f}"],
    ]
    for label in ("GET /health", "POST /tables", "POST /register_execution"):
        first = statistics.median(measured[("before", label)])
        second = statistics.median(measured[("after", label)])
        table.rows.append([f"import + first {label} (s)", first, second, f"{second / first:.2f}"])
    table.notes += [
        "before: the project with every dependency of pyproject.toml (boto3 and botocore included), no "
        "bytecode, as deploy/build_lambda_zip.py built it until issue 14; after: today's builder (the "
        "lock, the exclusions and pruning of deploy/build_lambda_zip.py, unchecked-hash bytecode). Both "
        "x86_64, Python 3.11, built from PyPI in this run; goal: after under 20 MiB zipped.",
        "Cold start: `python -S` with the unpacked zip as the only path (after: plus before's boto3 and "
        "botocore, standing in for the Lambda runtime's), read-only, `PYTHONDONTWRITEBYTECODE=1` as in "
        "/var/task; import of `controller.lambda_function` plus its first request, timed inside the "
        "process. The registration opens one run (CreateSchedule, PutEvents against moto's server on "
        "localhost) on a fresh copy of a migrated SQLite database.",
    ]
    return table
