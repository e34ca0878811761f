"""The PostgreSQL texts of the run lifecycle (DESIGN §8): a table's slot lock, its busy and queued
runs, and the started tasks the sweep asks AWS about. As in :mod:`controller.db.postgresql_statements`,
the states the sweep's searches filter on are literals (their indexes serve generic plans too), other
states parameters."""

from __future__ import annotations

from controller.core.records import TASK_STARTED
from controller.core.runs import QUEUED
from controller.db.postgresql_statements import TASKS, literal
from controller.db.predicates import FAILED_RERUN

#: A table's slot lock (held until commit): serialises the claims of its runs, so that two never
#: both count a free slot. Its own namespace: it never waits on a gate lock, nor the reverse.
LOCK_SLOTS = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '/flux-control/slots'), %s::int)"
#: Parameters: the table id, the in-progress states.
BUSY_RUNS = "SELECT id FROM runs WHERE table_id = %s AND status = ANY(%s::text[]) ORDER BY id"
#: Parameters: the table id, the queued state, the limit.
QUEUED_RUNS = "SELECT id FROM runs WHERE table_id = %s AND status = %s ORDER BY fire_at, id LIMIT %s"
#: Parameters: the limit. The predicate is the partial index's, literally (see FAILED_RERUN).
FAILED_RERUNS = f"SELECT id, table_id, partition_key FROM runs WHERE {FAILED_RERUN} ORDER BY id LIMIT %s"
#: Parameters: the limit.
QUEUED_TABLES = (
    f"SELECT DISTINCT table_id FROM runs WHERE status = {literal(QUEUED)} ORDER BY table_id LIMIT %s"
)
#: Parameters: the run id, the attempt, the statuses of tasks that did not start.
FORGET_TASKS = "DELETE FROM task_dispatches WHERE run_id = %s AND attempt = %s AND status = ANY(%s::text[])"
#: Parameters: now, the limit.
TASKS_TO_CHECK = (
    f"SELECT {TASKS}, deadline_at FROM task_dispatches"
    f" WHERE status = {literal(TASK_STARTED)} AND check_at <= %s ORDER BY check_at, id LIMIT %s"
)
#: Parameters: the task ids, their check times.
POSTPONE_CHECKS = (
    "UPDATE task_dispatches SET check_at = u.check_at"
    " FROM unnest(%s::bigint[], %s::timestamptz[]) AS u(id, check_at) WHERE task_dispatches.id = u.id"
)
#: Parameters: table id, keys, already open, reason, requested by, created at.
INSERT_BACKFILL = (
    "INSERT INTO backfills (table_id, keys, already_open, reason, requested_by, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"
)
#: Parameters: the backfill id, the run ids.
INSERT_BACKFILL_RUNS = (
    "INSERT INTO backfill_runs (backfill_id, run_id) SELECT %s, run_id FROM unnest(%s::bigint[]) AS run_id"
)
