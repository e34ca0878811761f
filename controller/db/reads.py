"""The reads of the GET routes and of ``explain``, with SQLAlchemy on either database.

Reads are not the hot path, so one implementation serves SQLite and PostgreSQL. Each method runs in
a read-only session of its own (on SQLite it takes no write lock) and sends a constant number of
statements whatever the history size. Everything returned is a plain or core value: the services
build their answers from it (see :class:`controller.services.ports.Reads`, which this implements
structurally; the database layer does not import the services). A database that cannot be reached,
or a connection lost mid-read, raises :class:`~controller.core.errors.Unavailable` (a 503).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from controller.core.catalog import Catalog, CatalogCache
from controller.core.gates import Execution, Probe
from controller.core.keys import Key, key_from_text
from controller.core.plans import TableState
from controller.core.records import Approval, Backfill, BackfillDetail, ExecutionEntry, RunDetail, Task
from controller.core.runs import RUN_FIELDS, Run, RunEvent
from controller.db.catalog_store import load_catalog, newest_revision
from controller.db.definition_models import TableRow
from controller.db.definitions_store import last_revision, read_state
from controller.db.engine import read_only
from controller.db.retries import connected
from controller.db.run_models import (
    ApprovalRow,
    BackfillRow,
    BackfillRunRow,
    ExecutionRow,
    ExecutionValueRow,
    RunEventRow,
    RunRow,
    RunTriggerRow,
    TaskDispatchRow,
)

_executions = cast(Table, ExecutionRow.__table__)
_values = cast(Table, ExecutionValueRow.__table__)


def _columns(model: Any, names: Iterable[str]) -> list[InstrumentedAttribute[Any]]:
    """The model's columns named like the fields of a core value, in field order."""
    return [getattr(model, name) for name in names]


_RUN = _columns(RunRow, RUN_FIELDS)
#: Every column of a task but its token: no read route shows it (a task read here has None).
_TASK = _columns(TaskDispatchRow, [name for name in Task.__dataclass_fields__ if name != "token"])
_APPROVAL = _columns(ApprovalRow, Approval.__dataclass_fields__)
_RUN_WIDTH, _APPROVAL_WIDTH = len(_RUN), len(_APPROVAL)


def _run(row: Sequence[Any]) -> Run:
    return Run(*row[:_RUN_WIDTH])


def _approval(row: Sequence[Any]) -> Approval:
    return Approval(*row[:_APPROVAL_WIDTH])


