"""The `uuidguard` command line: parses, calls the command functions, prints. Nothing else."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from migrator import assess as assess_mod
from migrator import calibrate as calibrate_mod
from migrator import dataset, db, embedded, journal, runner, runs, verify
from migrator import seed as seed_mod
from migrator import settings as settings_mod
from migrator.errors import UsageError, UuidguardError
from migrator.idrule import IdRule
from migrator.pace import Pace
from migrator.reports import assessment as assessment_report
from monitor.workers import run_workers

app = typer.Typer(
    name="uuidguard",
    help="Assess, re-key and watch UUID damage in a multi-tenant RAG database on PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
db_app = typer.Typer(
    help="The embedded PostgreSQL server (used when no DSN is configured).", no_args_is_help=True
)
migrate_app = typer.Typer(
    help="Re-key documents online: plan, run, pause, roll back.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(migrate_app, name="migrate")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML settings file (default: $UUIDGUARD_CONFIG or ./uuidguard.toml).",
    ),
]
DsnOpt = Annotated[
    str | None,
    typer.Option(
        "--dsn", help="PostgreSQL URL; without it the embedded server is used.", show_default=False
    ),
]
DebugOpt = Annotated[
    bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
]


class Format(StrEnum):
    md = "md"
    json = "json"


def load(config: Path | None, dsn: str | None) -> settings_mod.Settings:
    """Settings from the file and environment, with --dsn on top (sources merge key by key)."""
    if dsn is not None:
        return settings_mod.load_settings(config, database={"dsn": dsn})
    return settings_mod.load_settings(config)


def target_of(settings: settings_mod.Settings) -> str:
    if settings.database.dsn is None:
        return f"the embedded PostgreSQL in {settings.database.state_dir}"
    return db.describe(settings.database.dsn.get_secret_value())


# ---------------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    format: Annotated[str, typer.Option("--format", help="toml or json")] = "toml",
    debug: DebugOpt = False,
) -> None:
    """Print the resolved settings (file, environment and flags) with secrets masked."""
    s = load(config, dsn)
    data = settings_mod.masked(s)
    if format == "json":
        out.print_json(json.dumps(data, default=str))
        return
    if format != "toml":
        raise UsageError(f"unknown format {format!r}", "use --format toml or --format json")
    out.print(_toml(data), markup=False)


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict) and not _is_table_list(v)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    arrays = [(k, v) for k, v in data.items() if _is_table_list(v)]
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars if v is not None]
    lines += [f"# {k} is not set" for k, v in scalars if v is None]
    for k, v in tables:
        name = f"{prefix}{k}"
        lines += ["", f"[{name}]", _toml(v, name + ".")]
    for k, items in arrays:
        for item in items:
            lines += ["", f"[[{prefix}{k}]]", _toml(item, f"{prefix}{k}.")]
    return "\n".join(line for line in lines if line is not None).strip("\n")


def _is_table_list(v: object) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(i, dict) for i in v)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    return json.dumps(str(v))


# -------------------------------------------------------------------------------------- db


def _embedded_settings(config: Path | None, dsn: str | None) -> settings_mod.Settings:
    s = load(config, dsn)
    if s.database.dsn is not None:
        raise UsageError(
            f"database.dsn is set ({target_of(s)}), so the embedded server is not in use",
            "unset database.dsn (and UUIDGUARD_DATABASE__DSN) to work with the embedded server",
        )
    return s


@db_app.command("start")
def db_start(config: ConfigOpt = None, dsn: DsnOpt = None, debug: DebugOpt = False) -> None:
    """Start the embedded PostgreSQL (or find it running) and print its URL."""
    s = _embedded_settings(config, dsn)
    server = embedded.ensure_running(s.database.state_dir)
    out.print(f"embedded PostgreSQL running (pid {server.pid}): {server.uri}", markup=False)


@db_app.command("status")
def db_status(config: ConfigOpt = None, dsn: DsnOpt = None, debug: DebugOpt = False) -> None:
    """Say whether the embedded PostgreSQL is running. Exit 1 if it is not."""
    s = _embedded_settings(config, dsn)
    server = embedded.status(s.database.state_dir)
    if server is None:
        out.print(f"embedded PostgreSQL in {s.database.state_dir} is not running")
        raise typer.Exit(1)
    out.print(f"embedded PostgreSQL running (pid {server.pid}): {server.uri}", markup=False)


@db_app.command("stop")
def db_stop(config: ConfigOpt = None, dsn: DsnOpt = None, debug: DebugOpt = False) -> None:
    """Stop the embedded PostgreSQL cleanly."""
    s = _embedded_settings(config, dsn)
    if embedded.stop(s.database.state_dir):
        out.print("embedded PostgreSQL stopped")
    else:
        out.print(f"embedded PostgreSQL in {s.database.state_dir} was not running")


# ------------------------------------------------------------------------------------ seed


class FkChoice(StrEnum):
    none = "none"
    cascade = "cascade"
    deferrable = "deferrable"
    strict = "strict"


def _fraction(name: str) -> Any:
    return typer.Option(min=0.0, max=1.0, help=f"Share of documents in class {name}.")


@app.command()
def seed(
    documents: Annotated[int, typer.Option(min=0, help="Documents to create.")] = 10_000,
    users: Annotated[
        int | None, typer.Option(min=1, help="Users (default: documents / 20).")
    ] = None,
    chunks_per_document: Annotated[
        float, typer.Option(min=1.0, help="Mean chunks per processed document (log-normal spread).")
    ] = 10.0,
    seed_: Annotated[
        int, typer.Option("--seed", help="Random seed: same seed and --as-of, same data.")
    ] = 42,
    as_of: Annotated[
        datetime | None, typer.Option(help="The dataset's 'now' (default: the current time).")
    ] = None,
    fk: Annotated[
        FkChoice, typer.Option(help="How chunks, embeddings and shares reference documents.")
    ] = FkChoice.none,
    dim: Annotated[int, typer.Option(min=4, max=2000, help="Embedding dimensions.")] = 64,
    random_consistent: Annotated[float, _fraction("random_consistent")] = 0.12,
    random_mismatched: Annotated[float, _fraction("random_mismatched")] = 0.15,
    random_unprocessed: Annotated[float, _fraction("random_unprocessed")] = 0.05,
    conflict: Annotated[float, _fraction("conflict (documents in conflict groups)")] = 0.01,
    other: Annotated[float, _fraction("other")] = 0.005,
    unmatched_orphans: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Deleted documents whose chunks remain, per document."),
    ] = 0.005,
    replace: Annotated[bool, typer.Option(help="Drop existing reference tables first.")] = False,
    manifest: Annotated[
        Path | None, typer.Option(help="Write the counts by class as JSON here.")
    ] = None,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Create the reference schema and load a realistic damaged dataset with known counts."""
    s = load(config, dsn)
    shares = random_consistent + random_mismatched + random_unprocessed + conflict + other
    if shares > 1:
        raise UsageError(
            f"the class shares add up to {shares:.2f}, more than 1",
            "lower --random-consistent, --random-mismatched, --random-unprocessed, --conflict or --other",
        )
    spec = dataset.DatasetSpec(
        documents=documents,
        users=users,
        chunks_per_document=chunks_per_document,
        seed=seed_,
        as_of=_aware(as_of) if as_of else datetime.now(UTC).replace(microsecond=0),
        dim=dim,
        random_consistent=random_consistent,
        random_mismatched=random_mismatched,
        random_unprocessed=random_unprocessed,
        conflict=conflict,
        other=other,
        unmatched_orphans=unmatched_orphans,
    )
    result = _seed(s, spec, fk.value, replace)
    if manifest is not None:
        manifest.write_text(json.dumps(result.manifest, indent=2) + "\n")
    _print_manifest(result)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _seed(
    s: settings_mod.Settings, spec: dataset.DatasetSpec, fk: str, replace: bool
) -> seed_mod.SeedResult:
    rule = IdRule(s.id_rule.namespace, s.id_rule.template)
    data = dataset.generate(spec, rule)
    engine = db.create_engine(s)
    total = data.manifest["chunks"]["total"]
    err.print(
        f"seeding {data.manifest['documents']['total']:,} documents and {total:,} chunks into "
        f"{target_of(s)} …"
    )
    with db.connect(engine) as conn, db.translate_errors("seeding"):
        return seed_mod.seed(conn, data, s.mapping.schema_, fk, replace)  # type: ignore[arg-type]


