"""Problems as GitHub Actions workflow commands (``::error file=…,line=…::message``).

A runner turns each such line of a step's output into an annotation on the pull request's diff, at the
file and line it names. The escaping follows the runner's own (``toolkit/packages/core/src/command.ts``):
a message may hold any text once ``%``, CR and LF are escaped; a property value also escapes ``:`` and
``,``, which would otherwise end it. Control characters are first shown escaped, as in the text format
(:func:`~controller.core.terminal_text.printable`): a line break read from a definition file must not start
a workflow command of its own.
"""

from __future__ import annotations

from pathlib import Path

from controller.core.problems import Problem
from controller.core.terminal_text import printable


def github_annotation(problem: Problem, *, workspace: Path) -> str:
    """One ``::error`` command for ``problem``, its path made relative to ``workspace``.

    GitHub matches an annotation's ``file`` against paths from the repository root, so a path under the
    workspace is written relative to it; a position of 0 (a value not read from text) is left out.
    """
    location = problem.location
    properties = {"file": _relative(location.path, workspace)}
    if location.positioned:
        properties["line"] = str(location.line)
        properties["col"] = str(location.column)
    properties["title"] = f"flux-control validate ({problem.code})"
    joined = ",".join(f"{key}={_escape_property(value)}" for key, value in properties.items())
    return f"::error {joined}::{_escape_data(printable(problem.message))}"


def _relative(path: str, workspace: Path) -> str:
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(workspace.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(printable(text)).replace(":", "%3A").replace(",", "%2C")
