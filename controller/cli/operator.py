"""``flux-control runs …`` and ``flux-control backfill``: the operator commands (DESIGN §8).

They are clients of the HTTP API (``--api-url`` or ``FLUX_API_URL``) and never touch the database:
the same commands work against ``flux-control serve`` on a laptop and against the deployed API
Gateway, whose requests they sign with SigV4 (:mod:`controller.cli.api_client`).
"""

from __future__ import annotations

import functools
import getpass
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from controller.cli.api_client import DEFAULT_TIMEOUT, ApiClient, ApiError
from controller.cli.operator_output import as_json, backfill_summary, run_detail, runs_table
from controller.cli.options import format_option
from controller.core.runs import ALL_STATES

F = TypeVar("F", bound=Callable[..., Any])
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)", re.ASCII)
_USER_HELP = (
    'Who you are, sent as the body\'s "user". Only a trusted-mode server (flux-control serve) '
    "honours it; API Gateway ignores it and takes your identity from the request's signature or "
    "token. Default: FLUX_USER, else your login name."
)
_EPILOG = (
    "The API is --api-url or FLUX_API_URL. Requests to an API Gateway URL "
    "(*.execute-api.REGION.amazonaws.com) are signed with SigV4 from your AWS credentials; "
    "--sigv4 signs for a custom domain too."
)


