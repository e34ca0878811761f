"""``plan``, ``apply`` and ``drift``: sync the definitions in Git into the database."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import click

from controller.cli.common import (
    colour,
    database_option,
    directory_argument,
    friendly_errors,
    open_engine,
    open_reader,
    report_invalid,
    resolve_actor,
    resolve_revision,
)
from controller.cli.plan_rendering import render_markdown, render_text
from controller.core import graphs
from controller.core.plans import Plan, TableState, make_plan
from controller.core.specs import TableSpec
from controller.core.terminal_text import printable
from controller.db.definitions_store import WRITE_STEPS, RevisionInfo
from controller.files.git_source import read_revision
from controller.files.plan_documents import read_plan_file, write_plan_file
from controller.files.validation import ValidationResult, validate_directory, validate_sources
from controller.reconciler import DEFAULT_LOCK_TIMEOUT, apply, desired_states, plan


def _valid(directory: Path) -> ValidationResult:
    result = validate_directory(directory)
    if not result.valid:
        report_invalid(result)
    return result


def _desired(directory: Path) -> dict[str, TableState]:
    return desired_states(_valid(directory))


@click.command("plan")
@directory_argument
@database_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the plan as JSON here."
)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes, 1 on error.")
@click.option(
    "--compact",
    is_flag=True,
    help="Print only the summary (and the tables deleted), not every table and field.",
)
@click.option("--revision", help="Git revision to record in the plan (default: GITHUB_SHA or git HEAD).")
@click.option(
    "--against-ref",
    metavar="REF",
    help="Compare with the definitions at this Git revision instead of the database (for pull requests).",
)
@friendly_errors
def plan_command(
    directory: Path,
    database_url: str,
    output_format: str,
    out: Path | None,
    detailed_exitcode: bool,
    revision: str | None,
    against_ref: str | None,
    compact: bool,
) -> None:
    """Show what apply would change in the database, per table and field; writes nothing.

    Deletions are listed first. With --out, the JSON plan can later be applied exactly with
    `apply --plan`, which refuses it if the database changed in between.

    \b
    Examples:
      flux-control plan
      flux-control plan definitions --detailed-exitcode
      flux-control plan --format markdown > comment.md
      flux-control plan --out plan.json && flux-control apply --plan plan.json
      flux-control plan --against-ref origin/main --format markdown
      flux-control plan --compact
    """
    definitions = _valid(directory)
    desired = desired_states(definitions)
    result = (
        _plan_against(directory, against_ref, desired)
        if against_ref
        else plan(open_reader(database_url), desired)[0]
    )
    result.revision = resolve_revision(revision, directory)
    result.created_at = datetime.now(UTC)
    if out is not None:
        write_plan_file(result, out)
    if compact and output_format == "text":
        click.echo(_compact_text(result, result.summary_line(), "To delete"), nl=False)
    else:
        _print_plan(result, output_format, definitions.specs)
    if detailed_exitcode and result.has_changes:
        sys.exit(2)


def _plan_against(directory: Path, ref: str, desired: dict[str, TableState]) -> Plan:
    """The plan from the definitions at Git ``ref`` to the working tree; no database involved."""
    base = validate_sources(read_revision(directory, ref))
    result = make_plan(desired_states(base), desired)
    result.baseline = ref
    result.notes.append(f"Compared with the definitions at {ref} (not with a database).\n")
    if not base.valid:
        result.notes.append(
            f"Warning: the definitions at {ref} have {len(base.problems)} problem(s); "
            "tables with problems there count as absent.\n"
        )
    return result


def _print_plan(result: Plan, output_format: str, specs: list[TableSpec]) -> None:
    if output_format == "json":
        click.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    elif output_format == "markdown":
        changed = {a.table for a in result.actions if a.action != "delete"}
        graph = graphs.mermaid(specs, changed=changed) if changed else None
        click.echo(render_markdown(result, graph=graph), nl=False)
    else:
        click.echo(render_text(result, colour=colour()), nl=False)


@click.command("apply")
@directory_argument
@database_option
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Apply exactly this plan (from `plan --out`) instead of the directory.",
)
@click.option("--allow-delete", is_flag=True, help="Allow deleting tables that have execution history.")
@click.option("--revision", help="Git revision to record (default: GITHUB_SHA, else git rev-parse HEAD).")
@click.option("--actor", help="Who applies (default: GITHUB_ACTOR, else the local user).")
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_LOCK_TIMEOUT,
    show_default=True,
    help="Seconds to wait for another apply to finish.",
)
@click.option(
    "--compact",
    is_flag=True,
    help="Print only the summary (and the tables deleted), not every table and field.",
)
@friendly_errors
def apply_command(
    directory: Path,
    database_url: str,
    plan_file: Path | None,
    allow_delete: bool,
    revision: str | None,
    actor: str | None,
    lock_timeout: float,
    compact: bool,
) -> None:
    """Make the database match the definitions, in one transaction.

    An empty database gets its schema first. Tables with execution history are only deleted with
    --allow-delete (they are marked deleted; their history is kept). Applying unchanged
    definitions writes nothing.

    \b
    Examples:
      flux-control apply
      flux-control apply definitions --revision "$GITHUB_SHA"
      flux-control apply --plan plan.json
      flux-control apply --allow-delete
      flux-control apply --compact          # thousands of tables: the summary only
    """
    saved = read_plan_file(plan_file) if plan_file else None
    desired = None if saved else _desired(directory)
    size = len(saved.actions) if saved else len(desired or {})
    with _progress(size) as step:
        outcome = apply(
            open_engine(database_url),
            desired=desired,
            saved_plan=saved,
            allow_delete=allow_delete,
            revision=resolve_revision(revision or (saved.revision if saved else None), directory),
            actor=resolve_actor(actor),
            now=datetime.now(UTC),
            lock_timeout=lock_timeout,
            progress=step,
        )
    if not outcome.applied:
        click.echo("No changes. Nothing to apply.")
        return
    s = outcome.plan.summary()
    done = f"Apply complete: {s['create']} created, {s['update']} updated, {s['delete']} deleted."
    if compact:
        click.secho(_compact_text(outcome.plan, done, "Deleted"), fg="green", nl=False)
        return
    click.echo(render_text(outcome.plan, colour=colour()), nl=False)
    click.secho(done, fg="green")


def _compact_text(result: Plan, summary: str, deleted: str) -> str:
    """The notes, the tables deleted after ``deleted`` (always named: a deletion is never a line lost in
    a count), then ``summary``."""
    lines = [printable(note, lines=True).rstrip("\n") for note in result.notes]
    tables = [a.table for a in result.actions if a.action == "delete"]
    if tables:
        lines.append(f"{deleted}: {', '.join(tables)}")
    return "\n".join([*lines, summary]) + "\n"


PROGRESS_THRESHOLD = 1000


@contextmanager
def _progress(tables: int) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr for applies of many tables (click shows it only on a terminal)."""
    if tables < PROGRESS_THRESHOLD:
        yield lambda: None
        return
    with click.progressbar(length=WRITE_STEPS, label=f"Applying {tables:,} tables", file=sys.stderr) as bar:
        yield lambda: bar.update(1)