class SqlReads:
    """The read port on a SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = read_only(engine)
        # The definitions change only with a reconcile: loaded (and validated) once per revision.
        self._catalogs = CatalogCache()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A session on a connection of its own: a database refusing it, or the connection lost
        mid-read, raises :class:`~controller.core.errors.Unavailable` (see
        :func:`~controller.db.retries.connected`), not the driver's error."""
        with connected(self._engine) as connection, Session(connection) as session:
            yield session

    # --- definitions ----------------------------------------------------------------------------------

    def catalog(self) -> Catalog:
        """The live definitions, stamped with the newest reconcile revision: one statement when they
        are those of the last call (the revision read), else loaded again."""
        with self._session() as session:
            return self._catalogs.at(
                newest_revision(session), lambda revision: load_catalog(session, revision)
            )

    def backfill(self, backfill_id: int) -> BackfillDetail | None:
        """A backfill, its table's name and its runs counted per state (two statements)."""
        b = BackfillRow
        with self._session() as session:
            columns = (b.id, b.table_id, b.keys, b.already_open, b.reason, b.requested_by, b.created_at)
            row = session.execute(
                select(*columns, TableRow.name)
                .join(TableRow, TableRow.id == b.table_id)
                .where(b.id == backfill_id)
            ).first()
            if row is None:
                return None
            counts = session.execute(
                select(RunRow.status, func.count())
                .join(BackfillRunRow, BackfillRunRow.run_id == RunRow.id)
                .where(BackfillRunRow.backfill_id == backfill_id)
                .group_by(RunRow.status)
            ).all()
        return Backfill(*row[:-1]), row[-1], {str(status): int(count) for status, count in counts}

    def definitions(self) -> tuple[dict[str, TableState], tuple[str, datetime] | None]:
        """The live definitions by name, and (Git revision, applied at) of the last reconcile."""
        with self._session() as session:
            state = read_state(session)
            revision = last_revision(session)
        stamp = None if revision is None else (revision.revision, revision.applied_at)
        return state.tables, stamp

    def last_reconcile(self) -> tuple[str, str | None, datetime] | None:
        """(Git revision, who applied it, when) of the last reconcile; None before any."""
        with self._session() as session:
            found = last_revision(session)
        return None if found is None else (found.revision, found.actor, found.applied_at)

    def table_exists(self, name: str) -> bool:
        """Whether the database ever had a table of this name (a deleted one keeps its history)."""
        with self._session() as session:
            return session.execute(select(TableRow.id).where(TableRow.name == name)).first() is not None

    # --- runs -----------------------------------------------------------------------------------------

    def runs(
        self, table: str | None, status: str | None, limit: int, *, before: int | None = None
    ) -> list[tuple[Run, str, int | None]]:
        """The newest runs (of a table, in a state), newest first, each with its table name and its
        newest approval's id (pending or decided; None when it never needed one)."""
        with self._session() as session:
            query = select(*_RUN, TableRow.name).join(TableRow, TableRow.id == RunRow.table_id)
            if table is not None:
                query = query.where(TableRow.name == table)
            if status is not None:
                query = query.where(RunRow.status == status)
            if before is not None:
                query = query.where(RunRow.id < before)
            rows = session.execute(query.order_by(RunRow.id.desc()).limit(limit)).all()
            runs = [(_run(row), cast(str, row[-1])) for row in rows]
            approvals = _newest_approvals(session, [run.id for run, _ in runs])
        return [(run, name, approvals.get(run.id)) for run, name in runs]

    def run_detail(self, run_id: int) -> RunDetail | None:
        """A run with its table name, its newest approval, its tasks (by attempt, then recorded) and
        the executions that triggered it (oldest first); None for an unknown run."""
        with self._session() as session:
            found = session.execute(
                select(*_RUN, TableRow.name)
                .join(TableRow, TableRow.id == RunRow.table_id)
                .where(RunRow.id == run_id)
            ).first()
            if found is None:
                return None
            approval = session.execute(
                select(*_APPROVAL)
                .where(ApprovalRow.run_id == run_id)
                .order_by(ApprovalRow.id.desc())
                .limit(1)
            ).first()
            tasks = session.execute(
                select(*_TASK)
                .where(TaskDispatchRow.run_id == run_id)
                .order_by(TaskDispatchRow.attempt, TaskDispatchRow.id)
            ).all()
            triggers = session.execute(
                select(ExecutionRow.id, TableRow.name, ExecutionRow.partitions)
                .join(RunTriggerRow, RunTriggerRow.execution_id == ExecutionRow.id)
                .join(TableRow, TableRow.id == ExecutionRow.table_id)
                .where(RunTriggerRow.run_id == run_id)
                .order_by(ExecutionRow.id)
            ).all()
            events = session.scalars(
                select(RunEventRow.detail).where(RunEventRow.run_id == run_id).order_by(RunEventRow.id)
            ).all()
        return (
            _run(found),
            cast(str, found[-1]),
            None if approval is None else _approval(approval),
            [Task(*row) for row in tasks],
            [(execution_id, name, partitions) for execution_id, name, partitions in triggers],
            [RunEvent.from_detail(detail) for detail in events],
        )

    def newest_states(self, wanted: Sequence[tuple[int, str | None]]) -> dict[int, str]:
        """The state of the newest run of each table (of a key, when given), in one statement."""
        if not wanted:
            return {}
        conditions = [
            RunRow.table_id == table_id
            if partition_key is None
            else and_(RunRow.table_id == table_id, RunRow.partition_key == partition_key)
            for table_id, partition_key in wanted
        ]
        newest = select(func.max(RunRow.id)).where(or_(*conditions)).group_by(RunRow.table_id)
        with self._session() as session:
            rows = session.execute(select(RunRow.table_id, RunRow.status).where(RunRow.id.in_(newest)))
            return {int(table_id): str(status) for table_id, status in rows}

    def triggers(self, run_ids: Sequence[int]) -> dict[int, list[tuple[int, str, Key]]]:
        """The executions that triggered each run, oldest first, in one statement."""
        found: dict[int, list[tuple[int, str, Key]]] = {run_id: [] for run_id in run_ids}
        if not run_ids:
            return found
        with self._session() as session:
            rows = session.execute(
                select(RunTriggerRow.run_id, ExecutionRow.id, TableRow.name, ExecutionRow.partitions)
                .join(ExecutionRow, RunTriggerRow.execution_id == ExecutionRow.id)
                .join(TableRow, TableRow.id == ExecutionRow.table_id)
                .where(RunTriggerRow.run_id.in_(list(run_ids)))
                .order_by(RunTriggerRow.run_id, ExecutionRow.id)
            ).all()
        for run_id, execution_id, name, partitions in rows:
            found[run_id].append((execution_id, name, partitions))
        return found

    def runs_of_key(self, table_id: int, partition_key: str, limit: int) -> list[tuple[Run, Approval | None]]:
        """The last ``limit`` runs of (table, key), newest first, each with its newest approval."""
        with self._session() as session:
            rows = session.execute(
                select(*_RUN)
                .where(RunRow.table_id == table_id, RunRow.partition_key == partition_key)
                .order_by(RunRow.id.desc())
                .limit(limit)
            ).all()
            runs = [_run(row) for row in rows]
            approvals: dict[int, Approval] = {}
            if runs:
                # In id order, so that the newest approval of a run is the one kept.
                for row in session.execute(
                    select(*_APPROVAL)
                    .where(ApprovalRow.run_id.in_([run.id for run in runs]))
                    .order_by(ApprovalRow.id)
                ):
                    approval = _approval(row)
                    approvals[approval.run_id] = approval
        return [(run, approvals.get(run.id)) for run in runs]

    # --- approvals ------------------------------------------------------------------------------------

    def approvals(self, status: str | None, limit: int) -> list[tuple[Approval, str, Key]]:
        """The newest approvals (in a state), newest first, each with its run's table name and
        partitions."""
        with self._session() as session:
            query = (
                select(*_APPROVAL, RunRow.partitions, TableRow.name)
                .join(RunRow, RunRow.id == ApprovalRow.run_id)
                .join(TableRow, TableRow.id == RunRow.table_id)
            )
            if status is not None:
                query = query.where(ApprovalRow.status == status)
            rows = session.execute(query.order_by(ApprovalRow.id.desc()).limit(limit)).all()
        return [(_approval(row), cast(str, row[-1]), cast(Key, row[-2])) for row in rows]

    # --- executions -----------------------------------------------------------------------------------

    def executions(self, table: str | None, limit: int) -> list[ExecutionEntry]:
        """The newest executions (of a table), newest first."""
        e = ExecutionRow
        with self._session() as session:
            columns = (
                e.id,
                TableRow.name,
                e.partitions,
                e.source,
                e.registered_at,
                e.run_id,
                e.registered_by,
            )
            query = select(*columns).join(TableRow, TableRow.id == e.table_id)
            if table is not None:
                query = query.where(TableRow.name == table)
            rows = session.execute(query.order_by(e.id.desc()).limit(limit)).all()
        return [cast(ExecutionEntry, tuple(row)) for row in rows]  # the selected columns, in order

    def executions_by_id(self, ids: Sequence[int]) -> dict[int, tuple[Key, str, datetime]]:
        """(partitions, source, registered at) of these executions, by id (unknown ids are left out)."""
        if not ids:
            return {}
        e = ExecutionRow
        with self._session() as session:
            rows = session.execute(
                select(e.id, e.partitions, e.source, e.registered_at).where(e.id.in_(ids))
            ).all()
        return {execution_id: (partitions, source, at) for execution_id, partitions, source, at in rows}

    def probe(
        self, probes: Sequence[Probe], ids: dict[str, int], names: dict[int, str]
    ) -> dict[str, list[Execution]]:
        """Executions answering the probes, by table name (one statement whatever the history).

        Dialect-neutral Core: an execution answers a valued probe when its value of the partition is
        the probe's or omitted (NULL agrees with any value), and a probe without a partition asks for
        every execution of the table.
        """
        if not probes:
            return {}
        whole = [ids[p.table] for p in probes if p.partition is None]
        values = _values.c
        matches = [
            and_(
                values.table_id == ids[p.table],
                values.name == p.partition,
                or_(values.value == str(p.value), values.value.is_(None)),
            )
            for p in probes
            if p.partition is not None
        ]
        conditions = []
        if matches:
            conditions.append(_executions.c.id.in_(select(values.execution_id).where(or_(*matches))))
        if whole:
            conditions.append(_executions.c.table_id.in_(whole))
        columns = _executions.c
        query = select(columns.id, columns.table_id, columns.partition_key).where(or_(*conditions))
        with self._session() as session:
            rows = session.execute(query).all()
        found: dict[str, list[Execution]] = {}
        for execution_id, table_id, key in rows:
            name = names.get(table_id)
            if name is not None:  # an execution of a deleted table gates nothing
                found.setdefault(name, []).append(Execution(execution_id, name, key_from_text(key)))
        return found


def _newest_approvals(session: Session, run_ids: list[int]) -> dict[int, int]:
    """The newest approval of each run that has one, pending or decided (run id → approval id)."""
    if not run_ids:
        return {}
    query = (
        select(ApprovalRow.run_id, func.max(ApprovalRow.id))
        .where(ApprovalRow.run_id.in_(run_ids))
        .group_by(ApprovalRow.run_id)
    )
    return {int(run_id): int(approval_id) for run_id, approval_id in session.execute(query)}
