"""``flux-control validate``: every check of a definition set, offline."""

from __future__ import annotations

import json
from pathlib import Path

import click

from controller.cli.annotations import github_annotation
from controller.cli.options import ByteSize, format_option
from controller.core.terminal_text import printable
from controller.files.validation import ValidationResult, validate_directory
from controller.files.yaml_documents import DEFAULT_MAX_FILE_BYTES


@click.command()
@click.argument(
    "directory",
    default="definitions",
    type=click.Path(exists=True, file_okay=True, dir_okay=True, path_type=Path),
)
@format_option("text", "json", "github")
@click.option(
    "--max-file-size",
    type=ByteSize(),
    default=DEFAULT_MAX_FILE_BYTES,
    show_default="1MiB",
    help="Largest definition file accepted.",
)
def validate(directory: Path, output_format: str, max_file_size: int) -> None:
    """Check every definition file under DIRECTORY (default: definitions/).

    Prints one line per problem as path:line:col: message, all of them at once, then a summary.
    Exits 0 when the definitions are valid, 1 otherwise. Nothing is written anywhere. With
    ``--format github`` each problem is a workflow command that GitHub Actions shows as an annotation
    on the file and line (paths relative to the current directory, the repository root in a workflow).

    \b
    Examples:
      flux-control validate
      flux-control validate path/to/definitions --format json
      flux-control validate --max-file-size 256KiB
      flux-control validate definitions --format github
    """
    result = validate_directory(directory, max_file_bytes=max_file_size)
    if output_format == "json":
        click.echo(json.dumps(_as_json(result), indent=2))
    elif output_format == "github":
        for problem in result.problems:
            click.echo(github_annotation(problem, workspace=Path.cwd()))
        _print_summary(result)
    else:
        _print_text(result)
    if not result.valid:
        raise SystemExit(1)


def _print_text(result: ValidationResult) -> None:
    for problem in result.problems:
        click.echo(printable(str(problem)))
    _print_summary(result)


def _print_summary(result: ValidationResult) -> None:
    counts = result.summary()
    if result.valid:
        click.secho(
            f"Valid: {_plural(counts['tables'], 'table')}, "
            f"{_plural(counts['dependencies'], 'dependency', 'dependencies')}, "
            f"{_plural(counts['tasks'], 'task')} in {_plural(counts['files'], 'file')}.",
            fg="green",
        )
    else:
        click.secho(
            f"Invalid: {_plural(counts['problems'], 'problem')} in "
            f"{_plural(counts['files_with_problems'], 'file')}; nothing was written.",
            fg="red",
            err=False,
        )


def _as_json(result: ValidationResult) -> dict[str, object]:
    return {
        "valid": result.valid,
        "summary": result.summary(),
        "problems": [p.as_dict() for p in result.problems],
    }


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {plural or word + 's'}"
