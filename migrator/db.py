"""Database access: engines over psycopg 3, local timeouts, and driver errors translated here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from migrator import embedded
from migrator.errors import DatabaseError, DatabaseUnavailableError, UuidguardError
from migrator.settings import Settings, mask_dsn


def database_url(settings: Settings) -> str:
    """The DSN to use: the configured one, or the embedded server's (started if need be)."""
    if settings.database.dsn is not None:
        return settings.database.dsn.get_secret_value()
    return embedded.ensure_running(settings.database.state_dir).uri


def sqlalchemy_url(dsn: str) -> URL:
    url = make_url(dsn)
    return url.set(drivername="postgresql+psycopg")


def describe(dsn: str) -> str:
    """Where a DSN points, without its password: for messages."""
    try:
        url = make_url(dsn)
    except sa_exc.ArgumentError:
        return mask_dsn(dsn)
    host = url.host or url.query.get("host") or "local socket"
    port = f":{url.port}" if url.port else ""
    return f"{host}{port}/{url.database or ''}"


def create_engine(settings: Settings, dsn: str | None = None, **kwargs: Any) -> Engine:
    """An engine for the configured database; checks the connection so errors surface at once."""
    dsn = dsn or database_url(settings)
    try:
        url = sqlalchemy_url(dsn)
    except sa_exc.ArgumentError as exc:
        raise DatabaseUnavailableError(mask_dsn(dsn), "the DSN cannot be parsed") from exc
    connect_args = {
        "connect_timeout": max(1, int(settings.database.connect_timeout.total_seconds())),
        "application_name": settings.database.application_name,
    }
    engine = sa.create_engine(
        url, connect_args=connect_args, pool_pre_ping=True, future=True, **kwargs
    )
    with connect(engine):
        pass
    return engine


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    first = text[0] if text else type(orig).__name__
    # psycopg prefixes connection failures with the whole address list; keep the cause
    if "failed: " in first:
        first = first.rsplit("failed: ", 1)[-1]
    return first.rstrip(".")


@contextlib.contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection, with connection failures turned into DatabaseUnavailableError."""
    target = describe(engine.url.render_as_string(hide_password=True))
    try:
        conn = engine.connect()
    except (sa_exc.OperationalError, sa_exc.InterfaceError, psycopg.OperationalError) as exc:
        raise DatabaseUnavailableError(target, _reason(exc)) from exc
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn unexpected driver errors inside `action` into one-line DatabaseErrors."""
    try:
        yield
    except UuidguardError:
        raise
    except sa_exc.OperationalError as exc:
        orig = getattr(exc, "orig", None)
        if isinstance(orig, psycopg.errors.QueryCanceled):
            raise DatabaseError(
                action,
                _reason(exc),
                "raise database.statement_timeout, or run it when the database is quieter",
            ) from exc
        raise DatabaseUnavailableError(action, _reason(exc)) from exc
    except sa_exc.DBAPIError as exc:
        raise DatabaseError(action, _reason(exc)) from exc


def set_local_timeouts(
    conn: Connection,
    statement_timeout: timedelta,
    lock_timeout: timedelta | None = None,
) -> None:
    """Bound the current transaction on the server side: an overrun is cancelled by PostgreSQL."""
    values = {"statement_timeout": statement_timeout}
    if lock_timeout is not None:
        values["lock_timeout"] = lock_timeout
    set_local(conn, {name: _ms(value) for name, value in values.items()})


def set_local(conn: Connection, values: dict[str, str]) -> None:
    """SET LOCAL several parameters in one round trip (values are bound, never pasted)."""
    conn.execute(sa.select(*[sa.func.set_config(k, v, True) for k, v in values.items()]))


def _ms(delta: timedelta) -> str:
    return f"{int(delta.total_seconds() * 1000)}ms"


def raw_connection(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy one, for COPY."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


def server_version(conn: Connection) -> int:
    return int(conn.execute(sa.text("SHOW server_version_num")).scalar_one())


def has_extension(conn: Connection, name: str) -> bool:
    """Whether an extension is installed in this database (not merely available)."""
    return bool(
        conn.execute(
            sa.text("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = :name)"),
            {"name": name},
        ).scalar_one()
    )
