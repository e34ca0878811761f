"""EventBridge Scheduler: one one-time schedule per run that fires the run (DESIGN §4, Debounce)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from controller.aws.clients import client as default_client
from controller.aws.settings import AwsSettings
from controller.core.effects import ScheduleRequest

#: EventBridge Scheduler retries delivery to the Lambda for up to a day; the sweep catches the rest.
RETRY_POLICY = {"MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 86400}


def at_expression(fire_at: datetime, precision: int = 60) -> str:
    """``at(YYYY-MM-DDThh:mm:ss)``: the first UTC time at or after ``fire_at`` that is a whole multiple
    of ``precision`` seconds (a whole minute by default).

    EventBridge Scheduler invokes with 60-second precision (a schedule at ``1:00:30`` fires between
    ``1:00:00`` and ``1:00:59``), and a fire before the run's fire time dispatches nothing (it is
    re-armed: :func:`controller.services.dispatch.claim`); rounded up, the fire comes at most a
    minute and 59 seconds late and never early. A naive datetime is a ValueError.
    """
    if fire_at.tzinfo is None or fire_at.utcoffset() is None:
        raise ValueError(f"fire_at must be timezone-aware, got naive {fire_at.isoformat()}")
    moment = fire_at.astimezone(UTC)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    steps = -(-(moment - midnight) // timedelta(seconds=precision))  # ceiling division
    return f"at({(midnight + steps * timedelta(seconds=precision)).strftime('%Y-%m-%dT%H:%M:%S')})"


def error_code(error: ClientError) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` when absent)."""
    return str(error.response.get("Error", {}).get("Code", ""))


class EventBridgeScheduler:
    """The runtime's :class:`~controller.services.ports.Scheduler` on EventBridge Scheduler."""

    def __init__(self, settings: AwsSettings, client: Any | None = None) -> None:
        self._settings = settings
        self._client = client

    @property
    def client(self) -> Any:
        """The ``scheduler`` client given at construction, else the process-wide one."""
        return self._client if self._client is not None else default_client("scheduler")

    def put(self, request: ScheduleRequest) -> None:
        """Create the schedule; if it already exists, update it to the new fire time (idempotent)."""
        expression = at_expression(request.fire_at, self._settings.schedule_precision_seconds)
        function_arn, role_arn = self._settings.require_schedule_target()
        params: dict[str, Any] = {
            "Name": request.name,
            "GroupName": self._settings.schedule_group,
            "ScheduleExpression": expression,
            "ScheduleExpressionTimezone": "UTC",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "ActionAfterCompletion": "DELETE",
            "State": "ENABLED",
            "Target": {
                "Arn": function_arn,
                "RoleArn": role_arn,
                "Input": json.dumps({"flux_action": "fire", "run_id": request.run_id}),
                "RetryPolicy": dict(RETRY_POLICY),
            },
        }
        if self._settings.dead_letter_arn:  # a fire never delivered is kept, not dropped
            params["Target"]["DeadLetterConfig"] = {"Arn": self._settings.dead_letter_arn}
        try:
            self.client.create_schedule(**params)
        except ClientError as error:
            if error_code(error) != "ConflictException":
                raise
            self.client.update_schedule(**params)

    def delete(self, name: str) -> None:
        """Delete the schedule; one that does not exist (already fired, or never written) is fine."""
        try:
            self.client.delete_schedule(Name=name, GroupName=self._settings.schedule_group)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
