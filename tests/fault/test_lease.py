"""A worker that hangs inside a batch (SIGSTOP) loses its claim after the lease; another
worker finishes the run, and nothing is applied twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import sqlalchemy as sa

from migrator import dataset, db, journal, runner, runs, seed, verify
from migrator.idrule import IdRule
from migrator.pace import Pace
from migrator.settings import Settings
from tests.migrator.test_migrate import AS_OF

EXE = str(Path(sys.executable).parent / "uuidguard")
LEASE = 3.0


def _waiting_for_a_lock(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
    return bool(row and row[0])


def test_a_hung_worker_loses_its_batch_after_the_lease(settings: Settings) -> None:
    assert settings.database.dsn is not None
    url = settings.database.dsn.get_secret_value()
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    ds = dataset.generate(dataset.DatasetSpec(documents=300, seed=7, as_of=AS_OF), rule)
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        seed.seed(conn, ds, "public", "strict", replace=False)
        journal.init(conn, settings.journal_schema)
    with engine.connect() as conn, conn.begin():
        run_id = runs.create(conn, settings, "A", AS_OF, "test")
    fp_before = None
    with engine.connect() as conn:
        fp_before = runs.fingerprint(conn, settings)

    # hold the first document the worker will claim, so that its batch waits inside its
    # transaction with its claim made; then freeze the worker there
    holder = psycopg.connect(url)
    first = holder.execute(
        "SELECT old_id FROM uuidguard.id_map WHERE state = 'pending' ORDER BY user_id, old_id LIMIT 1"
    ).fetchone()
    assert first is not None
    holder.execute("SELECT 1 FROM documents WHERE id = %s FOR UPDATE", (first[0],))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UUIDGUARD_")}
    env.update(
        UUIDGUARD_MIGRATE__LEASE=f"{LEASE:.0f}s",
        UUIDGUARD_MIGRATE__LOCK_TIMEOUT="60s",
        UUIDGUARD_MIGRATE__START_BATCH="20",
        UUIDGUARD_MIGRATE__MAX_BATCH="20",
    )
    hung = subprocess.Popen(
        [EXE, "migrate", "run", "--dsn", url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _waiting_for_a_lock(url):
            assert hung.poll() is None, hung.communicate()
            assert time.monotonic() < deadline, "the worker never reached the held document"
            time.sleep(0.05)
        hung.send_signal(signal.SIGSTOP)
        holder.rollback()  # the worker's statement completes; the worker itself is frozen
        started = time.monotonic()
        state = runner.run_batches(engine, settings, run_id, "w2", Pace(size=20, max_size=20))
        waited = time.monotonic() - started
    finally:
        holder.close()
        hung.send_signal(signal.SIGCONT)
    out, err = hung.communicate(timeout=60)
    assert state == "completed"
    # the 20 documents of the frozen batch came back only when the server ended its session
    assert waited >= LEASE * 0.9
    # the woken worker finds its session gone: its batch is recorded as failed (it was rolled
    # back by the server), it reconnects, sees the run completed by the other, and stops
    assert hung.returncode == 0, err
    assert "Traceback" not in err
    assert "is completed" in out
    with engine.connect() as conn:
        st = runs.status(conn, settings, run_id)
        twice = conn.execute(
            sa.text(
                "SELECT count(*) FROM (SELECT ref, k.value FROM uuidguard.rewrites,"
                " jsonb_array_elements(keys) k GROUP BY 1, 2 HAVING count(*) > 1) x"
            )
        ).scalar_one()
        workers = set(
            conn.execute(
                sa.text("SELECT DISTINCT worker FROM uuidguard.batches WHERE state = 'committed'")
            ).scalars()
        )
    assert st["state"] == "completed" and st["documents"]["pending"] == 0
    assert twice == 0
    assert workers == {"w2"}
    report = verify.run(engine, settings, run_id)
    assert report["ok"], report
    runner.rollback(engine, settings, run_id, everything=True, force=True)
    with engine.connect() as conn:
        assert runs.fingerprint(conn, settings) == fp_before
