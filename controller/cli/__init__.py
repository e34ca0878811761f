"""The ``flux-control`` command line: thin wrappers over the core and its adapters."""

from __future__ import annotations

import click

from controller import __version__
from controller.cli.db import db_group
from controller.cli.reconcile import apply_command, drift_command, plan_command
from controller.cli.validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flux-control")
def main() -> None:
    """Flux Control: decides when data tables may be rebuilt.

    Table definitions live as YAML in Git; these commands check them and sync them into the
    database that the runtime Lambda reads.
    """


for command in (validate, plan_command, apply_command, drift_command, db_group):
    main.add_command(command)
