"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import controller.db.base

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconcile_revisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("applied_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("desired_digest", sa.String(length=80), nullable=False),
        sa.Column(
            "summary",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_revisions")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("table_name", sa.String(length=128), nullable=True),
        sa.Column("revision_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["revision_id"],
            ["reconcile_revisions.id"],
            name=op.f("fk_audit_log_revision_id_reconcile_revisions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_table_name_at"), ["table_name", "at"], unique=False)

    op.create_table(
        "tables",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("requires_approval", sa.Boolean(), nullable=False),
        sa.Column(
            "approvers",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("debounce_seconds", sa.Integer(), nullable=False),
        sa.Column("max_wait_seconds", sa.Integer(), nullable=True),
        sa.Column("created_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", controller.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revision_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.ForeignKeyConstraint(
            ["revision_id"],
            ["reconcile_revisions.id"],
            name=op.f("fk_tables_revision_id_reconcile_revisions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tables")),
        sa.UniqueConstraint("name", name=op.f("uq_tables_name")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("table_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("partition_key", sa.String(length=1024), nullable=False),
        sa.Column(
            "partitions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("manual", sa.Boolean(), nullable=False),
        sa.Column("rerun_requested", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("first_trigger_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_trigger_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("fire_at", controller.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("schedule_name", sa.String(length=64), nullable=True),
        sa.Column("scheduled_fire_at", controller.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", controller.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["table_id"], ["tables.id"], name=op.f("fk_runs_table_id_tables")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_status_fire_at"), ["status", "fire_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_runs_table_id_created_at"), ["table_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "uq_runs_open_key",
            ["table_id", "partition_key"],
            unique=True,
            sqlite_where=sa.text("status IN ('awaiting_approval', 'scheduled', 'dispatching', 'running')"),
            postgresql_where=sa.text(
                "status IN ('awaiting_approval', 'scheduled', 'dispatching', 'running')"
            ),
        )

    op.create_table(
        "table_dependencies",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("table_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("upstream_table_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("is_required", sa.Boolean(), nullable=False),
        sa.Column(
            "partition_map",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["table_id"],
            ["tables.id"],
            name=op.f("fk_table_dependencies_table_id_tables"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["upstream_table_id"], ["tables.id"], name=op.f("fk_table_dependencies_upstream_table_id_tables")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_table_dependencies")),
        sa.UniqueConstraint(
            "table_id", "upstream_table_id", name=op.f("uq_table_dependencies_table_id_upstream_table_id")
        ),
    )
    with op.batch_alter_table("table_dependencies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_table_dependencies_upstream_table_id"), ["upstream_table_id"], unique=False
        )

    op.create_table(
        "table_partitions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("table_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("is_required", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["table_id"], ["tables.id"], name=op.f("fk_table_partitions_table_id_tables"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_table_partitions")),
        sa.UniqueConstraint("table_id", "name", name=op.f("uq_table_partitions_table_id_name")),
    )
    with op.batch_alter_table("table_partitions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_table_partitions_table_id"), ["table_id"], unique=False)

    op.create_table(
        "table_tasks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("table_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=2048), nullable=False),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["table_id"], ["tables.id"], name=op.f("fk_table_tasks_table_id_tables"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_table_tasks")),
        sa.UniqueConstraint("table_id", "alias", name=op.f("uq_table_tasks_table_id_alias")),
    )
    with op.batch_alter_table("table_tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_table_tasks_table_id"), ["table_id"], unique=False)

    op.create_table(
        "approvals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decided_at", controller.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=256), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_approvals_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
    )
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_approvals_status"), ["status"], unique=False)
        batch_op.create_index(
            "uq_approvals_pending_run",
            ["run_id"],
            unique=True,
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        )

    op.create_table(
        "executions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("table_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("partition_key", sa.String(length=1024), nullable=False),
        sa.Column(
            "partitions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("idempotency_key", sa.String(length=256), nullable=True),
        sa.Column("registered_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("registered_by", sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_executions_run_id_runs")),
        sa.ForeignKeyConstraint(["table_id"], ["tables.id"], name=op.f("fk_executions_table_id_tables")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
    )
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_executions_table_id_partition_key"), ["table_id", "partition_key"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_executions_table_id_registered_at"), ["table_id", "registered_at"], unique=False
        )
        batch_op.create_index("uq_executions_idempotency", ["table_id", "idempotency_key"], unique=True)

    op.create_table(
        "run_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", controller.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("batch", sa.String(length=36), nullable=False),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("published_at", controller.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_events_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_events")),
    )
    with op.batch_alter_table("run_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_events_batch"), ["batch"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_run_events_published_at_id"), ["published_at", "id"], unique=False
        )

    op.create_table(
        "task_dispatches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=2048), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "request",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("external_id", sa.String(length=2048), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", controller.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", controller.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_task_dispatches_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_dispatches")),
        sa.UniqueConstraint(
            "run_id", "attempt", "alias", name=op.f("uq_task_dispatches_run_id_attempt_alias")
        ),
    )
    with op.batch_alter_table("task_dispatches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_dispatches_external_id"), ["external_id"], unique=False)

    op.create_table(
        "execution_values",
        sa.Column("execution_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("table_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name=op.f("fk_execution_values_execution_id_executions")
        ),
        sa.ForeignKeyConstraint(
            ["table_id"], ["tables.id"], name=op.f("fk_execution_values_table_id_tables")
        ),
        sa.PrimaryKeyConstraint("execution_id", "name", name=op.f("pk_execution_values")),
    )
    with op.batch_alter_table("execution_values", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_execution_values_table_id_name_value"), ["table_id", "name", "value"], unique=False
        )

    op.create_table(
        "run_triggers",
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("execution_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name=op.f("fk_run_triggers_execution_id_executions")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_triggers_run_id_runs")),
        sa.PrimaryKeyConstraint("run_id", "execution_id", name=op.f("pk_run_triggers")),
    )


def downgrade() -> None:
    op.drop_table("run_triggers")
    with op.batch_alter_table("execution_values", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_execution_values_table_id_name_value"))

    op.drop_table("execution_values")
    with op.batch_alter_table("task_dispatches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_dispatches_external_id"))

    op.drop_table("task_dispatches")
    with op.batch_alter_table("run_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_events_published_at_id"))
        batch_op.drop_index(batch_op.f("ix_run_events_batch"))

    op.drop_table("run_events")
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index("uq_executions_idempotency")
        batch_op.drop_index(batch_op.f("ix_executions_table_id_registered_at"))
        batch_op.drop_index(batch_op.f("ix_executions_table_id_partition_key"))

    op.drop_table("executions")
    with op.batch_alter_table("approvals", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_approvals_pending_run",
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        )
        batch_op.drop_index(batch_op.f("ix_approvals_status"))

    op.drop_table("approvals")
    with op.batch_alter_table("table_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_table_tasks_table_id"))

    op.drop_table("table_tasks")
    with op.batch_alter_table("table_partitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_table_partitions_table_id"))

    op.drop_table("table_partitions")
    with op.batch_alter_table("table_dependencies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_table_dependencies_upstream_table_id"))

    op.drop_table("table_dependencies")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_runs_open_key",
            sqlite_where=sa.text("status IN ('awaiting_approval', 'scheduled', 'dispatching', 'running')"),
            postgresql_where=sa.text(
                "status IN ('awaiting_approval', 'scheduled', 'dispatching', 'running')"
            ),
        )
        batch_op.drop_index(batch_op.f("ix_runs_table_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_runs_status_fire_at"))

    op.drop_table("runs")
    op.drop_table("tables")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_table_name_at"))

    op.drop_table("audit_log")
    op.drop_table("reconcile_revisions")
