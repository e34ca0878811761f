"""The reconciler: plan, apply and drift between definitions in Git and the database.

This is the imperative shell around the pure planner (:mod:`controller.core.plans`): it reads the
database, asks the planner, enforces the safety rails, and writes in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from controller.core.gc_pause import gc_paused
from controller.core.plans import (
    History,
    Plan,
    TableAction,
    TableState,
    apply_actions,
    digest,
    make_plan,
    state_of,
)
from controller.db.definitions_store import (
    DatabaseState,
    RevisionInfo,
    last_revision,
    read_history,
    read_state,
    write_actions,
)
from controller.db.engine import read_only
from controller.db.locks import acquire_apply_lock, is_lock_timeout, sqlite_lock_wait
from controller.db.migrate import SchemaStatus, schema_status, upgrade_in
from controller.files.validation import ValidationResult

DEFAULT_LOCK_TIMEOUT = 60.0


class ReconcileError(Exception):
    """A refusal or a failure, with a message that says what to do next."""


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    plan: Plan
    revision_id: int | None

    @property
    def applied(self) -> bool:
        return self.revision_id is not None


def desired_states(result: ValidationResult) -> dict[str, TableState]:
    """The desired state of every table of a valid definition set."""
    with gc_paused():  # ~10 objects per table, all kept: a full collection would only walk the specs again
        return {spec.name: state_of(spec) for spec in result.specs}


def plan(engine: Engine, desired: Mapping[str, TableState]) -> tuple[Plan, RevisionInfo | None]:
    """The plan from the database's current state to ``desired``; never writes.

    Returns the last applied revision too, for reports. A database without a schema plans as empty.
    """
    with gc_paused():  # tens of thousands of rows and dicts: nothing to collect until the plan is made
        return _plan(read_only(engine), desired)


def _plan(reader: Engine, desired: Mapping[str, TableState]) -> tuple[Plan, RevisionInfo | None]:
    status = _status(reader)
    if status.empty:
        result = make_plan({}, desired)
        result.notes.append("The database is empty: apply will create its schema first.\n")
        return result, None
    _require_current_schema(status)
    with Session(reader) as session:
        state = read_state(session)
        history = read_history(session, {n: state.ids[n] for n in state.tables if n not in desired})
        return make_plan(state.tables, desired, history), last_revision(session)


def definitions_applied(engine: Engine) -> bool:
    """Whether the database holds reconciled definitions: a current schema and at least one table."""
    reader = read_only(engine)
    status = _status(reader)
    if status.empty:
        return False
    _require_current_schema(status)
    with Session(reader) as session:
        return bool(read_state(session).tables)


def apply(
    engine: Engine,
    *,
    desired: Mapping[str, TableState] | None = None,
    saved_plan: Plan | None = None,
    allow_delete: bool = False,
    revision: str,
    actor: str,
    now: datetime,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: Callable[[], None] = lambda: None,
) -> ApplyOutcome:
    """Make the database match ``desired`` (or exactly ``saved_plan``) in one transaction.

    Only one apply runs at a time; the plan is made (or checked) under the lock, so two applies
    never interleave and the result is exactly one of the desired states.
    """
    if (desired is None) == (saved_plan is None):
        raise ValueError("give exactly one of desired or saved_plan")
    with gc_paused():  # like plan: rows, states and changes by the ten thousand, no cycles to collect
        return _apply(engine, desired, saved_plan, allow_delete, revision, actor, now, lock_timeout, progress)


def _apply(
    engine: Engine,
    desired: Mapping[str, TableState] | None,
    saved_plan: Plan | None,
    allow_delete: bool,
    revision: str,
    actor: str,
    now: datetime,
    lock_timeout: float,
    progress: Callable[[], None],
) -> ApplyOutcome:
    try:
        with (
            engine.connect() as connection,
            sqlite_lock_wait(connection, lock_timeout),
            connection.begin(),
        ):
            acquire_apply_lock(connection, lock_timeout)
            # Under the lock: two applies on an empty database must not both create the schema.
            status = schema_status(connection)
            if status.empty:
                upgrade_in(connection)
            else:
                _require_current_schema(status)
            with Session(bind=connection) as session:  # joins the transaction; commits with it
                state = read_state(session)
                result = _checked_plan(session, state, desired, saved_plan, allow_delete)
                if not result.actions:
                    return ApplyOutcome(result, None)
                revision_id = write_actions(
                    session,
                    state,
                    result.actions,
                    revision=revision,
                    actor=actor,
                    desired_digest=result.desired_digest,
                    summary=result.summary(),
                    now=now,
                    progress=progress,
                )
                session.flush()
            return ApplyOutcome(result, revision_id)
    except OperationalError as exc:
        if is_lock_timeout(exc):
            raise ReconcileError(
                f"another apply held the lock for more than {lock_timeout:g}s; nothing was written. "
                "Wait for it to finish and run apply again (or raise --lock-timeout)."
            ) from exc
        raise


def _checked_plan(
    session: Session,
    state: DatabaseState,
    desired: Mapping[str, TableState] | None,
    saved_plan: Plan | None,
    allow_delete: bool,
) -> Plan:
    if saved_plan is not None:
        result = _verified(saved_plan, state)
        target = apply_actions(state.tables, result.actions)
    else:
        assert desired is not None
        target = dict(desired)
        result = make_plan(state.tables, target)
    if state.tables and not target:
        raise ReconcileError(
            f"refusing to delete all {len(state.tables)} tables: the definition set is empty. "
            "If you really mean it, delete them in a change that keeps at least one table."
        )
    deleted = {a.table: state.ids[a.table] for a in result.actions if a.action == "delete"}
    history = read_history(session, deleted)  # as it is now, not as when a saved plan was made
    result.actions = [_with_history(a, history) for a in result.actions]
    protected = [a for a in result.actions if a.action == "delete" and a.history and not a.history.empty]
    if protected and not allow_delete:
        details = "; ".join(f"{a.table!r} has {a.history.describe()}" for a in protected if a.history)
        raise ReconcileError(
            f"refusing to delete {len(protected)} table(s) with execution history: {details}. "
            "Re-run with --allow-delete to delete them (their history is kept)."
        )
    return result


def _verified(saved: Plan, state: DatabaseState) -> Plan:
    if saved.database_fingerprint != state.fingerprint:
        raise ReconcileError(
            "the plan is stale: the database changed since it was made "
            f"(plan made against {saved.database_fingerprint[:19]}, database is now "
            f"{state.fingerprint[:19]}). Run plan again and apply the new plan."
        )
    if digest(apply_actions(state.tables, saved.actions).values()) != saved.desired_digest:
        raise ReconcileError(
            "the plan file is inconsistent: its actions do not produce the desired state it records "
            "(was it edited?). Run plan again."
        )
    return saved


def _with_history(action: TableAction, history: Mapping[str, History]) -> TableAction:
    if action.action != "delete":
        return action
    return TableAction(
        action.action, action.table, action.changes, action.before, action.after, history[action.table]
    )


def _status(engine: Engine) -> SchemaStatus:
    with engine.connect() as connection:
        return schema_status(connection)


def _require_current_schema(status: SchemaStatus) -> None:
    if not status.up_to_date:
        raise ReconcileError(
            f"the database schema is at revision {status.current or 'none'}, this flux-control needs "
            f"{status.head}: run `flux-control db upgrade` first."
        )
