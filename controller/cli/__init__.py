"""The ``flux-control`` command line: thin wrappers over the core and its adapters.

Exit codes are Terraform's (DESIGN §3): 0 success, 1 any error, usage errors and missing paths
included, and 2 only for "changes" (``plan --detailed-exitcode``) or "drift". click exits 2 on a
usage error; :class:`FluxGroup` makes that 1, so a CI step never reads a typo as "changes".
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from controller import __version__
from controller.cli.common import colour_allowed
from controller.cli.db import db_group
from controller.cli.explain import explain_command
from controller.cli.graph import graph_command
from controller.cli.importer import import_command
from controller.cli.operator import backfill_command, runs_group
from controller.cli.reconcile import apply_command, drift_command, plan_command
from controller.cli.serve import serve_command
from controller.cli.validate import validate


class FluxGroup(click.Group):
    """The command group, with usage errors exiting 1 (click's 2 means "changes" here)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            exc.show()
            sys.exit(1)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        # A command that returns normally succeeded; --help and --version end with their exit code.
        sys.exit(code if isinstance(code, int) else 0)


@click.group(
    cls=FluxGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="flux-control")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Flux Control: decides when data tables may be rebuilt.

    Table definitions live as YAML in Git; these commands check them and sync them into the
    database that the runtime Lambda reads. Colours appear only on a terminal, and never with
    NO_COLOR set or TERM=dumb.

    \b
    Shell completion (bash; zsh and fish likewise with zsh_source, fish_source):
      eval "$(_FLUX_CONTROL_COMPLETE=bash_source flux-control)"
    """
    if not colour_allowed():
        ctx.color = False  # every click.echo/secho below strips its styles


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
    runs_group,
    backfill_command,
):
    main.add_command(command)
