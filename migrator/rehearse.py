"""`uuidguard rehearse`: the whole migration and its rollback on a copy, verified and timed.

By default the mapped tables are copied (pg_dump | pg_restore, one snapshot) into a scratch
database on the same server, which is dropped afterwards; with a staging DSN that database is
used as it is. Nothing is written to the source database: production's count of documents to
re-key comes from its classification in a transaction that is rolled back.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from migrator import assess, backup, db, journal, runner, runs, verify
from migrator import settings as settings_mod
from migrator.errors import DatabaseUnavailableError, MappingError, UuidguardError
from migrator.pace import Pace
from migrator.settings import Settings

PHASES = ("count", "copy", "plan", "run", "verify", "rollback", "verify_rollback")

# which database a connection reaches: two servers started in the same microsecond with a
# database of the same oid and name are not a real risk
_IDENTITY_SQL = sa.text(
    "SELECT current_database(), pg_postmaster_start_time()::text,"
    " (SELECT oid FROM pg_database WHERE datname = current_database())::bigint"
)


class RehearsalError(UuidguardError):
    """The rehearsal cannot start: its target is unreachable or unsuitable."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}. Fix: {fix}")
        self.problem = problem


def documents_to_rekey(
    engine: Engine, settings: Settings, option: runs.Option, now: datetime
) -> int:
    """How many documents a run of `option` would re-key here now: the classification a run
    is created from, in one snapshot, in a transaction that is rolled back (its temporary
    tables go with it; nothing else is written)."""
    with db.connect(engine) as conn:
        rr = conn.execution_options(isolation_level="REPEATABLE READ")
        with db.translate_errors("counting the documents to re-key"):
            tx = rr.begin()
            try:
                db.set_local_timeouts(rr, settings.database.statement_timeout)
                rr.execute(
                    sa.select(sa.func.set_config("work_mem", settings.assess.work_mem, True))
                )
                cl = assess.classify(rr, settings)
                c = cl.docs.c
                chosen: sa.ColumnElement[bool] = c.rekey
                if option == "B":
                    recent, frequent, _, _ = assess.priority_conditions(rr, cl.docs, settings, now)
                    priority = sa.func.coalesce(sa.or_(recent, frequent, c.invisible), False)
                    chosen = sa.and_(c.rekey, priority)
                return int(rr.execute(sa.select(assess.count_if(chosen))).scalar_one())
            finally:
                tx.rollback()


def _identity(engine: Engine) -> tuple[Any, ...]:
    with db.connect(engine) as conn:
        return tuple(conn.execute(_IDENTITY_SQL).one())


def _staging(engine: Engine, settings: Settings, dsn: str) -> Engine:
    """An engine on the staging database, which must not be the source and must hold the
    mapped tables."""
    where = db.describe(dsn)
    try:
        staging = db.create_engine(settings, dsn=dsn)
    except DatabaseUnavailableError as exc:
        raise RehearsalError(
            f"cannot connect to the staging database at {where} ({backup.unreachable_reason(exc)})",
            "check that it is running and that --staging-dsn is right, or leave --staging-dsn "
            "out to rehearse on a scratch copy",
        ) from exc
    try:
        if _identity(staging) == _identity(engine):
            raise RehearsalError(
                f"--staging-dsn ({where}) is the database under migration itself",
                "give a staging copy, or leave --staging-dsn out to rehearse on a scratch copy",
            )
        with db.connect(staging) as conn, conn.begin():
            backup.mapped_table_names(conn, settings)
    except MappingError as exc:
        staging.dispose()
        raise RehearsalError(
            f"the staging database at {where} lacks {exc.obj} (config key {exc.key})",
            "copy the mapped tables there first, or leave --staging-dsn out to rehearse on a "
            "scratch copy",
        ) from exc
    except BaseException:
        staging.dispose()
        raise
    return staging


