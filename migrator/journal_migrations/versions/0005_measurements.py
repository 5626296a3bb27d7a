"""Before/after measurements of a run, and each re-keyed document's expected row counts.

A run's "before" figures (counts per class, orphan chunks, canary accessibility and retrieval
latency on a fixed canary set) are measured when it is created and kept here; the completion
report measures the same again as "after". id_map gains the chunks and embeddings each document
will own once re-keyed, so user acceptance can prove none was lost.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql as pg

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "measurements",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("phase", sa.Text, nullable=False),
        sa.Column(
            "measured_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("figures", pg.JSONB, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], [f"{schema}.runs.id"], ondelete="CASCADE"),
        sa.CheckConstraint("phase IN ('before','after')", name="measurements_phase"),
        schema=schema,
    )
    op.create_index("measurements_run", "measurements", ["run_id", "phase", "id"], schema=schema)
    # rows the document owns once re-keyed: its own plus those under its rule id (healed)
    op.add_column("id_map", sa.Column("chunks", sa.BigInteger), schema=schema)
    op.add_column("id_map", sa.Column("embeddings", sa.BigInteger), schema=schema)


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_column("id_map", "embeddings", schema=schema)
    op.drop_column("id_map", "chunks", schema=schema)
    op.drop_table("measurements", schema=schema)
