"""The database URL from AWS Secrets Manager, for a deployment that keeps it out of the environment.

The secret is read through Powertools' parameters utility, cached for :data:`MAX_AGE` seconds
(``FLUX_SECRET_MAX_AGE``): each new database connection asks for it again, so once the cache expires a
rotated password is used without a redeploy (see :func:`controller.wiring.follow_secret`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from controller.db.engine import DEFAULT_DATABASE_URL

SECRET_ARN_VARIABLE = "FLUX_DATABASE_SECRET_ARN"
MAX_AGE_VARIABLE = "FLUX_SECRET_MAX_AGE"
#: Seconds a read secret is reused before Secrets Manager is asked again.
MAX_AGE = 300


class SecretFormatError(ValueError):
    """The secret holds neither a database URL nor a JSON object with a ``url`` string.

    The message names the secret and what was wrong, never the secret's value.
    """


def max_age(environ: Mapping[str, str] | None = None) -> int:
    """``FLUX_SECRET_MAX_AGE`` (seconds, 0 or more), else :data:`MAX_AGE`."""
    text = (os.environ if environ is None else environ).get(MAX_AGE_VARIABLE, "").strip()
    if not text:
        return MAX_AGE
    if not text.isdigit():
        raise ValueError(f"{MAX_AGE_VARIABLE} must be a whole number of seconds, not {text!r}")
    return int(text)


def database_url_from_secret(arn: str, client: Any | None = None) -> str:
    """The database URL kept in the secret ``arn`` (its current version, cached for :func:`max_age`).

    The secret string is either the URL itself (``postgresql+psycopg://user:pw@host/db``) or a JSON
    object with a ``url`` key (other keys are ignored). ``client`` is a ``secretsmanager`` client to read
    it with (no cache); Powertools' own provider is used when it is None. AWS errors (missing secret,
    access denied) propagate as Powertools' ``GetParameterError``, whose message is AWS's.
    """
    from aws_lambda_powertools.utilities import parameters  # imports boto3: on first use only

    value: Any
    if client is None:
        value = parameters.get_secret(arn, max_age=max_age())
    else:
        value = parameters.SecretsProvider(boto3_client=client).get(arn, max_age=0)
    if not isinstance(value, str):
        raise SecretFormatError(f"secret {arn} has no SecretString (binary secrets are not supported)")
    return _url(arn, value)


def _url(arn: str, value: str) -> str:
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


def secret_arn(environ: Mapping[str, str] | None = None) -> str | None:
    """The secret the runtime reads its URL from: ``FLUX_DATABASE_SECRET_ARN`` unless
    ``FLUX_DATABASE_URL`` is set (then None)."""
    env = os.environ if environ is None else environ
    if env.get("FLUX_DATABASE_URL", "").strip():
        return None
    return env.get(SECRET_ARN_VARIABLE, "").strip() or None


def runtime_database_url(environ: Mapping[str, str] | None = None, client: Any | None = None) -> str:
    """The URL the runtime connects to: ``FLUX_DATABASE_URL`` when set, else the URL in the secret named by
    ``FLUX_DATABASE_SECRET_ARN`` (the deployed Lambda), else the embedded SQLite default.

    Reads ``os.environ`` unless ``environ`` is given.
    """
    env = os.environ if environ is None else environ
    explicit = env.get("FLUX_DATABASE_URL", "").strip()
    if explicit:
        return explicit
    arn = secret_arn(env)
    if arn:
        return database_url_from_secret(arn, client)
    return DEFAULT_DATABASE_URL