def api_options(command: F) -> F:
    """``--api-url``, ``--sigv4/--no-sigv4``, ``--timeout`` and ``--format``, and the API's errors
    turned into one line on stderr and exit 1 (never a traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ApiError as error:
            raise click.ClickException(str(error)) from None

    decorated: Any = wrapper
    for option in (
        format_option("table", "json"),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_TIMEOUT,
            show_default=True,
            metavar="SECONDS",
            help="Give up when connecting, or waiting for any part of the answer, takes longer.",
        ),
        click.option(
            "--sigv4/--no-sigv4",
            default=None,
            help="Sign requests with SigV4 (execute-api) from your AWS credentials. Default: sign only "
            "for API Gateway hosts (*.execute-api.REGION.amazonaws.com); region from the host, else "
            "AWS_REGION.",
        ),
        click.option(
            "--api-url",
            envvar="FLUX_API_URL",
            show_envvar=True,
            metavar="URL",
            help="Base URL of the Flux Control API, with its stage (https://ID.execute-api.REGION."
            "amazonaws.com/prod; http://127.0.0.1:8080 for flux-control serve).",
        ),
    ):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


user_option = click.option("--user", envvar="FLUX_USER", metavar="NAME", help=_USER_HELP)


def connect(api_url: str | None, sigv4: bool | None, timeout: float) -> ApiClient:
    """The client of ``--api-url``; a usage error when there is none or it is not a URL."""
    if not api_url or not api_url.strip():
        raise click.UsageError("no API URL: pass --api-url URL or set FLUX_API_URL")
    try:
        return ApiClient.for_url(api_url, sigv4, timeout)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--api-url'") from None


def caller_name(user: str | None) -> str | None:
    """``--user`` (or FLUX_USER), else the login name; None when the system knows none."""
    if user and user.strip():
        return user.strip()
    try:
        return getpass.getuser()
    except Exception:  # KeyError, OSError: no login name (a container without a passwd entry)
        return None


def answer_field(answer: Any, name: str) -> Any:
    """``answer[name]``, or an error saying the URL does not look like the Flux Control API."""
    if not isinstance(answer, dict) or name not in answer:
        raise ApiError(f"the answer has no {name!r}: is --api-url the Flux Control API?")
    return answer[name]


def _show(answer: Any, output_format: str, text: Callable[[], str]) -> None:
    click.echo(as_json(answer) if output_format == "json" else text(), nl=output_format == "json")


run_id_argument = click.argument("run_id", type=click.IntRange(min=1), metavar="RUN_ID")


@click.group("runs", epilog=_EPILOG)
def runs_group() -> None:
    """List, inspect and act on runs through the HTTP API.

    \b
    Examples:
      export FLUX_API_URL=http://127.0.0.1:8080          # flux-control serve
      flux-control runs list --status awaiting_approval
      flux-control runs show 42
      flux-control runs approve 42 --comment "numbers checked"
      flux-control runs retry 42 --reason "source fixed"
    """


@runs_group.command("list", epilog=_EPILOG)
@click.option("--table", metavar="TABLE", help="Only the runs of this table.")
@click.option("--status", type=click.Choice(ALL_STATES), help="Only the runs in this state.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="At most this many runs."
)
@api_options
def list_command(
    table: str | None,
    status: str | None,
    limit: int,
    api_url: str | None,
    sigv4: bool | None,
    timeout: float,
    output_format: str,
) -> None:
    """List runs, newest first: id, table, partitions, state, fire time, approval.

    \b
    Examples:
      flux-control runs list --table tb_op_enriquecido
      flux-control runs list --status failed --limit 20 --format json
    """
    client = connect(api_url, sigv4, timeout)
    answer = client.get("/runs", {"table": table, "status": status, "limit": limit})
    runs = answer_field(answer, "runs")
    _show(answer, output_format, lambda: runs_table(runs))


@runs_group.command("show", epilog=_EPILOG)
@run_id_argument
@api_options
def show_command(
    run_id: int, api_url: str | None, sigv4: bool | None, timeout: float, output_format: str
) -> None:
    """Show run RUN_ID: state, key, attempts, approval, tasks with their external ids, triggering
    executions and every change of state with who asked and why.

    \b
    Examples:
      flux-control runs show 42
      flux-control runs show 42 --format json | jq .run.tasks
    """
    client = connect(api_url, sigv4, timeout)
    answer = client.get(f"/runs/{run_id}")
    run = answer_field(answer, "run")
    _show(answer, output_format, lambda: run_detail(run))


def _decide(
    approve: bool, run_id: int, comment: str | None, user: str | None, client: ApiClient
) -> dict[str, Any]:
    """Approve or reject the pending approval of run ``run_id`` (the API decides by approval id)."""
    run = answer_field(client.get(f"/runs/{run_id}"), "run")
    if not isinstance(run, dict):
        raise ApiError("the answer's 'run' is not an object: is --api-url the Flux Control API?")
    approval, status = run.get("approval"), run.get("status")
    if isinstance(approval, dict):
        approval_id = approval.get("id") if approval.get("status") == "pending" else None
        state = f"its approval {approval.get('id')} is {approval.get('status')}"
    else:  # an answer without the approval object: its id, while the run awaits approval
        approval_id = run.get("approval_id") if status == "awaiting_approval" else None
        state = "it has no approval" if run.get("approval_id") is None else f"it is {status}"
    if approval_id is None:
        raise ApiError(f"run {run_id} has no pending approval: {state} (run status: {status})")
    body = {"approval_status_id": approval_id, "comment": comment, "user": caller_name(user)}
    answer: dict[str, Any] = client.post("/approve" if approve else "/reject", body)
    return answer


def _decision_command(name: str, approve: bool) -> click.Command:
    verb = "Approve" if approve else "Reject"
    outcome = "its run is scheduled" if approve else "its run is rejected"

    @runs_group.command(name, epilog=_EPILOG)
    @run_id_argument
    @click.option("--comment", metavar="TEXT", help="Recorded with the decision.")
    @user_option
    @api_options
    def decide(
        run_id: int,
        comment: str | None,
        user: str | None,
        api_url: str | None,
        sigv4: bool | None,
        timeout: float,
        output_format: str,
    ) -> None:
        client = connect(api_url, sigv4, timeout)
        answer = _decide(approve, run_id, comment, user, client)
        run = answer_field(answer, "run")
        _show(answer, output_format, lambda: runs_table([run]))

    decide.help = (
        f"{verb} the pending approval of run RUN_ID: {outcome}. A run without a pending approval "
        f"is refused and nothing is sent.\n\n\b\nExamples:\n  flux-control runs {name} 42\n"
        f'  flux-control runs {name} 42 --comment "checked with the owners"'
    )
    return decide


def _action_command(name: str, summary: str, example: str) -> click.Command:
    @runs_group.command(name, epilog=_EPILOG)
    @run_id_argument
    @click.option("--reason", metavar="TEXT", help="Why: recorded on the run's events.")
    @user_option
    @api_options
    def act(
        run_id: int,
        reason: str | None,
        user: str | None,
        api_url: str | None,
        sigv4: bool | None,
        timeout: float,
        output_format: str,
    ) -> None:
        client = connect(api_url, sigv4, timeout)
        answer = client.post(f"/runs/{run_id}/{name}", {"reason": reason, "user": caller_name(user)})
        run = answer_field(answer, "run")
        _show(answer, output_format, lambda: runs_table([run]))

    act.help = f"{summary}\n\n\b\nExamples:\n  {example}"
    return act


approve_command = _decision_command("approve", True)
reject_command = _decision_command("reject", False)
cancel_command = _action_command(
    "cancel",
    "Cancel run RUN_ID while it awaits approval, is scheduled or queued (its schedule is deleted).",
    'flux-control runs cancel 42 --reason "upstream data is wrong"',
)
retry_command = _action_command(
    "retry",
    "Retry failed run RUN_ID as its next attempt (approval is asked again when the table requires "
    "it now and the run was never approved).",
    'flux-control runs retry 42 --reason "source fixed"',
)


# --- backfill ----------------------------------------------------------------------------------------

_PARTITION_FORMS = "NAME=FROM..TO, NAME=V,V,… or NAME=V"


def _value(text: str) -> int | str:
    """An integer as a JSON number (``007`` stays a string), anything else as given."""
    stripped = text.strip()
    return int(stripped) if _INTEGER.fullmatch(stripped) else stripped


def parse_partitions(
    _ctx: click.Context | None, _param: click.Parameter | None, values: tuple[str, ...]
) -> dict[str, Any]:
    """``-p`` values as the body's ``partitions``: ``NAME=FROM..TO`` → ``{"from", "to"}``,
    ``NAME=a,b`` → ``["a", "b"]``, ``NAME=a`` → ``["a"]``."""
    parsed: dict[str, Any] = {}
    for value in values:
        name, sep, raw = value.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise click.BadParameter(f"{value!r} is not {_PARTITION_FORMS}")
        if name in parsed:
            raise click.BadParameter(f"partition {name!r} is given more than once")
        if ".." in raw:
            start, _, end = raw.partition("..")
            if not start.strip() or not end.strip() or ".." in end or "," in raw:
                raise click.BadParameter(f"{value!r}: a range is NAME=FROM..TO, e.g. ano_mes=202301..202312")
            parsed[name] = {"from": _value(start), "to": _value(end)}
        else:
            items = raw.split(",")
            if any(not item.strip() for item in items):
                raise click.BadParameter(f"{value!r} has an empty value (the form is {_PARTITION_FORMS})")
            parsed[name] = [_value(item) for item in items]
    return parsed


def with_step(partitions: dict[str, Any], step: str | None) -> dict[str, Any]:
    """``partitions`` with ``step`` on each date range (int ranges step by 1); a usage error when
    ``--step`` is given without any date range."""
    if step is None:
        return partitions
    dated = [n for n, spec in partitions.items() if isinstance(spec, dict) and isinstance(spec["from"], str)]
    if not dated:
        raise click.BadParameter("applies to date ranges only (-p NAME=FROM..TO)", param_hint="'--step'")
    return {n: {**spec, "step": step} if n in dated else spec for n, spec in partitions.items()}


@click.command("backfill", epilog=_EPILOG)
@click.argument("table")
@click.option(
    "--partition",
    "-p",
    "partitions",
    multiple=True,
    callback=parse_partitions,
    metavar="NAME=VALUES",
    help="Values of one partition: NAME=FROM..TO (a range: int by 1, date by --step), NAME=V,V,… (a "
    "list) or NAME=V. Repeat for each partition; every combination is one key.",
)
@click.option("--step", type=click.Choice(["day", "month"]), help="Step of date ranges (API default: day).")
@click.option(
    "--reason", default="backfill", show_default=True, metavar="TEXT", help="Why: recorded on every run."
)
@user_option
@api_options
def backfill_command(
    table: str,
    partitions: dict[str, Any],
    step: str | None,
    reason: str,
    user: str | None,
    api_url: str | None,
    sigv4: bool | None,
    timeout: float,
    output_format: str,
) -> None:
    """Open a manual run of TABLE for every key of the partitions given (at most 1,000 keys).

    Runs skip the gate and the debounce, not the approval, and respect max_concurrent_runs; a key
    whose run is already open is reported, not opened twice.

    \b
    Examples:
      flux-control backfill tb_op_enriquecido -p ano_mes_referencia=202301..202312
      flux-control backfill tb_vendas_consolidadas -p data_venda=2024-05-01..2024-05-31 -p regiao=sul,norte
      flux-control backfill tb_mensal -p dt=2024-01-01..2024-12-01 --step month --reason "restated"
    """
    body = {
        "table_name": table,
        "partitions": with_step(partitions, step),
        "reason": reason,
        "user": caller_name(user),
    }
    client = connect(api_url, sigv4, timeout)
    answer = client.post("/backfills", body)
    backfill = answer_field(answer, "backfill")
    _show(answer, output_format, lambda: backfill_summary(backfill))
