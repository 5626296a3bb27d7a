"""Alertmanager's webhook and the policy: idempotent, inconclusive never rolls back, failure
limit, dry run, scopes, security; and the daemon's own canary after a batch."""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa
from starlette.testclient import TestClient

from migrator import runner, runs
from migrator.pace import Pace
from migrator.settings import Settings, load_settings
from monitor import policy
from monitor.api import MAX_BODY, create_app
from monitor.daemon import Daemon
from tests.migrator.test_migrate import _create, _prepare

HOOK = "hook-token"


def _settings(settings: Settings, **policy_: Any) -> Settings:
    assert settings.database.dsn is not None
    return load_settings(
        None,
        database={"dsn": settings.database.dsn.get_secret_value()},
        serve={"webhook_token": HOOK},
        policy=policy_,
    )


def _payload(
    name: str = "UuidguardRagAccessibilityDropped",
    status: str = "firing",
    fingerprint: str = "f1",
    **labels: str,
) -> dict[str, Any]:
    alert = {
        "status": status,
        "labels": {"alertname": name, "severity": "critical", **labels},
        "annotations": {"summary": "canary accessibility fell to 0.61"},
        "startsAt": "2026-11-25T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": "{}:{alertname=" + f'"{name}"' + "}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "uuidguard",
        "groupLabels": {"alertname": name},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://alertmanager",
        "notification_reason": "new alert",  # a newer Alertmanager's field: tolerated
        "alerts": [alert],
    }


def _started(engine: sa.Engine, settings: Settings, batches: int = 3) -> int:
    run_id = _create(engine, settings)
    runner.run_batches(
        engine, settings, run_id, "w", Pace(size=10, max_size=10), max_batches=batches
    )
    return run_id


def _post(client: TestClient, body: Any, token: str | None = HOOK) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/hooks/alertmanager", json=body, headers=headers)


def _state(engine: sa.Engine, settings: Settings, run_id: int) -> str:
    with engine.connect() as conn, conn.begin():
        return str(runs.resolve(conn, settings, run_id)["state"])


def _wait_rolled_back(engine: sa.Engine, n: int) -> int:
    deadline = time.monotonic() + 30
    back = 0
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            back = conn.execute(
                sa.text("SELECT count(*) FROM uuidguard.batches WHERE state = 'rolled_back'")
            ).scalar_one()
        if back >= n:
            break
        time.sleep(0.1)
    return int(back)


def test_ten_replays_act_once_and_security(settings: Settings) -> None:
    s = _settings(settings)
    engine, _ = _prepare(s, "none")
    run_id = _started(engine, s)
    client = TestClient(create_app(Daemon(s, [])))
    body = _payload(uuidguard_action="pause")
    assert _post(client, body, token=None).status_code == 401
    assert _post(client, body, token="wrong").status_code == 403
    assert _post(client, {"version": "4", "alerts": "nope"}).status_code == 422
    big = client.post(
        "/hooks/alertmanager",
        content=b"{" + b" " * (MAX_BODY + 10) + b"}",
        headers={"Authorization": f"Bearer {HOOK}"},
    )
    assert big.status_code == 413
    assert _state(engine, s, run_id) == "running"
    decisions = [_post(client, body).json()["decisions"][0]["decision"] for _ in range(10)]
    assert decisions == ["pause"] + ["duplicate"] * 9
    assert _state(engine, s, run_id) == "paused"
    with engine.connect() as conn:
        audit = conn.execute(
            sa.text("SELECT actor, source FROM uuidguard.audit WHERE action = 'pause'")
        ).all()
    assert [(a.actor, a.source) for a in audit] == [("UuidguardRagAccessibilityDropped", "alert")]
    # resolved: recorded, nothing done; an alert without an action label only notifies
    assert (
        _post(client, _payload(status="resolved", uuidguard_action="pause")).json()["decisions"][0][
            "decision"
        ]
        == "resolved"
    )
    assert (
        _post(client, _payload("SomethingElse", fingerprint="f9")).json()["decisions"][0][
            "decision"
        ]
        == "notify"
    )
    # an alert uuidguard does not ship, asking to act: refused and audited, nothing done
    odd = _post(client, _payload("SomebodysAlert", fingerprint="f10", uuidguard_action="rollback"))
    assert odd.status_code == 200 and odd.json()["decisions"][0]["decision"] == "unknown_alert"
    with engine.connect() as conn:
        refused = (
            conn.execute(sa.text("SELECT actor FROM uuidguard.audit WHERE action = 'refused'"))
            .scalars()
            .all()
        )
    assert refused == ["SomebodysAlert"]


