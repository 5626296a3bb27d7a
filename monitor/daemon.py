"""`uuidguard serve`'s engine room: the scheduler, the leader lock, probes and batches.

APScheduler (3.x) runs each probe on its own interval with jitter, one instance at a time,
coalescing missed runs. Only the leader — the replica holding a PostgreSQL advisory lock on
its own connection — runs the probes that read the mapped tables; every replica runs the
journal probe and may run migration batches (SKIP LOCKED claims keep them apart). A failing
probe backs off exponentially up to ten intervals and is never disabled; the database going
away fails probes, not the daemon.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Engine

from migrator import db, journal
from migrator.settings import Settings
from monitor import migration_probe
from monitor.probing import ProbeContext, ProbeOutput, ProbeSpec, run_probe
from monitor.store import Store

log = logging.getLogger("uuidguard.daemon")
HEARTBEAT = timedelta(seconds=2)
BACKOFF_CAP_INTERVALS = 10
#: probes every replica runs (they read only the journal)
EVERY_REPLICA = {"migration"}


class Leader:
    """One leader per database: the holder of an advisory lock on a connection of its own.
    The lock dies with the session, so a killed leader's lock is free at the next heartbeat
    of another replica: failover within one heartbeat."""

    def __init__(self, engine: Engine, key: int) -> None:
        self.engine = engine
        self.key = key
        self.conn: Connection | None = None
        self.is_leader = False

    def heartbeat(self) -> bool:
        try:
            if self.conn is None:
                self.conn = self.engine.connect()
                self.conn.execute(sa.text("SET application_name = 'uuidguard-leader'"))
                self.conn.commit()
            if self.is_leader:
                self.conn.execute(sa.text("SELECT 1"))
            else:
                self.is_leader = bool(
                    self.conn.execute(
                        sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}
                    ).scalar_one()
                )
            self.conn.commit()
        except sa_exc.DBAPIError:
            self.drop()
        return self.is_leader

    def drop(self) -> None:
        self.is_leader = False
        if self.conn is not None:
            try:
                self.conn.invalidate()
                self.conn.close()
            except sa_exc.DBAPIError:
                pass
            self.conn = None

    def release(self) -> None:
        if self.conn is not None and self.is_leader:
            try:
                self.conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self.conn.commit()
            except sa_exc.DBAPIError:
                pass
        self.drop()


class Daemon:
    def __init__(self, settings: Settings, specs: list[ProbeSpec]) -> None:
        self.settings = settings
        self.engine = db.create_engine(settings)
        self.specs = [*specs, migration_probe.spec(settings)]
        self.store = Store(self.specs)
        self.contexts = {s.name: ProbeContext() for s in self.specs}
        self.leader = Leader(self.engine, settings.serve.leader_lock_key)
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )
        self.stop = threading.Event()
        self.worker = f"{socket.gethostname()}:{os.getpid()}:daemon"
        self.database_ok = False
        self.journal_ok = False
        #: the latest error of a background action (a rollback from the API), for /api/v1/status
        self.last_error: str | None = None
        from monitor.slack import Slack

        self.slack = Slack(settings, self.engine)
        self._socket_mode: Any = None
        self._migration: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._heartbeat()
        self.scheduler.add_job(
            self._heartbeat, IntervalTrigger(seconds=HEARTBEAT.total_seconds()), id="heartbeat"
        )
        jitter = int(self.settings.probes.jitter.total_seconds())
        now = datetime.now(UTC)
        for spec in self.specs:
            self.scheduler.add_job(
                self._run,
                IntervalTrigger(seconds=spec.interval.total_seconds(), jitter=jitter or None),
                args=[spec],
                id=f"probe:{spec.name}",
                next_run_time=now,
            )
        self.scheduler.start()
        self.slack.start()
        try:
            self._socket_mode = self.slack.socket_mode()
        except Exception:  # Slack unreachable must not keep the daemon from starting
            log.exception("slack socket mode")
        if self.settings.serve.run_migrations:
            self._migration = threading.Thread(
                target=self._migrate, name="uuidguard-migration", daemon=True
            )
            self._migration.start()

    def shutdown(self) -> None:
        """The batch in flight finishes (or PostgreSQL rolls it back), locks are released."""
        self.stop.set()
        self.scheduler.shutdown(wait=True)
        if self._migration is not None:
            self._migration.join(timeout=60)
        self.leader.release()
        if self._socket_mode is not None:
            self._socket_mode.close()
        self.slack.stop()
        self.engine.dispose()

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running) and not self.stop.is_set()

    # -- jobs -----------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        was = self.store.leader
        self.store.leader = self.leader.heartbeat()
        if self.store.leader and not was and self.scheduler.running:
            # a new leader (at start, or after a failover) runs every probe now rather than at
            # its next tick, which for the full sweep may be half an hour away
            now = datetime.now(UTC)
            for spec in self.specs:
                if spec.name not in EVERY_REPLICA:
                    with contextlib.suppress(LookupError):
                        self.scheduler.modify_job(f"probe:{spec.name}", next_run_time=now)
        try:
            with self.engine.connect() as conn:
                self.journal_ok = (
                    journal.current(conn, self.settings.journal_schema) == journal.head()
                )
            self.database_ok = True
        except sa_exc.DBAPIError:
            self.database_ok = False

    def _run(self, spec: ProbeSpec) -> None:
        if self.stop.is_set():
            return
        if spec.name not in EVERY_REPLICA and not self.leader.is_leader:
            return
        started = time.monotonic()
        try:
            out, seconds = run_probe(self.engine, self.settings, spec, self.contexts[spec.name])
        except (sa_exc.DBAPIError, psycopg.Error, OSError) as exc:
            seconds = time.monotonic() - started
            orig = getattr(exc, "orig", exc)
            result = "timeout" if isinstance(orig, psycopg.errors.QueryCanceled) else "error"
            message = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
            failures = self.store.failure(spec.name, result, message, seconds)
            self._back_off(spec, failures)
            log.warning("probe %s: %s (%s)", spec.name, result, message)
            self._keep(spec, result, seconds, error=message)
            return
        except Exception as exc:  # a bug in one probe must not stop the others
            seconds = time.monotonic() - started
            message = f"{type(exc).__name__}: {exc}"
            failures = self.store.failure(spec.name, "error", message, seconds)
            self._back_off(spec, failures)
            log.exception("probe %s failed", spec.name)
            self._keep(spec, "error", seconds, error=message)
            return
        self.store.success(spec.name, out, seconds)
        self._keep(spec, "success", seconds, output=out)

    def _keep(
        self,
        spec: ProbeSpec,
        result: str,
        seconds: float,
        output: ProbeOutput | None = None,
        error: str | None = None,
    ) -> None:
        """The probe's latest result into the journal (probe_results), for readers without a
        daemon; a failed run keeps the last success's samples. The journal being unreachable
        costs this row, never the probe."""
        t = journal.table(self.settings.journal_schema, "probe_results")
        now = sa.func.now()
        values: dict[str, Any] = {
            "probe": spec.name,
            "result": result,
            "ran_at": now,
            "seconds": seconds,
            "worker": self.worker,
            "error": error,
        }
        if output is not None:
            values |= {
                "last_success_at": now,
                "samples": [
                    {"metric": x.metric, "value": x.value, "labels": dict(x.labels)}
                    for x in output.samples
                ],
                "detail": json.loads(json.dumps(output.detail, default=str)),
            }
        stmt = pg.insert(t).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.probe],
            set_={k: stmt.excluded[k] for k in values if k != "probe"},
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt)
        except sa_exc.DBAPIError as exc:
            log.debug("probe %s: result not journaled (%s)", spec.name, exc)

    def _back_off(self, spec: ProbeSpec, failures: int) -> None:
        interval = spec.interval.total_seconds()
        delay = min(interval * 2 ** (failures - 1), interval * BACKOFF_CAP_INTERVALS)
        if delay > interval and not self.stop.is_set():
            with contextlib.suppress(LookupError):
                self.scheduler.modify_job(
                    f"probe:{spec.name}", next_run_time=datetime.now(UTC) + timedelta(seconds=delay)
                )

    def _migrate(self) -> None:
        """Run batches of the run in state `running`, with the migrator's throttle and windows."""
        from migrator import runner, runs
        from migrator.pace import Pace

        ms = self.settings.migrate
        while not self.stop.wait(1.0):
            try:
                with self.engine.connect() as conn:
                    active = runs.active_run(conn, self.settings)
                    if active is None:
                        continue
                    state = runs.resolve(conn, self.settings, active)["state"]
                if state != "running":
                    continue
                pace = Pace(ms.batch_time, ms.min_batch, ms.max_batch, ms.start_batch)
                runner.run_batches(
                    self.engine,
                    self.settings,
                    active,
                    self.worker,
                    pace,
                    on_batch=functools.partial(self._after_batch, active),
                    actor="daemon",
                    joining=True,
                    stop=self.stop,
                )
            except (sa_exc.DBAPIError, psycopg.Error) as exc:
                log.warning("migration: %s", str(getattr(exc, "orig", exc)).splitlines()[0])
            except Exception:
                log.exception("migration worker")

    def _after_batch(self, run_id: int, result: Any) -> None:
        """The structural canary on the batch's documents, at once: documents retrieval found
        before and cannot find now pause the run and roll this batch back, without waiting
        for Prometheus and Alertmanager (settings.policy.batch_canary)."""
        from migrator import runner, runs
        from monitor import policy

        if not self.settings.policy.batch_canary:
            return
        with self.engine.connect() as conn, conn.begin():
            lost = policy.batch_canary(conn, self.settings, result.batch_id)
        self.store.batch_canary(lost=bool(lost))
        if not lost:
            return
        reason = (
            f"the canary after batch {result.batch_id} cannot find {len(lost)} of its"
            " documents; that batch was rolled back"
        )
        log.error("run %s: %s", run_id, reason)
        with self.engine.connect() as conn, conn.begin():
            runs.set_state(
                conn,
                self.settings,
                run_id,
                "paused",
                "daemon",
                "pause",
                reason=reason,
                source="daemon",
                allowed_from=("running",),
            )
        if not self.settings.policy.dry_run:
            runner.rollback(
                self.engine,
                self.settings,
                run_id,
                last=1,
                actor="batch canary",
                source="daemon",
                reason=reason,
            )

    def status(self) -> dict[str, Any]:
        probes = self.store.status()
        migration = next((p["detail"] for p in probes if p["probe"] == "migration"), None)
        return {
            "leader": self.leader.is_leader,
            "database_ok": self.database_ok,
            "journal_current": self.journal_ok,
            "scheduler_running": self.running,
            "probes": [p for p in probes if p["probe"] != "migration"],
            "migration": migration,
            "last_error": self.last_error,
        }
