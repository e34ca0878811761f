"""Command output as a section of the GitHub job summary: ``python summary.py TITLE FILE``.

The output goes in a fenced block longer than any run of backticks in it, so no line of it (a value read
from a definition, an error message) can close the block and be rendered as markdown of its own.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

# A step's summary may hold 1 MiB; past this, the whole output is in the step's log anyway.
MAX_OUTPUT = 500_000


def fenced(text: str, language: str = "text") -> str:
    """``text`` in a code block that nothing inside it can close."""
    text = text.strip() or "(no output)"
    if len(text) > MAX_OUTPUT:
        text = text[:MAX_OUTPUT] + "\n… (cut here; the whole output is in the step's log)"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def append_summary(markdown: str) -> None:
    """Add ``markdown`` to the job summary (``$GITHUB_STEP_SUMMARY``); nothing outside a runner."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with Path(path).open("a", encoding="utf-8") as out:
            out.write(markdown.rstrip() + "\n\n")


def main(argv: list[str]) -> None:
    title, output = argv
    text = Path(output).read_text(encoding="utf-8") if Path(output).exists() else ""
    append_summary(f"### {title}\n\n{fenced(text)}")


if __name__ == "__main__":
    main(sys.argv[1:])