def _print_manifest(result: seed_mod.SeedResult) -> None:
    m = result.manifest
    out.print(
        f"seeded in {result.seconds:.1f} s (foreign keys: {m['fk']}, embeddings as {m['vector_type']})"
    )
    for section in ("documents", "chunks"):
        out.print(f"{section}: {m[section]['total']:,}")
        for cls, n in m[section]["by_class"].items():
            out.print(f"  {cls:<20} {n:>10,}")
    e = m["embeddings"]
    out.print(
        f"embeddings: {e['total']:,} ({e['document_missing']:,} without their document, "
        f"{e['chunk_missing']:,} without their chunk)"
    )
    out.print(
        f"shares: {m['shares']:,}   users: {m['users']['total']:,}   conflict groups: {m['conflicts']['groups']:,}"
    )
    if m["fk"] != "none":
        out.print(
            "foreign keys to documents were added NOT VALID: enforced for new rows, not checked "
            "for the orphans already loaded",
            style="dim",
        )


# ------------------------------------------------------------------------------- calibrate


@app.command()
def calibrate(
    since: Annotated[
        datetime | None, typer.Option(help="Only documents created at or after this time.")
    ] = None,
    examples: Annotated[int, typer.Option(min=0, help="Mismatches to show.")] = 10,
    format: Annotated[Format, typer.Option("--format")] = Format.md,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Check that the configured id rule reproduces the deterministic ids. Exit 1 below 100%."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    result = calibrate_mod.run(engine, s, _aware(since) if since else None, examples)
    if format is Format.json:
        out.print_json(json.dumps(result))
    else:
        _print_calibration(result)
    if not result["calibrated"]:
        raise typer.Exit(1)


def _print_calibration(r: dict[str, Any]) -> None:
    rule = f'uuid5({r["id_rule"]["namespace"]}, "{r["id_rule"]["template"]}")'
    if r["candidates"] == 0:
        out.print(
            f"no version-5 ids to check{' since ' + r['since'] if r['since'] else ''}: the rule "
            f"{rule} is unproven. Calibrate on a database where the fixed uploader has run."
        )
        return
    share = 100 * r["share"]
    out.print(
        f"the rule {rule} reproduces {r['reproduced']:,} of {r['candidates']:,} version-5 ids "
        f"({share:.2f}%)",
        markup=False,
    )
    if r["calibrated"]:
        out.print("calibrated: migration may use this rule")
        return
    out.print(
        "NOT calibrated: fix id_rule.namespace or id_rule.template before migrating. Examples:"
    )
    for miss in r["mismatches"]:
        out.print(
            f"  id {miss['id']}  user {miss['user_id']}  sha256 {miss['file_sha256'][:16]}…  "
            f"rule gives {miss['rule_id']}",
            markup=False,
        )


# ---------------------------------------------------------------------------------- assess


@app.command()
def assess(
    format: Annotated[Format, typer.Option("--format", help="md (default) or json.")] = Format.md,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Write assessment.md, assessment.json and users.csv here."),
    ] = None,
    users_csv: Annotated[
        Path | None, typer.Option("--users-csv", help="Write per-user impact as CSV here.")
    ] = None,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Assess the UUID damage: classes, chunks, users, storage, failure patterns, priorities."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    report = assess_mod.run(engine, s)
    target = target_of(s)
    if out_dir is not None:
        for path in assessment_report.write_all(report, out_dir, target):
            err.print(f"wrote {path}", markup=False)
    if users_csv is not None:
        n = assessment_report.write_users_csv(report, users_csv)
        err.print(f"wrote {users_csv} ({n:,} users)", markup=False)
    if format is Format.json:
        sys.stdout.write(assessment_report.to_json(report))
    else:
        sys.stdout.write(assessment_report.to_markdown(report, target) + "\n")


# ------------------------------------------------------------------------------- migrate

RunArg = Annotated[
    int | None,
    typer.Argument(help="Run id (default: the active run, else the latest).", show_default=False),
]


@app.command()
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
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run batches in the foreground until done, paused, or --max-batches; running again resumes."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.connect(engine) as conn, conn.begin():
        run_id = int(runs.resolve(conn, s, run)["id"])
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
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.connect(engine) as conn, conn.begin():
        run_id = int(runs.resolve(conn, s, run)["id"])
    with db.translate_errors("rollback"):
        restored = runner.rollback(
            engine,
            s,
            run_id,
            last=last,
            since=_aware(since) if since else None,
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
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.connect(engine) as conn, conn.begin():
        run_id = int(runs.resolve(conn, s, run)["id"])
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


# ------------------------------------------------------------------------------------ demo


@app.command()
def demo(
    documents: Annotated[
        int, typer.Option(min=1, help="Documents to seed when the database is empty.")
    ] = 10_000,
    reseed: Annotated[bool, typer.Option(help="Seed afresh even if the demo data exists.")] = False,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Start the embedded PostgreSQL, seed a damaged RAG database, and assess it."""
    s = load(config, dsn)
    started = time.monotonic()
    err.print(f"[bold]uuidguard demo[/] on {target_of(s)}")
    engine = db.create_engine(s)
    if reseed or not _has_documents(engine, s):
        spec = dataset.DatasetSpec(
            documents=documents, as_of=datetime.now(UTC).replace(microsecond=0)
        )
        _print_manifest(_seed(s, spec, "none", replace=True))
    else:
        err.print("reusing the seeded demo data (pass --reseed to start afresh)")
    report = assess_mod.run(engine, s)
    text = assessment_report.to_markdown(report, target_of(s))
    if out.is_terminal:
        out.print(Markdown(text))
    else:
        sys.stdout.write(text + "\n")
    err.print(
        f"demo ready in {time.monotonic() - started:.1f} s. Next: `uuidguard assess --format json`, "
        f"`uuidguard assess --out report/`, `uuidguard calibrate`; `uuidguard db stop` stops the server.",
        markup=False,
    )


def _has_documents(engine: Any, s: settings_mod.Settings) -> bool:
    import sqlalchemy as sa

    with db.connect(engine) as conn:
        name = f"{conn.dialect.identifier_preparer.quote_schema(s.mapping.schema_)}." + (
            conn.dialect.identifier_preparer.quote(s.mapping.documents.table)
        )
        return bool(
            conn.execute(sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar_one()
        )


# ------------------------------------------------------------------------------------ main


def main() -> None:
    """Entry point: one-line errors with a non-zero exit code, tracebacks only with --debug."""
    debug = "--debug" in sys.argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr)
    try:
        app()
    except UuidguardError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        err.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}. This is a bug in uuidguard: "
            "run again with --debug and report the traceback",
            highlight=False,
        )
        sys.exit(70)
