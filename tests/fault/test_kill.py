"""Crash safety: SIGKILL the worker at random points, restart, and end exactly where an
uninterrupted run ends; the same for a rollback."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from migrator import db, runs
from migrator.settings import Settings, load_settings
from tests.conftest import with_database

EXE = str(Path(sys.executable).parent / "uuidguard")
DOCS = "4000"


def _cli(url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UUIDGUARD_")}
    # tiny batches so that a kill lands inside a batch, between batches, or right after a commit
    env.update(
        UUIDGUARD_MIGRATE__MAX_BATCH="3",
        UUIDGUARD_MIGRATE__START_BATCH="3",
        UUIDGUARD_MIGRATE__MIN_BATCH="2",
    )
    return subprocess.Popen(
        [EXE, *args, "--dsn", url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ok(url: str, *args: str) -> str:
    proc = _cli(url, *args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def _state(settings: Settings) -> str:
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        return str(runs.resolve(conn, settings, None)["state"])


def _fingerprint(settings: Settings) -> dict:
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        return runs.fingerprint(conn, settings)


def _progress(url: str) -> int:
    """Batches committed plus batches rolled back: grows with every step of either direction."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'committed') + 2 * count(*) FILTER"
            " (WHERE state = 'rolled_back') FROM uuidguard.batches"
        ).fetchone()
    return int(row[0]) if row else 0


def _kill_until(
    url: str, settings: Settings, args: tuple[str, ...], done: str, rng: random.Random
) -> int:
    """Start the command, wait until it has made progress, SIGKILL it a random moment later
    (inside a batch, between two, or just after a commit), again and again until `done`."""
    kills = 0
    for _ in range(200):
        if _state(settings) == done:
            return kills
        proc = _cli(url, *args)
        start = _progress(url)
        deadline = time.monotonic() + 60
        while proc.poll() is None and _progress(url) == start and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            assert proc.returncode in (0, 1), proc.stderr.read() if proc.stderr else ""
    raise AssertionError("the run never finished")


@pytest.fixture
def twin(pg_server: str, settings: Settings) -> Settings:
    """A second fresh database on the same server, for the uninterrupted reference run."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield load_settings(None, database={"dsn": with_database(pg_server, name)})
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_kill_nine_during_run_and_rollback_loses_nothing(
    settings: Settings, twin: Settings
) -> None:
    """20+ SIGKILLs during the run and more during its rollback: same end state as no crash."""
    rng = random.Random(20261125)
    urls = []
    for s in (settings, twin):
        assert s.database.dsn is not None
        url = s.database.dsn.get_secret_value()
        urls.append(url)
        _ok(
            url,
            "seed",
            "--documents",
            DOCS,
            "--seed",
            "9",
            "--as-of",
            "2026-06-01T00:00:00",
            "--fk",
            "strict",
        )
        _ok(url, "init")
        _ok(url, "migrate", "create")
    crashy, reference = urls
    before = _fingerprint(settings)
    assert before == _fingerprint(twin)

    _ok(reference, "migrate", "run")
    kills = _kill_until(crashy, settings, ("migrate", "run"), "completed", rng)
    assert kills >= 20, f"only {kills} kills: the run finished too fast to test crashes"
    assert _fingerprint(settings) == _fingerprint(twin)
    assert "all checks pass" in _ok(crashy, "migrate", "verify")

    kills = _kill_until(
        crashy, settings, ("migrate", "rollback", "--all", "--force"), "rolled_back", rng
    )
    assert kills >= 3
    assert _fingerprint(settings) == before
