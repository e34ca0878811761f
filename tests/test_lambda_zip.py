"""The Lambda deployment zip (issue 14): only what the function imports, from a lock file with hashes,
compiled to bytecode, for x86_64 and arm64, under 20 MiB; and it serves requests in a clean interpreter
with nothing but the zip and the SDK the Lambda runtime provides."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO_ROOT
from tests.deploy_support import BUILDER, load_builder

LIMIT = 20 * 2**20
#: Distributions the zip must not hold: the excluded ones, what only they need, the dev tools.
NEVER = {
    "alembic",
    "mako",
    "click",
    "boto3",
    "botocore",
    "s3transfer",
    "pyyaml",
    "jsonschema-rs",
    "pytest",
    "moto",
}


def locked() -> dict[str, tuple[str, list[str]]]:
    """The lock's pins: name → (version, hashes)."""
    text = (REPO_ROOT / "deploy" / "lambda-requirements.lock").read_text(encoding="utf-8")
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.splitlines()[0]
        if first.startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)", first)
        assert match, first
        pins[load_builder().canonical(match.group(1))] = (
            match.group(2),
            re.findall(r"--hash=sha256:(\w+)", block),
        )
    return pins


# --- the lock ------------------------------------------------------------------------------------------


def test_the_lock_pins_pyprojects_dependencies_but_those_the_function_never_imports() -> None:
    builder = load_builder()
    pins = locked()
    for requirement in map(Requirement, builder.lambda_requirements()):
        name = builder.canonical(requirement.name)
        assert name in pins, (
            f"{name} is a dependency but not locked: run python deploy/build_lambda_zip.py --lock"
        )
        assert requirement.specifier.contains(pins[name][0]), (
            name,
            pins[name][0],
            str(requirement.specifier),
        )
        # An extra's packages are locked too (psycopg[binary]: psycopg-binary; powertools[tracer]: the
        # X-Ray SDK); their versions are the locked release's own, which the dev install may not be.
        for extra in requirement.extras:
            for needed in _extra_requirements(requirement.name, extra):
                needed_name = builder.canonical(needed.name)
                if needed_name not in builder.RUNTIME_PROVIDED:
                    assert needed_name in pins, f"{name}[{extra}] needs {needed_name}, which is not locked"
    assert not set(pins) & NEVER, sorted(set(pins) & NEVER)
    assert all(hashes for _, hashes in pins.values()), "every pin carries the hashes of its files"
    for bound in builder.CONSTRAINTS:
        constraint = Requirement(bound)
        assert constraint.specifier.contains(pins[builder.canonical(constraint.name)][0]), bound


def _extra_requirements(distribution: str, extra: str) -> list[Requirement]:
    """What ``distribution[extra]`` adds, from its metadata (the dev environment has it installed)."""
    found = []
    for text in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
            found.append(requirement)
    assert found, f"{distribution}[{extra}] adds nothing"
    return found


def test_every_exclusion_names_a_dependency_and_says_why() -> None:
    builder = load_builder()
    dependencies = {builder.requirement_name(d) for d in _pyproject_dependencies()}
    assert set(builder.EXCLUDED) <= dependencies
    assert all(len(reason) > 20 for reason in (*builder.EXCLUDED.values(), *builder.PRUNED.values()))


def _pyproject_dependencies() -> list[str]:
    import tomllib

    data: dict[str, Any] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    dependencies: list[str] = data["project"]["dependencies"]
    return dependencies


def test_the_lock_command_is_uv_universal_with_hashes_and_the_constraints(tmp_path: Path) -> None:
    command = " ".join(load_builder().lock_command(tmp_path / "c.txt"))
    for flag in (
        "uv pip compile -",
        "--universal",
        "--python-version 3.11",
        "--generate-hashes",
        "--constraint",
    ):
        assert flag in command


