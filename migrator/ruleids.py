"""Materialise every document's rule id in a temporary table: Python uuid5 in bulk, or uuid-ossp.

PostgreSQL has no built-in UUIDv5 (SHA-1), so the ids are computed in Python and handed back with
COPY (DESIGN §2.2); where `uuid-ossp` is already installed, `uuid_generate_v5` does it in place.
Both paths produce the same table; a test proves they agree.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from migrator import db
from migrator.idrule import IdRule
from migrator.tables import MappedTables

RULE_TABLE = "ug_rule"
_FETCH = 50_000


def key_expr(col: sa.ColumnElement[Any], uuid_mode: bool) -> sa.ColumnElement[Any]:
    """A document key as compared everywhere: the uuid itself, or lower-case text."""
    return col if uuid_mode else sa.func.lower(sa.cast(col, sa.Text))


def uuid_ossp_schema(conn: Connection) -> str | None:
    """The schema holding uuid-ossp's functions, if the extension is installed here."""
    return conn.execute(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'uuid-ossp'"
        )
    ).scalar_one_or_none()


def name_expr(
    tables: MappedTables, rule: IdRule, user_col: str, sha_col: str
) -> sa.ColumnElement[str]:
    """The rule's name string built in SQL from the template, the same text Python formats."""
    d = tables.documents
    parts: list[sa.ColumnElement[str]] = []
    for kind, value in rule.parts():
        if kind == "literal":
            parts.append(sa.literal(value, sa.Text))
        else:
            col = user_col if value == "user_id" else sha_col
            parts.append(sa.cast(d.c(col), sa.Text))
    return sa.func.concat(*parts)


def materialize(
    conn: Connection,
    tables: MappedTables,
    rule: IdRule,
    user_col: str,
    sha_col: str,
    id_col: str,
    uuid_mode: bool,
    use_extension: bool = True,
) -> tuple[sa.TableClause, str]:
    """Create temporary table ug_rule(doc_key, rule_id); return it and the path used."""
    key_type = "uuid" if uuid_mode else "text"
    conn.execute(
        sa.text(
            f"CREATE TEMPORARY TABLE {RULE_TABLE} (doc_key {key_type} NOT NULL,"
            f" rule_id {key_type}) ON COMMIT DROP"
        )
    )
    handle = sa.table(RULE_TABLE, sa.column("doc_key"), sa.column("rule_id"))
    d = tables.documents
    schema = uuid_ossp_schema(conn) if use_extension else None
    if schema is not None:
        fn = getattr(sa.func, schema).uuid_generate_v5
        rule_id = fn(
            sa.cast(sa.literal(str(rule.namespace)), sa.Uuid),
            name_expr(tables, rule, user_col, sha_col),
        )
        null_inputs = sa.or_(d.c(user_col).is_(None), d.c(sha_col).is_(None))
        value = sa.case((null_inputs, sa.null()), else_=key_expr(rule_id, uuid_mode))
        conn.execute(
            sa.insert(handle).from_select(
                ["doc_key", "rule_id"], sa.select(key_expr(d.c(id_col), uuid_mode), value)
            )
        )
        path = "sql (uuid-ossp)"
    else:
        query = sa.select(
            sa.cast(key_expr(d.c(id_col), uuid_mode), sa.Text),
            sa.cast(d.c(user_col), sa.Text),
            sa.cast(d.c(sha_col), sa.Text),
        )
        _copy_from_python(conn, query, rule)
        path = "python (COPY)"
    conn.execute(sa.text(f"CREATE INDEX ON {RULE_TABLE} (doc_key)"))
    conn.execute(sa.text(f"ANALYZE {RULE_TABLE}"))
    return handle, path


def _copy_from_python(conn: Connection, query: sa.Select[str, str, str], rule: IdRule) -> None:
    """Stream (key, user, sha256) rows out, and (key, rule id) rows back in with COPY."""
    compiled = query.compile(dialect=conn.dialect)
    raw = db.raw_connection(conn)
    new_id = rule.new_id_text
    # a server-side cursor keeps memory flat; COPY runs between its fetches
    with raw.cursor(name="ug_rule_source") as source, raw.cursor() as sink:
        source.execute(str(compiled), compiled.params)
        while rows := source.fetchmany(_FETCH):
            with sink.copy(f"COPY {RULE_TABLE} (doc_key, rule_id) FROM STDIN") as copy:
                for key, user, sha in rows:
                    rid = None if user is None or sha is None else new_id(user, sha)
                    copy.write_row((key, rid))
