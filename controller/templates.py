"""Task parameter templates: Jinja2 in a sandbox, with undefined names as errors.

A template sees ``partitions`` (the run's key, flat), ``table``, ``run`` and ``triggers``. Validation
parses every template once and checks the names it uses; rendering happens at dispatch time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import SandboxedEnvironment

from controller.problems import PathSegment

CONTEXT_NAMES = ("partitions", "table", "run", "triggers")
_MARKERS = ("{{", "{%", "{#")
_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def template_strings(
    value: Any, path: tuple[PathSegment, ...] = ()
) -> Iterator[tuple[tuple[PathSegment, ...], str]]:
    """Every string inside ``value`` (nested dicts and lists), with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from template_strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from template_strings(item, (*path, index))


def template_errors(source: str, partitions: Mapping[str, object]) -> list[str]:
    """Why ``source`` is not a usable template for a table with these partitions (empty if fine)."""
    if not any(marker in source for marker in _MARKERS):
        return []
    shape = _analyse(source)
    if shape.syntax_error:
        return [shape.syntax_error]
    errors = [
        f"template uses unknown variable {name!r} (available: {', '.join(CONTEXT_NAMES)})"
        for name in shape.unknown_names
    ]
    errors += [f"template accesses {name!r}: private attributes are not allowed" for name in shape.private]
    known = ", ".join(partitions) or "none"
    errors += [
        f"template names unknown partition {name!r} (table has: {known})"
        for name in shape.partitions
        if name not in partitions
    ]
    return errors


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a template refers to; independent of the table, so it is cached by source text."""

    syntax_error: str | None = None
    unknown_names: tuple[str, ...] = ()
    private: tuple[str, ...] = ()
    partitions: tuple[str, ...] = ()


@lru_cache(maxsize=4096)
def _analyse(source: str) -> _Shape:
    # Definition sets repeat the same few templates thousands of times ("{{ partitions.dt }}"), and
    # parsing is the expensive part of validating one, so each distinct text is parsed once.
    try:
        ast = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        return _Shape(syntax_error=f"template does not parse: {exc.message} (template line {exc.lineno})")
    unknown = tuple(sorted(n for n in find_undeclared_variables(ast) if n not in CONTEXT_NAMES))
    private: list[str] = []
    used: list[str] = []
    methods = {id(call.node) for call in ast.find_all(nodes.Call)}  # partitions.items() is no partition
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        attr = _attribute_name(node)
        if attr is None:
            continue
        if attr.startswith("_"):
            private.append(attr)
        elif id(node) not in methods and _is_partitions(cast(nodes.Getattr | nodes.Getitem, node).node):
            used.append(attr)
    return _Shape(None, unknown, tuple(private), tuple(dict.fromkeys(used)))


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render one template string in the sandbox; undefined names raise."""
    if not any(marker in source for marker in _MARKERS):
        return source
    return _ENV.from_string(source).render(context)


def render_params(params: Any, context: Mapping[str, Any]) -> Any:
    """Render every string inside ``params`` (nested dicts and lists) with ``context``."""
    if isinstance(params, str):
        return render(params, context)
    if isinstance(params, Mapping):
        return {key: render_params(item, context) for key, item in params.items()}
    if isinstance(params, list):
        return [render_params(item, context) for item in params]
    return params


def _attribute_name(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return str(node.attr)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        value = node.arg.value
        return value if isinstance(value, str) else None
    return None


def _is_partitions(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "partitions"
