"""SQLAlchemy Core tables built from the schema mapping, checked against the live catalog."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from migrator.errors import MappingError
from migrator.settings import ReferenceMapping, Settings

# which pg types we treat how; anything else is carried as an opaque value
_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "uuid": pg.UUID(as_uuid=False),
    "text": sa.Text(),
    "character varying": sa.Text(),
    "character": sa.Text(),
    "bigint": sa.BigInteger(),
    "integer": sa.Integer(),
    "smallint": sa.SmallInteger(),
    "timestamp with time zone": sa.DateTime(timezone=True),
    "timestamp without time zone": sa.DateTime(),
    "jsonb": pg.JSONB(),
}

# the catalog: every column of one table, with its type as format_type() names it
_COLUMNS_SQL = sa.text(
    """
    SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_type t ON t.oid = a.atttypid
     WHERE n.nspname = :schema AND c.relname = :table
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND a.attnum > 0 AND NOT a.attisdropped
    """
)


@dataclass(frozen=True)
class MappedTable:
    """One mapped table: its Core object and the pg type of each column."""

    table: sa.Table
    types: dict[str, str] = field(default_factory=dict)

    def c(self, name: str) -> sa.ColumnElement[object]:
        return self.table.c[name]

    def is_uuid(self, name: str) -> bool:
        return self.types.get(name) == "uuid"


@dataclass(frozen=True)
class MappedTables:
    documents: MappedTable
    chunks: MappedTable
    embeddings: MappedTable | None
    #: every column holding a document id, with its table (chunks and embeddings included)
    references: list[tuple[ReferenceMapping, MappedTable]]
    vector_type: str | None = None


def _columns(conn: Connection, schema: str, table: str) -> dict[str, tuple[str, str]]:
    rows = conn.execute(_COLUMNS_SQL, {"schema": schema, "table": table}).all()
    return {name: (fmt, typname) for name, fmt, typname in rows}


def _build(
    conn: Connection,
    metadata: sa.MetaData,
    schema: str,
    table: str,
    table_key: str,
    columns: Iterable[tuple[str, str]],
) -> MappedTable:
    if table in metadata.tables or f"{schema}.{table}" in metadata.tables:
        existing = metadata.tables[f"{schema}.{table}"]
        cached = _columns(conn, schema, table)
        _check_columns(schema, table, cached, columns)
        return MappedTable(existing, {k: v[1] for k, v in cached.items()})
    catalog = _columns(conn, schema, table)
    if not catalog:
        raise MappingError(
            table_key,
            f"{schema}.{table}",
            "table does not exist",
            f"create it, or set {table_key} (and mapping.schema) to the table your platform uses",
        )
    _check_columns(schema, table, catalog, columns)
    cols = [
        sa.Column(name, _TYPES.get(fmt, sa.types.NullType())) for name, (fmt, _) in catalog.items()
    ]
    return MappedTable(
        sa.Table(table, metadata, *cols, schema=schema),
        {name: typname for name, (_, typname) in catalog.items()},
    )


_OPTIONAL = {
    "mapping.documents.size_bytes",
    "mapping.documents.filename",
    "mapping.documents.access_count",
    "mapping.documents.last_accessed_at",
    "mapping.chunks.user_id",
    "mapping.chunks.content",
    "mapping.embeddings.chunk_id",
    "mapping.embeddings.vector",
}


def _check_columns(
    schema: str,
    table: str,
    catalog: dict[str, tuple[str, str]],
    columns: Iterable[tuple[str, str]],
) -> None:
    for key, column in columns:
        if column not in catalog:
            fix = f"set {key} to one of: {', '.join(sorted(catalog))}"
            if key in _OPTIONAL:
                fix += ' (or to "" if the table has no such column)'
            raise MappingError(key, f"{schema}.{table}.{column}", "column does not exist", fix)


def _mapped_columns(section: str, model: BaseModel) -> list[tuple[str, str]]:
    """(config key, column) for every column a mapping section names; None means not mapped."""
    names = model.model_dump(exclude={"table", "processed_statuses"})
    return [(f"mapping.{section}.{k}", v) for k, v in names.items() if v is not None]


def reflect(conn: Connection, settings: Settings) -> MappedTables:
    """Build the mapped tables, failing with the config key to fix when a name is wrong."""
    m = settings.mapping
    schema = m.schema_
    metadata = sa.MetaData()
    d = m.documents
    documents = _build(
        conn, metadata, schema, d.table, "mapping.documents.table", _mapped_columns("documents", d)
    )
    c = m.chunks
    chunks = _build(
        conn, metadata, schema, c.table, "mapping.chunks.table", _mapped_columns("chunks", c)
    )
    embeddings = None
    vector_type = None
    if m.embeddings is not None:
        e = m.embeddings
        emb_cols = _mapped_columns("embeddings", e)
        embeddings = _build(conn, metadata, schema, e.table, "mapping.embeddings.table", emb_cols)
        if e.vector is not None:
            vector_type = embeddings.types.get(e.vector)
    references: list[tuple[ReferenceMapping, MappedTable]] = [
        (settings.reference_columns()[0], chunks)
    ]
    offset = 1
    if embeddings is not None:
        references.append((settings.reference_columns()[1], embeddings))
        offset = 2
    for i, ref in enumerate(settings.reference_columns()[offset:]):
        key = f"mapping.references[{i}]"
        cols = [(f"{key}.column", ref.column)]
        cols += [(f"{key}.primary_key", pk) for pk in ref.primary_key]
        if ref.grantee_column:
            cols.append((f"{key}.grantee_column", ref.grantee_column))
        references.append((ref, _build(conn, metadata, schema, ref.table, f"{key}.table", cols)))
    return MappedTables(documents, chunks, embeddings, references, vector_type)


def uuid_keys(settings: Settings, mt: MappedTables) -> bool:
    """Whether every document id column is a uuid (compared as is, index-friendly)."""
    return mt.documents.is_uuid(settings.mapping.documents.id) and all(
        t.types.get(ref.column) == "uuid" for ref, t in mt.references
    )


def same_owner(a: MappedTable, a_col: str, b: MappedTable, b_col: str) -> sa.ColumnElement[bool]:
    """Owner columns compared as they are, or as text where their types differ."""
    if a.types.get(a_col) == b.types.get(b_col):
        return a.c(a_col) == b.c(b_col)
    return sa.cast(a.c(a_col), sa.Text) == sa.cast(b.c(b_col), sa.Text)
