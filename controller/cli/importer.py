"""``flux-control import``: an original ``POST /tables`` payload becomes definition files.

Alternative upstreams. The old system stored ``optative_with_dependency_id`` on a dependency ("this
upstream or that one"), a reference to another row of its ``dependencies`` table, and never acted on
it; here they become one ``any_of`` group (DESIGN §4). Within one table of the payload:

- ``optative_with_dependency_id: N`` names the dependency whose ``id`` (the old row id) is N; when
  no dependency of that table carries an ``id``, the one whose ``dependency_id`` (the old upstream
  table id) is N. A reference that matches nothing is refused and nothing is written.
- Links go both ways and chain: A→B and C→B make one group of A, B and C, written where its first
  member was, members in the order the payload lists them.
- The group is required if any member is (a member without ``is_required`` counts as required, the
  definition default); a member keeps its ``partition_map`` and is written by name alone without one.
- The old ids (``id``, ``optative_with_dependency_id``, and ``dependency_id`` beside a
  ``dependency_name``) mean nothing here and are not written; a dependency linked to none stays plain.
"""

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
    "dependencies": ("dependency_name", "any_of", "is_required", "partition_map"),
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
    tables = [_with_groups(table) for table in _read_payload(payload)]
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
        missing = sorted({name for t in tables for name in _upstream_names(t)} - defined)
        raise click.ClickException(
            f"the files were written, but they depend on tables that are not defined in "
            f"{out.as_posix()}: {', '.join(missing)}. Add the definitions of those upstream tables "
            f"(or import them too), then run `flux-control validate {out.as_posix()}`."
        )
    raise click.ClickException(
        f"the files were written, but the definitions in {out.as_posix()} have "
        f"{len(result.problems)} problem(s); fix them, then run `flux-control validate {out.as_posix()}`."
    )


def _upstream_names(table: dict[str, Any]) -> list[str]:
    """The upstream names a payload table gives: plain dependencies' and ``any_of`` members'."""
    found: list[str] = []
    for item in table.get("dependencies") or ():
        if not isinstance(item, dict):
            continue
        group = item.get("any_of")
        members: list[Any] = group if isinstance(group, list) else [item]
        for member in members:
            name = member.get("dependency_name") if isinstance(member, dict) else member
            if isinstance(name, str):
                found.append(name)
    return found


#: The old system's ids on a dependency: consumed by :func:`_with_groups`, never written.
_OLD_IDS = ("id", "optative_with_dependency_id")


def _with_groups(table: dict[str, Any]) -> dict[str, Any]:
    """``table`` with its dependencies linked by ``optative_with_dependency_id`` as ``any_of`` groups
    (the rules are in the module's docstring); a table without such links is returned as it is."""
    items = table.get("dependencies")
    if not isinstance(items, list) or not any(
        isinstance(d, dict) and any(key in d for key in _OLD_IDS) for d in items
    ):
        return table
    dicts = [(i, d) for i, d in enumerate(items) if isinstance(d, dict)]
    by_row = {d["id"]: i for i, d in dicts if _is_id(d.get("id"))}
    by_table = {d["dependency_id"]: i for i, d in dicts if _is_id(d.get("dependency_id"))}
    targets = by_row if by_row else by_table
    group_of = list(range(len(items)))  # union-find over positions: each group's first member

    def root(i: int) -> int:
        while group_of[i] != i:
            i = group_of[i]
        return i

    for i, item in dicts:
        link = item.get("optative_with_dependency_id")
        if link is None:
            continue
        if not _is_id(link) or link not in targets:
            by = "id" if by_row else "dependency_id"
            raise click.ClickException(
                f"table {table.get('name')!r}: dependency #{i + 1} has optative_with_dependency_id "
                f"{link!r}, but no dependency of that table has that {by}; fix the payload. "
                "Nothing was written."
            )
        a, b = sorted((root(i), root(targets[link])))
        group_of[b] = a
    members: dict[int, list[int]] = {}
    for i in range(len(items)):
        members.setdefault(root(i), []).append(i)
    converted: list[Any] = []
    for first, positions in members.items():  # dict order: by each group's first position
        if len(positions) == 1:
            converted.append(_plain(items[first]))
        else:
            group = [items[i] for i in positions]
            required = any(d.get("is_required", True) is not False for d in group)
            converted.append({"any_of": [_member(d) for d in group], "is_required": required})
    return {**table, "dependencies": converted}


def _plain(item: Any) -> Any:
    """A dependency linked to no other, without the old ids."""
    if not isinstance(item, dict):
        return item
    return {k: v for k, v in _without_old_ids(item).items() if k not in _OLD_IDS}


def _member(item: dict[str, Any]) -> Any:
    """One alternative of a group: its name alone, or with its ``partition_map`` (and anything else
    it carries, which validation then reports: the group's ``is_required`` replaces the member's)."""
    kept = {k: v for k, v in _without_old_ids(item).items() if k not in (*_OLD_IDS, "is_required")}
    if set(kept) == {"dependency_name"} and isinstance(kept["dependency_name"], str):
        return kept["dependency_name"]
    return _ordered(kept, ("dependency_name", "partition_map"))


def _is_id(value: Any) -> bool:
    """An old system's id: an integer (or a string, as some exports write them), never a boolean."""
    return isinstance(value, int | str) and not isinstance(value, bool)


def _without_old_ids(item: dict[str, Any]) -> dict[str, Any]:
    """``dependency_id`` (the old upstream table id) is redundant beside a ``dependency_name``."""
    if "dependency_name" in item:
        return {k: v for k, v in item.items() if k != "dependency_id"}
    return item
