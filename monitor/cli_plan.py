"""`uuidguard plan` and `uuidguard preflight`: what to do, and whether it is safe to start."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from migrator import db, journal, preflight
from migrator import plan as plan_mod
from migrator.reports import plan as plan_report
from monitor.cli_common import ConfigOpt, DebugOpt, DsnOpt, Format, load, out, target_of

SYMBOL = {"pass": "[green]PASS[/]", "warn": "[yellow]WARN[/]", "fail": "[red]FAIL[/]"}


def plan(
    format: Annotated[Format, typer.Option("--format")] = Format.md,
    rehearsal_seconds: Annotated[
        float,
        typer.Option(
            min=0.1, max=600, help="How long batches are rehearsed (then rolled back) to time them."
        ),
    ] = plan_mod.REHEARSAL_SECONDS,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Options A, B and C side by side, timed by a rolled-back rehearsal, with a recommendation."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.translate_errors("plan"):
        report = plan_mod.plan(engine, s, datetime.now(UTC), rehearsal_seconds)
    if format is Format.json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(plan_report.to_markdown(report, target_of(s)))


def preflight_cmd(
    format: Annotated[Format, typer.Option("--format")] = Format.md,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """The checklist before a run: backup, calibration, journal, privileges, disk, monitoring.
    Exit 1 when a check fails; `migrate run` then refuses to start unless --force."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.translate_errors("preflight"):
        report = preflight.run(engine, s, journal.default_actor())
    if format is Format.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        for c in report["checks"]:
            out.print(f"{SYMBOL[c['status']]}  {c['name']}: ", end="")
            out.print(c["detail"], markup=False)
        verdict = "[green]ready[/]" if report["ok"] else "[red]not ready[/]"
        out.print(f"\npreflight: {verdict}")
    if not report["ok"]:
        raise typer.Exit(1)
