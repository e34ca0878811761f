"""Run state changes out to EventBridge (DESIGN §4, Events out)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from controller.aws.clients import client as default_client
from controller.aws.settings import AwsSettings
from controller.core.runs import RunEvent

SOURCE = "flux-control"
DETAIL_TYPE = "Run State Change"
#: PutEvents accepts at most 10 entries per call.
BATCH_SIZE = 10


class PublishError(RuntimeError):
    """EventBridge rejected some entries; ``failures`` holds ``(run_id, code, message)`` for each."""

    def __init__(self, failures: list[tuple[int, str, str]]) -> None:
        listed = "; ".join(f"run {run_id}: {code}: {message}" for run_id, code, message in failures)
        super().__init__(f"EventBridge rejected {len(failures)} event(s): {listed}")
        self.failures = failures


class EventBridgePublisher:
    """The runtime's :class:`~controller.services.ports.EventPublisher` on EventBridge ``PutEvents``."""

    def __init__(self, settings: AwsSettings, client: Any | None = None) -> None:
        self._settings = settings
        self._client = client

    @property
    def client(self) -> Any:
        """The ``events`` client given at construction, else the process-wide one."""
        return self._client if self._client is not None else default_client("events")

    def entry(self, event: RunEvent) -> dict[str, str]:
        """The ``PutEvents`` entry for ``event``; with ``FLUX_CONSOLE_URL`` set, its detail links to the
        run's console page (``console_url``), for a notification rule to send approvers straight there."""
        detail = event.detail()
        if self._settings.console_url:
            detail["console_url"] = f"{self._settings.console_url}/runs/{event.run_id}"
        return {
            "Source": SOURCE,
            "DetailType": DETAIL_TYPE,
            "Detail": json.dumps(detail),
            "EventBusName": self._settings.event_bus,
        }

    def publish(self, events: Sequence[RunEvent]) -> None:
        """Publish in batches of 10; raises :class:`PublishError` after all batches if any entry failed."""
        failures: list[tuple[int, str, str]] = []
        for start in range(0, len(events), BATCH_SIZE):
            batch = events[start : start + BATCH_SIZE]
            response = self.client.put_events(Entries=[self.entry(event) for event in batch])
            if not response.get("FailedEntryCount"):
                continue
            # Result entries are in request order; failed ones carry ErrorCode instead of EventId.
            failed = [
                (event.run_id, str(result["ErrorCode"]), str(result.get("ErrorMessage", "")))
                for event, result in zip(batch, response.get("Entries", []), strict=False)
                if result.get("ErrorCode")
            ]
            count = int(response["FailedEntryCount"])
            failures.extend(
                failed or [(event.run_id, "Unknown", f"{count} entries failed") for event in batch]
            )
        if failures:
            raise PublishError(failures)
