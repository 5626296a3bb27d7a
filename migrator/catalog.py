"""Catalog reads: foreign keys onto the documents table, and the strategy each one needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from migrator import db
from migrator.errors import MappingError, UuidguardError
from migrator.settings import Settings

Strategy = Literal["none", "cascade", "deferred", "copy"]

# every foreign key whose referenced table is the documents table, with its columns and actions
_FKS_SQL = sa.text(
    """
    SELECT c.conname, cn.nspname AS schema, cr.relname AS table,
           (SELECT array_agg(a.attname ORDER BY k.n)
              FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) AS columns,
           c.confupdtype, c.confdeltype, c.condeferrable, c.convalidated
      FROM pg_constraint c
      JOIN pg_class cr ON cr.oid = c.conrelid
      JOIN pg_namespace cn ON cn.oid = cr.relnamespace
     WHERE c.contype = 'f'
       AND c.confrelid = (
             SELECT p.oid FROM pg_class p JOIN pg_namespace pn ON pn.oid = p.relnamespace
              WHERE pn.nspname = :schema AND p.relname = :table)
    """
)


@dataclass(frozen=True)
class ForeignKey:
    name: str
    schema: str
    table: str
    columns: tuple[str, ...]
    on_update: str
    deferrable: bool
    validated: bool

    @property
    def strategy(self) -> Strategy:
        if self.on_update == "c":
            return "cascade"
        if self.deferrable:
            return "deferred"
        return "copy"

    def explain(self) -> str:
        return {
            "cascade": "ON UPDATE CASCADE: renaming the document carries these rows along",
            "deferred": "DEFERRABLE: checked at commit, after document and rows have both moved",
            "copy": "NOT DEFERRABLE, NO ACTION: a copy of the document is inserted under the "
            "new id, the rows are moved to it, then the old document is deleted",
        }[self.strategy]


class PrivilegeError(UuidguardError):
    """The connected role lacks a privilege the migration needs."""

    def __init__(self, role: str, missing: list[str], grant: str) -> None:
        super().__init__(
            f"role {role} lacks {', '.join(missing)}. Fix: as an administrator, {grant}"
        )
        self.missing = missing


def check_privileges(conn: Connection, settings: Settings, needs_replica_role: bool) -> None:
    """Refuse early, with the GRANT to run, when a batch would fail half-way on permissions."""
    role = conn.execute(sa.text("SELECT current_user")).scalar_one()
    superuser = conn.execute(
        sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    ).scalar_one()
    if superuser:
        return
    q = conn.dialect.identifier_preparer
    schema = settings.mapping.schema_
    tables = [settings.mapping.documents.table] + [r.table for r in settings.reference_columns()]
    missing: list[str] = []
    grants: list[str] = []
    for table in dict.fromkeys(tables):
        name = f"{q.quote_schema(schema)}.{q.quote(table)}"
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            ok = conn.execute(
                sa.text("SELECT has_table_privilege(:t, :p)"), {"t": name, "p": privilege}
            ).scalar_one()
            if not ok:
                missing.append(f"{privilege} on {schema}.{table}")
                grants.append(f"GRANT {privilege} ON {name} TO {q.quote(role)}")
    if needs_replica_role and db.server_version(conn) >= 150000:
        ok = conn.execute(
            sa.text("SELECT has_parameter_privilege('session_replication_role', 'SET')")
        ).scalar_one()
        if not ok:
            missing.append("SET on session_replication_role (exact rollback under foreign keys)")
            grants.append(f"GRANT SET ON PARAMETER session_replication_role TO {q.quote(role)}")
    elif needs_replica_role:
        missing.append("superuser (exact rollback under foreign keys before PostgreSQL 15)")
        grants.append("run the migration as a superuser")
    if missing:
        raise PrivilegeError(role, missing, "; ".join(grants))


def document_foreign_keys(conn: Connection, settings: Settings) -> list[ForeignKey]:
    m = settings.mapping
    rows = conn.execute(_FKS_SQL, {"schema": m.schema_, "table": m.documents.table}).all()
    return [
        ForeignKey(
            r.conname,
            r.schema,
            r.table,
            tuple(r.columns),
            r.confupdtype,
            r.condeferrable,
            r.convalidated,
        )
        for r in rows
    ]


def strategies(conn: Connection, settings: Settings) -> dict[int, ForeignKey | None]:
    """For each mapped reference (by index), the foreign key that governs it, if any.

    Refuses a foreign key onto the documents table from a column that is not mapped: re-keying
    would fail on it, or (ON UPDATE CASCADE) rewrite rows the journal cannot restore.
    """
    refs = settings.reference_columns()
    schema = settings.mapping.schema_
    by_column = {(schema, r.table, r.column): i for i, r in enumerate(refs)}
    out: dict[int, ForeignKey | None] = dict.fromkeys(range(len(refs)))
    for fk in document_foreign_keys(conn, settings):
        if len(fk.columns) != 1 or (fk.schema, fk.table, fk.columns[0]) not in by_column:
            raise MappingError(
                "mapping.references",
                f"{fk.schema}.{fk.table}({', '.join(fk.columns)})",
                f"foreign key {fk.name} references the documents table from a column that is not mapped",
                "add the column to [[mapping.references]] so that re-keying moves it too",
            )
        out[by_column[(fk.schema, fk.table, fk.columns[0])]] = fk
    return out
