"""`uuidguard report communication|completion` and `uuidguard uat`: parse, build, write."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.engine import Connection, Engine

from migrator import db, journal, runs
from migrator import settings as settings_mod
from migrator.errors import UsageError
from migrator.reports import communication, completion, html
from monitor import uat as uat_mod
from monitor.cli_common import ConfigOpt, DebugOpt, DsnOpt, Format, err, load, out, target_of
from monitor.cli_migrate import RunArg

report_app = typer.Typer(
    help="Documents for people: user communication drafts and the completion report.",
    no_args_is_help=True,
)


class ReportFormat(StrEnum):
    md = "md"
    html = "html"
    json = "json"


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise UsageError(
            f"cannot write {path}: {exc.strerror or exc}",
            "pass --out with a file in a directory you can write to",
        ) from exc


@report_app.command("communication")
def communication_cmd(
    run: RunArg = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for the drafts and recipients.csv.")
    ] = Path("communication"),
    templates: Annotated[
        Path | None,
        typer.Option(help="Directory of templates overriding the shipped ones, by file name."),
    ] = None,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Markdown drafts per audience (notice, searchable again, action needed, internal note)
    and recipients.csv for mail merge, from the run's journal and an assessment taken now."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    communication.environment(templates)  # a wrong --templates fails before any query
    with db.connect(engine) as conn, db.translate_errors("communication drafts"), conn.begin():
        db.set_local_timeouts(conn, s.database.statement_timeout)
        context = communication.build(conn, s, run, datetime.now(UTC))
    paths = communication.write(context, out_dir, templates)
    seg = context["segments"]
    out.print(
        f"run {context['run']['id']}: drafts for {seg['notice']['users']:,} users to notify,"
        f" {seg['restored']['users']:,} with documents found again,"
        f" {seg['action']['users']:,} who must act; {len(context['recipients']):,} recipient rows",
        markup=False,
    )
    for p in paths:
        out.print(f"  {p}", markup=False)


def completion_report(
    conn: Connection, s: settings_mod.Settings, run: int | None, with_uat: bool, sample: int
) -> dict[str, Any]:
    """The completion report, with user acceptance when the run re-keyed anything."""
    result = None
    if with_uat:
        r = runs.resolve(conn, s, run)
        st = runs.status(conn, s, int(r["id"]))
        if st["documents"]["done"]:
            result = uat_mod.run(conn, s, int(r["id"]), sample)
    return completion.build(conn, s, run, datetime.now(UTC), result)


def write_completion_html(
    s: settings_mod.Settings, engine: Engine, run_id: int, path: Path, sample: int = 5
) -> Path:
    """Build the completion report (with user acceptance) and write it as one HTML page."""
    with db.connect(engine) as conn, db.translate_errors("completion report"), conn.begin():
        db.set_local_timeouts(conn, s.database.statement_timeout)
        report = completion_report(conn, s, run_id, True, sample)
    _write(path, html.to_html(report, target_of(s)))
    return path


@report_app.command("completion")
def completion_cmd(
    run: RunArg = None,
    format: Annotated[ReportFormat, typer.Option("--format")] = ReportFormat.md,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write to this file instead of stdout.")
    ] = None,
    with_uat: Annotated[
        bool, typer.Option("--uat/--no-uat", help="Run user acceptance for the checklist.")
    ] = True,
    sample: Annotated[int, typer.Option(min=1, max=1000, help="UAT documents per class.")] = 5,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """What the run did (planned against done, timeline, batches, before/after), what is left
    for humans, and the B.3.2 checklist; Markdown, one self-contained HTML page, or JSON."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    if out_file is not None and not out_file.parent.is_dir():
        raise UsageError(
            f"--out {out_file}: directory {out_file.parent} does not exist",
            "create it, or pass --out with a file in an existing directory",
        )
    with db.connect(engine) as conn, db.translate_errors("completion report"), conn.begin():
        db.set_local_timeouts(conn, s.database.statement_timeout)
        report = completion_report(conn, s, run, with_uat, sample)
    if format is ReportFormat.json:
        text = json.dumps(report, indent=2, default=str) + "\n"
    elif format is ReportFormat.html:
        text = html.to_html(report, target_of(s))
    else:
        text = completion.to_markdown(report, target_of(s))
    if out_file is None:
        sys.stdout.write(text)
    else:
        _write(out_file, text)
        err.print(f"completion report of run {report['run']['id']} written to {out_file}")


def uat(
    run: RunArg = None,
    sample: Annotated[
        int, typer.Option(min=1, max=10_000, help="Re-keyed documents per class to retrieve.")
    ] = 10,
    format: Annotated[Format, typer.Option("--format")] = Format.md,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """User acceptance on the real retrieval paths: owners and grantees find re-keyed documents,
    nothing lost, new uploads follow the id rule. Exit 1 listing the failing ids."""
    s = load(config, dsn)
    engine = db.create_engine(s)
    with db.connect(engine) as conn, db.translate_errors("user acceptance"), conn.begin():
        db.set_local_timeouts(conn, s.database.statement_timeout)
        journal.require_current(conn, s.journal_schema)
        result = uat_mod.run(conn, s, run, sample)
    if format is Format.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(uat_mod.to_markdown(result))
    if not result["ok"]:
        err.print("uat failed: " + ", ".join(result["failing"]), markup=False)
        raise typer.Exit(1)
