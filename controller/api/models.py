"""Request bodies of the HTTP API (pydantic: validated by Powertools, published in the OpenAPI document).

Values are strict: JSON has no integer that is ``true``, so a boolean is never an id nor a partition
value, and a string is never an id (pydantic's lax mode turned ``true`` into 1 and ``"1"`` into 1).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from controller.core.payloads import PayloadError, payload_documents

_TEXT = 256
#: The largest id a row can have (ids are BIGINT identities, from 1). A larger integer names no row and
#: the database drivers refuse to bind it, so it is refused as a 422 instead of failing the query.
MAX_ID = 2**63 - 1
#: A row id in a body: a JSON integer from 1 to :data:`MAX_ID`.
Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=4096)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text and jsonb cannot hold U+0000: refused here as a 422, not a 500 at the INSERT.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("text must not contain the NUL character (U+0000)")
        return value


def describe_json(value: Any) -> str:
    """A JSON value as a message quotes it (``true``, ``2023.5``, ``an object``), kept short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class PartitionValue(_Body):
    partition_name: str = Field(max_length=128)
    value: StrictInt | StrictStr | None = Field(
        description="an integer, a date (YYYY-MM-DD) or a string, by the partition's type; "
        "never a boolean or a fraction"
    )

    @field_validator("value", mode="before")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        # One plain message instead of one per member of the union (value.int, value.str).
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)):
            raise PydanticCustomError(
                "partition_value",
                "{given} is not a partition value: give an integer, a date as YYYY-MM-DD or a string",
                {"given": describe_json(value)},
            )
        return value


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
    run_id: Id | None = Field(default=None, description="completes this run (SQS, Lambda and other tasks)")
    token: str | None = Field(
        default=None,
        max_length=_TEXT,
        description="with run_id: the flux.token the run's task was started with (current attempt)",
    )
    idempotency_key: str | None = Field(
        default=None, max_length=_TEXT, description="a repeat returns the first result"
    )


#: The body's ``user``: who writes, in trusted mode only (local ``serve``); elsewhere the caller is
#: the API Gateway authorizer's identity and this field is ignored.
_USER = "who writes: used only in trusted mode (local serve)"


class RegisterRequest(_Body):
    data: list[ExecutionItem] = Field(min_length=1, max_length=500)
    user: str | None = Field(default=None, max_length=_TEXT, description=_USER)


class DecisionRequest(_Body):
    approval_status_id: Id
    user: str | None = Field(default=None, max_length=_TEXT, description=_USER)
    comment: str | None = Field(default=None, max_length=2000)


class ManualRunRequest(_WithPartitions):
    table_name: str = Field(max_length=128)
    reason: str | None = Field(default=None, max_length=2000)
    user: str | None = Field(default=None, max_length=_TEXT, description=_USER)


#: A partition value of a backfill: an integer, a date (YYYY-MM-DD) or a string, never a boolean.
BackfillValue = StrictInt | StrictStr


class BackfillRange(_Body):
    """Every value from ``from`` to ``to``, both included: integers by 1, dates by ``step``."""

    from_: BackfillValue = Field(alias="from")
    to: BackfillValue
    step: Literal["day", "month"] | None = Field(
        default=None, description="dates only: day (default) or month"
    )

    model_config = ConfigDict(extra="forbid", str_max_length=4096, populate_by_name=True)

    def as_request(self) -> dict[str, Any]:
        found: dict[str, Any] = {"from": self.from_, "to": self.to}
        return found | ({"step": self.step} if self.step else {})


class BackfillRequest(_Body):
    table_name: str = Field(max_length=128)
    partitions: dict[str, list[BackfillValue] | BackfillRange] = Field(
        max_length=16,
        description="each partition's values: a list, or a range {from, to, step?}; the backfill opens "
        "a run for every key of their product (at most 1,000)",
    )
    reason: str | None = Field(default=None, max_length=2000)
    user: str | None = Field(default=None, max_length=_TEXT, description=_USER)

    def partition_request(self) -> dict[str, Any]:
        return {
            name: given.as_request() if isinstance(given, BackfillRange) else list(given)
            for name, given in self.partitions.items()
        }


class ReasonRequest(_Body):
    reason: str | None = Field(default=None, max_length=2000)
    user: str | None = Field(default=None, max_length=_TEXT, description=_USER)


class FailRequest(ReasonRequest):
    token: str | None = Field(
        default=None, max_length=_TEXT, description="the flux.token the failing task was started with"
    )


#: One table of a ``POST /tables`` payload: the fields of a definition file, ``version`` optional.
TableObject = Annotated[
    dict[str, Any],
    Field(
        description="A table definition with the fields of a definition file (schemas/table.schema.json); "
        "version is optional. Problems are reported, not refused: see the answer's problems.",
        examples=[
            {
                "name": "tb_op_enriquecido",
                "partitions": [{"name": "ano_mes_referencia", "type": "int", "is_required": True}],
                "dependencies": [
                    {"dependency_name": "tbjf001_op_pdz_prep", "is_required": True},
                    # alternatives: one of them is enough (DESIGN §4)
                    {"any_of": ["tb_cadastro_full", "tb_cadastro_delta"], "is_required": True},
                ],
            }
        ],
    ),
]


_Tables = Annotated[list[TableObject], Field(min_length=1)]


class TablesEnvelope(_Body):
    """The old system's ``POST /tables`` request, as its README shows it."""

    data: _Tables
    user: str | None = Field(default=None, max_length=_TEXT, description="who sent it (not used)")


class TablesList(_Body):
    tables: _Tables


class TablesPayload(RootModel[TablesEnvelope | TablesList | _Tables | TableObject]):
    """A ``POST /tables`` payload: the original request, a list of tables, ``{"tables": [...]}`` or one
    table. Only its shape is checked here; its tables are validated like definition files."""

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        try:
            payload_documents(value)
        except PayloadError as exc:
            # "payload_shape" is answered 400 (a malformed request), like any body that is not JSON.
            raise PydanticCustomError("payload_shape", "{reason}", {"reason": str(exc)}) from None
        return value
