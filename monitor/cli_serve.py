"""`uuidguard serve` and `uuidguard status [--watch]`."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import sqlalchemy as sa
import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from sqlalchemy.engine import Connection

from migrator import db, journal, runs
from migrator import settings as settings_mod
from migrator.reports.format import duration, num
from migrator.settings import Settings
from monitor.cli_common import ConfigOpt, DebugOpt, DsnOpt, err, load, out
from monitor.store import STALE_AFTER_INTERVALS


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (serve.host).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to listen on (serve.port).")
    ] = None,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run the daemon: probes and canaries on their schedules, /metrics, the HTTP API, and the
    migration's batches inside their windows. Ctrl-C or SIGTERM stop it cleanly."""
    s = load(config, dsn)
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if overrides:
        s = s.model_copy(update={"serve": s.serve.model_copy(update=overrides)})
    run_daemon(s, debug)


def run_daemon(s: Settings, debug: bool = False) -> None:
    """Start the scheduler and the HTTP server; return after Ctrl-C or SIGTERM, cleanly."""
    import uvicorn

    from monitor import probes
    from monitor.api import create_app
    from monitor.daemon import Daemon

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    daemon = Daemon(s, probes.probe_specs(s))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(daemon),
            host=s.serve.host,
            port=s.serve.port,
            log_level="warning",
            lifespan="off",
        )
    )
    base = f"http://{s.serve.host}:{s.serve.port}"
    daemon.start()
    err.print(
        f"uuidguard serving on {base}: {base}/metrics, {base}/api/v1/status, {base}/readyz"
        f" (leader: {'yes' if daemon.leader.is_leader else 'no'}). Ctrl-C stops.",
        markup=False,
    )
    # uvicorn handles SIGINT/SIGTERM while it serves, then re-raises the signal to the handler
    # it found: make that one a no-op, so the scheduler and the batch in flight shut down
    # cleanly below and the process exits 0
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        daemon.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    err.print("uuidguard stopped", markup=False)


def status(
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh every 2 seconds until Ctrl-C.")
    ] = False,
    url: Annotated[
        str | None,
        typer.Option(help="The daemon's address (default http://serve.host:serve.port)."),
    ] = None,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    debug: DebugOpt = False,
) -> None:
    """What the daemon sees, in the terminal: probes and the migration (for a user without
    Grafana). Without a daemon it shows the migration from the journal."""
    s = load(config, dsn)
    base = url or f"http://{s.serve.host}:{s.serve.port}"

    def snapshot() -> Group:
        try:
            data = httpx.get(f"{base}/api/v1/status", timeout=2).json()
            source = f"daemon at {base}"
        except (httpx.HTTPError, ValueError):
            engine = db.create_engine(s)
            with db.connect(engine) as conn, conn.begin():
                try:
                    migration: dict[str, Any] | None = runs.status(conn, s, None)
                except runs.RunError:
                    migration = None  # no run yet
                kept = journaled_probes(conn, s)
            data = {"probes": kept, "migration": migration}
            source = f"the journal (no daemon answers at {base})"
        return _render(data, source)

    if not watch:
        out.print(snapshot())
        return
    with Live(snapshot(), console=out, refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(2)
                live.update(snapshot())
        except KeyboardInterrupt:
            pass


def journaled_probes(conn: Connection, s: Settings) -> list[dict[str, Any]]:
    """The latest result of each probe as the daemon that ran it kept it in the journal, in
    the shape of /api/v1/status's probes (fresh: within three of the probe's intervals)."""
    from monitor import migration_probe, probes

    specs = {p.name: p for p in [*probes.probe_specs(s), migration_probe.spec(s)]}
    t = journal.table(s.journal_schema, "probe_results")
    rows = conn.execute(
        sa.select(t, sa.func.extract("epoch", sa.func.now() - t.c.last_success_at).label("age"))
    ).mappings()
    kept = []
    for r in rows:
        spec = specs.get(r["probe"])
        age = float(r["age"]) if r["age"] is not None else None
        limit = STALE_AFTER_INTERVALS * spec.interval.total_seconds() if spec else 0.0
        result = "ok" if r["result"] == "success" else r["result"]
        kept.append(
            {
                "probe": r["probe"],
                "budget": spec.budget if spec else "?",
                "fresh": age is not None and age <= limit,
                "runs": {},
                "last": f"{result} at {r['ran_at']:%Y-%m-%d %H:%M:%S} ({r['worker']})",
                "last_error": r["error"],
                "detail": r["detail"],
            }
        )
    return sorted(kept, key=lambda p: list(specs).index(p["probe"]) if p["probe"] in specs else 99)


def _render(data: dict[str, Any], source: str) -> Group:
    parts: list[Any] = [f"[bold]uuidguard status[/] from {source}"]
    m = data.get("migration")
    if m and m.get("run"):
        d = m["documents"]
        t = Table(title=f"run {m['run']} (option {m['option']}): {m['state']}")
        for col in ("done", "pending", "skipped", "rolled back", "progress", "rate", "ETA"):
            t.add_column(col, justify="right")
        rate = m.get("documents_per_second")
        t.add_row(
            num(d["done"]),
            num(d["pending"]),
            num(d["skipped"]),
            num(d["rolled_back"]),
            f"{m['percent']:.1f}%",
            f"{rate:,.0f}/s" if rate else "–",
            duration(m.get("eta_seconds")),
        )
        parts.append(t)
        if m.get("reason"):
            parts.append(f"reason: {m['reason']}")
    else:
        parts.append("no migration run yet")
    probes = data.get("probes") or []
    if probes:
        t = Table(title="probes")
        runs_title = "last run" if any(p.get("last") for p in probes) else "runs"
        for col in ("probe", "budget", "fresh", runs_title, "last error"):
            t.add_column(col)
        for p in probes:
            t.add_row(
                p["probe"],
                p["budget"],
                "yes" if p["fresh"] else "[red]no[/]",
                p.get("last")
                or ", ".join(
                    f"{n:,} {'ok' if result == 'success' else result}"
                    for result, n in sorted(p["runs"].items())
                ),
                p["last_error"] or "",
            )
        parts.append(t)
    return Group(*parts)


def metrics_doc(
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of standard output.")
    ] = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Every metric the daemon exports, with its meaning (the source of docs/metrics.md)."""
    from monitor import metrics, migration_probe, probes

    s = settings_mod.load_settings(config)
    specs = [*probes.probe_specs(s), migration_probe.spec(s)]
    text = metrics.markdown([(p.name, p.budget, p.description, p.metrics) for p in specs])
    if out_file is None:
        sys.stdout.write(text)
    else:
        out_file.write_text(text)
        err.print(f"wrote {out_file}", markup=False)
