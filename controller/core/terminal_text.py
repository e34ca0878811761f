"""Stored text made safe to print on a terminal. Pure.

Values that reach the terminal come from files, payloads and the database (a ``source``, a reason, a
description). A control character in one could move the cursor, recolour the screen, set the window
title or, with a line break, forge a line of output that looks like the tool's own (``✓ approved``).
Each such character is shown escaped instead, the way Python writes it (``\\x1b``, ``\\n``, ``\\u202e``).
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL; line and paragraph separators; bidirectional embeddings, overrides and
# isolates (which reorder what follows them on screen).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with every character that could change how the terminal shows it escaped; with
    ``lines``, its line feeds are kept (text of several lines the tool wrote itself)."""
    if lines:
        return "\n".join(_UNSAFE.sub(_escaped, line) for line in text.split("\n"))
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")
