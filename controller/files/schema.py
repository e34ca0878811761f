"""The JSON Schema of a definition file, and its errors turned into plain messages with positions."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from controller.core.problems import Locator, PathSegment, Problem, did_you_mean

_JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}


def table_schema() -> dict[str, Any]:
    """The definition schema shipped with the package (``schemas/table.schema.json``)."""
    text = resources.files("controller").joinpath("schemas/table.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def table_validator() -> Draft202012Validator:
    """The compiled validator, built once per process (compiling per file would dominate)."""
    schema = table_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@cache
def _fast_validator() -> Any:
    """jsonschema-rs's compiled validator where it is installed (the command line validates thousands
    of files), else the same ``jsonschema`` validator that reports the errors: the Lambda package ships
    without it, since it only validates the few tables of a ``POST /tables`` payload."""
    try:
        import jsonschema_rs  # optional: the Lambda package ships without it
    except ImportError:
        return table_validator()
    return jsonschema_rs.validator_for(table_schema())


#: The path of the value a schema error makes unusable (a field, a list item), inside a definition.
Broken = tuple[PathSegment, ...]


def schema_problems(data: Any, locator: Locator) -> list[Problem]:
    """Every schema violation of one document, as problems pointing at the offending value."""
    return [problem for problem, _ in schema_errors(data, locator)]


def schema_errors(data: Any, locator: Locator) -> list[tuple[Problem, Broken]]:
    """Every schema violation of one document: the problem, and the path of the value it breaks
    (an unknown field's own path, a missing field's path, else the offending value's).

    A compiled (Rust) validator answers "valid?" in microseconds, where it is installed; only a document
    it rejects is walked by ``jsonschema``, whose error objects give the paths and keywords the messages
    need. Both read the same schema file, and a test holds them to the same verdicts.
    """
    if not isinstance(data, dict):
        return [(Problem(locator.locate(()), _not_a_mapping(data), "not-a-mapping"), ())]
    if _fast_validator().is_valid(data):
        return []
    validator = table_validator()
    found: list[tuple[Problem, Broken]] = []
    for error in validator.iter_errors(data):
        found.extend(_translate(error, locator))
    # jsonschema reports "required" once per missing field, each naming all of them: keep one each.
    return list(dict.fromkeys(found))


#: Fields of the old system's ``POST /tables`` payload written another way here: what to write instead.
_OLD_FIELDS = {
    "optative_with_dependency_id": (
        ": alternative upstreams are one any_of group here, {any_of: [a, b], is_required: true} "
        "(`flux-control import` converts them)"
    ),
}


def _as_list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _not_a_mapping(data: Any) -> str:
    return f"a table definition must be a mapping of fields, got {_describe(data)}"


def _translate(error: ValidationError, locator: Locator) -> list[tuple[Problem, Broken]]:
    path: tuple[PathSegment, ...] = tuple(error.absolute_path)
    kind = str(error.validator)
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        return [
            (
                Problem(
                    locator.locate((*path, extra), key=True),
                    f"unknown field {extra!r}"
                    f"{_OLD_FIELDS.get(extra) or did_you_mean(extra, allowed) or _allowed(allowed)}",
                    "schema-unknown-field",
                ),
                (*path, extra),
            )
            for extra in sorted(set(instance) - set(allowed))
        ]
    if kind == "required" and isinstance(instance, dict):
        where = f" in {_field(path)}" if path else ""
        return [
            (
                Problem(locator.locate(path), f"missing required field {name!r}{where}", "schema-required"),
                (*path, name),
            )
            for name in _as_list(error.validator_value)
            if name not in instance
        ]
    return [(Problem(locator.locate(path), _message(kind, error, path, schema), f"schema-{kind}"), path)]


def _message(kind: str, error: ValidationError, path: tuple[PathSegment, ...], schema: dict[str, Any]) -> str:
    field, value, expected = _field(path), error.instance, cast(Any, error.validator_value)
    if kind == "type":
        wanted = [expected] if isinstance(expected, str) else list(expected)
        names = " or ".join(_JSON_TYPES.get(t, t) for t in wanted)
        return f"{field} must be {names}, got {_describe(value)}"
    if kind == "const":
        return f"{field} must be {expected!r}, got {value!r}"
    if kind == "enum":
        return f"{field} must be one of {', '.join(map(str, expected))}; got {value!r}"
    if kind in ("pattern", "propertyNames"):
        what = schema.get("description") or f"it must match {expected}"
        return f"{field} {value!r} is not valid: {what}"
    if kind == "not" and "description" in schema:  # a form refused with its own explanation
        return f"{field} {value!r} is not valid: {schema['description']}"
    if kind in ("minimum", "maximum"):
        bound = "at least" if kind == "minimum" else "at most"
        return f"{field} must be {bound} {expected}, got {value!r}"
    if kind in ("minLength", "maxLength", "minItems", "maxItems"):
        bound = "at least" if kind.startswith("min") else "at most"
        unit = "characters" if kind.endswith("Length") else "items"
        return f"{field} must have {bound} {expected} {unit}"
    if kind == "uniqueItems":
        return f"{field} lists the same value more than once"
    return f"{field}: {error.message}"


def _field(path: tuple[PathSegment, ...]) -> str:
    text = ""
    for segment in path:
        text += f"[{segment}]" if isinstance(segment, int) else (f".{segment}" if text else segment)
    return f"'{text}'" if text else "the definition"


def _describe(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return f"number {value!r}"
    return f"string {value!r}"


def _allowed(choices: list[str]) -> str:
    return f" (allowed: {', '.join(choices)})"
