"""AWS settings of the runtime, read from the environment (DESIGN §5)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_SCHEDULE_GROUP = "flux-control"
DEFAULT_EVENT_BUS = "default"


class MissingSetting(RuntimeError):
    """A setting needed by the operation at hand is not configured."""


@dataclass(frozen=True, slots=True)
class AwsSettings:
    """Where schedules, their target and published events go.

    ``function_arn`` and ``scheduler_role_arn`` may be empty: only creating schedules needs them, and
    :meth:`require_schedule_target` says which one is missing when it happens.
    """

    schedule_group: str = DEFAULT_SCHEDULE_GROUP
    function_arn: str = ""
    scheduler_role_arn: str = ""
    event_bus: str = DEFAULT_EVENT_BUS
    #: Where EventBridge Scheduler sends a run's fire it could not deliver (empty: nowhere).
    dead_letter_arn: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AwsSettings:
        """The settings from ``FLUX_SCHEDULE_GROUP``, ``FLUX_FUNCTION_ARN``, ``FLUX_SCHEDULER_ROLE_ARN``,
        ``FLUX_EVENT_BUS`` and ``FLUX_DEAD_LETTER_ARN`` (``os.environ`` unless given); empty values count
        as unset.
        """
        env = os.environ if environ is None else environ
        return cls(
            schedule_group=env.get("FLUX_SCHEDULE_GROUP", "").strip() or DEFAULT_SCHEDULE_GROUP,
            function_arn=env.get("FLUX_FUNCTION_ARN", "").strip(),
            scheduler_role_arn=env.get("FLUX_SCHEDULER_ROLE_ARN", "").strip(),
            event_bus=env.get("FLUX_EVENT_BUS", "").strip() or DEFAULT_EVENT_BUS,
            dead_letter_arn=env.get("FLUX_DEAD_LETTER_ARN", "").strip(),
        )

    def require_schedule_target(self) -> tuple[str, str]:
        """``(function_arn, scheduler_role_arn)``; raises :class:`MissingSetting` naming what is unset."""
        missing = [
            name
            for name, value in (
                ("FLUX_FUNCTION_ARN", self.function_arn),
                ("FLUX_SCHEDULER_ROLE_ARN", self.scheduler_role_arn),
            )
            if not value
        ]
        if missing:
            raise MissingSetting(
                f"cannot create schedules: {' and '.join(missing)} not set "
                "(the Lambda that schedules fire and the role EventBridge Scheduler uses to invoke it)"
            )
        return self.function_arn, self.scheduler_role_arn
