"""Build the Lambda deployment zip: the ``controller`` package and its runtime dependencies, no dev extra.

    python deploy/build_lambda_zip.py [--out build/lambda.zip]

The project's source (``pyproject.toml``, ``README.md``, ``controller/``) is copied to a temporary
directory, so stale ``build/`` or ``*.egg-info`` output in the work tree cannot leak into the package,
then installed with its dependencies for Lambda's platform::

    pip install --target DIR --only-binary=:all: --platform manylinux2014_x86_64 \\
        --implementation cp --python-version 3.12 --no-compile SOURCE

``__pycache__``, console scripts (``bin/``) and ``direct_url.json`` (a temporary path) are removed, and
the tree is zipped deterministically: sorted entries, a fixed timestamp, normalised permissions. The
Python version must match ``Runtime`` in ``deploy/template.yaml``; the build itself runs on any
Python 3.11+ with pip and needs PyPI (only binary wheels are taken, so nothing is compiled).
"""

from __future__ import annotations

import argparse
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "build" / "lambda.zip"
#: Lambda's ``python3.12`` runtime (Amazon Linux 2023, glibc 2.34, x86_64): see deploy/template.yaml.
PYTHON_VERSION = "3.12"
PLATFORM = "manylinux2014_x86_64"
#: What the package is built from; everything else in the work tree stays out.
SOURCES = ("pyproject.toml", "README.md", "controller")
#: The earliest time a zip entry can carry: the same bytes for the same tree, whenever it is built.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


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


def pip_command(source: Path, target: Path, python_version: str, platform: str) -> list[str]:
    """The pip call that installs ``source`` and its runtime dependencies into ``target``."""
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
        "--target",
        str(target),
        "--only-binary=:all:",
        "--platform",
        platform,
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        str(source),
    ]


def prune(target: Path) -> None:
    """Remove what Lambda never uses and what would make two builds differ."""
    for cache in sorted(target.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    for compiled in [*target.rglob("*.pyc"), *target.rglob("direct_url.json")]:
        compiled.unlink()
    # Console scripts with this machine's interpreter in their shebang.
    shutil.rmtree(target / "bin", ignore_errors=True)
    for record in target.glob("*.dist-info/RECORD"):
        forget_removed(target, record)


def forget_removed(target: Path, record: Path) -> None:
    """Drop the lines of a RECORD whose file was removed (direct_url.json carries a temporary path)."""
    lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if (target / line.split(",", 1)[0]).is_file()]
    if kept != lines:
        record.write_text("".join(kept), encoding="utf-8")


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


def build(
    out: Path, *, repo: Path = REPO, python_version: str = PYTHON_VERSION, platform: str = PLATFORM
) -> int:
    """Build the zip at ``out``; return its number of entries. A failed pip call raises CalledProcessError."""
    with tempfile.TemporaryDirectory(prefix="flux-lambda-") as scratch:
        source = copy_sources(repo, Path(scratch))
        target = Path(scratch) / "package"
        subprocess.run(pip_command(source, target, python_version, platform), check=True)
        prune(target)
        return write_zip(target, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the Lambda deployment zip (the package and its runtime dependencies only)."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="zip to write (default: %(default)s)")
    parser.add_argument(
        "--python-version",
        default=PYTHON_VERSION,
        help="Python of the Lambda runtime, as in the template's Runtime (default: %(default)s)",
    )
    parser.add_argument("--platform", default=PLATFORM, help="wheel platform tag (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        entries = build(args.out, python_version=args.python_version, platform=args.platform)
    except subprocess.CalledProcessError as error:
        print(f"build_lambda_zip: pip failed with exit code {error.returncode}", file=sys.stderr)
        return 1
    size = args.out.stat().st_size
    mib = size / 2**20
    print(f"{args.out}: {size:,} bytes ({mib:.1f} MiB), {entries:,} files, Python {args.python_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
