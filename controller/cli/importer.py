"""``flux-control import``: an original ``POST /tables`` payload becomes definition files."""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml

from controller.core.payloads import PayloadError, payload_tables
from controller.core.plans import LIST_FIELDS, OBJECT_FIELDS, PEOPLE_FIELDS, SCALAR_FIELDS
from controller.core.specs import DEFAULT_TASK_TIMEOUT_SECONDS
from controller.core.terminal_text import printable
from controller.files.validation import ValidationResult, validate_directory

SCHEMA_FILE = Path("schemas") / "table.schema.json"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,127}$")
_WIDTH = 1 << 20  # never fold long strings: one value per line diffs cleanly
# The order of the DESIGN example; fields a payload has beyond these follow in their own order.
_FIELDS = ("version", "name", *SCALAR_FIELDS, *(list_field for list_field, _ in LIST_FIELDS))
_ITEM_FIELDS = {
    "partitions": ("name", "type", "is_required"),
    "dependencies": ("dependency_name", "is_required", "partition_map"),
    "tasks": ("alias", "type", "target", "params", "timeout_seconds"),
    "retries": ("max_attempts", "backoff_seconds"),
}
_ONE_PER_LINE = ("partitions", "dependencies")  # each item as a flow mapping on its own line
# approvers, producers, operators: one flow list each; retries: one flow mapping
_FLOW = (*PEOPLE_FIELDS, *OBJECT_FIELDS)
#: Item fields left out when they say what their default says (DESIGN §2: "default 86400").
_ITEM_DEFAULTS = {"tasks": {"timeout_seconds": DEFAULT_TASK_TIMEOUT_SECONDS}}


@click.command("import")
@click.argument("payload", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write <name>.yaml files into (created if missing).",
)
@click.option("--force", is_flag=True, help="Overwrite definition files that already exist.")
def import_command(payload: Path, out: Path, force: bool) -> None:
    """Convert an original POST /tables PAYLOAD (JSON) into definition files, one per table.

    The payload may be the original request {"data": [...tables...], "user": "..."}, a list of
    tables, {"tables": [...]}, or one table object. Each table is written to OUT/<name>.yaml with
    `version: 1` and a schema comment for editors (a path relative to the file: the repository's
    schemas/table.schema.json, which is written there if it is missing), then OUT is validated.
    Tables that depend on tables outside the payload are still written, but the command exits 1
    until those upstream definitions are added.

    \b
    Examples:
      flux-control import payload.json --out definitions/operacoes
      flux-control import payload.json --out definitions/operacoes --force
    """
    tables = _read_payload(payload)
    names = _file_names(tables)
    targets = [out / f"{name}.yaml" for name in names]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        listed = ", ".join(t.as_posix() for t in existing)
        raise click.ClickException(
            f"{listed} already exist(s); nothing was written. Use --force to overwrite."
        )
    schema, missing = schema_location(out)
    header = f"# yaml-language-server: $schema={Path(os.path.relpath(schema, out.resolve())).as_posix()}\n"
    out.mkdir(parents=True, exist_ok=True)
    if missing:
        schema.parent.mkdir(parents=True, exist_ok=True)
        schema.write_bytes(
            resources.files("controller").joinpath("schemas", "table.schema.json").read_bytes()
        )
        click.echo(f"Wrote {schema.as_posix()} (the schema the files point editors at; commit it with them)")
    for target, table in zip(targets, tables, strict=True):
        target.write_text(header + render_table(table), encoding="utf-8")
        click.echo(f"Wrote {target.as_posix()}")
    _report(validate_directory(out), out, tables)


def render_table(table: dict[str, Any]) -> str:
    """One table as a definition document: DESIGN field order, null fields left out (and a task's
    ``timeout_seconds`` when it is the default)."""
    fields = _ordered(table, _FIELDS)
    if "version" not in fields:
        fields = {"version": 1, **fields}
    parts: list[str] = []
    for key, value in fields.items():
        if key in _ITEM_FIELDS and isinstance(value, list):
            defaults = _ITEM_DEFAULTS.get(key, {})
            value = [_ordered(v, _ITEM_FIELDS[key], defaults) if isinstance(v, dict) else v for v in value]
        elif key in _ITEM_FIELDS and isinstance(value, dict):
            value = _ordered(value, _ITEM_FIELDS[key])
        if key in _ONE_PER_LINE and _mappings(value):
            lines = [f"{key}:"]
            lines += [f"  - {_dump(item, flow=True).rstrip()}" for item in value]
            parts.append("\n".join(lines) + "\n")
        elif key in _FLOW and isinstance(value, list | dict):
            parts.append(f"{key}: {_dump(value, flow=True)}")
        else:
            parts.append(_dump({key: value}))
    return "".join(parts)