# --- the builder ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "platform"), [("x86_64", "manylinux2014_x86_64"), ("arm64", "manylinux2014_aarch64")]
)
def test_the_builder_installs_the_locked_wheels_for_each_architecture(
    architecture: str, platform: str
) -> None:
    builder = load_builder()
    assert builder.PLATFORMS[architecture] == platform
    command = " ".join(builder.pip_command(Path("deploy/x.lock"), Path("out"), "3.11", platform))
    for flag in (
        "--require-hashes",
        "--requirement deploy/x.lock",
        "--no-deps",
        "--only-binary=:all:",
        f"--platform {platform}",
        "--implementation cp",
        "--python-version 3.11",
        "--target out",
    ):
        assert flag in command
    project = builder.project_command(Path("src"), Path("out"))
    assert "--no-deps" in project and project[-1] == "src"


def test_the_function_modules_leave_out_the_command_line_and_the_migrations() -> None:
    used = load_builder().function_modules(REPO_ROOT)
    assert {
        "controller/lambda_function.py",
        "controller/services/registration.py",
        "controller/api/tables_payload.py",
    } <= used
    assert not [m for m in used if m.startswith(("controller/cli/", "controller/db/migrations/"))]
    assert "controller/reconciler.py" not in used  # imports alembic through db/migrate


def test_pruning_removes_caches_scripts_and_temporary_paths_and_the_zip_is_deterministic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder = load_builder()
    monkeypatch.setattr(builder, "PRUNED", {"pkg/testing": "its tests"})
    tree = tmp_path / "tree"
    (tree / "pkg" / "__pycache__").mkdir(parents=True)
    (tree / "pkg" / "__pycache__" / "mod.cpython-312.pyc").write_bytes(b"\0")
    (tree / "pkg" / "testing").mkdir()
    (tree / "pkg" / "testing" / "plugin.py").write_text("X = 2\n")
    (tree / "pkg" / "mod.py").write_text("X = 1\n")
    (tree / "pkg" / "native.so").write_bytes(b"\x7fELF")
    (tree / "pkg" / "native.so").chmod(0o755)
    (tree / "bin").mkdir()
    (tree / "bin" / "tool").write_text("#!/somewhere/python\n")
    info = tree / "pkg-1.0.dist-info"
    info.mkdir()
    (info / "direct_url.json").write_text('{"url": "file:///tmp/flux-lambda-123/source"}')
    (info / "RECORD").write_text(
        "pkg/mod.py,sha256=a,6\npkg/native.so,sha256=b,4\npkg/testing/plugin.py,sha256=e,6\n"
        "pkg-1.0.dist-info/direct_url.json,sha256=c,40\n../../bin/tool,sha256=d,20\npkg-1.0.dist-info/RECORD,,\n"
    )
    builder.prune(tree)
    assert not list(tree.rglob("__pycache__")) and not (tree / "bin").exists()
    assert not (tree / "pkg" / "testing").exists()
    assert not (info / "direct_url.json").exists()
    assert (info / "RECORD").read_text() == (
        "pkg/mod.py,sha256=a,6\npkg/native.so,sha256=b,4\npkg-1.0.dist-info/RECORD,,\n"
    )
    builder.compile_bytecode(tree)
    (pyc,) = (tree / "pkg" / "__pycache__").iterdir()
    assert pyc.name == f"mod.{sys.implementation.cache_tag}.pyc"
    assert _pyc_flags(pyc.read_bytes()) == 0b01  # hash-based, unchecked (PEP 552)

    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    assert builder.write_zip(tree, first) == 4
    os.utime(tree / "pkg" / "mod.py", (1_000_000_000, 1_000_000_000))  # mtimes do not matter
    builder.write_zip(tree, second)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        entries = archive.infolist()
    assert [entry.filename for entry in entries] == sorted(entry.filename for entry in entries)
    assert {entry.date_time for entry in entries} == {(1980, 1, 1, 0, 0, 0)}
    modes = {entry.filename: entry.external_attr >> 16 & 0o777 for entry in entries}
    assert modes["pkg/native.so"] == 0o755 and modes["pkg/mod.py"] == 0o644


