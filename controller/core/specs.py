"""Table definitions as plain, immutable values: the pure core's view of a definition file.

Structural rules (patterns, ranges, which fields exist) live in ``schemas/table.schema.json`` and are
checked before these models are built; the models carry types and defaults only, so the two cannot
disagree about what is allowed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PartitionType = Literal["int", "string", "date"]
TaskType = Literal["glue", "step_function", "sqs", "lambda"]
DEFAULT_DEBOUNCE_SECONDS = 60
#: A task running longer than this is stopped and its run failed (DESIGN §8): one day.
DEFAULT_TASK_TIMEOUT_SECONDS = 86400
#: The longest wait between two automatic attempts, whatever ``backoff_seconds`` doubles to.
MAX_RETRY_BACKOFF_SECONDS = 3600


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PartitionSpec(_Spec):
    """One partition column of a table."""

    name: str
    type: PartitionType
    is_required: bool = True


class DependencySpec(_Spec):
    """An upstream table; ``partition_map`` maps this table's partition → the upstream's."""

    dependency_name: str
    is_required: bool = True
    partition_map: dict[str, str] = Field(default_factory=dict)

    def upstream_partition(self, downstream_partition: str) -> str:
        """The upstream partition that carries ``downstream_partition`` (same name unless mapped)."""
        return self.partition_map.get(downstream_partition, downstream_partition)


class TaskSpec(_Spec):
    """Something to start when a run of the table fires."""

    alias: str
    type: TaskType
    target: str
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: int = DEFAULT_TASK_TIMEOUT_SECONDS


class RetrySpec(_Spec):
    """Automatic retries of a failed run (DESIGN §8): up to ``max_attempts`` attempts in all, the
    next one ``backoff_seconds × 2^(attempt−1)`` after a failure, capped at one hour."""

    max_attempts: int
    backoff_seconds: int

    def delay_after(self, attempt: int) -> int:
        """Seconds from the failure of attempt ``attempt`` (1-based) to the next attempt."""
        doubled: int = self.backoff_seconds << max(0, min(attempt - 1, 32))  # no float, no overflow
        return min(doubled, MAX_RETRY_BACKOFF_SECONDS)


class TableSpec(_Spec):
    """One table definition, as written in Git."""

    version: Literal[1] = 1
    name: str
    description: str = ""
    owner: str | None = None
    requires_approval: bool = False
    #: Who may approve or reject its runs; who may register its executions; who may run, backfill,
    #: cancel and retry them (DESIGN §7). Empty: any identified caller (operators: the approvers).
    approvers: tuple[str, ...] = ()
    producers: tuple[str, ...] = ()
    operators: tuple[str, ...] = ()
    debounce_seconds: int = DEFAULT_DEBOUNCE_SECONDS
    max_wait_seconds: int | None = None
    #: Runs of this table dispatching or running at once; None: no limit (DESIGN §8).
    max_concurrent_runs: int | None = None
    retries: RetrySpec | None = None
    partitions: tuple[PartitionSpec, ...] = ()
    dependencies: tuple[DependencySpec, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()

    def partition(self, name: str) -> PartitionSpec | None:
        """The partition called ``name``, if the table has one."""
        return next((p for p in self.partitions if p.name == name), None)
