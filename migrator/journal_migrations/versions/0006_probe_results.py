"""The latest result of each probe, kept by the daemon that ran it.

/metrics serves the daemon's memory; this table keeps the latest outcome of every probe where
anyone can read it without a daemon (`uuidguard status` falls back to it) and where it outlives
a restart: the result, when, how long, the error of a failed run, and the samples and detail of
the last successful one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql as pg

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "probe_results",
        sa.Column("probe", sa.Text, primary_key=True),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("ran_at", ts, nullable=False, server_default=sa.text("now()")),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("worker", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("last_success_at", ts),
        sa.Column("samples", pg.JSONB),
        sa.Column("detail", pg.JSONB),
        sa.CheckConstraint("result IN ('success','error','timeout')", name="probe_results_result"),
        schema=schema,
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_table("probe_results", schema=schema)
