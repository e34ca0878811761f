"""Table definitions as plain, immutable values: the pure core's view of a definition file.

Structural rules (patterns, ranges, which fields exist) live in ``schemas/table.schema.json`` and are
checked before these models are built; the models carry types and defaults only, so the two cannot
disagree about what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PartitionType = Literal["int", "string", "date"]
TaskType = Literal["glue", "step_function", "sqs", "lambda", "eventbridge", "http"]
DEFAULT_DEBOUNCE_SECONDS = 60
#: A task running longer than this is stopped and its run failed (DESIGN §8): one day.
DEFAULT_TASK_TIMEOUT_SECONDS = 86400
#: The longest wait between two automatic attempts, whatever ``backoff_seconds`` doubles to.
MAX_RETRY_BACKOFF_SECONDS = 3600
#: Hosts an ``http`` task may reach over plain http:// (DESIGN §4): this machine only.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


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


class MemberSpec(_Spec):
    """One alternative of an ``any_of`` group: an upstream table, with its own ``partition_map``."""

    dependency_name: str
    partition_map: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        """A member may be written as the upstream's name alone."""
        return {"dependency_name": value} if isinstance(value, str) else value


class AnyOfSpec(_Spec):
    """Alternative upstreams (DESIGN §4): the group counts as one dependency, present for a key when
    at least one member is; required, it blocks until one is."""

    any_of: tuple[MemberSpec, ...]
    is_required: bool = True

    @cached_property
    def edges(self) -> tuple[DependencySpec, ...]:
        """Each member as an edge to its upstream, required as the group is."""
        return tuple(
            DependencySpec(
                dependency_name=m.dependency_name, is_required=self.is_required, partition_map=m.partition_map
            )
            for m in self.any_of
        )

    @property
    def label(self) -> str:
        """How the group is named in messages and plans: ``any_of(a, b)``."""
        return "any_of(" + ", ".join(m.dependency_name for m in self.any_of) + ")"


#: One entry of ``dependencies``: an upstream table, or a group of alternative ones.
Dependency = DependencySpec | AnyOfSpec


@dataclass(frozen=True, slots=True, eq=False)
class Requirement:
    """One entry of a table's ``dependencies`` as the gate sees it: satisfied when any of its edges
    is (a plain dependency is a group of one). Compared by identity: each spec builds its own."""

    edges: tuple[DependencySpec, ...]
    is_required: bool
    #: The upstream's name, or ``any_of(a, b)`` for a group.
    label: str
    is_group: bool


class TaskSpec(_Spec):
    """Something to start when a run of the table fires."""

    alias: str
    type: TaskType
    target: str
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: int = DEFAULT_TASK_TIMEOUT_SECONDS
    #: ``http`` tasks: the Secrets Manager secret whose value is sent as the ``Authorization`` header.
    auth_secret: str | None = None


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
    dependencies: tuple[Dependency, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()

    def partition(self, name: str) -> PartitionSpec | None:
        """The partition called ``name``, if the table has one."""
        return next((p for p in self.partitions if p.name == name), None)

    @cached_property
    def requirements(self) -> tuple[Requirement, ...]:
        """Each entry of ``dependencies`` with its edges (one for a plain dependency)."""
        return tuple(
            Requirement(d.edges, d.is_required, d.label, True)
            if isinstance(d, AnyOfSpec)
            else Requirement((d,), d.is_required, d.dependency_name, False)
            for d in self.dependencies
        )

    @cached_property
    def edges(self) -> tuple[DependencySpec, ...]:
        """Every upstream edge, in order: plain dependencies and the members of ``any_of`` groups."""
        return tuple(edge for r in self.requirements for edge in r.edges)
