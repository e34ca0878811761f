"""The runtime's collaborators in one place, and its unit of work (one transaction, retried on conflict)."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from controller.db.base import utcnow
from controller.db.graph_store import GraphCache
from controller.db.run_store import record_events
from controller.runtime.errors import Unavailable
from controller.runtime.ports import EventPublisher, RunEvent, Scheduler, ScheduleRequest, TaskStarter

T = TypeVar("T")
logger = logging.getLogger("flux_control.runtime")

#: PostgreSQL serialization failure and deadlock: the transaction is safe to run again.
_RETRYABLE = {"40001", "40P01"}
MAX_ATTEMPTS = 8
#: Runs of a transaction whose database connection was lost before COMMIT (then nothing was written
#: and running it again is safe), after the first one.
MAX_RECONNECTS = 2


@dataclass
class Effects:
    """What to do in AWS once the transaction has committed (never before)."""

    batch: str = field(default_factory=lambda: str(uuid.uuid4()))
    schedule: list[ScheduleRequest] = field(default_factory=list)
    unschedule: list[str] = field(default_factory=list)
    fire_now: list[int] = field(default_factory=list)
    events: list[RunEvent] = field(default_factory=list)


@dataclass
class Runtime:
    """Database, AWS ports, clock and settings the runtime works with."""

    engine: Engine
    scheduler: Scheduler
    tasks: TaskStarter
    events: EventPublisher
    clock: Callable[[], datetime] = utcnow
    trust_body_user: bool = False
    graphs: GraphCache = field(default_factory=GraphCache)

    def transact(
        self, work: Callable[[Session, Effects], T], connection: Connection | None = None
    ) -> tuple[T, Effects]:
        """Run ``work`` in one transaction (on ``connection`` when given, else on one from the pool);
        run it again from scratch after a serialization conflict or a database connection lost before
        COMMIT (nothing was written; a given connection then reconnects).

        A connection lost while committing is not retried: whether the COMMIT was applied is unknown.
        That, and a connection lost on every run, raise :class:`~controller.runtime.errors.Unavailable`
        (a 503 for API callers, who may repeat the request).
        """
        reconnects = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            effects = Effects()
            committing = False
            try:
                bind = self.engine if connection is None else connection
                with Session(bind, expire_on_commit=False) as session, session.begin():
                    result = work(session, effects)
                    # The outbox row commits with the change it describes (published after commit).
                    record_events(session, effects.events, effects.batch)
                    session.flush()  # every statement but COMMIT is sent before `committing`
                    committing = True
                return result, effects
            except DBAPIError as exc:
                code = getattr(exc.orig, "sqlstate", None)
                # A concurrent registration with the same idempotency key won the insert: running
                # again finds it and answers with its result.
                replay = isinstance(exc, IntegrityError) and "idempotency" in str(exc.orig)
                lost = bool(exc.connection_invalidated)
                if lost:
                    reconnects += 1
                    if committing or reconnects > MAX_RECONNECTS:
                        raise _unavailable(committing) from exc
                elif code not in _RETRYABLE and not replay:
                    raise
                if attempt == MAX_ATTEMPTS:
                    raise
                logger.info(
                    "retrying the transaction",
                    extra={
                        "attempt": attempt,
                        "sqlstate": code,
                        "reason": "connection lost" if lost else "serialization conflict",
                    },
                )
                time.sleep(min(0.5, 0.01 * 2**attempt) * random.random())  # jitter, not crypto
        raise AssertionError("unreachable")


def _unavailable(committing: bool) -> Unavailable:
    if committing:
        return Unavailable(
            "the database connection was lost while committing: the change may or may not have been "
            "written. Repeating the request is safe for registrations that carry an idempotency_key; "
            "otherwise check first (GET /executions, GET /runs)."
        )
    return Unavailable("the database connection was lost; nothing was written. Repeat the request.")
