"""`uuidguard demo`: a damaged RAG database on the embedded server, and the daemon healing it.

It seeds (or reuses) the demo data, shows what is wrong and what the plan recommends, starts a
migration run, and serves the daemon with a short schedule: the run takes about a minute
(migrate.pause_between spreads it out) while the RAG canary's accessibility ratio climbs, and
Grafana, Prometheus or `uuidguard status --watch` can follow it live. Ctrl-C stops it.
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
import typer

from migrator import assess, db, journal, runs
from migrator import dataset as dataset_mod
from migrator import plan as plan_mod
from migrator import settings as settings_mod
from migrator.errors import UuidguardError
from migrator.reports.format import duration
from monitor import cli_reports
from monitor.cli_common import (
    ConfigOpt,
    DebugOpt,
    DsnOpt,
    err,
    out,
    print_manifest,
    seed_dataset,
    target_of,
)

#: how long the demo's migration should take, seconds
DEMO_RUN_SECONDS = 60
DEMO_BATCH = 40
#: how often the demo looks whether the daemon has finished its run
REPORT_POLL_SECONDS = 2.0


def demo(
    documents: Annotated[
        int, typer.Option(min=100, help="Documents to seed when the database is empty.")
    ] = 10_000,
    reseed: Annotated[bool, typer.Option(help="Seed afresh even if the demo data exists.")] = False,
    port: Annotated[int, typer.Option(min=1, max=65535, help="The daemon's port.")] = 9477,
    run_seconds: Annotated[
        float, typer.Option(min=1, max=3600, help="About how long the migration should take.")
    ] = DEMO_RUN_SECONDS,
    serve: Annotated[
        bool, typer.Option(help="Run the daemon after the setup (--no-serve: set up and exit).")
    ] = True,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Seed a damaged RAG database on the embedded PostgreSQL, plan, start a migration, and run
    the daemon on it until Ctrl-C."""
    started = time.monotonic()
    token = secrets.token_urlsafe(18)
    overrides: dict[str, Any] = {
        "probes": {
            "interval": "5s",
            "full_sweep_interval": "10s",
            "canary_interval": "5s",
            "latency_interval": "5s",
            "jitter": "1s",
        },
        "serve": {"port": port, "api_token": token},
        "migrate": {"max_batch": DEMO_BATCH, "start_batch": DEMO_BATCH},
    }
    if dsn is not None:
        overrides["database"] = {"dsn": dsn}
    s = settings_mod.load_settings(config, **overrides)
    err.print(f"[bold]uuidguard demo[/] on {target_of(s)}")
    engine = db.create_engine(s)
    if reseed or not _has_random_documents(engine, s):
        _retire_active_run(engine, s)
        spec = dataset_mod.DatasetSpec(
            documents=documents, as_of=datetime.now(UTC).replace(microsecond=0)
        )
        print_manifest(seed_dataset(s, spec, "none", replace=True))
    else:
        err.print("reusing the seeded demo data (pass --reseed to start afresh)")
    with db.connect(engine) as conn:
        journal.init(conn, s.journal_schema)
    report = assess.run(engine, s)
    d = report["documents"]
    out.print(
        f"{d['total']:,} documents; {d['to_rekey']:,} carry a random id;"
        f" {d['invisible']:,} are invisible to retrieval."
        " Full report: `uuidguard assess`."
    )
    with db.connect(engine) as conn, conn.begin():
        active = runs.active_run(conn, s)
    if active is None:
        planned = plan_mod.plan(engine, s, datetime.now(UTC), rehearsal_seconds=1.0)
        rec = planned["recommendation"]
        out.print(f"plan: option {rec['option']} — {rec['reason']}. Full plan: `uuidguard plan`.")
        with db.connect(engine) as conn, conn.begin():
            active = runs.create(conn, s, "A", datetime.now(UTC), "demo")
    with db.connect(engine) as conn, conn.begin():
        run = runs.resolve(conn, s, active)
        runs.set_state(
            conn,
            s,
            active,
            "running",
            "demo",
            "run",
            source="demo",
            allowed_from=("planned", "paused"),
        )
    total = int(run["documents"])
    # spread the run over about a minute so that it can be watched
    batches = max(1, total // DEMO_BATCH)
    rest = max(0.0, run_seconds / batches - 0.05)
    s = settings_mod.load_settings(
        config, **{**overrides, "migrate": {**overrides["migrate"], "pause_between": rest}}
    )
    out.print(
        f"run {active}: {total:,} documents to re-key in batches of {DEMO_BATCH},"
        f" about {duration(run_seconds)} (setup took {time.monotonic() - started:.0f} s)"
    )
    if not serve:
        out.print(f"set up; `uuidguard serve --port {port}` runs the daemon")
        return
    base = f"http://{s.serve.host}:{port}"
    out.print(
        "\nOpen:\n"
        f"  {base}/metrics          Prometheus metrics (uuidguard_*)\n"
        f"  {base}/api/v1/status    probes and the migration, as JSON\n"
        f"  uuidguard status --watch   the same, live in this terminal\n"
        "Control (token printed for this demo only):\n"
        f"  curl -X POST -H 'Authorization: Bearer {token}' {base}/api/v1/migration/pause\n"
        f"  curl -X POST -H 'Authorization: Bearer {token}' {base}/api/v1/migration/resume\n"
        f"  curl -X POST -H 'Authorization: Bearer {token}' -d '{{\"scope\": \"all\"}}'"
        f" {base}/api/v1/migration/rollback\n",
        markup=False,
        highlight=False,
    )
    from monitor.cli_serve import run_daemon

    stop = threading.Event()
    watcher = threading.Thread(
        target=_report_when_done, args=(s, active, stop), name="demo-report", daemon=True
    )
    watcher.start()
    try:
        run_daemon(s, debug)
    finally:
        stop.set()


def _report_when_done(s: settings_mod.Settings, run_id: int, stop: threading.Event) -> None:
    """Once the daemon has finished the run (or rolled it back), write the HTML completion
    report next to the embedded server's state and say where it is."""
    engine = db.create_engine(s)
    try:
        while not stop.wait(REPORT_POLL_SECONDS):
            with db.connect(engine) as conn, conn.begin():
                state = runs.resolve(conn, s, run_id)["state"]
            if state in ("completed", "rolled_back"):
                path = s.database.state_dir / "reports" / f"run-{run_id}-completion.html"
                path.parent.mkdir(parents=True, exist_ok=True)
                cli_reports.write_completion_html(s, engine, run_id, path)
                out.print(
                    f"\nrun {run_id} {state}: completion report written to {path.resolve()}",
                    markup=False,
                )
                return
            if state == "failed":
                return
    except UuidguardError as exc:
        err.print(f"completion report not written: {exc}", markup=False)
    finally:
        engine.dispose()


def _has_random_documents(engine: sa.Engine, s: settings_mod.Settings) -> bool:
    """Demo data that still has something to heal: seeded, and no completed run over it."""
    with db.connect(engine) as conn:
        q = conn.dialect.identifier_preparer
        name = f"{q.quote_schema(s.mapping.schema_)}.{q.quote(s.mapping.documents.table)}"
        if not conn.execute(
            sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}
        ).scalar_one():
            return False
        current = journal.current(conn, s.journal_schema)
        conn.rollback()
        if current is None:
            return True
        with conn.begin():
            try:
                latest = runs.resolve(conn, s, None)
            except (runs.RunError, journal.JournalError):
                return True
    return str(latest["state"]) not in ("completed",)


def _retire_active_run(engine: sa.Engine, s: settings_mod.Settings) -> None:
    """Reseeding replaces the tables a run was planned on: that run can never finish."""
    with db.connect(engine) as conn:
        current = journal.current(conn, s.journal_schema)
        conn.rollback()
        if current != journal.head():
            return
        with conn.begin():
            active = runs.active_run(conn, s)
            if active is not None:
                runs.set_state(
                    conn,
                    s,
                    active,
                    "failed",
                    "demo",
                    "fail",
                    reason="the demo data was seeded afresh under it",
                    source="demo",
                )
                err.print(f"run {active} retired: the demo data is seeded afresh")
