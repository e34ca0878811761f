"""``flux-control explain``: why a table did or did not run for a partition key."""

from __future__ import annotations

import json

import click

from controller.cli.common import database_option, friendly_errors, open_reader
from controller.core.errors import ServiceError
from controller.core.keys import InvalidPartition
from controller.db.reads import SqlReads
from controller.reconciler import definitions_applied
from controller.services.explain import explain, render

NOTHING_APPLIED = "no definitions applied: run `flux-control apply` first"


def _partition(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for value in values:
        name, sep, raw = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE")
        parsed[name.strip()] = raw.strip()
    return parsed


@click.command("explain")
@click.argument("table")
@click.option(
    "--partition",
    "-p",
    "partitions",
    multiple=True,
    callback=_partition,
    metavar="NAME=VALUE",
    help="A partition value of the key (repeat for each partition).",
)
@database_option
@click.option(
    "--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@friendly_errors
def explain_command(table: str, partitions: dict[str, str], database_url: str, output_format: str) -> None:
    """Explain why TABLE did or did not run for a key.

    Shows each dependency present or missing (with the execution that satisfies it; for an any_of
    group, of which member, or that none of them has one), the open run and its state, the debounce
    fire time, the approval, and the last runs with their outcome.

    \b
    Examples:
      flux-control explain tb_op_enriquecido --partition ano_mes_referencia=202305
      flux-control explain tb_vendas_consolidadas -p data_venda=2024-05-01 -p regiao=sul --format json
    """
    engine = open_reader(database_url)  # reads only: never creates a database file
    if not definitions_applied(engine):
        raise click.ClickException(NOTHING_APPLIED)
    try:
        result = explain(SqlReads(engine), table, partitions)
    except (ServiceError, InvalidPartition) as exc:
        raise click.ClickException(str(exc)) from None
    if output_format == "json":
        click.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(render(result), nl=False)
