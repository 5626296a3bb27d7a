"""Several worker processes on one run: each claims its own batches with SKIP LOCKED."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
from collections.abc import Callable
from pathlib import Path

from migrator import db, runner
from migrator import settings as settings_mod
from migrator.pace import Pace


def _worker(
    config: Path | None, dsn: str | None, run_id: int, pace: Pace, max_batches: int | None
) -> None:
    overrides = {"database": {"dsn": dsn}} if dsn else {}
    s = settings_mod.load_settings(config, **overrides)
    engine = db.create_engine(s)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    runner.run_batches(engine, s, run_id, worker, pace, max_batches, joining=True)


def run_workers(
    settings: settings_mod.Settings,
    config: Path | None,
    dsn: str | None,
    run_id: int,
    pace: Pace,
    workers: int,
    max_batches: int | None,
    on_batch: Callable[[runner.BatchResult], None] | None,
) -> str:
    """Run `workers` processes (this one included) until the run stops; returns its state.

    Children are spawned, not forked, so none inherits this process's connections; each reads
    the same configuration. A child that fails makes the whole command fail, but its batch was
    rolled back by PostgreSQL and its documents are claimed by the others.
    """
    ctx = mp.get_context("spawn")
    children = [
        ctx.Process(
            target=_worker, args=(config, dsn, run_id, Pace(**vars(pace)), max_batches), daemon=True
        )
        for _ in range(workers - 1)
    ]
    for child in children:
        child.start()
    try:
        engine = db.create_engine(settings)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        state = runner.run_batches(engine, settings, run_id, worker, pace, max_batches, on_batch)
    finally:
        for child in children:
            child.join()
    failed = [c.exitcode for c in children if c.exitcode]
    if failed:
        raise runner.WorkerError(len(failed), workers)
    return state
