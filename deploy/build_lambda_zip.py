"""Build the Lambda deployment zip: the ``controller`` package and the dependencies the function imports,
pinned with hashes, compiled to bytecode, for x86_64 or arm64.

    python deploy/build_lambda_zip.py [--out build/lambda.zip] [--architecture x86_64|arm64]
    python deploy/build_lambda_zip.py --lock      # regenerate deploy/lambda-requirements.lock (uv)

The dependencies come from ``deploy/lambda-requirements.lock``: ``pyproject.toml``'s dependencies but
those the function never imports (:data:`EXCLUDED`, each with its reason), with every transitive one,
pinned, with the hashes of their wheels (``uv pip compile --universal --generate-hashes``: one lock for
both architectures). They are installed for Lambda's platform::

    pip install --target DIR --require-hashes --no-deps -r deploy/lambda-requirements.lock \\
        --only-binary=:all: --platform manylinux2014_x86_64 --implementation cp --python-version 3.11

then the project itself (``pyproject.toml``, ``README.md``, ``controller/``, copied apart so that stale
build output cannot leak in) without dependencies, keeping only the modules the handler can import
(found by ``modulefinder``; the command line and the migrations need click and alembic, which the
function never imports). Every module is compiled to bytecode with
*unchecked-hash* invalidation (PEP 552): Lambda's code directory is read-only and its files' times are
the zip's, so timestamp-checked caches would be ignored and every cold start would compile again.
Bytecode is per Python version: the build runs on the template's ``Runtime`` (:data:`PYTHON_VERSION`),
and refuses another. ``__pycache__`` of the wheels, console scripts (``bin/``), ``direct_url.json``
(a temporary path) and the parts of packages the function never imports (:data:`PRUNED`) are removed,
and the tree is zipped deterministically: sorted entries, a fixed
timestamp, normalised permissions.
"""

from __future__ import annotations

import argparse
import compileall
import modulefinder
import py_compile
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "build" / "lambda.zip"
LOCK = REPO / "deploy" / "lambda-requirements.lock"
#: Lambda's ``python3.11`` runtime: see ``Runtime`` in deploy/template.yaml.
PYTHON_VERSION = "3.11"
#: Lambda architecture → the wheel platform tag of its binaries.
PLATFORMS = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}
#: What the package is built from; everything else in the work tree stays out.
SOURCES = ("pyproject.toml", "README.md", "controller")
#: The earliest time a zip entry can carry: the same bytes for the same tree, whenever it is built.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
#: Dependencies of ``pyproject.toml`` that the function never imports, and why they stay out.
EXCLUDED = {
    "alembic": "the schema is migrated from CI (`flux-control db upgrade`), never by the function",
    "click": "the command line only",
    "boto3": (
        "the Lambda runtime provides boto3 and botocore (15 MiB zipped); the function calls only "
        "long-standing APIs (Scheduler, EventBridge, Glue, Step Functions, SQS, Lambda, Secrets Manager), "
        "so no pinned version is needed"
    ),
    "pyyaml": "definition files are read by the command line; the function validates JSON payloads",
    "jsonschema-rs": (
        "the command line's speed-up for thousands of files; the function validates the few tables of "
        "a POST /tables payload with jsonschema alone (the same verdicts: tests/test_schema.py)"
    ),
}
#: What the Lambda runtime provides (boto3 and its dependencies): never locked, even when a locked
#: package depends on it (the X-Ray SDK of Powertools' tracer depends on botocore).
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3")
#: Bounds the lock adds to pyproject's ranges, for Lambda's platform, and why.
CONSTRAINTS = {
    "psycopg<3.3": (
        "psycopg-binary 3.3 has arm64 wheels for glibc 2.28 only; Lambda's python3.11 runs on Amazon "
        "Linux 2 (glibc 2.26), whose wheels are manylinux2014 (the same version for both architectures)"
    ),
}
#: Parts of the locked packages the function never imports, removed from the zip, and why.
PRUNED = {
    "sqlalchemy/testing": "SQLAlchemy's own test harness (a pytest plugin)",
    "sqlalchemy/dialects/mssql": "the function connects to PostgreSQL (SQLite locally) only",
    "sqlalchemy/dialects/mysql": "the function connects to PostgreSQL (SQLite locally) only",
    "sqlalchemy/dialects/oracle": "the function connects to PostgreSQL (SQLite locally) only",
    "pyasn1": (
        "rsa reads PEM and DER keys with it; the console builds its keys from a JWK's numbers "
        "(rsa.PublicKey(n, e)) and never reads either"
    ),
}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    assert match, requirement
    return canonical(match.group(1))