@click.command("drift")
@directory_argument
@database_option
@click.option(
    "--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@friendly_errors
def drift_command(directory: Path, database_url: str, output_format: str) -> None:
    """Report database state that differs from the definitions (changed by hand, or not applied).

    Exits 0 when the database matches, 2 when it drifted. The next apply heals the drift.

    \b
    Examples:
      flux-control drift
      flux-control drift definitions --format json
    """
    result, last = plan(open_reader(database_url), _desired(directory))
    if output_format == "json":
        document = {"drift": result.has_changes, "last_apply": _revision_dict(last), "plan": result.as_dict()}
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        click.echo(_drift_text(result, last), nl=False)
    if result.has_changes:
        sys.exit(2)


def _drift_text(result: Plan, last: RevisionInfo | None) -> str:
    applied = (
        f"last applied from revision {printable(last.revision)} by {printable(last.actor)} "
        f"at {last.applied_at:%Y-%m-%d %H:%M:%S}Z"
        if last
        else "never applied"
    )
    if not result.has_changes:
        return f"No drift: the database matches the definitions ({applied}).\n"
    header = (
        f"Drift: the database differs from the definitions ({applied}).\n"
        "The next apply would make these changes:\n\n"
    )
    return header + render_text(result, colour=colour())


def _revision_dict(last: RevisionInfo | None) -> dict[str, str] | None:
    if last is None:
        return None
    return {"revision": last.revision, "actor": last.actor, "applied_at": last.applied_at.isoformat()}
