"""Small SQLAlchemy Core constructs the compiler lacks: CREATE TEMPORARY TABLE ... AS SELECT."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable


class CreateTempTableAs(Executable, ClauseElement):
    """CREATE TEMPORARY TABLE name ON COMMIT DROP AS <select>; the name is quoted."""

    inherit_cache = False

    def __init__(self, name: str, select: sa.Select[Any]) -> None:
        self.name = name
        self.select = select


@compiles(CreateTempTableAs)
def _compile_ctas(element: CreateTempTableAs, compiler: SQLCompiler, **kw: Any) -> str:
    name = compiler.preparer.quote(element.name)
    body = compiler.process(element.select, **kw)
    return f"CREATE TEMPORARY TABLE {name} ON COMMIT DROP AS {body}"


def temp_table_as(conn: Connection, name: str, select: sa.Select[Any]) -> sa.TableClause:
    """Materialise `select` as an analysed temporary table and return a handle to it."""
    conn.execute(CreateTempTableAs(name, select))
    handle = sa.table(name, *[sa.column(str(c.key)) for c in select.selected_columns])
    conn.execute(sa.text(f"ANALYZE {conn.dialect.identifier_preparer.quote(name)}"))
    return handle
