"""Build the reference schema (DESIGN §2.1) and load a damaged dataset into it with COPY."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection
from sqlalchemy.types import UserDefinedType

from migrator import db, textvec
from migrator.dataset import Dataset
from migrator.errors import UsageError

FkMode = Literal["none", "cascade", "deferrable", "strict"]
FK_MODES: tuple[FkMode, ...] = ("none", "cascade", "deferrable", "strict")

REFERENCE_TABLES = ("embeddings", "document_shares", "document_chunks", "documents")


class Vector(UserDefinedType[list[float]]):
    """pgvector's `vector(N)` column type."""

    cache_ok = True

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def get_col_spec(self, **kw: Any) -> str:
        return f"vector({int(self.dim)})"


def reference_metadata(schema: str, dim: int, use_vector: bool) -> sa.MetaData:
    """The reference schema as Core tables; constraints come after the load (it is faster)."""
    md = sa.MetaData(schema=schema)
    uuid = pg.UUID(as_uuid=False)
    ts = sa.DateTime(timezone=True)
    sa.Table(
        "documents",
        md,
        sa.Column("id", uuid, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("file_sha256", sa.CHAR(64), nullable=False),
        sa.Column("filename", sa.Text),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("last_accessed_at", ts),
        sa.Column("access_count", sa.Integer, nullable=False, server_default="0"),
    )
    sa.Table(
        "document_chunks",
        md,
        sa.Column("id", uuid, nullable=False),
        sa.Column("document_id", uuid),
        sa.Column("user_id", sa.Text),
        sa.Column("chunk_index", sa.Integer),
        sa.Column("content", sa.Text),
        sa.Column("metadata", pg.JSONB),
        sa.Column("created_at", ts),
    )
    sa.Table(
        "embeddings",
        md,
        sa.Column("id", uuid, nullable=False),
        sa.Column("chunk_id", uuid),
        sa.Column("document_id", uuid),
        sa.Column("model", sa.Text),
        sa.Column("embedding", Vector(dim) if use_vector else pg.ARRAY(sa.REAL)),
        sa.Column("created_at", ts),
    )
    sa.Table(
        "document_shares",
        md,
        sa.Column("document_id", uuid, nullable=False),
        sa.Column("shared_with", sa.Text, nullable=False),
        sa.Column("permission", sa.Text),
        sa.Column("created_at", ts),
    )
    return md


@dataclass(frozen=True)
class SeedResult:
    manifest: dict[str, Any]
    seconds: float
    vector_type: str


def seed(
    conn: Connection,
    dataset: Dataset,
    schema: str,
    fk: FkMode,
    replace: bool,
    progress: Callable[[int], None] | None = None,
) -> SeedResult:
    """Create the reference tables in `schema` and load `dataset`; commits on success."""
    started = time.monotonic()
    q = conn.dialect.identifier_preparer
    exists = conn.execute(
        sa.text("SELECT to_regclass(:name) IS NOT NULL"),
        {"name": f"{q.quote_schema(schema)}.documents"},
    ).scalar_one()
    if exists and not replace:
        raise UsageError(
            f"{schema}.documents already exists",
            "pass --replace to drop the reference tables and seed afresh, or seed another database",
        )
    use_vector = _ensure_vector(conn)
    conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
    md = reference_metadata(schema, dataset.spec.dim, use_vector)
    if replace:
        for name in REFERENCE_TABLES:
            conn.execute(
                sa.text(
                    f"DROP TABLE IF EXISTS {q.format_table(md.tables[f'{schema}.{name}'])} CASCADE"
                )
            )
    md.create_all(conn)
    raw = db.raw_connection(conn)
    t = {name: q.format_table(md.tables[f"{schema}.{name}"]) for name in REFERENCE_TABLES}
    literal = textvec.vector_literal if use_vector else textvec.array_literal
    with raw.cursor() as cur:
        with cur.copy(
            f"COPY {t['documents']} (id, user_id, file_sha256, filename, size_bytes, status,"
            " created_at, last_accessed_at, access_count) FROM STDIN"
        ) as copy:
            for row in dataset.documents:
                copy.write_row(row)
        # one COPY at a time per connection: chunks first, then their embeddings
        with cur.copy(
            f"COPY {t['document_chunks']} (id, document_id, user_id, chunk_index, content,"
            " metadata, created_at) FROM STDIN"
        ) as copy:
            for done, chunk in enumerate(dataset.chunks(), 1):
                copy.write_row(chunk)
                if progress is not None and done % 100_000 == 0:
                    progress(done)
        with cur.copy(
            f"COPY {t['embeddings']} (id, chunk_id, document_id, model, embedding, created_at)"
            " FROM STDIN"
        ) as copy:
            for emb in itertools.chain(dataset.embeddings(), dataset.dangling_embeddings()):
                copy.write_row((*emb[:4], literal(emb[4]), emb[5]))
        with cur.copy(
            f"COPY {t['document_shares']} (document_id, shared_with, permission, created_at) FROM STDIN"
        ) as copy:
            for share in dataset.shares:
                copy.write_row(share)
    for statement in _constraints(t, fk):
        conn.execute(sa.text(statement))
    conn.commit()
    # a table in service has long had its hint bits set and its visibility map built; without
    # this the first scan after a bulk load pays for both and misrepresents every later one
    with conn.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as maint:
        for name in REFERENCE_TABLES:
            maint.execute(sa.text(f"VACUUM (ANALYZE) {t[name]}"))
    return SeedResult(
        manifest={
            **dataset.manifest,
            "fk": fk,
            "vector_type": "vector" if use_vector else "real[]",
        },
        seconds=time.monotonic() - started,
        vector_type="vector" if use_vector else "real[]",
    )


def _ensure_vector(conn: Connection) -> bool:
    """Use pgvector where the server ships it (the embedded one does); real[] otherwise."""
    if db.has_extension(conn, "vector"):
        return True
    available = conn.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')")
    ).scalar_one()
    if not available:
        return False
    conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    return True


