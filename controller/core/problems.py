"""Problems found in definition files, with the place each one points at."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, order=True)
class Location:
    """A 1-based line and column in a file, as editors count them.

    A value that was not read from text (an API payload) has no line: ``line`` and ``column`` are 0
    and ``path`` is where the value is in the payload (:func:`json_path`).
    """

    path: str
    line: int = 1
    column: int = 1

    @property
    def positioned(self) -> bool:
        return self.line > 0

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}" if self.positioned else self.path


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One thing wrong with the definitions.

    Ordering is by location, then message, so that sorted output is stable.
    """

    location: Location
    message: str
    code: str = "invalid"

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        where: dict[str, object] = {"path": self.location.path}
        if self.location.positioned:
            where.update(line=self.location.line, column=self.location.column)
        return {**where, "code": self.code, "message": self.message}


PathSegment = str | int
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def json_path(path: Sequence[PathSegment], root: str = "") -> str:
    """``data[1].dependencies[0].dependency_name``: where a value is inside a JSON document.

    Keys that are not plain names are quoted (``params["--ano_mes"]``); an empty path is ``root``.
    """
    text = root
    for segment in path:
        if isinstance(segment, int):
            text += f"[{segment}]"
        elif _NAME.match(segment):
            text += f".{segment}" if text else segment
        else:
            text += f"[{json.dumps(segment, ensure_ascii=False)}]"
    return text


class Locator(Protocol):
    """Maps a path inside one definition (``("tasks", 0, "params")``) to where it was written."""

    def locate(self, path: tuple[PathSegment, ...], *, key: bool = False) -> Location:
        """Where the value at ``path`` starts; with ``key``, where its mapping key starts."""
        ...


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A " (did you mean 'x'?)" suffix naming the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
