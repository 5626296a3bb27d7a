"""The daemon as a real process: SIGTERM is a clean exit, two replicas elect one leader and
fail over when the leader is killed, and a database restart under a running daemon heals by
itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from migrator import db as db_mod
from migrator import embedded, journal, runs
from migrator.settings import Settings, load_settings
from monitor.probing import ProbeSpec
from tests.migrator.test_migrate import AS_OF, _prepare
from tests.stack import free_port, serve_daemon, wait_until

EXE = str(Path(sys.executable).parent / "uuidguard")


def _serve(url: str, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UUIDGUARD_")}
    env.update(UUIDGUARD_PROBES__INTERVAL="2s", UUIDGUARD_PROBES__JITTER="0s")
    return subprocess.Popen(
        [EXE, "serve", "--port", str(port), "--dsn", url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _status(port: int) -> dict | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None


def test_two_replicas_one_leader_failover_and_a_clean_sigterm(settings: Settings) -> None:
    engine, _ = _prepare(settings, "none")
    with engine.connect() as conn, conn.begin():
        run_id = runs.create(conn, settings, "A", AS_OF, "test")
    assert settings.database.dsn is not None
    url = settings.database.dsn.get_secret_value()
    ports = [free_port(), free_port()]
    procs = [_serve(url, p) for p in ports]
    try:
        wait_until("both replicas", lambda: all(_status(p) for p in ports))
        wait_until(
            "exactly one leader",
            lambda: sorted(bool((_status(p) or {}).get("leader")) for p in ports) == [False, True],
        )
        leader = next(i for i, p in enumerate(ports) if (_status(p) or {}).get("leader"))
        other = 1 - leader
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait()
        killed = time.monotonic()
        wait_until(
            "the other replica to lead", lambda: (_status(ports[other]) or {}).get("leader"), 15
        )
        # one heartbeat (2 s) after the lock is free, plus the scheduler's own tick
        assert time.monotonic() - killed < 10
        # the new leader runs the probes: the classification shows up
        wait_until(
            "probes on the new leader",
            lambda: any(
                p["probe"] == "classification" and p["fresh"]
                for p in (_status(ports[other]) or {}).get("probes", [])
            ),
            30,
        )
        # SIGTERM: the daemon stops its scheduler and exits 0
        procs[other].send_signal(signal.SIGTERM)
        _, err = procs[other].communicate(timeout=60)
        assert procs[other].returncode == 0, err
        assert "uuidguard stopped" in err and "Traceback" not in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with engine.connect() as conn, conn.begin():
        assert runs.resolve(conn, settings, run_id)["state"] == "planned"


@pytest.mark.slow
def test_a_database_restart_under_a_running_daemon(tmp_path: Path) -> None:
    """Its own embedded server, stopped and started again: probes fail and say so, /readyz
    says not ready, then everything recovers within an interval, with no process restart."""
    state = tmp_path / "restart-state"
    server = embedded.ensure_running(state)
    settings = load_settings(
        None, database={"dsn": server.uri}, probes={"interval": "1s", "jitter": "0s"}
    )
    engine = db_mod.create_engine(settings)
    with engine.connect() as conn:
        journal.init(conn, settings.journal_schema)
    engine.dispose()
    # the journal probe is enough: it needs the database and nothing seeded
    specs: list[ProbeSpec] = []
    try:
        with serve_daemon(settings, specs) as served:
            ready = lambda: httpx.get(f"{served.url}/readyz", timeout=2).status_code == 200  # noqa: E731
            wait_until("ready", ready, 30)
            embedded.stop(state)
            wait_until("not ready while the database is down", lambda: not ready(), 30)
            embedded.ensure_running(state)
            started = time.monotonic()
            wait_until("ready again", ready, 30)
            wait_until(
                "the migration probe to succeed again",
                lambda: any(
                    p["probe"] == "migration" and p["fresh"] and not p["last_error"]
                    for p in served.daemon.store.status()
                ),
                30,
            )
            assert time.monotonic() - started < 20
    finally:
        embedded.stop(state)
