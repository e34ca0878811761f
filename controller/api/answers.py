"""Answers of the HTTP API, as pydantic models: what the OpenAPI document says each route returns.

The routes build their answers as plain dicts (the hot path pays for no second validation); these
models are the contract a client is generated from. The API fuzz tests hold every answer to them
(schemathesis's response conformance), so a field the code adds or drops without saying so fails there.
Models allow fields they do not list, so an older client keeps working when an answer grows.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.core.specs import TableSpec

Partitions = dict[str, int | str]
_RUN = {
    "id": 7,
    "table_name": "tb_op_enriquecido",
    "partitions": {"ano_mes_referencia": 202305},
    "status": "awaiting_approval",
    "fire_at": None,
    "approval_id": 3,
}


def _example(example: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


class ErrorBody(BaseModel):
    code: str = Field(description="stable, machine-readable (e.g. not_found)")
    message: str = Field(description="for people; names the field or item")
    details: dict[str, Any] = Field(description="structured context (index, errors, …)")


class Error(BaseModel):
    """Every error answer (DESIGN §5)."""

    model_config = _example({"error": {"code": "not_found", "message": "unknown run 99", "details": {}}})
    error: ErrorBody


class Health(BaseModel):
    """The service answers."""

    model_config = _example({"status": "ok"})
    status: str


class RunSummary(BaseModel):
    """A run as every answer carries it, with its newest approval (pending or decided)."""

    model_config = _example(_RUN)
    id: int
    table_name: str
    partitions: Partitions
    status: str
    fire_at: str | None = Field(description="when it fires (ISO 8601, UTC); none while awaiting approval")
    approval_id: int | None


class ExecutionSummary(BaseModel):
    id: int
    table_name: str
    partitions: Partitions


class NotRegistered(BaseModel):
    """A completion report whose run succeeded without an execution."""

    index: int = Field(description="the item's index in data")
    run_id: int
    status: str = Field(description="the run's state: succeeded")
    reason: str = Field(description="why no execution was registered")


class Registered(BaseModel):
    """Every execution registered, and the runs they opened or pushed."""

    model_config = _example(
        {
            "executions": [
                {"id": 12, "table_name": "tbjf001_op_pdz_prep", "partitions": {"ano_mes_referencia": 202305}}
            ],
            "runs": [_RUN],
        }
    )
    executions: list[ExecutionSummary]
    runs: list[RunSummary] = Field(description="the runs the registrations opened or pushed")
    not_registered: list[NotRegistered] | None = Field(
        None,
        description="completion reports (items with a run_id) whose execution the definitions no longer "
        "allow (table deleted, partitions changed): their run succeeded with this reason, its key is free",
    )


class ApprovalState(BaseModel):
    id: int
    status: str


class Decided(BaseModel):
    """The decision, and the run it moved (scheduled when approved, rejected when rejected)."""

    model_config = _example(
        {"approval": {"id": 3, "status": "approved"}, "run": {**_RUN, "status": "scheduled"}}
    )
    approval: ApprovalState
    run: RunSummary


class ApprovalSummary(BaseModel):
    id: int
    status: str
    run_id: int
    table_name: str
    partitions: Partitions


class Approvals(BaseModel):
    """Approvals, newest first."""

    model_config = _example(
        {
            "approvals": [
                {
                    "id": 3,
                    "status": "pending",
                    "run_id": 7,
                    "table_name": "tb_op_enriquecido",
                    "partitions": {"ano_mes_referencia": 202305},
                }
            ]
        }
    )
    approvals: list[ApprovalSummary]


class Runs(BaseModel):
    """Runs, newest first."""

    model_config = _example({"runs": [_RUN]})
    runs: list[RunSummary]


class OneRun(BaseModel):
    """The run, as the action left it."""

    model_config = _example({"run": _RUN})
    run: RunSummary


class ApprovalDetail(BaseModel):
    id: int
    status: str
    decided_by: str | None
    decided_at: str | None
    comment: str | None


class TaskDetail(BaseModel):
    alias: str
    type: str
    target: str
    attempt: int
    status: str
    external_id: str | None = Field(description="JobRunId, executionArn, MessageId or request id")
    error: str | None
    started_at: str | None
    finished_at: str | None


class Trigger(BaseModel):
    execution_id: int
    table_name: str
    partitions: Partitions


class RunEventDetail(BaseModel):
    """One change of the run's state: when, from what to what, by whom, and why."""

    at: str | None
    old_state: str | None = Field(description="none when the run was opened")
    new_state: str
    actor: str | None = Field(description="who asked for it; none when Flux Control did (a fire, the sweep)")
    reason: str | None


