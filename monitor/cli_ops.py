"""`uuidguard backup`, `restore` and `rehearse`: parse, call the engine, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from migrator import backup as backup_mod
from migrator import db, journal
from migrator import rehearse as rehearse_mod
from migrator.errors import UsageError
from migrator.reports.format import duration, num, size
from monitor.cli_common import ConfigOpt, DebugOpt, DsnOpt, Format, err, load, out, target_of


def backup(
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The dump file to write (default: a new file in backup.dir; a directory: a new"
            " file in it).",
            show_default=False,
        ),
    ] = None,
    format: Annotated[Format, typer.Option("--format")] = Format.md,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """pg_dump the mapped tables, verify the dump by a test restore, record it for preflight."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    err.print(f"dumping the mapped tables of {target_of(s)} …", markup=False)
    result = backup_mod.create(engine, s, out_file, journal.default_actor())
    if format is Format.json:
        out.print_json(json.dumps(result, default=str))
        return
    out.print(
        f"backup {result['backup']}: {result['path']} ({size(result['bytes'])}, "
        f"{len(result['tables'])} tables, pg_dump {result['pg_tools']['major']}) in "
        f"{result['seconds']:.1f} s",
        markup=False,
    )
    out.print("verified: a test restore into a scratch database gives the same fingerprint")
    for table, fp in result["fingerprint"].items():
        out.print(f"  {table:<32} {fp['rows']:>12,} rows", markup=False)


def restore(
    backup_id: Annotated[
        int | None,
        typer.Option(
            "--backup", help="The journal's backup id (default: the latest verified backup)."
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="A dump file written by `uuidguard backup`.", show_default=False
        ),
    ] = None,
    into: Annotated[
        str | None,
        typer.Option(
            "--into",
            help="Restore into this database (a PostgreSQL URL) instead of the configured one;"
            " owners and grants are left out there.",
            show_default=False,
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Replace the mapped tables without asking.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Restore even while a migration run is active.")
    ] = False,
    format: Annotated[Format, typer.Option("--format")] = Format.md,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Restore the mapped tables from a backup, replacing them (one transaction), and compare
    the fingerprint with the one recorded at backup. Exit 1 when they differ."""
    if backup_id is not None and file is not None:
        raise UsageError("--backup and --file name two backups", "give one of them")
    s = load(config, dsn)
    if into is None and not yes:
        question = (
            f"replace the mapped tables of {target_of(s)} with the backup? Writes since the "
            "backup are lost"
        )
        if not sys.stdin.isatty():
            raise UsageError(
                "restore replaces the mapped tables of the configured database",
                "pass --yes to confirm (or --into DSN to restore elsewhere)",
            )
        if not typer.confirm(question):
            raise typer.Exit(1)
    engine = db.create_engine(s)
    result = backup_mod.restore(engine, s, journal.default_actor(), backup_id, file, into, force)
    if format is Format.json:
        out.print_json(json.dumps(result, default=str))
    else:
        _print_restore(result)
    if result["matches"] is False:
        raise typer.Exit(1)


def _print_restore(r: dict[str, Any]) -> None:
    what = f"backup {r['backup']}" if r["backup"] is not None else "the dump"
    out.print(
        f"restored {what} ({r['path']}) into {r['into']} in {r['seconds']:.1f} s", markup=False
    )
    expected = r["expected"] or {}
    table = Table("table", "rows at backup", "rows now", "content")
    for name, fp in r["fingerprint"].items():
        e = expected.get(name)
        same = "–" if e is None else ("same" if e == fp else "DIFFERENT")
        table.add_row(Text(name), num(e["rows"]) if e else "–", num(fp["rows"]), same)
    out.print(table)
    if r["matches"] is None:
        out.print("no fingerprint recorded for this file: nothing to compare with")
    elif r["matches"]:
        out.print("fingerprint matches the backup's")
    else:
        out.print("fingerprint DIFFERS from the backup's: " + "; ".join(r["differences"]))


def rehearse(
    option: Annotated[
        str, typer.Option("--option", help="A: every random document; B: priority documents only.")
    ] = "A",
    staging_dsn: Annotated[
        str | None,
        typer.Option(
            "--staging-dsn",
            help="Rehearse on this database (it must hold the mapped tables) instead of a"
            " scratch copy.",
            show_default=False,
        ),
    ] = None,
    format: Annotated[Format, typer.Option("--format")] = Format.md,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """The whole migration and its rollback on a copy, verified and timed, with the projected
    production duration. Exit 1 when a verification failed."""
    if option not in ("A", "B"):
        raise UsageError(f"unknown option {option!r}", "use --option A or --option B")
    s = load(config, dsn)
    engine = db.create_engine(s)

    def on_phase(name: str) -> None:
        err.print(f"rehearsal: {name.replace('_', ' ')} …", markup=False)

    result = rehearse_mod.rehearse(
        engine,
        s,
        option,  # type: ignore[arg-type]
        journal.default_actor(),
        staging_dsn=staging_dsn,
        on_phase=on_phase,
    )
    if format is Format.json:
        out.print_json(json.dumps(result, default=str))
    else:
        _print_rehearsal(result)
    if not result["ok"]:
        raise typer.Exit(1)


def _print_rehearsal(r: dict[str, Any]) -> None:
    where = r["target"]
    kind = "a scratch copy" if where["kind"] == "scratch" else "the staging database"
    out.print(
        f"rehearsal of option {r['option']} on {kind} ({where['database']}): "
        f"{r['rekeyed']:,} of {r['documents']:,} documents re-keyed and rolled back",
        markup=False,
    )
    phases = Table("phase", "seconds")
    for name, seconds in r["phases"].items():
        phases.add_row(name.replace("_", " "), f"{seconds:,.2f}")
    out.print(phases)
    rate = r["documents_per_second"]
    b = r["batches"]
    out.print(
        f"{b['committed']:,} batches, p50 {b['p50_seconds'] or 0:.3f} s, p99 "
        f"{b['p99_seconds'] or 0:.3f} s; "
        + (f"{rate:,.0f} documents/s" if rate else "no rate measured (nothing to re-key)")
    )
    p = r["production"]
    out.print(
        f"production: {p['documents']:,} documents to re-key; projected duration "
        f"{_seconds(p['projected_seconds'])}"
    )
    checks = Table("check", "result", "detail")
    for c in r["checks"]:
        checks.add_row(Text(c["check"]), "ok" if c["ok"] else "FAILED", Text(c["detail"]))
    out.print(checks)
    out.print("rehearsal passed" if r["ok"] else "rehearsal FAILED")


def _seconds(value: float | None) -> str:
    return f"{value:,.1f} s" if value is not None and value < 120 else duration(value)