def lambda_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """``pyproject.toml``'s dependencies but :data:`EXCLUDED`, as written there."""
    dependencies: list[str] = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    return [d for d in dependencies if requirement_name(d) not in EXCLUDED]


def lock_command(constraints: Path, python_version: str = PYTHON_VERSION) -> list[str]:
    """The uv call that pins :func:`lambda_requirements` (read on stdin) within ``constraints`` (a file
    of :data:`CONSTRAINTS`), with hashes, for any platform."""
    return [
        sys.executable,
        "-m",
        "uv",
        "pip",
        "compile",
        "-",
        "--universal",
        "--python-version",
        python_version,
        "--generate-hashes",
        "--constraint",
        str(constraints),
        "--no-annotate",
        *(flag for name in RUNTIME_PROVIDED for flag in ("--no-emit-package", name)),
        "--quiet",
        "--custom-compile-command",
        "python deploy/build_lambda_zip.py --lock",
        "--output-file",
        str(LOCK),
    ]


def write_lock() -> None:
    requirements = "\n".join(lambda_requirements()) + "\n"
    with tempfile.TemporaryDirectory(prefix="flux-lock-") as scratch:
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text("\n".join(CONSTRAINTS) + "\n", encoding="utf-8")
        subprocess.run(lock_command(constraints), input=requirements, text=True, check=True, cwd=REPO)


def copy_sources(repo: Path, destination: Path) -> Path:
    """Copy the files the package is built from into ``destination/source``; return that directory."""
    source = destination / "source"
    source.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.egg-info")
    for name in SOURCES:
        path = repo / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    return source


def _pip(target: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        # The target is a fresh directory: conflicts with the packages of the running Python are noise.
        "--no-warn-conflicts",
        "--no-warn-script-location",
        "--root-user-action=ignore",
        "--no-compile",
        "--no-deps",
        "--target",
        str(target),
    ]


def pip_command(lock: Path, target: Path, python_version: str, platform: str) -> list[str]:
    """The pip call that installs the locked dependencies, verified by their hashes, into ``target``."""
    return [
        *_pip(target),
        "--require-hashes",
        "--requirement",
        str(lock),
        "--only-binary=:all:",
        "--platform",
        platform,
        "--implementation",
        "cp",
        "--python-version",
        python_version,
    ]


def project_command(source: Path, target: Path) -> list[str]:
    """The pip call that installs the project itself (no dependency: the lock gave them)."""
    return [*_pip(target), str(source)]


def prune(target: Path) -> None:
    """Remove what Lambda never uses and what would make two builds differ."""
    for cache in sorted(target.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    for compiled in [*target.rglob("*.pyc"), *target.rglob("direct_url.json")]:
        compiled.unlink()
    # Console scripts with this machine's interpreter in their shebang.
    shutil.rmtree(target / "bin", ignore_errors=True)
    for part in PRUNED:
        shutil.rmtree(target / part)
    for record in target.glob("*.dist-info/RECORD"):
        forget_removed(target, record)


def forget_removed(target: Path, record: Path) -> None:
    """Drop the lines of a RECORD whose file was removed (direct_url.json carries a temporary path)."""
    lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if (target / line.split(",", 1)[0]).is_file()]
    if kept != lines:
        record.write_text("".join(kept), encoding="utf-8")


