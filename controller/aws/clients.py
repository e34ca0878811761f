"""boto3 clients with the project's retry and timeout settings, created once per service per process."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"

#: Standard retries back off on throttling; the timeouts keep a Lambda invocation from hanging on AWS.
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


def region() -> str:
    """The AWS region from ``AWS_DEFAULT_REGION`` (``us-east-1`` when unset or empty)."""
    return os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


@cache
def client(service: str) -> Any:
    """The boto3 client for ``service`` (e.g. ``"scheduler"``), created on first use and cached.

    ``AWS_ENDPOINT_URL`` (local AWS) is honoured by boto3 itself. Tests that change the environment
    call ``client.cache_clear()``.
    """
    return boto3.session.Session().client(service, region_name=region(), config=CLIENT_CONFIG)
