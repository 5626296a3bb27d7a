"""`uuidguard plan` and `uuidguard preflight` on real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from migrator import assess, journal, plan, preflight, runner, runs
from migrator.pace import Pace
from migrator.settings import Settings, load_settings
from tests.fakeslack import fake_slack
from tests.migrator.test_migrate import AS_OF, _fingerprint, _prepare
from tests.test_cli import dsn, run


def _run_totals(engine: sa.Engine, run_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        batches = conn.execute(
            sa.text(
                "SELECT documents, rows FROM uuidguard.batches WHERE run_id = :r AND state = 'committed'"
            ),
            {"r": run_id},
        ).all()
    totals = {"documents.id": sum(b.documents for b in batches)}
    for b in batches:
        for name, n in b.rows.items():
            totals[name] = totals.get(name, 0) + n
    return totals


@pytest.mark.parametrize("option", ["A", "B"])
def test_plan_numbers_are_what_the_run_then_does(settings: Settings, option: str) -> None:
    """Rows per table, documents and users restored: the plan's numbers, then the run's."""
    engine, _ = _prepare(settings, "strict", documents=400)
    fp = _fingerprint(engine, settings)
    report = plan.plan(engine, settings, AS_OF, rehearsal_seconds=0.5)
    # the rehearsal changed nothing and left no run behind
    assert _fingerprint(engine, settings) == fp
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM uuidguard.runs")).scalar_one() == 0
    o = report["options"][option]
    assert report["rehearsal"]["batches"] >= 1 and report["rehearsal"]["rows_per_second"] > 0
    assert o["estimated_seconds"] > 0
    before = assess.run(engine, settings, now=AS_OF)
    with engine.connect() as conn, conn.begin():
        run_id = runs.create(conn, settings, option, AS_OF, "test")  # type: ignore[arg-type]
    assert runner.run_batches(engine, settings, run_id, "w", Pace(size=50)) == "completed"
    after = assess.run(engine, settings, now=AS_OF)
    rows = {k: v for k, v in o["rows"].items()}
    done = _run_totals(engine, run_id)
    assert done == {k: v for k, v in rows.items() if v or k in done}
    assert o["documents"] == rows["documents.id"]
    invisible_before = before["documents"]["invisible"]
    invisible_after = after["documents"]["invisible"]
    assert report["documents_invisible"] == invisible_before
    assert o["documents_restored"] == invisible_before - invisible_after
    assert o["documents_left_invisible"] == invisible_after
    assert report["options"]["C"]["documents_left_invisible"] == invisible_before
    assert report["recommendation"]["option"] == "A"


def test_plan_during_a_run_uses_its_journal(settings: Settings) -> None:
    engine, _ = _prepare(settings, "none")
    with engine.connect() as conn, conn.begin():
        run_id = runs.create(conn, settings, "A", AS_OF, "test")
    with pytest.raises(Exception, match="has no batch yet"):
        plan.plan(engine, settings, AS_OF)
    runner.run_batches(engine, settings, run_id, "w", Pace(size=20), max_batches=2)
    report = plan.plan(engine, settings, AS_OF)
    assert report["rehearsal"]["source"].startswith(f"the journal of run {run_id}")
    assert report["rehearsal"]["batches"] == 2


def _backup_row(settings: Settings, engine: sa.Engine, path: Path, age: timedelta) -> None:
    path.write_bytes(b"dump")
    t = journal.metadata("uuidguard").tables["uuidguard.backups"]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(t).values(
                created_by="test",
                path=str(path),
                tables=[],
                verified=True,
                verified_at=datetime.now(UTC) - age,
            )
        )


def test_preflight_checks_and_the_run_it_gates(settings: Settings, tmp_path: Path) -> None:
    engine, _ = _prepare(settings, "none")
    report = preflight.run(engine, settings, "test")
    checks = {c["name"]: c for c in report["checks"]}
    assert not report["ok"]
    assert checks["journal schema current"]["status"] == "pass"
    assert checks["id rule calibrated at 100%"]["status"] == "pass"
    assert checks["privileges"]["status"] == "pass"
    assert checks["verified backup"]["status"] == "fail"
    assert "uuidguard backup" in checks["verified backup"]["detail"]
    assert checks["no other active run"]["status"] == "pass"
    assert checks["free disk for the journal"]["status"] in ("pass", "warn")
    assert {
        checks[n]["status"]
        for n in ("Prometheus scrapes the daemon", "Alertmanager reachable", "Slack token valid")
    } == {"warn"}
    with engine.connect() as conn, conn.begin():
        with pytest.raises(preflight.PreflightFailed, match="verified backup"):
            preflight.require_passed(conn, settings, force=False)
        assert preflight.require_passed(conn, settings, force=True) is None

    # an old backup fails; a fresh one passes
    _backup_row(settings, engine, tmp_path / "old.dump", timedelta(days=3))
    checks = {c["name"]: c for c in preflight.run(engine, settings, "test")["checks"]}
    assert (
        checks["verified backup"]["status"] == "fail"
        and "old" in checks["verified backup"]["detail"]
    )
    _backup_row(settings, engine, tmp_path / "new.dump", timedelta(minutes=5))
    report = preflight.run(engine, settings, "test")
    assert report["ok"], report
    with engine.connect() as conn, conn.begin():
        assert preflight.require_passed(conn, settings, force=False) is None


def test_preflight_reaches_monitoring(settings: Settings, tmp_path: Path) -> None:
    """Slack through its stand-in: a good token passes, a wrong one fails; Prometheus and
    Alertmanager that do not answer fail with their address."""
    engine, _ = _prepare(settings, "none")
    url = dsn(settings)
    with fake_slack() as slack:
        good = load_settings(
            None,
            database={"dsn": url},
            monitoring={
                "slack_token": slack.token,
                "slack_base_url": slack.base_url,
                "prometheus_url": "http://127.0.0.1:1",
                "alertmanager_url": "http://127.0.0.1:1",
            },
        )
        checks = {c["name"]: c for c in preflight.run(engine, good, "test")["checks"]}
        assert checks["Slack token valid"]["status"] == "pass"
        assert ("auth.test", {}) in [(m, {}) for m, _ in slack.calls]
        assert checks["Prometheus scrapes the daemon"]["status"] == "fail"
        assert "127.0.0.1:1" in checks["Prometheus scrapes the daemon"]["detail"]
        assert checks["Alertmanager reachable"]["status"] == "fail"
        bad = load_settings(
            None,
            database={"dsn": url},
            monitoring={"slack_token": "xoxb-wrong", "slack_base_url": slack.base_url},
        )
        checks = {c["name"]: c for c in preflight.run(engine, bad, "test")["checks"]}
        assert checks["Slack token valid"]["status"] == "fail"
        assert "invalid_auth" in checks["Slack token valid"]["detail"]
        assert "xoxb-wrong" not in str(checks)


def test_cli_plan_preflight_and_the_refused_run(settings: Settings, tmp_path: Path) -> None:
    _prepare(settings, "none")
    url = dsn(settings)
    proc = run("plan", "--format", "json", "--rehearsal-seconds", "0.3", "--dsn", url)
    assert proc.returncode == 0, proc.stderr

    data = json.loads(proc.stdout)
    for key in ("A", "B", "C"):
        assert {"documents", "rows", "users_restored", "estimated_seconds"} <= set(
            data["options"][key]
        )
    assert data["recommendation"]["option"] in ("A", "B", "C")
    md = run("plan", "--dsn", url)
    assert md.returncode == 0 and "Recommendation: option" in md.stdout
    pre = run("preflight", "--dsn", url)
    assert pre.returncode == 1
    assert "FAIL  verified backup" in pre.stdout
    assert run("migrate", "create", "--dsn", url).returncode == 0
    refused = run("migrate", "run", "--max-batches", "1", "--dsn", url)
    assert refused.returncode != 0
    assert refused.stderr.count("\n") == 1 and "latest preflight" in refused.stderr
    forced = run("migrate", "run", "--max-batches", "1", "--force", "--dsn", url)
    assert forced.returncode == 0, forced.stderr


def test_preflight_passes_with_real_monitoring(settings: Settings, tmp_path: Path) -> None:
    """The real daemon, a real Prometheus scraping it, a real Alertmanager and the Slack
    stand-in: the three monitoring checks pass."""
    from tests.stack import alertmanager, prometheus, serve_daemon, wait_until

    engine, _ = _prepare(settings, "none")
    _backup_row(settings, engine, tmp_path / "b.dump", timedelta(minutes=1))
    with serve_daemon(settings, []) as served, fake_slack() as slack:
        target = served.url.removeprefix("http://")
        am_config = "route: {receiver: none}\nreceivers: [{name: none}]\n"
        with (
            prometheus(tmp_path / "prom", [target]) as prom,
            alertmanager(tmp_path / "am", am_config) as am,
        ):
            good = load_settings(
                None,
                database={"dsn": dsn(settings)},
                monitoring={
                    "prometheus_url": prom,
                    "alertmanager_url": am,
                    "daemon_url": f"{served.url}/metrics",
                    "slack_token": slack.token,
                    "slack_base_url": slack.base_url,
                },
            )

            def scraped() -> bool:
                checks = {c["name"]: c for c in preflight.run(engine, good, "test")["checks"]}
                return checks["Prometheus scrapes the daemon"]["status"] == "pass"

            wait_until("Prometheus to scrape the daemon", scraped, timeout=30)
            report = preflight.run(engine, good, "test")
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses == dict.fromkeys(statuses, "pass"), report
    assert report["ok"]
