"""Run the benchmarks and write BENCHMARKS.md.

    python -m bench                      # everything, full mode (the figures that count)
    python -m bench --quick              # small sizes, one repetition (CI smoke)
    python -m bench --only reconcile,coldstart --databases sqlite --out /tmp/B.md

Each module exposes ``run(quick, kinds, workdir) -> list[Table]``. A module that is missing, or whose
optional dependency is not installed, gets a line in the output saying so and why; one that fails
gets its error there, and the command exits 1 after writing the rest.

With ``--only``, the sections of the benchmarks not run are kept as the file had them: the new
sections are spliced in, in the order of :data:`MODULES`. Every section says when, at which commit and
in which mode it was measured (a kept section written before sections said so gets that line from the
header it was written under).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import POSTGRES_URL, Table

REPO = Path(__file__).resolve().parent.parent
#: Benchmark name → (module, what it measures). Order is the order of BENCHMARKS.md.
MODULES = {
    "reconcile": ("bench.reconcile", "Reconcile: validate, plan and apply at 1,000 and 10,000 tables"),
    "runtime": ("bench.runtime", "Runtime: registrations through lambda_handler"),
    "sweep": ("bench.sweep", "Sweep: its cost over 10, 1,000 and 10,000 healthy running runs"),
    "console": ("bench.console", "Console: pages over 100,000 runs and 1,000 tables"),
    "coldstart": ("bench.coldstart", "Cold start of the Lambda handler"),
    "package": ("bench.package", "The Lambda package: size and cold start, before and after issue 14"),
    "peer": ("bench.peer_dagster", "Peer: Dagster declarative automation on the same DAG"),
}
KINDS = ("sqlite", "postgresql")
#: Optional dependencies and how to get them, for the "not run" line.
OPTIONAL = {"dagster": "pip install dagster (only this benchmark needs it)"}


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _names(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}: use {', '.join(allowed)}"
        )
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run Flux Control's benchmarks and write BENCHMARKS.md."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (CI smoke)")
    parser.add_argument(
        "--only",
        type=lambda v: _names(v, tuple(MODULES), "benchmark"),
        default=list(MODULES),
        metavar="|".join(MODULES),
        help="run only these benchmarks (comma-separated; default: all)",
    )
    parser.add_argument(
        "--databases",
        type=lambda v: _names(v, KINDS, "database"),
        default=list(KINDS),
        metavar="sqlite,postgresql",
        help="database kinds to measure on (default: both)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="Markdown file to write")
    return parser.parse_args(argv)


# --- the machine ------------------------------------------------------------------------------------


def _command(*args: str) -> str | None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str:
    commit = _command("git", "rev-parse", "--short", "HEAD")
    if commit is None:
        return "unknown (not a Git checkout)"
    # The results file itself does not count: a run over a previous run's file measures the same code.
    dirty = _command("git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md")
    return f"{commit} (with uncommitted changes)" if dirty else commit


def postgres_version(kinds: list[str]) -> str:
    if "postgresql" not in kinds:
        return "not used"
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            return str(connection.execute(text("SHOW server_version")).scalar())
    except Exception as exc:  # the header says why instead of failing the whole run
        return f"unreachable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    finally:
        engine.dispose()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "unknown"


def header(args: argparse.Namespace, started: datetime) -> list[str]:
    mode = "quick (`--quick`: small sizes, one repetition)" if args.quick else "full"
    return [
        "# Flux Control benchmarks",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.platform()}; {_cpu_model()}; {os.cpu_count()} CPUs; load average at "
        f"start {_load()}",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        f"- PostgreSQL server: {postgres_version(args.databases)}",
        f"- Commit: {git_commit()}",
        f"- Mode: {mode}; databases: {', '.join(args.databases)}",
        f"- Command: `{' '.join(['python -m bench', *sys.argv[1:]])}`",
        "",
    ]


# --- running the modules ----------------------------------------------------------------------------


def _missing_reason(exc: ModuleNotFoundError, module: str) -> str:
    """Why a module could not be imported: the module itself, or one of its (optional) dependencies."""
    missing = exc.name or ""
    if missing == module or module.startswith(missing + "."):
        return f"`{module.replace('.', '/')}.py` does not exist in this checkout"
    top = missing.split(".")[0]
    how = OPTIONAL.get(top)
    return f"its dependency `{top}` is not installed" + (f" ({how})" if how else "")


def run_module(
    name: str, args: argparse.Namespace, workdir: str, loader: Callable[[str], Any] = importlib.import_module
) -> tuple[list[str], bool]:
    """The Markdown of one benchmark, and whether it ran without error."""
    module_name, title = MODULES[name]
    lines = [f"## {title}", ""]
    try:
        module = loader(module_name)
    except ModuleNotFoundError as exc:
        reason = _missing_reason(exc, module_name)
        say(f"{name}: not run: {reason}")
        return [*lines, f"Not run: {reason}.", ""], True
    say(f"{name}: running ({'quick' if args.quick else 'full'} mode)")
    started = time.perf_counter()
    try:
        tables: list[Table] = module.run(args.quick, list(args.databases), workdir)
    except ModuleNotFoundError as exc:  # an optional dependency imported lazily inside run()
        reason = _missing_reason(exc, module_name)
        say(f"{name}: not run: {reason}")
        return [*lines, f"Not run: {reason}.", ""], True
    except Exception as exc:
        say(f"{name}: FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        last = traceback.format_exception_only(exc)[-1].strip()
        return [*lines, f"Failed after {time.perf_counter() - started:.0f} s: `{last}`.", ""], False
    say(f"{name}: done in {time.perf_counter() - started:.0f} s")
    for table in tables:
        lines += [table.markdown(), ""]
    return lines, True


# --- the results file -------------------------------------------------------------------------------

MEASURED = "_Measured "


def measured_line(when: str, commit: str, mode: str) -> str:
    """The line under a section's title saying which run measured it."""
    return f"{MEASURED}{when}, commit {commit}, mode {mode}._"


