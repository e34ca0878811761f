"""The retry policy both stores apply to a unit of work: how many tries, what a lost connection means
to the caller, and the pause between tries. (Which errors are retried is each driver's to tell.)"""

from __future__ import annotations

import logging
import random
import time

from controller.core.errors import Unavailable

logger = logging.getLogger("flux_control.runtime")

#: Tries of a unit of work in all.
MAX_ATTEMPTS = 8
#: Tries of a unit of work whose connection was lost before COMMIT (then nothing was written and
#: running it again is safe), after the first one.
MAX_RECONNECTS = 2


def unavailable(committing: bool) -> Unavailable:
    """The answer to a lost connection: unknown outcome while committing, else nothing written."""
    if committing:
        return Unavailable(
            "the database connection was lost while committing: the change may or may not have been "
            "written. Repeating the request is safe for registrations that carry an idempotency_key; "
            "otherwise check first (GET /executions, GET /runs)."
        )
    return Unavailable("the database connection was lost; nothing was written. Repeat the request.")


def pause_before_retry(attempt: int, sqlstate: str | None, reason: str) -> None:
    """Log the retry, then wait a jittered, growing while (so that racing writers do not meet again)."""
    logger.info(
        "retrying the transaction", extra={"attempt": attempt, "sqlstate": sqlstate, "reason": reason}
    )
    time.sleep(min(0.5, 0.01 * 2**attempt) * random.random())  # jitter, not crypto
