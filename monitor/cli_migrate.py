"""`uuidguard init` and `uuidguard migrate ...`: parse, call the engine, print."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.engine import Engine

from migrator import db, journal, preflight, runner, runs, verify
from migrator import settings as settings_mod
from migrator.errors import UsageError
from migrator.pace import Pace
from monitor.cli_common import ConfigOpt, DebugOpt, DsnOpt, Format, aware, err, load, out
from monitor.workers import run_workers


def _resolve(
    config: Path | None, dsn: str | None, run: int | None
) -> tuple[settings_mod.Settings, Engine, int]:
    """Settings, an engine, and the run a command names (or the active one, or the latest)."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.connect(engine) as conn, conn.begin():
        return s, engine, int(runs.resolve(conn, s, run)["id"])


migrate_app = typer.Typer(
    help="Re-key documents online: plan, run, pause, roll back.", no_args_is_help=True
)


RunArg = Annotated[
    int | None,
    typer.Argument(help="Run id (default: the active run, else the latest).", show_default=False),
]


def init(config: ConfigOpt = None, dsn: DsnOpt = None, debug: DebugOpt = False) -> None:
    """Create or upgrade the journal schema in the target database (idempotent)."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.connect(engine) as conn, db.translate_errors("journal init"):
        before, after = journal.init(conn, s.journal_schema)
    what = (
        "created"
        if before is None
        else ("already current" if before == after else f"upgraded from {before}")
    )
    out.print(f"journal schema {s.journal_schema} at revision {after} ({what})", markup=False)


@migrate_app.command("create")
def migrate_create(
    option: Annotated[
        str, typer.Option("--option", help="A: every random document; B: priority documents only.")
    ] = "A",
    format: Annotated[Format, typer.Option("--format")] = Format.md,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Plan a run: fix the documents it will re-key. Prints the run id."""
    if option not in ("A", "B"):
        raise UsageError(f"unknown option {option!r}", "use --option A or --option B")
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.connect(engine) as conn, db.translate_errors("planning the run"), conn.begin():
        db.set_local_timeouts(conn, s.database.statement_timeout)
        run_id = runs.create(conn, s, option, datetime.now(UTC), journal.default_actor())  # type: ignore[arg-type]
        st = runs.status(conn, s, run_id)
    if format is Format.json:
        out.print_json(json.dumps({"run": run_id, "documents": st["documents"]["total"]}))
    else:
        out.print(
            f"run {run_id} planned: option {option}, {st['documents']['total']:,} documents to re-key"
        )