def split_sections(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """A results file's header lines, and its ``## `` sections in order as (title, lines)."""
    head: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            head.append(line)
    return head, sections


def _header_field(head: list[str], name: str) -> str:
    prefix = f"- {name}: "
    return next((line[len(prefix) :] for line in head if line.startswith(prefix)), "unknown")


def _with_measured_line(lines: list[str], line: str) -> list[str]:
    """A section with ``line`` under its title, unless it has such a line already."""
    if any(existing.startswith(MEASURED) for existing in lines):
        return lines
    rest = lines[1:]
    return [lines[0], "", line, *(rest if rest and not rest[0].strip() else ["", *rest])]


def splice(previous: str | None, measured: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """The sections of the new file, in the order of :data:`MODULES`: those measured now, the others as
    ``previous`` had them (then any section of ``previous`` no benchmark names, at the end); and the
    titles of the sections kept."""
    head, old = split_sections(previous or "")
    earlier = measured_line(
        _header_field(head, "Date"), _header_field(head, "Commit"), _header_field(head, "Mode")
    )
    old_by_title = dict(old)
    titles = {title: name for name, (_module, title) in MODULES.items()}
    body: list[str] = []
    kept: list[str] = []
    for name, (_module, title) in MODULES.items():
        if name in measured:
            body += measured[name]
        elif title in old_by_title:
            body += _with_measured_line(_separated(old_by_title[title]), earlier)
            kept.append(title)
    for title, lines in old:
        if title not in titles:
            body += _with_measured_line(_separated(lines), earlier)
            kept.append(title)
    return body, kept


def _separated(lines: list[str]) -> list[str]:
    """A kept section's lines as they were, with a blank line after them if they end without one (the
    last section of a file) so that the next section starts on its own."""
    return lines if not lines[-1].strip() else [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = datetime.now(UTC)
    selected = [name for name in MODULES if name in args.only]
    document = header(args, started)
    mode = "quick" if args.quick else "full"
    this_run = measured_line(
        f"{started:%Y-%m-%d %H:%M} UTC", git_commit(), f"{mode}; databases: {', '.join(args.databases)}"
    )
    measured: dict[str, list[str]] = {}
    ok = True
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as workdir:
        for name in selected:
            directory = Path(workdir) / name
            directory.mkdir()
            lines, succeeded = run_module(name, args, str(directory))
            measured[name] = _with_measured_line(lines, this_run)
            ok &= succeeded
    # A run of every benchmark writes a new file; one of some (--only) keeps the others' sections.
    partial = len(selected) < len(MODULES) and args.out.exists()
    previous = args.out.read_text(encoding="utf-8") if partial else None
    body, kept = splice(previous, measured)
    if kept:
        document.insert(
            len(document) - 1,
            "- Sections: measured by this run: "
            + ", ".join(MODULES[name][1] for name in selected)
            + "; kept from the previous file (not measured by this run): "
            + ", ".join(kept)
            + ". Each section says which run measured it.",
        )
    document += body
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(document).rstrip("\n") + "\n", encoding="utf-8")
    say(f"wrote {args.out} ({'all ran' if ok else 'with failures'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