def function_modules(source: Path) -> set[str]:
    """The modules of ``source/controller`` the handler can import, directly or inside a function (the
    routes import the runtime on first use), as paths relative to ``source``: what ``modulefinder`` finds
    from ``controller/lambda_function.py``, reading ``source`` only (the dependencies are not scanned)."""
    finder = modulefinder.ModuleFinder(path=[str(source)])
    finder.run_script(str(source / "controller" / "lambda_function.py"))
    found = {
        Path(module.__file__).relative_to(source).as_posix()
        for name, module in finder.modules.items()
        if name.split(".")[0] == "controller" and module.__file__
    }
    return found | {"controller/lambda_function.py"}


def keep_function_modules(target: Path, used: set[str]) -> None:
    """Remove the project's modules the function never imports (the command line, the migrations, the
    local stand-ins): they import what the zip does not ship (click, alembic)."""
    for path in sorted((target / "controller").rglob("*.py")):
        if path.relative_to(target).as_posix() not in used:
            path.unlink()
    for directory in sorted((target / "controller").rglob("*"), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def compile_bytecode(target: Path) -> None:
    """Compile every module to ``__pycache__`` with unchecked-hash invalidation (see the module doc)."""
    ok = compileall.compile_dir(
        str(target),
        quiet=1,
        workers=0,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not ok:
        raise RuntimeError("some modules did not compile")


def write_zip(root: Path, out: Path) -> int:
    """Zip every file under ``root`` into ``out`` deterministically; return the number of entries."""
    files = sorted(
        (path for path in root.rglob("*") if path.is_file() and not path.is_symlink()),
        key=lambda path: path.relative_to(root).as_posix(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=FIXED_TIME)
            executable = path.stat().st_mode & stat.S_IXUSR
            info.external_attr = ((0o755 if executable else 0o644) | stat.S_IFREG) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so the permissions above are honoured
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    partial.replace(out)
    return len(files)


@dataclass(frozen=True, slots=True)
class Built:
    entries: int
    zipped: int
    unzipped: int


def build(out: Path, *, architecture: str = "x86_64", repo: Path = REPO, lock: Path = LOCK) -> Built:
    """Build the zip at ``out``. A failed pip call raises CalledProcessError."""
    running = "{}.{}".format(*sys.version_info[:2])
    if running != PYTHON_VERSION:
        raise RuntimeError(
            f"run this build with Python {PYTHON_VERSION} (the template's Runtime), not {running}: "
            "bytecode is compiled for the Python that runs the build"
        )
    with tempfile.TemporaryDirectory(prefix="flux-lambda-") as scratch:
        source = copy_sources(repo, Path(scratch))
        target = Path(scratch) / "package"
        subprocess.run(pip_command(lock, target, PYTHON_VERSION, PLATFORMS[architecture]), check=True)
        subprocess.run(project_command(source, target), check=True)
        keep_function_modules(target, function_modules(source))
        prune(target)
        compile_bytecode(target)
        unzipped = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
        entries = write_zip(target, out)
    return Built(entries, out.stat().st_size, unzipped)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the Lambda deployment zip (the package and what the function imports, locked)."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="zip to write (default: %(default)s)")
    parser.add_argument(
        "--architecture",
        choices=sorted(PLATFORMS),
        default="x86_64",
        help="Lambda architecture, as Architecture in the template (default: %(default)s)",
    )
    parser.add_argument("--lock", action="store_true", help=f"regenerate {LOCK.relative_to(REPO)} and exit")
    args = parser.parse_args(argv)
    if args.lock:
        write_lock()
        print(f"{LOCK.relative_to(REPO)}: {len(lambda_requirements())} requirements locked with hashes")
        return 0
    try:
        built = build(args.out, architecture=args.architecture)
    except subprocess.CalledProcessError as error:
        print(f"build_lambda_zip: pip failed with exit code {error.returncode}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        print(f"build_lambda_zip: {error}", file=sys.stderr)
        return 1
    print(
        f"{args.out}: {built.zipped:,} bytes zipped ({built.zipped / 2**20:.1f} MiB), "
        f"{built.unzipped:,} bytes unzipped ({built.unzipped / 2**20:.1f} MiB), {built.entries:,} files, "
        f"Python {PYTHON_VERSION}, {args.architecture}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
