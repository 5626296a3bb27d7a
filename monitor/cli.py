"""The `uuidguard` command line: parses, calls the command functions, prints. Nothing else."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from migrator import assess as assess_mod
from migrator import calibrate as calibrate_mod
from migrator import dataset, db, embedded
from migrator import settings as settings_mod
from migrator.errors import UsageError, UuidguardError
from migrator.reports import assessment as assessment_report
from monitor import (
    cli_dashboards,
    cli_demo,
    cli_migrate,
    cli_ops,
    cli_plan,
    cli_reports,
    cli_serve,
)
from monitor.cli_common import (
    ConfigOpt,
    DebugOpt,
    DsnOpt,
    Format,
    aware,
    err,
    load,
    out,
    print_manifest,
    seed_dataset,
    target_of,
)

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
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(cli_migrate.migrate_app, name="migrate")
app.add_typer(cli_reports.report_app, name="report")
app.command()(cli_reports.uat)
app.add_typer(cli_dashboards.dashboards_app, name="dashboards")
app.command()(cli_migrate.init)
app.command()(cli_plan.plan)
app.command("preflight")(cli_plan.preflight_cmd)
app.command()(cli_ops.backup)
app.command()(cli_ops.restore)
app.command()(cli_ops.rehearse)
app.command()(cli_serve.serve)
app.command()(cli_serve.status)
app.command("metrics-doc")(cli_serve.metrics_doc)
app.command()(cli_demo.demo)

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
        as_of=aware(as_of) if as_of else datetime.now(UTC).replace(microsecond=0),
        dim=dim,
        random_consistent=random_consistent,
        random_mismatched=random_mismatched,
        random_unprocessed=random_unprocessed,
        conflict=conflict,
        other=other,
        unmatched_orphans=unmatched_orphans,
    )
    result = seed_dataset(s, spec, fk.value, replace)
    if manifest is not None:
        manifest.write_text(json.dumps(result.manifest, indent=2) + "\n")
    print_manifest(result)


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
    result = calibrate_mod.run(engine, s, aware(since) if since else None, examples)
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


# ------------------------------------------------------------------------------------ demo


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
