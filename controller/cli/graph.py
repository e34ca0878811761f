"""``flux-control graph``: the dependency graph of a definition set, as Mermaid or Graphviz DOT."""

from __future__ import annotations

from pathlib import Path

import click

from controller.cli.common import directory_argument, report_invalid
from controller.cli.options import format_option
from controller.core.graphs import dot, mermaid
from controller.files.validation import validate_directory


@click.command("graph")
@directory_argument
@format_option("mermaid", "dot")
@click.option(
    "--focus",
    metavar="TABLE",
    help="Keep only TABLE, everything upstream of it and everything downstream of it.",
)
def graph_command(directory: Path, output_format: str, focus: str | None) -> None:
    """Print the dependency graph of the definitions under DIRECTORY (default: definitions/).

    Edges go from an upstream table to the table that depends on it; optional dependencies are
    dotted (Mermaid) or dashed (DOT); the members of an any_of group (one of them is enough) are
    labelled "any of" ("any of #1", "any of #2" when a table has several groups); tables that
    require approval are drawn as hexagons. The definitions are validated first: invalid ones print
    their problems and exit 1.

    \b
    Examples:
      flux-control graph > graph.mmd
      flux-control graph --focus tb_op_enriquecido
      flux-control graph --format dot | dot -Tsvg > graph.svg
    """
    result = validate_directory(directory)
    if not result.valid:
        report_invalid(result)
    render = dot if output_format == "dot" else mermaid
    try:
        text = render(result.specs, focus=focus)
    except ValueError as exc:
        raise click.ClickException(
            f"{exc}. Run `flux-control graph {directory}` to see every table."
        ) from None
    click.echo(text, nl=False)