def schema_location(out: Path) -> tuple[Path, bool]:
    """The ``schemas/table.schema.json`` the files in ``out`` point at, and whether it is missing.

    The nearest one in ``out`` or above it, up to the top of its Git repository; else (missing) the
    one to write at that top, or in ``out`` itself outside a repository. Never the package's own
    copy: an absolute path of this machine would be committed with the files.
    """
    directory = out.resolve()
    for candidate in (directory, *directory.parents):
        schema = candidate / SCHEMA_FILE
        if schema.is_file():
            return schema, False
        if (candidate / ".git").exists():
            return schema, True  # the top of the repository: no schemas directory in it
    return directory / SCHEMA_FILE, True


class _Dumper(yaml.SafeDumper):
    """Safe dumping, with block sequences indented under their key as in the examples."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _dump(value: Any, *, flow: bool = False) -> str:
    return yaml.dump(
        value,
        Dumper=_Dumper,
        default_flow_style=flow,
        sort_keys=False,
        allow_unicode=True,
        width=_WIDTH,
    )


def _mappings(value: Any) -> bool:
    """A non-empty list of mappings (anything else is dumped as it is, and validation reports it)."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _ordered(
    mapping: dict[str, Any], order: tuple[str, ...], defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Known keys in ``order``, then the others as given; keys whose value is null, or is the one in
    ``defaults``, are dropped."""
    keys = [k for k in order if k in mapping] + [k for k in mapping if k not in order]
    omitted = defaults or {}
    return {
        k: mapping[k]
        for k in keys
        if mapping[k] is not None and not (k in omitted and _same(mapping[k], omitted[k]))
    }


def _same(value: Any, default: Any) -> bool:
    """``value`` is ``default`` (an integer, not a boolean or a float that equals it)."""
    return type(value) is type(default) and value == default


def _read_payload(path: Path) -> list[dict[str, Any]]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise click.ClickException(f"{path} is not UTF-8 text; nothing was written.") from None
    except json.JSONDecodeError as exc:
        raise click.ClickException(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "nothing was written. Pass the JSON body of the original POST /tables request."
        ) from None
    try:
        return payload_tables(payload)
    except PayloadError as exc:
        raise click.ClickException(f"{path}: {exc}; nothing was written.") from None


def _file_names(tables: list[dict[str, Any]]) -> list[str]:
    """Each table's name, which names its file; refuses names that cannot be file names."""
    names: list[str] = []
    for number, table in enumerate(tables, start=1):
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise click.ClickException(
                f"table #{number} of the payload has name {name!r}; a name must be lowercase letters, "
                "digits and underscores, starting with a letter. Fix the payload; nothing was written."
            )
        if name in names:
            raise click.ClickException(
                f"table {name!r} appears more than once in the payload; nothing was written."
            )
        names.append(name)
    return names


def _report(result: ValidationResult, out: Path, tables: list[dict[str, Any]]) -> None:
    if result.valid:
        click.secho(f"Valid: {len(tables)} table(s) written to {out.as_posix()}.", fg="green")
        return
    for problem in result.problems:
        click.secho(f"Warning: {printable(str(problem))}", fg="yellow", err=True)
    if all(p.code == "unknown-dependency" for p in result.problems):
        defined = {t.name for t in result.specs}
        missing = sorted(
            {
                d["dependency_name"]
                for t in tables
                for d in t.get("dependencies") or ()
                if isinstance(d, dict) and isinstance(d.get("dependency_name"), str)
            }
            - defined
        )
        raise click.ClickException(
            f"the files were written, but they depend on tables that are not defined in "
            f"{out.as_posix()}: {', '.join(missing)}. Add the definitions of those upstream tables "
            f"(or import them too), then run `flux-control validate {out.as_posix()}`."
        )
    raise click.ClickException(
        f"the files were written, but the definitions in {out.as_posix()} have "
        f"{len(result.problems)} problem(s); fix them, then run `flux-control validate {out.as_posix()}`."
    )
