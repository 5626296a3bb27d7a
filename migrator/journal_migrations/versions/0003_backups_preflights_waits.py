"""Backups and their verification, preflight results, and throttle waits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql as pg

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "backups",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("tables", pg.JSONB, nullable=False, server_default="[]"),
        # the content fingerprint of the mapped tables when dumped, and after the test restore
        sa.Column("fingerprint", pg.JSONB),
        sa.Column("restored_fingerprint", pg.JSONB),
        sa.Column("verified", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("verified_at", TS),
        sa.Column("seconds", sa.Float),
        sa.Column("error", sa.Text),
        schema=schema,
    )
    op.create_table(
        "preflights",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", TS, nullable=False, server_default=NOW),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("config_fingerprint", sa.Text, nullable=False),
        sa.Column("checks", pg.JSONB, nullable=False),
        schema=schema,
    )
    op.create_table(
        "waits",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("worker", sa.Text, nullable=False),
        # the signal (lock_waiters, transaction_age, window, flag_file, ...) and what it said
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("value", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("started_at", TS, nullable=False, server_default=NOW),
        sa.Column("seconds", sa.Float, nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["run_id"], [f"{schema}.runs.id"], ondelete="CASCADE"),
        sa.CheckConstraint("action IN ('wait','pause')", name="waits_action"),
        schema=schema,
    )
    op.create_index("waits_run", "waits", ["run_id", "started_at"], schema=schema)


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    for table in ("waits", "preflights", "backups"):
        op.drop_table(table, schema=schema)