def _pyc_flags(data: bytes) -> int:
    flags: int = struct.unpack("<I", data[4:8])[0]
    return flags


def test_the_build_refuses_another_python_than_the_runtimes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    builder = load_builder()
    monkeypatch.setattr(builder, "PYTHON_VERSION", "3.99")
    with pytest.raises(RuntimeError, match=r"run this build with Python 3\.99"):
        builder.build(tmp_path / "x.zip")


# --- the builder, for real -----------------------------------------------------------------------------

PROBE = """
import json, sys
from sqlalchemy import create_engine
from controller.db.base import Base
import controller.db.definition_models, controller.db.run_models
import sqlalchemy.dialects.postgresql.psycopg, psycopg  # the dialect and the driver of production
Base.metadata.create_all(create_engine(sys.argv[1]))
from controller.lambda_function import lambda_handler

def call(method, path, body=None):
    event = {"resource": path, "path": path, "httpMethod": method, "headers": {"content-type": "application/json"},
             "multiValueHeaders": {}, "queryStringParameters": None, "multiValueQueryStringParameters": None,
             "pathParameters": None, "stageVariables": None, "isBase64Encoded": False,
             "body": json.dumps(body) if body is not None else None,
             "requestContext": {"requestId": "zip-" + path, "stage": "v1", "httpMethod": method, "path": path,
                                "resourcePath": path, "identity": {"sourceIp": "127.0.0.1", "accountId": "123456789012",
                                                                   "userArn": "arn:aws:iam::123456789012:user/probe"}}}
    answer = lambda_handler(event, None)
    return answer["statusCode"], json.loads(answer["body"])

def page(path):
    event = {"resource": path, "path": path, "httpMethod": "GET", "headers": {}, "multiValueHeaders": {},
             "queryStringParameters": None, "multiValueQueryStringParameters": None, "pathParameters": None,
             "stageVariables": None, "isBase64Encoded": False, "body": None,
             "requestContext": {"requestId": "zip-page", "stage": "v1", "httpMethod": "GET", "path": path,
                                "resourcePath": path, "identity": {"sourceIp": "127.0.0.1", "accountId": "123456789012",
                                                                   "userArn": "arn:aws:iam::123456789012:user/probe"}}}
    answer = lambda_handler(event, None)
    return answer["statusCode"], "<h1>Tables</h1>" in answer["body"]

import rsa  # the console's token signatures, without pyasn1 (pruned)
try:
    rsa.verify(b"x", bytes(256), rsa.PublicKey(2**2047 + 1, 65537))
except rsa.VerificationError:
    pass
answers = [
    call("GET", "/health"),
    call("POST", "/tables", {"data": [{"name": "tb_x", "partitions": [{"name": "dt", "type": "date"}],
                                       "tasks": [{"alias": "t", "type": "glue", "target": "j",
                                                  "params": {"--d": "{{ partitions.dt }}"}}]}]}),
    call("GET", "/runs"),
]
console = page("/console/tables")  # Jinja2 and the templates, from the zip alone
outside = sorted({m.__file__.split("/site-packages/")[0] for m in list(sys.modules.values())
                  if getattr(m, "__file__", None) and "site-packages" in m.__file__})
print("PROBE " + json.dumps({"answers": answers, "console": console, "python": list(sys.version_info[:2]), "outside": outside,
                             "yaml": "yaml" in sys.modules, "jsonschema_rs": "jsonschema_rs" in sys.modules}))
"""


