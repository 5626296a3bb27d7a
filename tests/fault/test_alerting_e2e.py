"""Alerting end to end with the real binaries: Prometheus scrapes a running daemon and
evaluates our rule files, the platform turns unhealthy during a migration, the alert fires,
a real Alertmanager (our configuration) calls the daemon's webhook, the policy pauses and
rolls back, and Slack (its stand-in) gets the message, the thread reply and, once the alert
resolves, the update in place."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from migrator import runner, runs
from migrator.pace import Pace
from migrator.settings import Settings, load_settings
from monitor import probes
from tests.fakeslack import fake_slack
from tests.migrator.test_migrate import _create, _prepare
from tests.stack import alertmanager, prometheus, serve_daemon, wait_until

ROOT = Path(__file__).resolve().parents[2]
ALERT = "UuidguardRagPinnedDocumentsInvisible"
TOKEN = "e2e-webhook-token"


def _fast_rules(tmp: Path) -> Path:
    """Our rule file with every `for:` shortened to one second (the evaluation interval)."""
    text = (ROOT / "alerts" / "uuidguard.rules.yml").read_text()
    fast = tmp / "uuidguard.rules.yml"
    fast.write_text(re.sub(r"(\n\s+for:) \S+", r"\1 1s", text))
    return fast


def _alertmanager_config(tmp: Path, daemon_url: str) -> str:
    """Our configuration, mounted at a temp dir, pointing at this daemon, with short waits."""
    target = tmp / "alerts"
    shutil.copytree(ROOT / "alerts", target, ignore=shutil.ignore_patterns("tests", "*.rules.yml"))
    (target / "secrets" / "webhook_token").write_text(TOKEN + "\n")
    text = (target / "alertmanager.yml").read_text().replace("/etc/alertmanager/", f"{target}/")
    text = text.replace(
        "http://uuidguard:9477/hooks/alertmanager", f"{daemon_url}/hooks/alertmanager"
    )
    text = re.sub(r"group_wait: \S+", "group_wait: 1s", text)
    return re.sub(r"group_interval: \S+", "group_interval: 1s", text)


def _query(prom: str, expr: str) -> list[dict]:
    try:
        r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
        return list(r.json()["data"]["result"])
    except (httpx.HTTPError, ValueError, KeyError):
        return []


def test_an_alert_pauses_and_rolls_back_and_slack_hears_of_it(
    settings: Settings, tmp_path: Path
) -> None:
    engine, _ = _prepare(settings, "none", documents=600)
    run_id = _create(engine, settings)
    runner.run_batches(engine, settings, run_id, "w", Pace(size=20, max_size=20), max_batches=4)
    with engine.connect() as conn:
        pinned = list(
            conn.execute(
                sa.text(
                    "SELECT new_id::text FROM uuidguard.id_map WHERE state = 'done'"
                    " AND class IN ('random_consistent', 'random_mismatched') ORDER BY old_id LIMIT 3"
                )
            ).scalars()
        )
    assert len(pinned) == 3
    assert settings.database.dsn is not None
    with fake_slack() as slack:
        s = load_settings(
            None,
            database={"dsn": settings.database.dsn.get_secret_value()},
            probes={
                "interval": "1s",
                "canary_interval": "1s",
                "jitter": "0s",
                "canary": {"pinned": pinned, "sample": 0, "modes": ["structural"]},
            },
            serve={"webhook_token": TOKEN, "run_migrations": False},
            monitoring={
                "slack_token": slack.token,
                "slack_base_url": slack.base_url,
                "slack_min_interval": "0s",
            },
            policy={"batch_canary": False},
        )
        specs = [p for p in probes.probe_specs(s) if p.name == "canary"]
        with serve_daemon(s, specs) as served:
            am_config = _alertmanager_config(tmp_path, served.url)
            with (
                alertmanager(tmp_path / "am", am_config) as am,
                prometheus(
                    tmp_path / "prom",
                    [served.url.removeprefix("http://")],
                    [_fast_rules(tmp_path)],
                    alertmanager_url=am,
                ) as prom,
            ):
                # a healthy baseline first: the pinned documents are found
                wait_until(
                    "Prometheus to see the pinned documents found",
                    lambda: any(
                        float(r["value"][1]) == 0
                        for r in _query(prom, "job_mode:uuidguard_canary_pinned_invisible:max")
                    ),
                    60,
                )
                time.sleep(2)
                # the harm: the pinned documents' chunks now belong to someone else
                with engine.begin() as conn:
                    conn.execute(
                        sa.text(
                            "UPDATE document_chunks SET user_id = 'someone-else'"
                            " WHERE document_id = ANY(CAST(:ids AS uuid[]))"
                        ),
                        {"ids": pinned},
                    )
                started = time.monotonic()

                def rolled_back() -> bool:
                    with engine.connect() as conn:
                        n = conn.execute(
                            sa.text(
                                "SELECT count(*) FROM uuidguard.batches WHERE state = 'rolled_back'"
                            )
                        ).scalar_one()
                    return int(n) == 4

                wait_until("the policy to roll the run back", rolled_back, 90)
                acted = time.monotonic() - started
                with engine.connect() as conn, conn.begin():
                    st = runs.resolve(conn, s, run_id)
                    audit = conn.execute(
                        sa.text(
                            "SELECT action, actor, source FROM uuidguard.audit"
                            " WHERE source = 'alert' ORDER BY id"
                        )
                    ).all()
                assert st["state"] == "paused" and ALERT in str(st["reason"])
                assert [(a.action, a.actor) for a in audit][:2] == [
                    ("pause", ALERT),
                    ("rollback", ALERT),
                ]
                # Slack: the alert's message, then what was done in its thread
                # (other alerts of the same harm, e.g. accessibility low, get their own)
                slack.wait_for("chat.postMessage", 2, 30)
                ours = [m for m in slack.messages() if "thread_ts" not in m and ALERT in m["text"]]
                thread = [m for m in slack.messages() if "thread_ts" in m]
                assert len(ours) == 1
                assert any(f"Rolling back run {run_id}" in m["text"] for m in thread)
                # the metrics say it too
                wait_until(
                    "the rollback in the metrics",
                    lambda: any(
                        float(r["value"][1]) > 0
                        for r in _query(
                            prom,
                            'uuidguard_migration_rows_rolled_back_total{table="documents"}',
                        )
                    ),
                    30,
                )

                # the rollback explains the loss: the alert resolves, the message is updated
                def resolved() -> bool:
                    return any(
                        ALERT in m["text"] and "resolved" in m["text"]
                        for m in slack.messages("chat.update")
                    )

                wait_until("the message updated in place as resolved", resolved, 60)
                assert (
                    len(
                        [m for m in slack.messages() if "thread_ts" not in m and ALERT in m["text"]]
                    )
                    == 1
                )
    assert acted < 60
