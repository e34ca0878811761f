"""boto3 clients with the project's retry and timeout settings, created once per service per process."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

DEFAULT_REGION = "us-east-1"

#: Standard retries back off on throttling; the timeouts keep a Lambda invocation from hanging on AWS.
CLIENT_SETTINGS: dict[str, Any] = {
    "retries": {"mode": "standard", "max_attempts": 5},
    "connect_timeout": 5,
    "read_timeout": 30,
}


def region() -> str:
    """The AWS region from ``AWS_DEFAULT_REGION`` (``us-east-1`` when unset or empty)."""
    return os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


@cache
def client(service: str) -> Any:
    """The boto3 client for ``service`` (e.g. ``"scheduler"``), created on first use and cached.

    ``AWS_ENDPOINT_URL`` (local AWS) is honoured by boto3 itself. Tests that change the environment
    call ``client.cache_clear()``.
    """
    # boto3 is imported by the first client built, not with this module: importing it is a large part
    # of a Lambda cold start, and requests that never call AWS should not pay for it.
    import boto3
    from botocore.config import Config

    config = Config(**CLIENT_SETTINGS)
    return boto3.session.Session().client(service, region_name=region(), config=config)
