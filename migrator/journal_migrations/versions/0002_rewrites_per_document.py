"""Journal rewritten rows per document and reference, not per row; no foreign key on it.

A batch of ~500 documents rewrites ~10 rows of each reference per document. One journal row
per row doubled the cost of a batch (a tuple, an index entry and a foreign-key check for
every rewritten row); one row per (batch, reference, document) holding the keys of all its
rewritten rows as a JSON array is ~10x fewer tuples and still an exact inverse. The foreign
key to batches is dropped: its per-row trigger was a fifth of the journal's cost, and the
engine writes both tables in the same transaction. Existing rows become one-key arrays.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _rewrites(schema: str, keys: str) -> sa.TableClause:
    return sa.table(
        "rewrites",
        sa.column("batch_id"),
        sa.column("ref"),
        sa.column(keys, JSONB),
        sa.column("old_id"),
        schema=schema,
    )


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_constraint("rewrites_batch_id_fkey", "rewrites", schema=schema, type_="foreignkey")
    op.alter_column("rewrites", "pk", new_column_name="keys", schema=schema)
    r = _rewrites(schema, "keys")
    op.execute(r.update().values(keys=sa.func.jsonb_build_array(r.c["keys"])))


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    r = _rewrites(schema, "keys")
    many = sa.func.jsonb_array_length(r.c["keys"]) > 1
    key = sa.func.jsonb_array_elements(r.c["keys"]).table_valued(sa.column("value", JSONB))
    op.execute(
        r.insert().from_select(
            ["batch_id", "ref", "keys", "old_id"],
            sa.select(r.c.batch_id, r.c.ref, sa.func.jsonb_build_array(key.c.value), r.c.old_id)
            .select_from(r.join(key, sa.true()))
            .where(many),
        )
    )
    op.execute(r.delete().where(many))
    op.execute(r.update().values(keys=r.c["keys"][0]))
    op.alter_column("rewrites", "keys", new_column_name="pk", schema=schema)
    op.create_foreign_key(
        "rewrites_batch_id_fkey",
        "rewrites",
        "batches",
        ["batch_id"],
        ["id"],
        source_schema=schema,
        referent_schema=schema,
        ondelete="CASCADE",
    )