def rehearse(
    engine: Engine,
    settings: Settings,
    option: runs.Option,
    actor: str,
    now: datetime | None = None,
    staging_dsn: str | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Copy, plan a run, run it to the end, verify, roll it all back, verify again; timed.

    `ok` is False when any check failed: the run did not complete, a verification failed, or
    the tables after the rollback differ from before the run (or the copy from the source).
    """
    now = now or datetime.now(UTC)
    phases: dict[str, float] = {}
    checks: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        if on_phase is not None:
            on_phase(name)
        started = time.monotonic()
        try:
            yield
        finally:
            phases[name] = time.monotonic() - started

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    with contextlib.ExitStack() as stack:
        if staging_dsn is not None:
            # refused before anything else happens when unreachable or unsuitable
            target = _staging(engine, settings, staging_dsn)
            stack.callback(target.dispose)
            where = {"kind": "staging", "database": db.describe(staging_dsn)}
        with phase("count"):
            production = documents_to_rekey(engine, settings, option, now)
        if staging_dsn is None:
            target, url = _scratch_copy(stack, engine, settings, phase, check)
            where = {"kind": "scratch", "database": db.describe(url)}
        result = _rehearse_on(target, settings, option, actor, now, phase, check)
    rate = result["rekeyed"] / phases["run"] if phases["run"] and result["rekeyed"] else None
    projected = production / rate if rate else (0.0 if production == 0 else None)
    return {
        "target": where,
        "option": option,
        **result,
        "phases": {name: phases[name] for name in PHASES if name in phases},
        "documents_per_second": rate,
        "production": {"documents": production, "projected_seconds": projected},
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


def _scratch_copy(
    stack: contextlib.ExitStack,
    engine: Engine,
    settings: Settings,
    phase: Callable[[str], contextlib.AbstractContextManager[None]],
    check: Callable[..., None],
) -> tuple[Engine, str]:
    """A scratch database holding a copy of the mapped tables, taken in one snapshot; it is
    dropped when `stack` closes. Checks that the copy has the source's fingerprint."""
    tools = backup.find_tools(settings, backup.server_major(engine))
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="uuidguard-rehearse-")))
    url = stack.enter_context(
        backup.scratch_database(engine, "pass --staging-dsn to rehearse on a database of your own")
    )
    with phase("copy"):
        copied = backup.dump(engine, settings, tmp / "copy.dump", tools)
        target = db.create_engine(settings, dsn=url)
        stack.callback(target.dispose)
        backup.restore_file(tools, copied.path, target, settings, replace=False, keep_owners=False)
        copy_fp = backup.fingerprint_of(target, settings)
    diff = backup.differences(copied.fingerprint, copy_fp)
    check("the copy equals the source", not diff, "; ".join(diff))
    return target, url


def _rehearse_on(
    target: Engine,
    settings: Settings,
    option: runs.Option,
    actor: str,
    now: datetime,
    phase: Callable[[str], contextlib.AbstractContextManager[None]],
    check: Callable[..., None],
) -> dict[str, Any]:
    with db.connect(target) as conn, db.translate_errors("creating the journal"):
        journal.init(conn, settings.journal_schema)
    with (
        phase("plan"),
        db.connect(target) as conn,
        db.translate_errors("planning the run"),
        conn.begin(),
    ):
        db.set_local_timeouts(conn, settings.database.statement_timeout)
        run_id = runs.create(conn, settings, option, now, actor)
        planned = runs.resolve(conn, settings, run_id)
    before = planned["fingerprint_before"]
    ms = settings.migrate
    pace = Pace(
        target_seconds=ms.batch_time,
        min_size=ms.min_batch,
        max_size=ms.max_batch,
        size=ms.start_batch,
    )
    worker = f"rehearse@{socket.gethostname()}:{os.getpid()}"
    error = ""
    with phase("run"):
        try:
            # a rehearsal is timed as fast as the copy allows: production's windows, flag
            # file, pauses between batches and health thresholds are not the copy's
            free = settings.model_copy(
                update={
                    "windows": settings_mod.WindowSettings(),
                    "throttle": settings.throttle.model_copy(update={"flag_file": None}),
                    "migrate": settings.migrate.model_copy(update={"pause_between": timedelta(0)}),
                }
            )
            state = runner.run_batches(target, free, run_id, worker, pace, actor=actor)
        except UuidguardError as exc:
            state, error = "stopped", str(exc)
    check("the run completed", state == "completed", error or f"state {state}")
    with phase("verify"):
        after_run = verify.run(target, settings, run_id)
    check("verification after the run", after_run["ok"], _failed(after_run))
    with db.connect(target) as conn, conn.begin():
        status = runs.status(conn, settings, run_id)
    with phase("rollback"):
        restored = runner.rollback(
            target, settings, run_id, everything=True, force=True, actor=actor
        )
    done = status["documents"]["done"]
    check(
        "every re-keyed document back on its old id",
        restored == done,
        f"{restored:,} of {done:,}",
    )
    with phase("verify_rollback"):
        after_rollback = verify.run(target, settings, run_id)
        fingerprint = backup.fingerprint_of(target, settings)
    check("verification after the rollback", after_rollback["ok"], _failed(after_rollback))
    diff = backup.differences(before, fingerprint)
    check("the mapped tables exactly as before the run", not diff, "; ".join(diff))
    return {
        "run": run_id,
        "documents": int(planned["documents"]),
        "rekeyed": done,
        "batches": status["batches"],
    }


def _failed(report: dict[str, Any]) -> str:
    return "; ".join(f"{c['check']} ({c['failures']:,})" for c in report["checks"] if not c["ok"])