class AttemptTask(BaseModel):
    alias: str
    status: str
    external_id: str | None
    error: str | None


class AttemptDetail(BaseModel):
    """One attempt of the run: a retry (by hand or automatic) starts the next."""

    attempt: int
    status: str | None = Field(description="the state the attempt reached")
    error: str | None = Field(description="why it failed")
    started_at: str | None = Field(description="its first dispatch")
    ended_at: str | None
    tasks: list[AttemptTask]


class RunDetail(RunSummary):
    attempt: int
    manual: bool
    reason: str | None
    error: str | None
    rerun_requested: bool
    first_trigger_at: str | None
    last_trigger_at: str | None
    schedule_name: str | None
    schedule_synced: bool | None = Field(description="a scheduled run's schedule matches its fire time")
    created_at: str | None
    finished_at: str | None
    approval: ApprovalDetail | None
    tasks: list[TaskDetail]
    triggers: list[Trigger]
    events: list[RunEventDetail] = Field(description="the run's state changes, oldest first")
    attempts: list[AttemptDetail] = Field(description="every attempt, oldest first, with its tasks")


class RunWithDetail(BaseModel):
    """The run with its tasks, their external ids and what triggered it."""

    model_config = _example(
        {
            "run": {
                **_RUN,
                "status": "running",
                "fire_at": "2023-06-01T12:05:00+00:00",
                "attempt": 1,
                "manual": False,
                "reason": None,
                "error": None,
                "rerun_requested": False,
                "first_trigger_at": "2023-06-01T12:00:00+00:00",
                "last_trigger_at": "2023-06-01T12:00:00+00:00",
                "schedule_name": "flux-run-7-tb_op_enriquecido",
                "schedule_synced": None,
                "created_at": "2023-06-01T12:00:00+00:00",
                "finished_at": None,
                "approval": {
                    "id": 3,
                    "status": "approved",
                    "decided_by": "lrcxpnu",
                    "decided_at": "2023-06-01T12:01:00+00:00",
                    "comment": None,
                },
                "tasks": [
                    {
                        "alias": "enrich",
                        "type": "glue",
                        "target": "job-enrich-operacoes",
                        "attempt": 1,
                        "status": "started",
                        "external_id": "jr_0123456789abcdef",
                        "error": None,
                        "started_at": "2023-06-01T12:05:01+00:00",
                        "finished_at": None,
                    }
                ],
                "triggers": [
                    {
                        "execution_id": 12,
                        "table_name": "tbjf001_op_pdz_prep",
                        "partitions": {"ano_mes_referencia": 202305},
                    }
                ],
            }
        }
    )
    run: RunDetail


class ExecutionDetail(ExecutionSummary):
    source: str
    registered_at: str | None
    run_id: int | None = Field(description="the run whose success registered it")
    registered_by: str | None = Field(
        description="who registered it: the caller, or flux-control for a run's completion on its AWS "
        "event (null: registered before this was recorded)"
    )


class Executions(BaseModel):
    """Executions, newest first."""

    model_config = _example(
        {
            "executions": [
                {
                    "id": 12,
                    "table_name": "tbjf001_op_pdz_prep",
                    "partitions": {"ano_mes_referencia": 202305},
                    "source": "glue",
                    "registered_at": "2023-06-01T12:00:00+00:00",
                    "run_id": None,
                    "registered_by": "arn:aws:sts::123456789012:assumed-role/glue-prep/GlueJobRunnerSession",
                }
            ]
        }
    )
    executions: list[ExecutionDetail]


