"""Parameter types and options shared by several commands."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

FC = TypeVar("FC", bound=Callable[..., Any])
_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
}


class ByteSize(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click stubs
    """A size such as ``1048576``, ``512KiB`` or ``2MiB``, as a number of bytes."""

    name = "size"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE.match(str(value))
        if not match or int(match.group(1)) == 0:
            self.fail(f"{value!r} is not a size such as 1048576, 512KiB or 2MiB", param, ctx)
        return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def format_option(*choices: str) -> Callable[[FC], FC]:
    """``--format`` with the given choices; the first is the default."""
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help="Output format.",
    )
