"""The daemon's parts that read no mapped table: store, exposition, API, leader, probe bounds."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import timedelta

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from starlette.testclient import TestClient

from migrator import db, runner
from migrator.pace import Pace
from migrator.settings import Settings, load_settings
from monitor import migration_probe
from monitor.api import MAX_BODY, create_app
from monitor.daemon import Daemon, Leader
from monitor.probing import ProbeContext, ProbeOutput, ProbeSpec, run_probe
from tests.migrator.test_migrate import _create, _prepare

TOKEN = "s3cret-token"


def _daemon(settings: Settings, **serve: object) -> Daemon:
    assert settings.database.dsn is not None
    s = load_settings(
        None,
        database={"dsn": settings.database.dsn.get_secret_value()},
        serve={"api_token": TOKEN, **serve},
    )
    return Daemon(s, [])


def _probe_once(d: Daemon, name: str = "migration") -> None:
    spec = next(s for s in d.specs if s.name == name)
    d._run(spec)


def test_migration_metrics_are_promtool_clean_and_need_no_database(settings: Settings) -> None:
    engine, _ = _prepare(settings, "none")
    run_id = _create(engine, settings)
    runner.run_batches(engine, settings, run_id, "w", Pace(size=10, max_size=10), max_batches=3)
    d = _daemon(settings)
    d.leader.is_leader = True
    _probe_once(d)
    client = TestClient(create_app(d))
    body = client.get("/metrics").text
    assert 'uuidguard_migration_state{state="running"} 1.0' in body
    assert "uuidguard_migration_documents_remaining" in body
    assert 'uuidguard_migration_batches_total{state="committed"} 3.0' in body
    assert "uuidguard_migration_batch_duration_seconds_bucket" in body
    assert 'uuidguard_probe_runs_total{probe="migration",result="success"} 1.0' in body
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs it (Debian package prometheus)"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
        check.stdout + check.stderr
    )
    # a hundred scrapes with the database gone: still answered, from memory only
    d.engine.dispose()
    d.engine = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    for _ in range(100):
        r = client.get("/metrics")
        assert r.status_code == 200 and "uuidguard_migration_state" in r.text
    d.engine.dispose()


def test_control_endpoints_need_the_token_and_are_audited(settings: Settings) -> None:
    engine, _ = _prepare(settings, "none")
    run_id = _create(engine, settings)
    client = TestClient(create_app(_daemon(settings)))
    assert client.post("/api/v1/migration/pause").status_code == 401
    assert (
        client.post(
            "/api/v1/migration/pause", headers={"Authorization": "Bearer wrong"}
        ).status_code
        == 403
    )
    big = client.post(
        "/api/v1/migration/pause",
        headers={"Authorization": f"Bearer {TOKEN}"},
        content=b"x" * (MAX_BODY + 1),
    )
    assert big.status_code == 413
    ok = client.post("/api/v1/migration/pause", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json() == {"run": run_id, "paused": True}
    again = client.post("/api/v1/migration/pause", headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.status_code == 409
    resumed = client.post("/api/v1/migration/resume", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resumed.status_code == 200
    bad = client.post(
        "/api/v1/migration/rollback",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"scope": "everything"},
    )
    assert bad.status_code == 422
    with engine.connect() as conn:
        audit = conn.execute(
            sa.text(
                "SELECT action, source, actor FROM uuidguard.audit WHERE source = 'api' ORDER BY id"
            )
        ).all()
    assert [(a.action, a.source) for a in audit] == [("pause", "api"), ("resume", "api")]
    assert all(a.actor.startswith("api:") for a in audit)
    # without a configured token the control endpoints refuse everyone
    closed = TestClient(create_app(Daemon(settings, [])))
    assert (
        closed.post("/api/v1/migration/pause", headers={"Authorization": "Bearer x"}).status_code
        == 403
    )
    # an empty token (`UUIDGUARD_SERVE__API_TOKEN=` in a compose file) is no token
    blank = _daemon(settings, api_token="  ", webhook_token="")
    assert blank.settings.serve.api_token is None and blank.settings.serve.webhook_token is None
    empty = TestClient(create_app(blank))
    for path in ("/api/v1/migration/pause", "/hooks/alertmanager"):
        assert empty.post(path, headers={"Authorization": "Bearer "}).status_code == 403


def test_rollback_endpoint_rolls_back_in_the_background(settings: Settings) -> None:
    engine, _ = _prepare(settings, "none")
    run_id = _create(engine, settings)
    runner.run_batches(engine, settings, run_id, "w", Pace(size=10, max_size=10), max_batches=4)
    client = TestClient(create_app(_daemon(settings)))
    r = client.post(
        "/api/v1/migration/rollback",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"scope": "last", "last": 2},
    )
    assert r.status_code == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            back = conn.execute(
                sa.text("SELECT count(*) FROM uuidguard.batches WHERE state = 'rolled_back'")
            ).scalar_one()
        if back == 2:
            break
        time.sleep(0.1)
    assert back == 2


def test_one_leader_and_failover(settings: Settings) -> None:
    engine = db.create_engine(settings)
    a, b = Leader(engine, 4242), Leader(engine, 4242)
    assert a.heartbeat() is True
    assert b.heartbeat() is False
    a.drop()  # the leader's session ends (a killed process, a cut connection)
    assert b.heartbeat() is True
    assert a.heartbeat() is False
    b.release()
    a.release()


def test_an_overrunning_probe_is_cancelled_by_the_server(settings: Settings) -> None:
    engine = db.create_engine(settings)
    slow_settings = load_settings(
        None,
        database={"dsn": settings.database.dsn.get_secret_value()},  # type: ignore[union-attr]
        probes={"timeout": "1s"},
    )

    def sleepy(conn: Connection, s: Settings, ctx: ProbeContext) -> ProbeOutput:
        conn.execute(sa.text("SELECT pg_sleep(30)"))
        return ProbeOutput()

    spec = ProbeSpec("sleepy", timedelta(seconds=60), "sampled", "sleeps", sleepy)
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError) as caught:
        run_probe(engine, slow_settings, spec, ProbeContext())
    assert isinstance(caught.value.orig, psycopg.errors.QueryCanceled)
    assert time.monotonic() - started < 10
    time.sleep(1.0)
    with engine.connect() as conn:
        left = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'uuidguard-probe:sleepy'"
                " AND state <> 'idle'"
            )
        ).scalar_one()
    assert left == 0
    # the daemon counts it as a timeout and backs off
    d = Daemon(slow_settings, [spec])
    d.leader.is_leader = True
    d.scheduler.start(paused=True)
    d.scheduler.add_job(lambda: None, id="probe:sleepy")
    d._run(spec)
    rec = next(r for r in d.store.snapshot() if r.spec.name == "sleepy")
    assert rec.runs["timeout"] == 1 and rec.failures_in_a_row == 1
    d.scheduler.shutdown(wait=False)
    d.engine.dispose()


def test_migration_probe_without_any_run(settings: Settings) -> None:
    engine, _ = _prepare(settings, "none")
    spec = migration_probe.spec(settings)
    out, _ = run_probe(engine, settings, spec, ProbeContext())
    assert ("migration_state", 1.0, (("state", "none"),)) in [
        (s.metric, s.value, s.labels) for s in out.samples
    ]


def test_every_probe_once_gives_a_promtool_clean_documented_exposition(
    settings: Settings,
) -> None:
    """All probes on seeded data, then one scrape: promtool finds nothing, every family is in
    the catalog (so docs/metrics.md describes it), and docs/metrics.md is what the code says."""
    from pathlib import Path

    from monitor import metrics, probes

    engine, _ = _prepare(settings, "none")
    run_id = _create(engine, settings)
    runner.run_batches(engine, settings, run_id, "w", Pace(size=10, max_size=10), max_batches=2)
    d = Daemon(settings, probes.probe_specs(settings))
    d.leader.is_leader = True
    for spec in d.specs:
        d._run(spec)
    failing = {r.spec.name: r.last_error for r in d.store.snapshot() if r.last_error}
    assert failing == {}
    body = TestClient(create_app(d)).get("/metrics").text
    check = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), (
        check.stdout + check.stderr
    )
    cat = metrics.catalog([(s.name, s.description, s.metrics) for s in d.specs])
    families = {
        line.split()[2].removeprefix("uuidguard_")
        for line in body.splitlines()
        if line.startswith("# TYPE ")
    }
    exported = {
        f if f in cat else f"{f}_total" if f"{f}_total" in cat else f"{f}_info" for f in families
    }
    assert exported - {"build_info"} <= set(cat), exported - set(cat)
    assert "rag_accessibility_ratio" in families and "documents_by_class" in families
    assert "user" not in {lbl for doc in cat.values() for lbl in doc.labels}
    doc = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
    specs = [(s.name, s.budget, s.description, s.metrics) for s in d.specs]
    assert doc.read_text() == metrics.markdown(specs), (
        "run `uuidguard metrics-doc --out docs/metrics.md`"
    )
    d.engine.dispose()


def test_scheduler_runs_each_probe_alone_coalesces_and_isolates_failures(
    settings: Settings,
) -> None:
    """A probe slower than its interval never runs twice at once and its missed ticks
    coalesce into one; a failing probe neither stops nor delays the others; jitter is set."""
    assert settings.database.dsn is not None
    s = load_settings(
        None,
        database={"dsn": settings.database.dsn.get_secret_value()},
        probes={"jitter": "1s", "timeout": "10s"},
        # a key of its own: a daemon of another test must not be this one's leader
        serve={"run_migrations": False, "leader_lock_key": 917_331},
    )
    running: dict[str, int] = {"slow": 0}
    peak: dict[str, int] = {"slow": 0}
    runs: dict[str, int] = {"slow": 0, "fast": 0, "broken": 0}

    def slow(conn: Connection, _s: Settings, _ctx: ProbeContext) -> ProbeOutput:
        running["slow"] += 1
        peak["slow"] = max(peak["slow"], running["slow"])
        runs["slow"] += 1
        try:
            conn.execute(sa.text("SELECT pg_sleep(1.5)"))
        finally:
            running["slow"] -= 1
        return ProbeOutput()

    def fast(conn: Connection, _s: Settings, _ctx: ProbeContext) -> ProbeOutput:
        runs["fast"] += 1
        conn.execute(sa.text("SELECT 1"))
        return ProbeOutput()

    def broken(conn: Connection, _s: Settings, _ctx: ProbeContext) -> ProbeOutput:
        runs["broken"] += 1
        raise RuntimeError("a bug in one probe")

    specs = [
        ProbeSpec("slow", timedelta(seconds=0.3), "sampled", "sleeps", slow),
        ProbeSpec("fast", timedelta(seconds=0.3), "sampled", "selects", fast),
        ProbeSpec("broken", timedelta(seconds=0.3), "sampled", "raises", broken),
    ]
    d = Daemon(s, specs)
    d.leader.is_leader = True
    d.start()
    try:
        jobs = {j.id: j for j in d.scheduler.get_jobs()}
        for spec in specs:
            job = jobs[f"probe:{spec.name}"]
            assert job.max_instances == 1 and job.coalesce is True
            assert job.trigger.jitter == 1
        time.sleep(6.0)
    finally:
        d.shutdown()
    assert peak["slow"] == 1
    # 6 s of 1.5 s runs: at most five, however many 0.3 s ticks were missed meanwhile
    assert 2 <= runs["slow"] <= 5
    # the broken probe backs off exponentially instead of running every tick
    assert 1 <= runs["broken"] < runs["fast"]
    records = {r.spec.name: r for r in d.store.snapshot()}
    assert records["fast"].runs["success"] == runs["fast"] >= 4
    assert records["broken"].runs["error"] == runs["broken"]
    assert records["slow"].runs["success"] >= 2


def test_metrics_render_once_per_change_and_drop_stale_values(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scrapes between two changes reuse one rendering; a value older than three of its
    probe's intervals disappears from /metrics on time, while the others stay."""
    from monitor import api

    renders = []
    real = api.generate_latest

    def counting(reg: object) -> bytes:
        renders.append(time.monotonic())
        return real(reg)  # type: ignore[arg-type]

    monkeypatch.setattr(api, "generate_latest", counting)

    def emit(conn: Connection, _s: Settings, _ctx: ProbeContext) -> ProbeOutput:
        return ProbeOutput()

    quick = ProbeSpec("quick", timedelta(seconds=0.5), "sampled", "often", emit)
    slow = ProbeSpec("slow", timedelta(seconds=60), "sampled", "rarely", emit)
    d = Daemon(settings, [quick, slow])
    try:
        fast_out, slow_out = ProbeOutput(), ProbeOutput()
        fast_out.add("unprocessed_documents", 7.0)
        slow_out.add("documents_by_id_version", 5.0, version="v4")
        d.store.success("quick", fast_out, 0.01)
        d.store.success("slow", slow_out, 0.01)
        client = TestClient(create_app(d))
        bodies = [client.get("/metrics").text for _ in range(100)]
        assert len(renders) == 1 and len(set(bodies)) == 1
        assert "uuidguard_unprocessed_documents 7.0" in bodies[0]
        assert 'uuidguard_documents_by_id_version{version="v4"} 5.0' in bodies[0]
        time.sleep(1.7)  # three intervals of the quick probe
        body = client.get("/metrics")
        assert body.status_code == 200
        assert "uuidguard_unprocessed_documents 7.0" not in body.text
        assert 'uuidguard_documents_by_id_version{version="v4"} 5.0' in body.text
        assert len(renders) == 2
        d.store.batch_canary(lost=True)  # any change renders again at the next scrape
        assert 'uuidguard_batch_canary_runs_total{result="lost"} 1.0' in client.get("/metrics").text
        assert len(renders) == 3
    finally:
        d.engine.dispose()


