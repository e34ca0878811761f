"""AWS settings of the runtime, read from the environment (DESIGN §5)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_SCHEDULE_GROUP = "flux-control"
DEFAULT_EVENT_BUS = "default"
DEFAULT_SCHEDULE_PRECISION = 60


class MissingSetting(RuntimeError):
    """A setting needed by the operation at hand is not configured, or not validly."""


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
    #: The scheduler's precision: schedules are written for the first multiple of it at or after the
    #: fire time (EventBridge Scheduler fires anywhere in the minute of its expression; ``serve``'s
    #: stand-in fires at the second, and says so with 1).
    schedule_precision_seconds: int = DEFAULT_SCHEDULE_PRECISION
    #: The web console's URL (``https://…/console``): published run events link to the run's page.
    console_url: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AwsSettings:
        """The settings from ``FLUX_SCHEDULE_GROUP``, ``FLUX_FUNCTION_ARN``, ``FLUX_SCHEDULER_ROLE_ARN``,
        ``FLUX_EVENT_BUS``, ``FLUX_DEAD_LETTER_ARN``, ``FLUX_SCHEDULE_PRECISION_SECONDS`` and
        ``FLUX_CONSOLE_URL`` (``os.environ`` unless given); empty values count as unset.
        """
        env = os.environ if environ is None else environ
        return cls(
            schedule_group=env.get("FLUX_SCHEDULE_GROUP", "").strip() or DEFAULT_SCHEDULE_GROUP,
            function_arn=env.get("FLUX_FUNCTION_ARN", "").strip(),
            scheduler_role_arn=env.get("FLUX_SCHEDULER_ROLE_ARN", "").strip(),
            event_bus=env.get("FLUX_EVENT_BUS", "").strip() or DEFAULT_EVENT_BUS,
            dead_letter_arn=env.get("FLUX_DEAD_LETTER_ARN", "").strip(),
            schedule_precision_seconds=_precision(env.get("FLUX_SCHEDULE_PRECISION_SECONDS", "")),
            console_url=env.get("FLUX_CONSOLE_URL", "").strip().rstrip("/"),
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


def _precision(text: str) -> int:
    """``FLUX_SCHEDULE_PRECISION_SECONDS``: a whole number of seconds from 1 to 60 (empty: 60)."""
    if not text.strip():
        return DEFAULT_SCHEDULE_PRECISION
    try:
        seconds = int(text)
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= DEFAULT_SCHEDULE_PRECISION:
        raise MissingSetting(
            f"FLUX_SCHEDULE_PRECISION_SECONDS must be a whole number from 1 to 60, got {text!r}"
        )
    return seconds
