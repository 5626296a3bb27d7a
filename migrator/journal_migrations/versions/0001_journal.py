"""The journal: runs, the per-document id map, batches, rewritten rows, and the audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "runs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("option", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("id_rule", pg.JSONB, nullable=False),
        sa.Column("config_fingerprint", sa.Text, nullable=False),
        sa.Column("documents", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("settings", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("fingerprint_before", pg.JSONB),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.CheckConstraint(
            "state IN ('planned','running','paused','completed','rolling_back','rolled_back','failed')",
            name="runs_state",
        ),
        schema=schema,
    )
    # at most one run that is not finished: the engine and every control path rely on it
    op.create_index(
        "runs_one_active",
        "runs",
        [sa.text("(true)")],
        unique=True,
        schema=schema,
        postgresql_where=sa.text("state IN ('planned','running','paused','rolling_back')"),
    )
    op.create_table(
        "id_map",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("old_id", pg.UUID(as_uuid=False), nullable=False),
        sa.Column("new_id", pg.UUID(as_uuid=False), nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("class", sa.Text, nullable=False),
        sa.Column("priority", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("batch_id", sa.BigInteger),
        sa.PrimaryKeyConstraint("run_id", "old_id"),
        sa.ForeignKeyConstraint(["run_id"], [f"{schema}.runs.id"], ondelete="CASCADE"),
        sa.CheckConstraint(
            "state IN ('pending','done','skipped','rolled_back')", name="id_map_state"
        ),
        schema=schema,
    )
    op.create_index(
        "id_map_claim", "id_map", ["run_id", "state", "user_id", "old_id"], schema=schema
    )
    op.create_index("id_map_batch", "id_map", ["batch_id"], schema=schema)
    op.create_table(
        "batches",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("documents", sa.Integer, nullable=False),
        sa.Column("rows", pg.JSONB, nullable=False, server_default="{}"),
        sa.Column("target_size", sa.Integer),
        sa.Column("started_at", TS, nullable=False, server_default=NOW),
        sa.Column("committed_at", TS),
        sa.Column("seconds", sa.Float),
        sa.Column("lock_wait_seconds", sa.Float),
        sa.Column("rolled_back_at", TS),
        sa.Column("error", sa.Text),
        sa.ForeignKeyConstraint(["run_id"], [f"{schema}.runs.id"], ondelete="CASCADE"),
        sa.CheckConstraint("state IN ('committed','rolled_back','failed')", name="batches_state"),
        schema=schema,
    )
    op.create_index("batches_run", "batches", ["run_id", "id"], schema=schema)
    op.create_table(
        "rewrites",
        sa.Column("batch_id", sa.BigInteger, nullable=False),
        sa.Column("ref", sa.SmallInteger, nullable=False),
        sa.Column("pk", pg.JSONB, nullable=False),
        sa.Column("old_id", pg.UUID(as_uuid=False), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], [f"{schema}.batches.id"], ondelete="CASCADE"),
        schema=schema,
    )
    op.create_index("rewrites_batch", "rewrites", ["batch_id", "ref"], schema=schema)
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", TS, nullable=False, server_default=NOW),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("run_id", sa.BigInteger),
        sa.Column("detail", pg.JSONB, nullable=False, server_default="{}"),
        schema=schema,
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    for table in ("audit", "rewrites", "batches", "id_map", "runs"):
        op.drop_table(table, schema=schema)