class Revision(BaseModel):
    revision: str = Field(description="the Git revision the definitions were applied from")
    applied_at: str | None


_TABLE = {
    "name": "tbjf001_op_pdz_prep",
    "description": "Operações PDZ preparadas",
    "owner": "squad-dados",
    "requires_approval": False,
    "approvers": [],
    "producers": ["arn:aws:iam::123456789012:role/glue-pdz"],
    "operators": ["group:squad-dados"],
    "debounce_seconds": 60,
    "max_wait_seconds": None,
    "max_concurrent_runs": 2,
    "retries": {"max_attempts": 3, "backoff_seconds": 300},
    "partitions": [{"name": "ano_mes_referencia", "type": "int", "is_required": True}],
    "dependencies": [],
    "tasks": [
        {
            "alias": "prep",
            "type": "glue",
            "target": "job-pdz-prep",
            "params": {"--ano_mes": "{{ partitions.ano_mes_referencia }}"},
            "timeout_seconds": 7200,
        }
    ],
}
_REVISION = {"revision": "4e587db", "applied_at": "2023-06-01T09:00:00+00:00"}


class Tables(BaseModel):
    """Every table as reconciled, and the revision last applied."""

    model_config = _example({"tables": [_TABLE], "revision": _REVISION})
    tables: list[TableSpec] = Field(description="the definitions as reconciled (without version)")
    revision: Revision | None


class OneTable(BaseModel):
    """The table as reconciled, and the revision last applied."""

    model_config = _example({"table": _TABLE, "revision": _REVISION})
    table: TableSpec
    revision: Revision | None


class Problem(BaseModel):
    path: str = Field(description="JSON path in the payload (data[1].dependencies[0].dependency_name)")
    code: str
    message: str


class Checked(BaseModel):
    """What a pull request with these tables would do: validation, and the plan when valid."""

    model_config = _example(
        {
            "valid": False,
            "problems": [
                {
                    "path": "data[1].dependencies[0].dependency_name",
                    "code": "unknown-dependency",
                    "message": "unknown dependency 'tb_ghost'",
                }
            ],
            "plan": None,
        }
    )
    valid: bool
    problems: list[Problem]
    plan: dict[str, Any] | None = Field(description="the plan document of `flux-control plan --format json`")


class Document(BaseModel):
    """An OpenAPI 3.1 document: this one."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"openapi": "3.1.0", "info": {}, "paths": {}}]}
    )
    openapi: str


class BackfillRuns(BaseModel):
    id: int
    table_name: str
    keys: int = Field(description="how many keys the request named")
    runs: list[RunSummary] = Field(description="the runs it opened")
    already_open: list[RunSummary] = Field(description="the open runs of keys it did not open again")


class BackfillDetail(BaseModel):
    id: int
    table_name: str
    keys: int = Field(description="how many keys the request named")
    already_open: int = Field(description="how many of them had an open run (not opened again)")
    reason: str | None
    requested_by: str | None
    created_at: str | None
    runs: dict[str, int] = Field(description="its runs per state")
    total_runs: int


class BackfillOpened(BaseModel):
    """The runs a backfill opened, and the keys whose run was open already (not opened twice)."""

    model_config = _example(
        {
            "backfill": {
                "id": 4,
                "table_name": "tb_op_enriquecido",
                "keys": 2,
                "runs": [
                    {**_RUN, "id": 21, "status": "queued", "partitions": {"ano_mes_referencia": 202301}}
                ],
                "already_open": [{**_RUN, "id": 9, "status": "running"}],
            }
        }
    )

    backfill: BackfillRuns


class OneBackfill(BaseModel):
    """A backfill with its runs counted per state."""

    model_config = _example(
        {
            "backfill": {
                "id": 4,
                "table_name": "tb_op_enriquecido",
                "keys": 12,
                "already_open": 1,
                "reason": "reprocess 2023",
                "requested_by": "lrcxpnu",
                "created_at": "2023-06-01T12:00:00+00:00",
                "runs": {"queued": 8, "running": 2, "succeeded": 1},
                "total_runs": 11,
            }
        }
    )

    backfill: BackfillDetail
