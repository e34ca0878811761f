"""The ``flux-control`` command line: thin wrappers over the core and its adapters."""

from __future__ import annotations

import click

from controller import __version__
from controller.cli.db import db_group
from controller.cli.explain import explain_command
from controller.cli.graph import graph_command
from controller.cli.importer import import_command
from controller.cli.reconcile import apply_command, drift_command, plan_command
from controller.cli.serve import serve_command
from controller.cli.validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flux-control")
def main() -> None:
    """Flux Control: decides when data tables may be rebuilt.

    Table definitions live as YAML in Git; these commands check them and sync them into the
    database that the runtime Lambda reads.
    """


@click.command("openapi")
def openapi_command() -> None:
    """Print the HTTP API's OpenAPI 3.1 document (JSON).

    \b
    Examples:
      flux-control openapi > openapi.json
    """
    from controller.api.app import openapi_document  # imports Powertools: only when asked

    click.echo(openapi_document())


for command in (
    validate,
    plan_command,
    apply_command,
    drift_command,
    graph_command,
    import_command,
    db_group,
    openapi_command,
    explain_command,
    serve_command,
):
    main.add_command(command)