@migrate_app.command("run")
def migrate_run(
    run: RunArg = None,
    max_batches: Annotated[
        int | None, typer.Option(min=1, help="Stop after K batches (start small).")
    ] = None,
    batch_time: Annotated[
        float | None,
        typer.Option(min=0.01, help="Target seconds per batch (default migrate.batch_time)."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Starting batch size, in documents.")
    ] = None,
    min_batch: Annotated[int | None, typer.Option(min=1)] = None,
    max_batch: Annotated[int | None, typer.Option(min=1)] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes claiming batches together.")
    ] = 1,
    force: Annotated[
        bool, typer.Option("--force", help="Run even though the latest preflight failed.")
    ] = False,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run batches in the foreground until done, paused, or --max-batches; running again resumes."""
    s, engine, run_id = _resolve(config, dsn, run)
    with db.connect(engine) as conn, conn.begin():
        note = preflight.require_passed(conn, s, force)
    if note:
        err.print(f"note: {note}", markup=False)
    ms = s.migrate
    pace = Pace(
        target_seconds=batch_time or ms.batch_time,
        min_size=min_batch or ms.min_batch,
        max_size=max_batch or ms.max_batch,
        size=batch_size or ms.start_batch,
    )
    worker = f"{socket.gethostname()}:{os.getpid()}"
    moved = 0
    with db.connect(engine) as conn, conn.begin():
        st = runs.status(conn, s, run_id)
    total = st["documents"]["total"]
    progress = Progress(
        TextColumn(f"run {run_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    )
    task = progress.add_task(
        "re-keying", total=total, completed=total - st["documents"]["pending"], rate=""
    )

    def report(result: runner.BatchResult) -> None:
        nonlocal moved
        moved += result.documents
        if progress.disable:
            err.print(
                f"batch {result.batch_id}: {result.documents} documents in {result.seconds:.3f} s "
                f"(next {pace.size}); {moved:,} this session",
                markup=False,
            )
            return
        with db.connect(engine) as c, c.begin():
            now = runs.status(c, s, run_id)
        rate = now["documents_per_second"]
        progress.update(
            task,
            completed=total - now["documents"]["pending"],
            rate=f"{rate:,.0f} docs/s, batch {pace.size}" if rate else "",
        )

    with progress, db.translate_errors("migration run"):
        if workers > 1:
            state = run_workers(s, config, dsn, run_id, pace, workers, max_batches, report)
        else:
            state = runner.run_batches(engine, s, run_id, worker, pace, max_batches, report)
    out.print(f"run {run_id} is {state}; {moved:,} documents re-keyed in this session")


@migrate_app.command("pause")
def migrate_pause(
    run: RunArg = None, config: ConfigOpt = None, dsn: DsnOpt = None, debug: DebugOpt = False
) -> None:
    """Pause a run: it stops before its next batch, on every worker."""
    _transition(run, config, dsn, "paused", "pause", ("planned", "running"))


@migrate_app.command("resume")
def migrate_resume(
    run: RunArg = None, config: ConfigOpt = None, dsn: DsnOpt = None, debug: DebugOpt = False
) -> None:
    """Resume a paused run (then `uuidguard migrate run` continues it)."""
    _transition(run, config, dsn, "running", "resume", ("paused",))


def _transition(
    run: int | None,
    config: Path | None,
    dsn: str | None,
    state: str,
    action: str,
    allowed: tuple[str, ...],
) -> None:
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.connect(engine) as conn, conn.begin():
        current = runs.resolve(conn, s, run)
        if not runs.set_state(
            conn, s, current["id"], state, journal.default_actor(), action, allowed_from=allowed
        ):
            raise runs.RunError(
                current["id"],
                f"is {current['state']}, cannot {action}",
                "see `uuidguard migrate status`",
            )
    out.print(f"run {current['id']} is {state}")


@migrate_app.command("rollback")
def migrate_rollback(
    run: RunArg = None,
    last: Annotated[int | None, typer.Option("--last", min=1, help="The last K batches.")] = None,
    since: Annotated[
        datetime | None, typer.Option("--since", help="Batches committed since this time.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="The whole run.")] = False,
    force: Annotated[bool, typer.Option(help="Needed to roll back a completed run.")] = False,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Roll back batches exactly, newest first: --last K, --since TIME, or --all."""
    if sum(x is not None and x is not False for x in (last, since, all_ or None)) != 1:
        raise UsageError(
            "say what to roll back", "give exactly one of --last K, --since TIME, --all"
        )
    s, engine, run_id = _resolve(config, dsn, run)
    with db.translate_errors("rollback"):
        restored = runner.rollback(
            engine,
            s,
            run_id,
            last=last,
            since=aware(since) if since else None,
            everything=all_,
            force=force,
        )
    out.print(f"run {run_id}: {restored:,} documents back on their old ids")


@migrate_app.command("status")
def migrate_status(
    run: RunArg = None,
    format: Annotated[Format, typer.Option("--format")] = Format.md,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """A run's state, progress, batch timings and ETA."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.connect(engine) as conn, conn.begin():
        st = runs.status(conn, s, run)
    if format is Format.json:
        out.print_json(json.dumps(st, default=str))
        return
    d, b = st["documents"], st["batches"]
    out.print(
        f"run {st['run']} (option {st['option']}): {st['state']}"
        + (f" — {st['reason']}" if st["reason"] else ""),
        markup=False,
    )
    out.print(
        f"documents: {d['done']:,} done, {d['pending']:,} pending, {d['skipped']:,} skipped, "
        f"{d['rolled_back']:,} rolled back of {d['total']:,} ({st['percent']:.1f}%)"
    )
    if b["committed"] or b["rolled_back"]:
        out.print(
            f"batches: {b['committed']:,} committed, {b['rolled_back']:,} rolled back; "
            f"p50 {b['p50_seconds'] or 0:.3f} s, p99 {b['p99_seconds'] or 0:.3f} s, max {b['max_seconds'] or 0:.3f} s"
        )
    if st["eta_seconds"] is not None and d["pending"]:
        out.print(
            f"rate {st['documents_per_second']:,.0f} documents/s; ETA {st['eta_seconds']:,.0f} s"
        )
    if st.get("waiting"):
        w = st["waiting"]
        since = datetime.fromisoformat(w["since"]).strftime("%Y-%m-%d %H:%M:%S UTC")
        out.print(f"waiting since {since} ({w['reason']}): {w['detail']}", markup=False)
    if st.get("waits"):
        waited = sorted(st["waits"].items(), key=lambda kv: -kv[1])
        out.print(
            "throttle waits: " + ", ".join(f"{r} {s:,.1f} s" for r, s in waited), markup=False
        )


@migrate_app.command("set")
def migrate_set(
    run: RunArg = None,
    batch_time: Annotated[
        float | None, typer.Option(min=0.01, help="New target seconds per batch.")
    ] = None,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Change a running run: every worker applies it before its next batch."""
    if batch_time is None:
        raise UsageError("nothing to set", "give --batch-time SECONDS")
    s, engine, run_id = _resolve(config, dsn, run)
    with db.connect(engine) as conn, conn.begin():
        options = runs.set_options(conn, s, run_id, journal.default_actor(), batch_time=batch_time)
    out.print(f"run {run_id}: {', '.join(f'{k} = {v}' for k, v in options.items())}")


@migrate_app.command("verify")
def migrate_verify(
    run: RunArg = None,
    format: Annotated[Format, typer.Option("--format")] = Format.md,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Validate a run: no old id left anywhere, rows and content unchanged, chunks reachable. Exit 1 on failure."""
    s = load(config, dsn)
    report = verify.run(db.create_engine(s), s, run)
    if format is Format.json:
        out.print_json(json.dumps(report, default=str))
    else:
        out.print(
            f"run {report['run']} ({report['state']}): {'all checks pass' if report['ok'] else 'FAILED'}"
        )
        for c in report["checks"]:
            mark = "ok  " if c["ok"] else "FAIL"
            extra = f" — {c['detail']}" if c["detail"] else ""
            failures = "" if c["ok"] else f" ({c['failures']:,})"
            out.print(f"  {mark} {c['check']}{failures}{extra}", markup=False)
    if not report["ok"]:
        raise typer.Exit(1)