def _build(tmp_path: Path, architecture: str) -> Path:
    out = tmp_path / f"lambda-{architecture}.zip"
    done = subprocess.run(
        [sys.executable, str(BUILDER), "--out", str(out), "--architecture", architecture],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"build failed:\n{done.stdout}\n{done.stderr[-6000:]}"
    assert f"{out}: {out.stat().st_size:,} bytes zipped" in done.stdout
    return out


def _contents(out: Path) -> tuple[list[str], dict[str, bytes]]:
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        pycs = {name: archive.read(name) for name in names if name.endswith(".pyc")}
    return names, pycs


def _check_contents(out: Path) -> list[str]:
    names, pycs = _contents(out)
    assert out.stat().st_size < LIMIT, f"{out.stat().st_size / 2**20:.1f} MiB zipped"
    distributions = {
        load_builder().canonical(name.split("/", 1)[0].split("-", 1)[0])
        for name in names
        if name.split("/", 1)[0].endswith(".dist-info")
    }
    assert not distributions & NEVER, sorted(distributions & NEVER)
    assert {
        "flux-control",
        "sqlalchemy",
        "psycopg-binary",
        "pydantic-core",
        "aws-lambda-powertools",
    } <= distributions
    assert not [
        n for n in names if n.startswith(("controller/cli/", "controller/db/migrations/versions/", "bin/"))
    ]
    assert "controller/schemas/table.schema.json" in names
    modules = [n for n in names if n.endswith(".py")]
    tag = f"cpython-{load_builder().PYTHON_VERSION.replace('.', '')}"
    for module in modules:
        folder, _, file = module.rpartition("/")
        cached = (
            f"{folder}/__pycache__/{file[:-3]}.{tag}.pyc" if folder else f"__pycache__/{file[:-3]}.{tag}.pyc"
        )
        assert cached in pycs, f"{module} has no bytecode"
        assert _pyc_flags(pycs[cached]) == 0b01, cached
    return names


def _elf_machines(archive: zipfile.ZipFile, names: list[str]) -> set[int]:
    """The ELF machine of every shared library among ``names`` (62 x86-64, 183 AArch64)."""
    shared = (n for n in names if re.search(r"\.so(\.\d+)*$", n))
    return {struct.unpack("<H", archive.read(n)[18:20])[0] for n in shared}


@pytest.mark.slow
def test_the_arm64_zip_holds_arm64_binaries(tmp_path: Path) -> None:
    out = _build(tmp_path, "arm64")
    names = _check_contents(out)
    with zipfile.ZipFile(out) as archive:
        machines = _elf_machines(archive, names)
    assert machines == {183}  # EM_AARCH64


@pytest.mark.slow
def test_the_x86_64_zip_serves_requests_with_nothing_but_itself_and_the_runtimes_sdk(tmp_path: Path) -> None:
    out = _build(tmp_path, "x86_64")
    names = _check_contents(out)
    with zipfile.ZipFile(out) as archive:
        machines = _elf_machines(archive, names)
        archive.extractall(tmp_path / "task")
    assert machines == {62}  # EM_X86_64
    # The Lambda runtime's SDK: boto3 and botocore are not in the zip.
    sdk = tmp_path / "sdk"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(sdk),
            "boto3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    (tmp_path / "task").chmod(0o555)  # read-only, as /var/task: no bytecode can be written there
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": f"{tmp_path / 'task'}:{sdk}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FLUX_DATABASE_URL": f"sqlite:///{tmp_path / 'flux.db'}",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    probe = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, env["FLUX_DATABASE_URL"]],  # -S: no site-packages at all
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, f"probe failed:\n{probe.stdout[-3000:]}\n{probe.stderr[-6000:]}"
    (line,) = [line for line in probe.stdout.splitlines() if line.startswith("PROBE ")]
    result = json.loads(line.removeprefix("PROBE "))
    assert [status for status, _ in result["answers"]] == [200, 200, 200]
    assert result["answers"][1][1]["valid"] is True
    assert result["console"] == [200, True]
    assert result["outside"] == []
    assert (result["yaml"], result["jsonschema_rs"]) == (False, False)
    assert result["python"] == [int(p) for p in load_builder().PYTHON_VERSION.split(".")]
