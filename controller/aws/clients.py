"""boto3 clients with the project's retry and timeout settings, created once per service per process.

botocore retries a failed call (standard mode: throttling, 5xx answers, timeouts and dropped
connections, with exponential backoff and jitter). That is safe for every call the runtime makes but
one: a retry repeats the request, and a request that timed out or got a 5xx answer may have been
carried out by AWS all the same. EventBridge Scheduler (the schedule's name), Step Functions (the
execution's name) and SQS FIFO (the deduplication id) recognise a repeat; EventBridge ``PutEvents``,
SQS standard queues and asynchronous Lambda ``Invoke`` deliver at least once by contract, so their
consumers deduplicate anyway (the payload's ``flux.token``). Glue ``StartJobRun`` has no idempotency
token: a repeat starts the job twice. For the operations in :data:`RETRY_ONLY_WHEN_NOT_APPLIED`
botocore retries only the failures where AWS surely did nothing (throttling and other 4xx refusals,
failures to connect); the others (see :func:`maybe_applied`) reach the caller at once, which finds out
what happened before trying again (:mod:`controller.aws.tasks`).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

DEFAULT_REGION = "us-east-1"

#: Standard retries back off on throttling; the timeouts keep a Lambda invocation (28 s at most, under
#: API Gateway's 29 s) from hanging on AWS: every call the runtime makes answers in well under a second.
CLIENT_SETTINGS: dict[str, Any] = {
    "retries": {"mode": "standard", "max_attempts": 5},
    "connect_timeout": 5,
    "read_timeout": 10,
}

#: Per service (botocore's hyphenated service id), the operations AWS cannot recognise a repeat of.
RETRY_ONLY_WHEN_NOT_APPLIED: dict[str, tuple[str, ...]] = {"glue": ("StartJobRun",)}


def region() -> str:
    """The AWS region from ``AWS_DEFAULT_REGION`` (``us-east-1`` when unset or empty)."""
    return os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def maybe_applied(error: BaseException) -> bool:
    """Whether AWS may have carried out a request that failed with ``error``.

    True for a 5xx answer and for a connection that failed after the request was sent (read timeout,
    connection closed or reset: botocore's ``HTTPClientError``). False for a 4xx answer (throttling,
    validation, access), a failure to connect (``ConnectTimeoutError``, ``EndpointConnectionError``:
    nothing was sent) and errors raised before sending.
    """
    from botocore.exceptions import ClientError, HTTPClientError  # botocore loads with the first client

    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return isinstance(status, int) and status >= 500
    return isinstance(error, HTTPClientError)


def _no_retry_when_maybe_applied(
    response: Any, caught_exception: BaseException | None, operation: Any, **_: Any
) -> None:
    """A ``needs-retry`` handler that ends the call instead of retrying when AWS may have acted.

    It runs before botocore's retry handler (it is registered on the more specific event); raising
    ends the call with that error, returning None lets botocore decide (retry or give up).
    """
    from botocore.exceptions import ClientError  # botocore loads with the first client

    if caught_exception is not None and maybe_applied(caught_exception):
        raise caught_exception
    if response is not None:
        http_response, parsed = response
        if http_response.status_code >= 500:
            raise ClientError(parsed, operation.name)


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
    created = boto3.session.Session().client(service, region_name=region(), config=config)
    service_id = created.meta.service_model.service_id.hyphenize()
    for operation in RETRY_ONLY_WHEN_NOT_APPLIED.get(service_id, ()):
        created.meta.events.register(
            f"needs-retry.{service_id}.{operation}",
            _no_retry_when_maybe_applied,
            unique_id=f"flux-no-retry-when-maybe-applied-{service_id}-{operation}",
        )
    return created
