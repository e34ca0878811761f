"""Console pages from Jinja2 templates shipped in the package, in a sandbox with autoescaping: every
value a page shows (table names, reasons, comments, errors) is the users' and is escaped.

Jinja2 is imported when the first page renders, not with the Lambda handler (the API's cold start
does not pay for the console).
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    from jinja2.sandbox import SandboxedEnvironment

#: Assets served under /console/static/ (each shipped in the package: no CDN).
STATIC_TYPES = {"console.css": "text/css; charset=utf-8"}
#: A state → the CSS class of its badge (colours in console.css, contrast checked by the tests).
STATE_CLASSES = {
    "awaiting_approval": "waiting",
    "pending": "waiting",
    "scheduled": "scheduled",
    "queued": "scheduled",
    "dispatching": "running",
    "running": "running",
    "started": "running",
    "succeeded": "ok",
    "approved": "ok",
    "failed": "bad",
    "rejected": "bad",
    "cancelled": "muted",
}


@cache
def environment() -> SandboxedEnvironment:
    """The sandboxed template environment, made once per process."""
    # Lazy: Jinja2 loads with the first page, not with the handler (see the module docstring).
    from jinja2 import PackageLoader, StrictUndefined, select_autoescape
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(
        loader=PackageLoader("controller.console", "templates"),
        autoescape=select_autoescape(("html",), default=True),
        undefined=StrictUndefined,  # a misspelt variable is an error in the tests, not a blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, key=key_text, path=quote_path, state_class=STATE_CLASSES.get)
    env.globals.update(query=query)
    return env


def render(template: str, **context: Any) -> str:
    """The HTML of ``template`` with ``context``."""
    return environment().get_template(template).render(**context)


def static_asset(name: str) -> tuple[bytes, str] | None:
    """A shipped asset and its media type, or None for any other name."""
    media = STATIC_TYPES.get(name)
    if media is None:
        return None
    return resources.files("controller.console").joinpath("static", name).read_bytes(), media


def when(value: str | datetime | None) -> str:
    """An ISO timestamp as ``2026-12-02 14:05:09 UTC`` (the API's answers are ISO strings)."""
    if value is None or value == "":
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def key_text(partitions: Any) -> str:
    """A key as ``dt=2026-05-01, region=eu`` (``partitions`` as the API gives them)."""
    if isinstance(partitions, dict):
        return ", ".join(f"{name}={value}" for name, value in partitions.items()) or "(no partitions)"
    if isinstance(partitions, list):
        return ", ".join(f"{p['name']}={p['value']}" for p in partitions) or "(no partitions)"
    return str(partitions)


def quote_path(value: Any) -> str:
    """A value as one path segment of a link."""
    return quote(str(value), safe="")


def query(**parameters: Any) -> str:
    """A query string of the non-empty ``parameters`` (``?a=1&b=x``, or nothing)."""
    kept = {k: v for k, v in parameters.items() if v not in (None, "")}
    return "?" + urlencode(kept) if kept else ""
