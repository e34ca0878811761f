"""The Lambda's logs and metrics, through Powertools: one JSON record a line, for every logger.

:data:`logger` is the Powertools Logger of the function. The project's own module loggers
(``flux_control.runtime``, ``flux_control.aws``, ``flux_control.local``, …) are children of
``flux_control``, which :func:`route_module_loggers` gives the Powertools handler and formatter: their
records are the same JSON, with the same keys (correlation id, ``cold_start``, the request id), their
``extra=`` fields kept and an exception as one ``exception`` field, never as a plain traceback.
"""

from __future__ import annotations

import logging

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = "flux-control"
#: The parent of every module logger of the project.
MODULE_LOGGERS = "flux_control"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace="FluxControl", service=SERVICE)


def route_module_loggers() -> None:
    """Send the module loggers' records through :data:`logger`'s handler and formatter (once is enough:
    loggers created later are children of ``flux_control`` and propagate to it)."""
    logging.getLogger(MODULE_LOGGERS)  # registered, so that Powertools finds it
    copy_config_to_registered_loggers(source_logger=logger, include={MODULE_LOGGERS})


def count(name: str, value: float = 1) -> None:
    """Add ``value`` to the count metric ``name`` of this invocation (an empty name counts nothing)."""
    if name:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
