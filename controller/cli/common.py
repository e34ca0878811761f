"""What several commands share: the database option, revision and actor detection, error handling."""

from __future__ import annotations

import functools
import getpass
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from controller.core.terminal_text import printable
from controller.db.engine import DEFAULT_DATABASE_URL, database_url, make_engine, safe_url
from controller.files.git_source import GitError
from controller.files.plan_documents import PlanFileError
from controller.files.validation import ValidationResult
from controller.reconciler import ReconcileError

F = TypeVar("F", bound=Callable[..., Any])

database_option = click.option(
    "--database-url",
    envvar="FLUX_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    show_envvar=True,
    help="SQLAlchemy URL of the database (postgresql+psycopg://… in production).",
)

directory_argument = click.argument(
    "directory",
    default="definitions",
    type=click.Path(exists=True, file_okay=True, dir_okay=True, path_type=Path),
)


def open_engine(url: str) -> Engine:
    return make_engine(database_url(url))


def open_reader(url: str) -> Engine:
    """An engine for a command that only reads. A SQLite file that does not exist is not created:
    an empty in-memory database (no schema, no tables) stands in for it."""
    resolved = database_url(url)
    return make_engine("sqlite://") if _missing_sqlite_file(resolved) else make_engine(resolved)


def _missing_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.query.get("uri"):
        return False
    return parsed.database not in (None, "", ":memory:") and not Path(parsed.database).exists()


def colour_allowed() -> bool:
    """Whether the environment allows colours at all (https://no-color.org, ``TERM=dumb``)."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def colour(stream: TextIO | None = None) -> bool:
    """ANSI colours on ``stream`` (stdout): a terminal, and the environment allows them."""
    target = stream or sys.stdout
    return colour_allowed() and target.isatty()


def friendly_errors(command: F) -> F:
    """Turn expected failures into one clear line on stderr and exit 1; never a stack trace."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ReconcileError, PlanFileError, GitError) as exc:
            _fail(str(exc))
        except SQLAlchemyError as exc:
            url = safe_url(database_url(kwargs.get("database_url")))
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            _fail(f"database error on {url}: {reason}. Check --database-url / FLUX_DATABASE_URL.")

    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> None:
    click.secho(f"Error: {message}", fg="red", err=True)
    sys.exit(1)


def report_invalid(result: ValidationResult) -> None:
    """Print validation problems to stderr and exit 1: nothing is planned or written."""
    for problem in result.problems:
        click.echo(printable(str(problem)), err=True)
    _fail(f"the definitions have {len(result.problems)} problem(s); fix them (see `flux-control validate`).")


def resolve_revision(explicit: str | None, directory: Path | None) -> str:
    """``--revision``, else ``GITHUB_SHA``, else ``git rev-parse HEAD`` in the directory, else unknown."""
    if explicit:
        return explicit
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    cwd = directory if directory and directory.is_dir() else (directory.parent if directory else Path.cwd())
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip() or "unknown"


def resolve_actor(explicit: str | None) -> str:
    """``--actor``, else ``GITHUB_ACTOR``, else the local user name."""
    if explicit:
        return explicit
    if os.environ.get("GITHUB_ACTOR"):
        return f"github:{os.environ['GITHUB_ACTOR']}"
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
