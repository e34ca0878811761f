"""Problems found in definition files, with the place each one points at."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, order=True)
class Location:
    """A 1-based line and column in a file, as editors count them."""

    path: str
    line: int = 1
    column: int = 1

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


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
        return {
            "path": self.location.path,
            "line": self.location.line,
            "column": self.location.column,
            "code": self.code,
            "message": self.message,
        }


PathSegment = str | int


class Locator(Protocol):
    """Maps a path inside one definition (``("tasks", 0, "params")``) to where it was written."""

    def locate(self, path: tuple[PathSegment, ...], *, key: bool = False) -> Location:
        """Where the value at ``path`` starts; with ``key``, where its mapping key starts."""
        ...


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A " (did you mean 'x'?)" suffix naming the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
