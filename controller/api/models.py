"""Request bodies of the HTTP API (pydantic: validated by Powertools, published in the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_TEXT = 256
#: The largest id a row can have (ids are BIGINT identities, from 1). A larger integer names no row and
#: the database drivers refuse to bind it, so it is refused as a 422 instead of failing the query.
MAX_ID = 2**63 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=4096)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text and jsonb cannot hold U+0000: refused here as a 422, not a 500 at the INSERT.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("text must not contain the NUL character (U+0000)")
        return value


class PartitionValue(_Body):
    partition_name: str = Field(max_length=128)
    value: int | str | None = Field(description="int, date (YYYY-MM-DD) or string, by the partition's type")


def as_mapping(partitions: list[PartitionValue]) -> dict[str, Any]:
    return {p.partition_name: p.value for p in partitions}


class _WithPartitions(_Body):
    partitions: list[PartitionValue] = Field(default_factory=list, max_length=16)

    @field_validator("partitions")
    @classmethod
    def _unique(cls, value: list[PartitionValue]) -> list[PartitionValue]:
        names = [p.partition_name for p in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"partition given more than once: {', '.join(duplicates)}")
        return value


class ExecutionItem(_WithPartitions):
    table_name: str = Field(max_length=128)
    source: str = Field(default="api", max_length=64)
    run_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="completes this run (SQS and Lambda tasks)"
    )
    idempotency_key: str | None = Field(
        default=None, max_length=_TEXT, description="a repeat returns the first result"
    )


class RegisterRequest(_Body):
    data: list[ExecutionItem] = Field(min_length=1, max_length=500)
    user: str | None = Field(default=None, max_length=_TEXT)


class DecisionRequest(_Body):
    approval_status_id: int = Field(ge=1, le=MAX_ID)
    user: str | None = Field(
        default=None, max_length=_TEXT, description="used only in trusted mode (local serve)"
    )
    comment: str | None = Field(default=None, max_length=2000)


class ManualRunRequest(_WithPartitions):
    table_name: str = Field(max_length=128)
    reason: str | None = Field(default=None, max_length=2000)


class ReasonRequest(_Body):
    reason: str | None = Field(default=None, max_length=2000)
