"""Slack through its stand-in: one message per alert group, updated in place, actions in its
thread; buttons verified, authorized, audited; rate limits retried; Slack down blocks nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from starlette.testclient import TestClient

from migrator import runs
from migrator.settings import Settings, load_settings
from monitor.api import create_app
from monitor.daemon import Daemon
from tests.fakeslack import FakeSlack, fake_slack
from tests.migrator.test_migrate import _prepare
from tests.monitor.test_policy import HOOK, _payload, _post, _started, _state

SECRET = "signing-secret"


def _daemon(settings: Settings, slack: FakeSlack | None, **mon: Any) -> Daemon:
    assert settings.database.dsn is not None
    monitoring: dict[str, Any] = {
        "slack_signing_secret": SECRET,
        "slack_allowed_users": ["UOK"],
        "slack_allowed_groups": ["SOPS"],
        "slack_min_interval": "0s",
        **mon,
    }
    if slack is not None:
        monitoring.update(slack_token=slack.token, slack_base_url=slack.base_url)
    s = load_settings(
        None,
        database={"dsn": settings.database.dsn.get_secret_value()},
        serve={"webhook_token": HOOK},
        monitoring=monitoring,
    )
    d = Daemon(s, [])
    d.slack.start()
    return d


def _press(
    client: TestClient,
    action: str,
    run_id: int,
    user: str,
    response_url: str,
    age: float = 0.0,
    secret: str = SECRET,
) -> Any:
    payload = {
        "type": "block_actions",
        "user": {"id": user},
        "channel": {"id": "C1"},
        "message": {"ts": "1700000000.000001"},
        "response_url": response_url,
        "actions": [{"action_id": action, "value": str(run_id)}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time() - age))
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return client.post(
        "/slack/interactions",
        content=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sig,
        },
    )


def test_one_message_per_group_updated_in_place_with_a_thread(settings: Settings) -> None:
    engine, _ = _prepare(settings, "none")
    with fake_slack() as slack:
        d = _daemon(settings, slack)
        run_id = _started(engine, d.settings)
        client = TestClient(create_app(d))
        body = _payload(uuidguard_action="pause")
        for _ in range(3):  # Alertmanager repeating itself
            assert _post(client, body).status_code == 200
        d.slack.drain()
        posts = slack.messages()
        top = [m for m in posts if "thread_ts" not in m]
        thread = [m for m in posts if "thread_ts" in m]
        assert len(top) == 1 and top[0]["channel"] == "#uuidguard"
        kinds = [b["type"] for b in top[0]["blocks"]]
        assert kinds[0] == "header" and "actions" in kinds
        buttons = next(b for b in top[0]["blocks"] if b["type"] == "actions")["elements"]
        assert [b["action_id"] for b in buttons] == [
            "uuidguard_pause",
            "uuidguard_resume",
            "uuidguard_rollback_last",
            "uuidguard_rollback_run",
        ]
        assert all("confirm" in b for b in buttons if "rollback" in b["action_id"])
        assert len(thread) == 1 and f"Paused run {run_id}" in thread[0]["text"]
        # resolved: the same message is updated, and the thread says so
        assert (
            _post(client, _payload(status="resolved", uuidguard_action="pause")).status_code == 200
        )
        d.slack.drain()
        (update,) = slack.messages("chat.update")
        assert update["ts"] == "1700000000.000001"  # the first message's ts, from the stand-in
        assert "resolved" in update["text"]
        assert any("resolved" in m["text"] for m in slack.messages() if "thread_ts" in m)
        assert len([m for m in slack.messages() if "thread_ts" not in m]) == 1
        d.slack.stop()
        d.engine.dispose()


def test_buttons_are_verified_authorized_and_audited(settings: Settings) -> None:
    engine, _ = _prepare(settings, "none")
    with fake_slack() as slack:
        slack.groups["SOPS"] = ["UGROUP"]
        d = _daemon(settings, slack)
        run_id = _started(engine, d.settings)
        client = TestClient(create_app(d))
        # a bad signature, and a replay older than five minutes: refused, nothing done
        assert (
            _press(
                client, "uuidguard_pause", run_id, "UOK", slack.response_url, secret="x"
            ).status_code
            == 401
        )
        assert (
            _press(
                client, "uuidguard_pause", run_id, "UOK", slack.response_url, age=400
            ).status_code
            == 401
        )
        # someone not on the list: an ephemeral refusal, audited, nothing done
        assert (
            _press(client, "uuidguard_pause", run_id, "UNOBODY", slack.response_url).status_code
            == 200
        )
        d.slack.drain()
        assert slack.responses and "may not" in slack.responses[0]["text"]
        assert _state(engine, d.settings, run_id) == "running"
        # a user of the allowed group pauses; the thread says who
        started = time.monotonic()
        assert (
            _press(client, "uuidguard_pause", run_id, "UGROUP", slack.response_url).status_code
            == 200
        )
        assert time.monotonic() - started < 3  # acknowledged within Slack's deadline
        d.slack.drain()
        assert _state(engine, d.settings, run_id) == "paused"
        assert any("<@UGROUP> paused" in m["text"] for m in slack.messages())
        # roll back the last batch from Slack
        assert (
            _press(client, "uuidguard_rollback_last", run_id, "UOK", slack.response_url).status_code
            == 200
        )
        d.slack.drain()
        with engine.connect() as conn:
            audit = conn.execute(
                sa.text(
                    "SELECT action, actor, source FROM uuidguard.audit WHERE source = 'slack' ORDER BY id"
                )
            ).all()
            back = conn.execute(
                sa.text("SELECT count(*) FROM uuidguard.batches WHERE state = 'rolled_back'")
            ).scalar_one()
        assert [(a.action, a.actor) for a in audit] == [
            ("refused", "slack:UNOBODY"),
            ("pause", "slack:UGROUP"),
            ("rollback", "slack:UOK"),
        ]
        assert back == 1
        d.slack.stop()
        d.engine.dispose()


def test_rate_limits_are_retried_and_slack_down_blocks_nothing(settings: Settings) -> None:
    engine, _ = _prepare(settings, "none")
    with fake_slack() as slack:
        slack.rate_limit_next = 1
        d = _daemon(settings, slack)
        _started(engine, d.settings)
        client = TestClient(create_app(d))
        assert _post(client, _payload(uuidguard_action="pause")).status_code == 200
        d.slack.drain()
        assert [m for m, _ in slack.calls][:2] == ["429:chat.postMessage", "chat.postMessage"]
        d.slack.stop()
        d.engine.dispose()
    # Slack unreachable: the webhook still pauses at once
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE uuidguard.runs SET state = 'running'"))
    with engine.begin() as conn:  # a fresh incident: no earlier pause to debounce against
        conn.execute(sa.text("DELETE FROM uuidguard.alert_events"))
    down = _daemon(settings, None, slack_token="xoxb-x", slack_base_url="http://127.0.0.1:1/api/")
    client = TestClient(create_app(down))
    started = time.monotonic()
    r = _post(client, _payload(fingerprint="down", uuidguard_action="pause"))
    assert r.status_code == 200 and r.json()["decisions"][0]["decision"] == "pause"
    assert time.monotonic() - started < 3
    with engine.connect() as conn, conn.begin():
        assert runs.resolve(conn, down.settings, None)["state"] == "paused"
    down.slack.stop(timeout=1)
    down.engine.dispose()
