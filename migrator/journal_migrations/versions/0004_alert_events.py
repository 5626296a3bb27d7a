"""Alert notifications the daemon received, and the Slack message of each alert group.

Alertmanager repeats itself (repeat_interval, HA pairs, retries): one row per alert
fingerprint, start time and status makes the tenth delivery of the same payload a no-op.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql as pg

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "alert_events",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("group_key", sa.Text, nullable=False),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("alertname", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.BigInteger),
        # what the policy decided: none, notify, pause, rollback, and whether it was done
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("detail", pg.JSONB, nullable=False, server_default="{}"),
        sa.UniqueConstraint("fingerprint", "starts_at", "status", name="alert_events_once"),
        schema=schema,
    )

    # one Slack message per alert group, updated in place; actions go to its thread
    op.create_table(
        "slack_messages",
        sa.Column("group_key", sa.Text, primary_key=True),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("ts", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        schema=schema,
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_table("slack_messages", schema=schema)
    op.drop_table("alert_events", schema=schema)
