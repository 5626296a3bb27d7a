"""What the benchmark scripts share: logging, the server and its databases, the machine and
the commit measured, and writing one "## " section of docs/performance.md.

Named so that it clashes with nothing in migrator/ or monitor/ (the scripts run with
benchmarks/ first on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from migrator import baseline, embedded

ROOT = Path(__file__).resolve().parent.parent
PERFORMANCE_MD = ROOT / "docs" / "performance.md"


class BenchmarkError(Exception):
    """The benchmark cannot go on, or a result is wrong: the message says which."""


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between the closest ranks; None for no values."""
    return baseline.percentile(values, q / 100)


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def interrupted(signum: int, frame: FrameType | None) -> None:
    """A signal handler: SIGTERM and SIGINT end a benchmark like Ctrl-C, through its cleanup."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def server(dsn: str | None, state_dir: Path | None) -> Iterator[str]:
    """The URL of a maintenance database: `dsn`'s server, or an embedded one started here."""
    if dsn is not None:
        yield dsn
        return
    made = state_dir is None
    state = Path(tempfile.mkdtemp(prefix="uuidguard-bench-")) if state_dir is None else state_dir
    if made:
        state.chmod(0o755)  # as root the server runs as its own user, which must reach pgdata
    if embedded.status(state) is not None:
        raise BenchmarkError(f"a server is already running under {state}; give another --state-dir")
    log(f"starting embedded PostgreSQL under {state}")
    try:
        yield embedded.ensure_running(state).uri
    finally:
        embedded.stop(state)
        log("embedded PostgreSQL stopped")
        if made:
            shutil.rmtree(state, ignore_errors=True)


def reconfigure(admin_url: str, settings: dict[str, str]) -> None:
    """Set server parameters of the embedded server behind `admin_url` (ALTER SYSTEM) and
    restart it, for parameters such as shared_buffers that need a restart."""
    host = make_url(admin_url).query.get("host")
    if not isinstance(host, str):
        raise BenchmarkError("only the embedded server can be reconfigured")
    state = Path(host).parent  # the embedded server's socket directory is its data directory
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name, value in settings.items():
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
    embedded.stop(state)
    embedded.ensure_running(state)


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def admin(url: str, statement: sql.Composed) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


@contextlib.contextmanager
def database(admin_url: str, name: str, template: str | None = None) -> Iterator[str]:
    """A new database (empty, or a copy of `template`), dropped on the way out."""
    ident = sql.Identifier(name)
    admin(admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
    if template is None:
        admin(admin_url, sql.SQL("CREATE DATABASE {}").format(ident))
    else:
        # FILE_COPY copies the template's files after a checkpoint; WAL_LOG (the default)
        # would write every page of a 1M-chunk database through the WAL, several times slower
        admin(
            admin_url,
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                ident, sql.Identifier(template)
            ),
        )
    try:
        yield with_database(admin_url, name)
    finally:
        admin(admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def machine(admin_url: str, pg_settings: tuple[str, ...]) -> dict[str, str]:
    """CPUs, CPU model, memory, the server's version and the named settings, the commit."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        values: dict[str, str] = dict(
            conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
                (list(pg_settings),),
            ).fetchall()
        )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpus": str(cpus),
        "cpu": cpu,
        "memory": memory,
        "postgres": str(row[0]) if row else "unknown",
        "pg_settings": ", ".join(f"{k} {v}" for k, v in sorted(values.items())),
        "revision": revision(),
    }


def revision() -> str:
    """The commit measured, and whether migrator/ differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "migrator"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    return f"`{head}`" + (" with uncommitted changes in migrator/" if dirty else "")


def write_section(path: Path, title: str, section: str) -> None:
    """Replace the "## `title`" section of `path`, or add it; keep every other section."""
    text = path.read_text() if path.exists() else ""
    head: list[str] = []
    sections: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            head.append(line)
    if not any(line.startswith("# ") for line in head):
        head = ["# Performance", "", *head]
    block = section.rstrip("\n").splitlines()
    for i, sec in enumerate(sections):
        if sec[0][3:].strip() == title:
            sections[i] = block
            break
    else:
        sections.append(block)
    parts = ["\n".join(head).strip("\n")] + ["\n".join(s).strip("\n") for s in sections]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n")