def test_latest_probe_results_are_kept_in_the_journal(settings: Settings) -> None:
    """Each probe run leaves its result in probe_results; a failure keeps the last success's
    samples; `uuidguard status` without a daemon reads them from there."""
    from monitor.cli_serve import journaled_probes

    engine, _ = _prepare(settings, "none")
    failing = {"now": False}

    def flaky(conn: Connection, _s: Settings, _ctx: ProbeContext) -> ProbeOutput:
        if failing["now"]:
            raise RuntimeError("broken on purpose")
        out = ProbeOutput(detail={"checked": 3})
        out.add("unprocessed_documents", 4.0)
        return out

    spec = ProbeSpec("unprocessed", timedelta(seconds=60), "full", "flaky", flaky)
    d = _daemon(settings)
    d.specs = [spec]
    d.contexts["unprocessed"] = ProbeContext()
    d.store = type(d.store)([spec])
    d.leader.is_leader = True
    d.scheduler.start(paused=True)
    d.scheduler.add_job(lambda: None, id="probe:unprocessed")
    try:
        d._run(spec)
        failing["now"] = True
        d._run(spec)
    finally:
        d.scheduler.shutdown(wait=False)
        d.engine.dispose()
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.text("SELECT * FROM uuidguard.probe_results WHERE probe = 'unprocessed'")
            )
            .mappings()
            .one()
        )
        kept = journaled_probes(conn, settings)
    assert row["result"] == "error" and "broken on purpose" in row["error"]
    assert row["samples"] == [{"metric": "unprocessed_documents", "value": 4.0, "labels": {}}]
    assert row["detail"] == {"checked": 3} and row["last_success_at"] is not None
    (p,) = kept
    assert p["probe"] == "unprocessed" and p["fresh"] is True
    assert p["last"].startswith("error at ") and "broken on purpose" in p["last_error"]
