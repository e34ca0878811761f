"""The Lambda context of an invocation outside Lambda (``serve``, tests), so that every invocation is
logged with the same keys as in AWS. Lambda always passes one; the local callers pass None."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

LOCAL_FUNCTION_NAME = "flux-control-local"


@dataclass(frozen=True, slots=True)
class LocalContext:
    """What Powertools reads of a Lambda context: a fresh request id per invocation."""

    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = LOCAL_FUNCTION_NAME
    function_version: str = "$LATEST"
    invoked_function_arn: str = f"arn:aws:lambda:local:000000000000:function:{LOCAL_FUNCTION_NAME}"
    memory_limit_in_mb: int = 0

    def get_remaining_time_in_millis(self) -> int:
        return 0
