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

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from controller.db.base import utcnow
from controller.db.graph_store import GraphCache
from controller.db.runtime_store import record_events
from controller.runtime.ports import EventPublisher, RunEvent, Scheduler, ScheduleRequest, TaskStarter

T = TypeVar("T")
logger = logging.getLogger("flux_control.runtime")

#: PostgreSQL serialization failure and deadlock: the transaction is safe to run again.
_RETRYABLE = {"40001", "40P01"}
MAX_ATTEMPTS = 8


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

    def transact(self, work: Callable[[Session, Effects], T]) -> tuple[T, Effects]:
        """Run ``work`` in one transaction; retry it from scratch on serialization conflicts."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            effects = Effects()
            try:
                with Session(self.engine, expire_on_commit=False) as session, session.begin():
                    result = work(session, effects)
                    # The outbox row commits with the change it describes (published after commit).
                    record_events(session, effects.events, effects.batch)
                return result, effects
            except DBAPIError as exc:
                code = getattr(exc.orig, "sqlstate", None)
                # A concurrent registration with the same idempotency key won the insert: running
                # again finds it and answers with its result.
                replay = isinstance(exc, IntegrityError) and "idempotency" in str(exc.orig)
                if (code not in _RETRYABLE and not replay) or attempt == MAX_ATTEMPTS:
                    raise
                logger.info(
                    "retrying after a serialization conflict", extra={"attempt": attempt, "sqlstate": code}
                )
                time.sleep(min(0.5, 0.01 * 2**attempt) * random.random())  # jitter, not crypto
        raise AssertionError("unreachable")
