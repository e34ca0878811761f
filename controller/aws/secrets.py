"""The database URL from AWS Secrets Manager, for a deployment that keeps it out of the environment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from controller.aws.clients import client as default_client
from controller.db.engine import DEFAULT_DATABASE_URL

SECRET_ARN_VARIABLE = "FLUX_DATABASE_SECRET_ARN"


class SecretFormatError(ValueError):
    """The secret holds neither a database URL nor a JSON object with a ``url`` string.

    The message names the secret and what was wrong, never the secret's value.
    """


def database_url_from_secret(arn: str, client: Any | None = None) -> str:
    """The database URL kept in the secret ``arn`` (its current version).

    The secret string is either the URL itself (``postgresql+psycopg://user:pw@host/db``) or a JSON
    object with a ``url`` key (other keys are ignored). ``client`` is a ``secretsmanager`` client; the
    process-wide one (retries, timeouts, ``AWS_ENDPOINT_URL``) is used when it is None. AWS errors
    (missing secret, access denied) propagate as botocore's ``ClientError``.
    """
    secrets = client if client is not None else default_client("secretsmanager")
    response = secrets.get_secret_value(SecretId=arn)
    value = response.get("SecretString")
    if not isinstance(value, str):
        raise SecretFormatError(f"secret {arn} has no SecretString (binary secrets are not supported)")
    text = value.strip()
    if not text.startswith("{"):
        if not text:
            raise SecretFormatError(f"secret {arn} is empty")
        return text
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise SecretFormatError(
            f"secret {arn} starts with '{{' but is not valid JSON (line {error.lineno}, column {error.colno})"
        ) from None
    url = document.get("url") if isinstance(document, dict) else None
    if not isinstance(url, str) or not url.strip():
        raise SecretFormatError(f"secret {arn} is a JSON object without a non-empty string 'url'")
    return url.strip()


def runtime_database_url(environ: Mapping[str, str] | None = None, client: Any | None = None) -> str:
    """The URL the runtime connects to: ``FLUX_DATABASE_URL`` when set, else the URL in the secret named by
    ``FLUX_DATABASE_SECRET_ARN`` (the deployed Lambda), else the embedded SQLite default.

    Reads ``os.environ`` unless ``environ`` is given; each call with a secret asks Secrets Manager.
    """
    env = os.environ if environ is None else environ
    explicit = env.get("FLUX_DATABASE_URL", "").strip()
    if explicit:
        return explicit
    arn = env.get(SECRET_ARN_VARIABLE, "").strip()
    if arn:
        return database_url_from_secret(arn, client)
    return DEFAULT_DATABASE_URL
