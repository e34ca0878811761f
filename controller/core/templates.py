"""Task parameter templates: Jinja2 in a sandbox, with undefined names as errors.

A template sees ``partitions`` (the run's key, flat), ``table``, ``run`` and ``triggers``. Validation
parses every template once and checks the names it uses; rendering happens at dispatch time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from string import Formatter
from typing import Any, cast

from jinja2 import StrictUndefined, TemplateError, TemplateRuntimeError, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.meta import TrackingCodeGenerator
from jinja2.sandbox import SandboxedEnvironment

from controller.core.problems import PathSegment

CONTEXT_NAMES = ("partitions", "table", "run", "triggers")
_MARKERS = ("{{", "{%", "{#")


class _NoFolding(CodeGenerator):
    """Jinja2's compiler, minus constant folding: Jinja2 evaluates constant expressions while it compiles
    (and while it looks for undeclared names), so ``{{ 'x' * 10**10 }}`` or ``{{ 'x'|center(10**10) }}``
    would run inside validation (``flux-control validate``, ``POST /tables``). Here they run only when
    rendered. The environment's ``optimized=False`` turns off the optimizer; this turns off the rest."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        if not isinstance(node, nodes.TemplateData):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)


class _Sandbox(SandboxedEnvironment):
    code_generator_class = _NoFolding


class _NameTracker(_NoFolding, TrackingCodeGenerator):
    """``jinja2.meta.find_undeclared_variables``'s code generator, without constant folding."""

    def __init__(self, environment: SandboxedEnvironment) -> None:
        super().__init__(environment)
        self.optimizer = None


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, optimized=False)
#: Filters that look up an attribute named by an argument, and that argument's position (the keyword
#: ``attribute=`` counts for every filter): ``|attr('__class__')``, ``|map(attribute='__class__')``.
_ATTRIBUTE_ARGUMENT = {
    "attr": 0,
    "selectattr": 0,
    "rejectattr": 0,
    "groupby": 0,
    "sum": 0,
    "sort": 2,
    "unique": 1,
    "min": 1,
    "max": 1,
}


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


def template_errors(source: str, partitions: Mapping[str, object] | None) -> list[str]:
    """Why ``source`` is not a usable template for a table with these partitions (empty if fine).

    ``partitions`` None: the table's partitions are not known (some were invalid), so the partition
    names the template uses are not checked.
    """
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
    if partitions is None:
        return errors
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
        tracker = _NameTracker(_ENV)
        tracker.visit(ast)  # may raise TemplateAssertionError: "block 'a' defined twice"
    except TemplateSyntaxError as exc:
        return _Shape(syntax_error=f"template does not parse: {exc.message} (template line {exc.lineno})")
    unknown = tuple(sorted(n for n in tracker.undeclared_identifiers if n not in CONTEXT_NAMES))
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
    private += _private_names_in_arguments(ast)
    return _Shape(None, unknown, tuple(private), tuple(dict.fromkeys(used)))


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render one template string in the sandbox; undefined names raise, and every failure is a
    :class:`~jinja2.TemplateError` (the dispatcher fails the run with it)."""
    if not any(marker in source for marker in _MARKERS):
        return source
    try:
        return _ENV.from_string(source).render(context)
    except TemplateError:
        raise
    except Exception as exc:  # {{ 1/0 }}, {{ partitions.n + 'x' }}, {% include %} without a loader
        raise TemplateRuntimeError(f"{type(exc).__name__}: {exc}") from exc


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
    if isinstance(node, nodes.Getitem):
        value = _constant(node.arg)  # table['__class__'], table['__cla' ~ 'ss__']
        return value if isinstance(value, str) else None
    return None


def _private_names_in_arguments(ast: nodes.Template) -> list[str]:
    """Private attributes named by a string rather than by syntax, which the sandbox would only refuse
    at render time: ``|attr('__class__')``, ``|map(attribute='x.__class__')``,
    ``'{0.__class__}'.format(table)``."""
    names: list[Any] = []
    for node in ast.find_all(nodes.Filter):
        arguments = [keyword.value for keyword in node.kwargs if keyword.key == "attribute"]
        position = _ATTRIBUTE_ARGUMENT.get(node.name)
        if position is not None and len(node.args) > position:
            arguments.append(node.args[position])
        if isinstance(node.dyn_kwargs, nodes.Dict):  # |map(**{'attribute': '__class__'})
            arguments += [pair.value for pair in node.dyn_kwargs.items if _constant(pair.key) == "attribute"]
        names += (_constant(argument) for argument in arguments)
    for call in ast.find_all(nodes.Call):
        if isinstance(call.node, nodes.Getattr) and call.node.attr in ("format", "format_map"):
            text = _constant(call.node.node)
            if isinstance(text, str):
                names += _format_fields(text)
    parts = (part for name in names if isinstance(name, str) for part in re.split(r"[.\[\]]", name))
    return [part for part in parts if part.startswith("_")]


def _constant(node: nodes.Expr) -> str | None:
    """The value of a literal, or of a ``~`` of literals (``'_' ~ '_class__'``); else None. Nothing is
    evaluated: folding ``'_' * 10**10`` here would be the attack it guards against."""
    if isinstance(node, nodes.Const):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, nodes.Concat):
        parts = [_constant(part) for part in node.nodes]
        return None if None in parts else "".join(part or "" for part in parts)
    return None


def _format_fields(text: str) -> list[str]:
    """The field names of a ``str.format`` string, nested ones included (``{0:{1.__class__}}``)."""
    fields: list[str] = []
    try:
        for _, field, spec, _ in Formatter().parse(text):
            fields += [field] if field else []
            fields += _format_fields(spec) if spec and "{" in spec else []
    except ValueError:  # not a valid format string: rendering reports it
        pass
    return fields


def _is_partitions(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "partitions"