def _constraints(t: dict[str, str], fk: FkMode) -> list[str]:
    """Keys, indexes and foreign keys, added after the load.

    The damaged data holds orphans (chunks and embeddings whose document does not exist), which
    a foreign key forbids. As in real deployments that added their constraints late, the
    document foreign keys are added NOT VALID: PostgreSQL enforces them for every new or
    changed row but does not check the rows already there.
    """
    out = [
        f"ALTER TABLE {t['documents']} ADD PRIMARY KEY (id)",
        f"ALTER TABLE {t['document_chunks']} ADD PRIMARY KEY (id)",
        f"ALTER TABLE {t['embeddings']} ADD PRIMARY KEY (id)",
        f"ALTER TABLE {t['document_shares']} ADD PRIMARY KEY (document_id, shared_with)",
        f"CREATE INDEX ON {t['documents']} (user_id)",
        f"CREATE INDEX ON {t['documents']} (created_at)",
        f"CREATE INDEX ON {t['document_chunks']} (document_id)",
        f"CREATE INDEX ON {t['embeddings']} (document_id)",
        f"CREATE INDEX ON {t['embeddings']} (chunk_id)",
        f"CREATE INDEX ON {t['document_shares']} (shared_with)",
        # some embeddings outlived their chunk: the schema's chunk key is there, not validated
        f"ALTER TABLE {t['embeddings']} ADD FOREIGN KEY (chunk_id) "
        f"REFERENCES {t['document_chunks']} (id) NOT VALID",
    ]
    if fk == "none":
        return out
    action = {
        "cascade": " ON UPDATE CASCADE",
        "deferrable": " DEFERRABLE INITIALLY IMMEDIATE",
        "strict": "",
    }[fk]
    for table in ("document_chunks", "embeddings", "document_shares"):
        validity = "" if table == "document_shares" else " NOT VALID"
        out.append(
            f"ALTER TABLE {t[table]} ADD FOREIGN KEY (document_id) "
            f"REFERENCES {t['documents']} (id){action}{validity}"
        )
    return out