def test_inconclusive_never_rolls_back_and_scopes_roll_back(settings: Settings) -> None:
    s = _settings(settings, inconclusive=["UuidguardCanaryErrors"])
    engine, _ = _prepare(s, "none")
    run_id = _started(engine, s, batches=4)
    client = TestClient(create_app(Daemon(s, [])))
    named = _post(
        client, _payload("UuidguardCanaryErrors", fingerprint="c1", uuidguard_action="rollback")
    ).json()["decisions"][0]
    assert named["decision"] == "pause" and "inconclusive" in named["why"]
    labelled = _post(
        client,
        _payload(fingerprint="c2", uuidguard_action="rollback", uuidguard_inconclusive="true"),
    ).json()["decisions"][0]
    assert labelled["decision"] == "debounced"  # already paused by the first, a moment ago
    with engine.connect() as conn:
        rolled = conn.execute(
            sa.text("SELECT count(*) FROM uuidguard.batches WHERE state = 'rolled_back'")
        ).scalar_one()
    assert rolled == 0
    # clear evidence: roll back the last batch
    real = _post(
        client,
        _payload(fingerprint="r1", uuidguard_action="rollback", uuidguard_scope="last_batch"),
    ).json()["decisions"][0]
    assert real["decision"] == "rollback" and real["scope"] == "last_batch"
    assert _wait_rolled_back(engine, 1) == 1
    assert _state(engine, s, run_id) == "paused"


def test_failure_limit_and_dry_run(settings: Settings) -> None:
    s = _settings(settings, failure_limit=1, debounce="0s")
    engine, _ = _prepare(s, "none")
    run_id = _started(engine, s)
    client = TestClient(create_app(Daemon(s, [])))
    first = _post(
        client, _payload(fingerprint="a", uuidguard_action="rollback", uuidguard_scope="run")
    )
    assert first.json()["decisions"][0]["decision"] == "pause"
    assert "tolerated" in first.json()["decisions"][0]["why"]
    second = _post(
        client, _payload(fingerprint="b", uuidguard_action="rollback", uuidguard_scope="run")
    )
    assert second.json()["decisions"][0]["decision"] == "rollback"
    deadline = time.monotonic() + 30
    while _state(engine, s, run_id) != "rolled_back" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(engine, s, run_id) == "rolled_back"
    # no active run any more: nothing to act on
    third = _post(client, _payload(fingerprint="c", uuidguard_action="pause"))
    assert third.json()["decisions"][0]["decision"] == "no_active_run"

    dry = _settings(settings, dry_run=True)
    run2 = _started(engine, dry)
    client2 = TestClient(create_app(Daemon(dry, [])))
    d = _post(client2, _payload(fingerprint="d", uuidguard_action="rollback"))
    assert d.json()["decisions"][0]["decision"] == "dry_run:rollback"
    assert _state(engine, dry, run2) == "running"


def test_concurrent_deliveries_act_once(settings: Settings) -> None:
    """An HA pair of Alertmanagers delivering the same alert at the same moment."""
    s = _settings(settings)
    engine, _ = _prepare(s, "none")
    _started(engine, s)
    note = policy.Notification.model_validate(_payload(uuidguard_action="pause"))
    out: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: out.extend(d["decision"] for d in policy.handle(engine, s, note))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == ["duplicate", "duplicate", "duplicate", "pause"]


def test_the_batch_canary_pauses_and_rolls_back_at_once(settings: Settings) -> None:
    """Right after a batch, its documents' chunks are moved away (the harm an alert would
    report minutes later): the daemon's own canary pauses the run and rolls the batch back."""
    s = _settings(settings)
    engine, _ = _prepare(s, "none")
    run_id = _create(engine, s)
    d = Daemon(s, [])
    results: list[runner.BatchResult] = []
    runner.run_batches(
        engine, s, run_id, "w", Pace(size=30, max_size=30), max_batches=1, on_batch=results.append
    )
    (batch,) = results
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                # the chunks now belong to another user: retrieval by the owner finds nothing
                "UPDATE document_chunks SET user_id = 'someone-else' WHERE document_id IN"
                " (SELECT new_id FROM uuidguard.id_map WHERE batch_id = :b)"
            ),
            {"b": batch.batch_id},
        )
    d._after_batch(run_id, batch)
    assert d.store.batch_canary_failures == 1
    with engine.connect() as conn, conn.begin():
        st = runs.resolve(conn, s, run_id)
        state = conn.execute(
            sa.text("SELECT state FROM uuidguard.batches WHERE id = :b"), {"b": batch.batch_id}
        ).scalar_one()
    assert st["state"] == "paused" and "canary after batch" in st["reason"]
    assert state == "rolled_back"
    d.engine.dispose()
