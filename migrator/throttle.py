"""Health throttling and run windows before each batch (DESIGN §3.3): signals, verdicts, waits.

Before every batch a worker asks `Throttle.check` whether to go, wait or pause. Each signal is
one catalog read (or the user's query, or a Prometheus instant query) compared with its `max`
(wait) and `critical` (pause the run, audited) thresholds; the flag file and the cron windows
need no database. `gate` is the loop around it: it sleeps while the verdict is "wait", records
each continuous wait as one row of the journal's `waits` table, honours a pause or rollback
issued meanwhile, and retargets the pace inside low-traffic windows.

The user's query and Prometheus are tried when a run starts (`Throttle.validate`): a failure
there is an error that stops the run before any batch. Once running, a failure of either is a
wait with its reason (`query`, `prometheus`): the run does not go on blind, nor does it stop.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

import httpx
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from migrator import db, journal, runs
from migrator.errors import UuidguardError
from migrator.pace import Pace
from migrator.settings import Settings, cron_trigger

log = logging.getLogger(__name__)

Decision = Literal["go", "wait", "pause"]


@dataclass(frozen=True)
class Verdict:
    """What to do before the next batch, and why: the signal, what it measured, its limit."""

    decision: Decision
    reason: str | None = None
    value: float | None = None
    threshold: float | None = None
    detail: str = ""


GO = Verdict("go")


@dataclass(frozen=True)
class Sample:
    """One signal's measurement, with a phrase saying what it is (no threshold in it)."""

    value: float
    detail: str


class ThrottleError(UuidguardError):
    """A throttle signal cannot be measured when the run starts (query or Prometheus)."""

    retryable = True

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"config {key}: {problem}. Fix: {fix}")
        self.key = key


class _Unavailable(Exception):
    """A signal could not be measured this time; the message says why."""


# the mapped tables' oids, and their TOAST tables' (autovacuum works on those too)
_TABLES_SQL = sa.text(
    """
    SELECT c.oid, c.reltoastrelid, n.nspname || '.' || c.relname AS name
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN unnest(CAST(:schemas AS text[]), CAST(:tables AS text[])) AS m(s, t)
        ON n.nspname = m.s AND c.relname = m.t
    """
)

# whether this role sees other roles' sessions in full, and may list the archiver's status
_PRIVILEGES_SQL = sa.text(
    """
    SELECT r.rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') AS all_stats,
           CASE WHEN to_regprocedure('pg_catalog.pg_ls_archive_statusdir()') IS NULL THEN false
                ELSE has_function_privilege(to_regprocedure('pg_catalog.pg_ls_archive_statusdir()'),
                                            'EXECUTE') END AS archive
      FROM pg_roles r WHERE r.rolname = current_user
    """
)

# sessions of this database waiting for a lock on a mapped table: a table lock not granted, or
# a row lock (the first waiter for a row holds its tuple lock and waits for the holder's xid)
_LOCK_WAITERS_SQL = sa.text(
    """
    WITH here AS (SELECT oid FROM pg_database WHERE datname = current_database()),
    waiting AS (
        SELECT w.pid, w.relation
          FROM pg_locks w, here
         WHERE NOT w.granted AND w.database = here.oid AND w.relation = ANY(:oids)
        UNION
        SELECT w.pid, t.relation
          FROM pg_locks w
          JOIN pg_locks t ON t.pid = w.pid AND t.granted AND t.locktype = 'tuple'
          JOIN here ON t.database = here.oid
         WHERE NOT w.granted AND w.locktype = 'transactionid' AND t.relation = ANY(:oids)
    )
    SELECT count(DISTINCT pid) AS sessions, array_agg(DISTINCT relation) AS relations
      FROM waiting WHERE pid <> pg_backend_pid()
    """
)

# the oldest open transaction on this database, other than this session's and uuidguard's
_OLDEST_TRANSACTION_SQL = sa.text(
    """
    SELECT pid, state, EXTRACT(epoch FROM clock_timestamp() - xact_start) AS age
      FROM pg_stat_activity
     WHERE datname = current_database() AND backend_type = 'client backend'
       AND pid <> pg_backend_pid() AND application_name IS DISTINCT FROM :application_name
       AND xact_start IS NOT NULL
     ORDER BY xact_start
     LIMIT 1
    """
)

# the largest replay lag among the replicas streaming from this server (none: no row)
_REPLICA_LAG_SQL = sa.text(
    """
    SELECT application_name, COALESCE(EXTRACT(epoch FROM replay_lag), 0) AS lag
      FROM pg_stat_replication
     ORDER BY replay_lag DESC NULLS LAST
     LIMIT 1
    """
)

# WAL segments the archiver has yet to archive
_ARCHIVE_BACKLOG_SQL = sa.text(
    "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
)

# mapped tables (or their TOAST tables) an autovacuum worker is vacuuming now
_AUTOVACUUM_SQL = sa.text(
    """
    SELECT DISTINCT v.relid
      FROM pg_stat_progress_vacuum v
      JOIN pg_stat_activity a ON a.pid = v.pid
     WHERE a.backend_type = 'autovacuum worker' AND v.datname = current_database()
       AND v.relid = ANY(:oids)
    """
)

# client connections of the whole server against max_connections
_CONNECTIONS_SQL = sa.text(
    """
    SELECT count(*) FILTER (WHERE backend_type = 'client backend') AS used,
           current_setting('max_connections')::int AS allowed
      FROM pg_stat_activity
    """
)


def safe_url(url: str) -> str:
    """A URL without credentials, for messages and the journal."""
    return re.sub(r"//[^/@]*@", "//", url)


def _seconds(value: float) -> str:
    return f"{value:g} s" if value < 10 else f"{value:,.0f} s"


def _count(value: float) -> str:
    return f"{value:g}"


def _share(value: float) -> str:
    return f"{value * 100:.3g}%"


#: the signals read from the database, in the order their waits are reported
DATABASE_SIGNALS = (
    "lock_waiters",
    "transaction_age",
    "replica_lag",
    "archive_backlog",
    "autovacuum",
    "connections",
    "query",
)
_FORMATS = {"transaction_age": _seconds, "replica_lag": _seconds, "connections": _share}


class Windows:
    """The configured cron windows; "now is inside" = the expression fires in the current minute."""

    def __init__(self, allowed: Sequence[str], low_traffic: Sequence[str], timezone: str) -> None:
        self.allowed = [(expr, cron_trigger(expr, timezone)) for expr in allowed]
        self.low_traffic = [(expr, cron_trigger(expr, timezone)) for expr in low_traffic]

    @staticmethod
    def _inside(triggers: Iterable[tuple[str, Any]], now: datetime) -> bool:
        minute = now.replace(second=0, microsecond=0)
        return any(t.get_next_fire_time(None, minute) == minute for _, t in triggers)

    def is_allowed(self, now: datetime) -> bool:
        return not self.allowed or self._inside(self.allowed, now)

    def is_low_traffic(self, now: datetime) -> bool:
        return self._inside(self.low_traffic, now)

    def next_opening(self, now: datetime) -> datetime | None:
        """When the next allowed window opens (None: never again)."""
        fires = [t.get_next_fire_time(None, now) for _, t in self.allowed]
        found = [f for f in fires if f is not None]
        return min(found) if found else None


class Throttle:
    """Decides before each batch whether to go, wait or pause; see the module docstring.

    `tables`: (schema, table) of the mapped tables whose locks and vacuums count; default,
    those of the settings' mapping. `clock` and `sleep` are injected so tests control time.
    """

    def __init__(
        self,
        settings: Settings,
        tables: Sequence[tuple[str, str]] | None = None,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        if tables is None:
            schema = settings.mapping.schema_
            names = [settings.mapping.documents.table] + [
                r.table for r in settings.reference_columns()
            ]
            tables = [(schema, name) for name in dict.fromkeys(names)]
        self.tables = list(tables)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.sleep = sleep
        w = settings.windows
        self.windows = Windows(w.allowed, w.low_traffic, w.timezone)
        #: what the throttle cannot see on this server, said once (and logged)
        self.notes: list[str] = []
        self._oids: dict[int, str] | None = None
        self._archive_allowed = True
        #: a healthy reading holds for check_interval: batches of a fifth of a second need not
        #: each pay for a round of catalog queries (the flag file and windows are always read)
        self._healthy_until = 0.0

    # -- the decision ------------------------------------------------------------------------

    def check(self, conn: Connection, now: datetime) -> Verdict:
        """Go, wait or pause, from every enabled signal: a critical one anywhere pauses; else
        the first signal at its max makes the worker wait. The database signals are read in
        one short read-only transaction of their own, never inside a batch."""
        t = self.settings.throttle
        if t.flag_file is not None and t.flag_file.exists():
            return Verdict(
                "wait",
                "flag_file",
                detail=f"the flag file {t.flag_file} exists (remove it to let batches run)",
            )
        if not self.windows.is_allowed(now):
            opens = self.windows.next_opening(now)
            when = f"; the next one opens at {opens.isoformat()}" if opens else ""
            return Verdict("wait", "window", detail=f"outside the allowed windows{when}")
        if time.monotonic() < self._healthy_until:
            return GO
        verdicts: list[Verdict] = []
        with conn.begin():
            conn.execute(sa.text("SET TRANSACTION READ ONLY"))
            db.set_local_timeouts(conn, t.check_timeout, t.check_timeout)
            self._prepare(conn)
            for reason in DATABASE_SIGNALS:
                high, critical = self.limits(reason)
                if high or critical:
                    measure = partial(getattr(self, reason), conn)
                    verdicts.append(_measured(reason, measure, high, critical))
        if t.prometheus_query:
            high, critical = self.limits("prometheus")
            verdicts.append(_measured("prometheus", self.prometheus, high, critical))
        for decision in ("pause", "wait"):
            for v in verdicts:
                if v.decision == decision:
                    return v
        self._healthy_until = time.monotonic() + t.check_interval.total_seconds()
        return GO

    def limits(self, reason: str) -> tuple[float, float]:
        """A signal's (max, critical), in seconds for durations; 0 is off."""
        t = self.settings.throttle
        if reason == "autovacuum":
            return (1 if t.autovacuum else 0), 0
        if reason == "query" and not t.query:
            return 0, 0
        limits = getattr(t, f"{reason}_max"), getattr(t, f"{reason}_critical")
        high, critical = (v.total_seconds() if isinstance(v, timedelta) else v for v in limits)
        return float(high), float(critical)

    def validate(self, conn: Connection) -> None:
        """At the start of a run: the configured query and Prometheus must answer."""
        t = self.settings.throttle
        if t.query:
            with conn.begin():
                conn.execute(sa.text("SET TRANSACTION READ ONLY"))
                db.set_local_timeouts(conn, t.check_timeout, t.check_timeout)
                try:
                    self.query(conn)
                except _Unavailable as exc:
                    raise ThrottleError(
                        "throttle.query",
                        str(exc),
                        "correct the query (it runs read-only and must return one number), or"
                        " set throttle.query to an empty string",
                    ) from exc
        if t.prometheus_query:
            try:
                self.prometheus()
            except _Unavailable as exc:
                raise ThrottleError(
                    "throttle.prometheus_url",
                    str(exc),
                    "start Prometheus or correct throttle.prometheus_url and"
                    " throttle.prometheus_query, or set both to empty strings to run without it",
                ) from exc

    def batch_time(self, now: datetime, base: float) -> float:
        """The target batch time now: the low-traffic one inside a low-traffic window."""
        if self.windows.is_low_traffic(now):
            return self.settings.windows.low_traffic_batch_time
        return base

    # -- the signals -------------------------------------------------------------------------

    def _prepare(self, conn: Connection) -> None:
        """Once: the mapped tables' oids, and what this role may not see (said once)."""
        if self._oids is not None:
            return
        rows = conn.execute(
            _TABLES_SQL,
            {"schemas": [s for s, _ in self.tables], "tables": [t for _, t in self.tables]},
        ).all()
        self._oids = {}
        for oid, toast, name in rows:
            self._oids[int(oid)] = name
            if toast:
                self._oids[int(toast)] = name
        all_stats, archive = conn.execute(_PRIVILEGES_SQL).one()
        if not all_stats:
            self._note(
                "this role sees no other role's transactions: transaction ages of other roles"
                " are not checked; GRANT pg_monitor to it"
            )
        if not archive:
            self._archive_allowed = False
            self._note(
                "this role may not list the WAL archiver's status: the archive backlog is not"
                " checked; GRANT pg_monitor to it"
            )

    def _note(self, note: str) -> None:
        self.notes.append(note)
        log.warning("throttle signal limited: %s", note)

    def _names(self, oids: Iterable[int | None]) -> str:
        assert self._oids is not None
        return ", ".join(sorted({self._oids[o] for o in oids if o in self._oids}))

    def lock_waiters(self, conn: Connection) -> Sample | None:
        self._prepare(conn)
        assert self._oids is not None
        sessions, relations = conn.execute(_LOCK_WAITERS_SQL, {"oids": list(self._oids)}).one()
        if not sessions:
            return Sample(0, "no session waits for a lock on a mapped table")
        noun = "session waits" if sessions == 1 else "sessions wait"
        return Sample(sessions, f"{sessions} {noun} for locks on {self._names(relations)}")

    def transaction_age(self, conn: Connection) -> Sample | None:
        row = conn.execute(
            _OLDEST_TRANSACTION_SQL,
            {"application_name": self.settings.database.application_name},
        ).one_or_none()
        if row is None:
            return Sample(0, "no other transaction is open")
        age = float(row.age)
        return Sample(
            age,
            f"a transaction has been open for {_seconds(round(age, 1))} (pid {row.pid}, {row.state})",
        )

    def replica_lag(self, conn: Connection) -> Sample | None:
        row = conn.execute(_REPLICA_LAG_SQL).one_or_none()
        if row is None:
            return None  # no replica: nothing to wait for
        lag = float(row.lag)
        return Sample(
            lag, f"replica {row.application_name} replays {_seconds(round(lag, 1))} behind"
        )

    def archive_backlog(self, conn: Connection) -> Sample | None:
        self._prepare(conn)
        if not self._archive_allowed:
            return None
        ready = int(conn.execute(_ARCHIVE_BACKLOG_SQL).scalar_one())
        return Sample(ready, f"{ready} WAL segments wait for the archiver")

    def autovacuum(self, conn: Connection) -> Sample | None:
        self._prepare(conn)
        assert self._oids is not None
        busy = conn.execute(_AUTOVACUUM_SQL, {"oids": list(self._oids)}).scalars().all()
        if not busy:
            return Sample(0, "no autovacuum on a mapped table")
        return Sample(len(busy), f"autovacuum is working on {self._names(busy)}")

    def connections(self, conn: Connection) -> Sample | None:
        used, allowed = conn.execute(_CONNECTIONS_SQL).one()
        share = used / allowed
        return Sample(share, f"{used} of {allowed} connections are in use ({share:.0%})")

    def query(self, conn: Connection) -> Sample:
        """The user's query, in a savepoint of the caller's read-only transaction; passed to
        the driver as written (no parameters, so `%` and `:name` mean what SQL says)."""
        sql = self.settings.throttle.query
        try:
            with conn.begin_nested():
                rows = conn.execution_options(no_parameters=True).exec_driver_sql(sql).all()
        except sa_exc.DBAPIError as exc:
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise _Unavailable(f"the throttle query failed: {reason}") from exc
        if len(rows) != 1 or len(rows[0]) != 1:
            raise _Unavailable(
                f"the throttle query returned {len(rows)} rows of"
                f" {len(rows[0]) if rows else 0} columns, not one number"
            )
        value = rows[0][0]
        if value is None:
            return Sample(0, "the throttle query returned NULL (read as 0)")
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise _Unavailable(f"the throttle query returned {value!r}, not a number") from exc
        return Sample(number, f"the throttle query returned {number:g}")

    def prometheus(self) -> Sample | None:
        """The instant query's value: a scalar, or a vector of one sample. An empty vector or
        NaN (no traffic, say) is no signal; several samples are an error (aggregate them)."""
        t = self.settings.throttle
        where = safe_url(t.prometheus_url)
        try:
            resp = httpx.get(
                f"{t.prometheus_url}/api/v1/query",
                params={"query": t.prometheus_query},
                timeout=t.check_timeout.total_seconds(),
            )
        except httpx.HTTPError as exc:
            raise _Unavailable(
                f"Prometheus at {where} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            body = resp.json()
        except ValueError as exc:
            raise _Unavailable(
                f"Prometheus at {where} answered HTTP {resp.status_code} without JSON"
            ) from exc
        if resp.status_code != 200 or body.get("status") != "success":
            raise _Unavailable(
                f"Prometheus at {where} refused the query: {body.get('error') or resp.status_code}"
            )
        data = body.get("data", {})
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar":
            raw = result[1]
        elif kind == "vector" and len(result) == 1:
            raw = result[0]["value"][1]
        elif kind == "vector" and not result:
            return None
        elif kind == "vector":
            raise _Unavailable(
                f"the Prometheus query returned {len(result)} series, not one"
                " (aggregate it, e.g. with max(...))"
            )
        else:
            raise _Unavailable(f"the Prometheus query returned a {kind}, not a number")
        value = float(raw)
        if math.isnan(value):
            return None
        return Sample(value, f"the Prometheus query returned {value:g}")


def _measured(
    reason: str, measure: Callable[[], Sample | None], high: float, critical: float
) -> Verdict:
    """Measure one signal and judge it; one that cannot be measured now makes the worker wait."""
    try:
        sample = measure()
    except _Unavailable as exc:
        return Verdict("wait", reason, detail=str(exc))
    return _judge(reason, sample, high, critical, _FORMATS.get(reason, _count))


def _judge(
    reason: str,
    sample: Sample | None,
    high: float,
    critical: float,
    fmt: Callable[[float], str],
) -> Verdict:
    """A sample against its thresholds (0: off): at or above critical pauses, at max waits."""
    if sample is None:
        return GO
    if critical and sample.value >= critical:
        return Verdict(
            "pause", reason, sample.value, critical, f"{sample.detail} (critical {fmt(critical)})"
        )
    if high and sample.value >= high:
        return Verdict("wait", reason, sample.value, high, f"{sample.detail} (max {fmt(high)})")
    return GO


# -- waiting ---------------------------------------------------------------------------------


def _tables(settings: Settings) -> tuple[sa.Table, sa.Table]:
    schema = settings.journal_schema
    md = journal.metadata(schema)
    return md.tables[f"{schema}.runs"], md.tables[f"{schema}.waits"]


def _elapsed(waits: sa.Table) -> sa.ColumnElement[Any]:
    # the server's clock, like started_at: `migrate status` compares them with batches'
    return sa.func.extract("epoch", sa.func.clock_timestamp() - waits.c.started_at)


def _record(
    conn: Connection,
    waits: sa.Table,
    episode: tuple[int, str] | None,
    run_id: int,
    worker: str,
    verdict: Verdict,
) -> tuple[int, str]:
    """Start a wait row for a new reason (ending the previous one), or bring it up to date."""
    if episode is not None and episode[1] == verdict.reason:
        conn.execute(
            sa.update(waits)
            .where(waits.c.id == episode[0])
            .values(
                seconds=_elapsed(waits),
                detail=verdict.detail,
                value=verdict.value,
                threshold=verdict.threshold,
            )
        )
        return episode
    if episode is not None:
        _finish(conn, waits, episode)
    wait_id = conn.execute(
        sa.insert(waits)
        .values(
            run_id=run_id,
            worker=worker,
            reason=verdict.reason,
            detail=verdict.detail,
            value=verdict.value,
            threshold=verdict.threshold,
            action=verdict.decision,
            started_at=sa.func.clock_timestamp(),
            seconds=0.0,
        )
        .returning(waits.c.id)
    ).scalar_one()
    log.info("throttle wait", extra={"run": run_id, "reason": verdict.reason})
    return int(wait_id), str(verdict.reason)


def _finish(conn: Connection, waits: sa.Table, episode: tuple[int, str]) -> None:
    conn.execute(sa.update(waits).where(waits.c.id == episode[0]).values(seconds=_elapsed(waits)))


def gate(
    conn: Connection,
    settings: Settings,
    throttle: Throttle,
    run_id: int,
    worker: str,
    pace: Pace,
    base_seconds: float,
    actor: str,
    stop: threading.Event | None = None,
) -> str | None:
    """Before a batch: wait while the throttle says so. Returns None when the batch may run
    (the pace retargeted for the current window), or the run's state when it is no longer
    running: paused here on a critical signal (audited), or paused or rolled back by someone
    else meanwhile; or, once `stop` is set, the state as it stands (this worker leaves, the run
    goes on elsewhere). Each continuous wait for one reason is one committed `waits` row whose
    seconds grow as it goes, so `uuidguard migrate status` shows it from any process."""
    runs_t, waits = _tables(settings)
    episode: tuple[int, str] | None = None
    while True:
        leaving = stop is not None and stop.is_set()
        if leaving or episode is not None:
            # while waiting (or leaving), honour a pause or rollback from elsewhere; otherwise
            # the batch itself reads the run's state under its lock, no need to ask twice
            with conn.begin():
                state = conn.execute(
                    sa.select(runs_t.c.state).where(runs_t.c.id == run_id)
                ).scalar_one()
                if (leaving or state != "running") and episode is not None:
                    _finish(conn, waits, episode)
            if leaving or state != "running":
                return str(state)
        now = throttle.clock()
        verdict = throttle.check(conn, now)
        if verdict.decision == "go":
            if episode is not None:
                with conn.begin():
                    _finish(conn, waits, episode)
            # a batch time set on the run (`uuidguard migrate set`) wins over the windows: the
            # batch applies it after this (runner.forward_batch)
            pace.retarget(throttle.batch_time(now, base_seconds))
            return None
        with conn.begin():
            if verdict.decision == "pause":
                if episode is not None:
                    _finish(conn, waits, episode)
                _record(conn, waits, None, run_id, worker, verdict)
                runs.set_state(
                    conn,
                    settings,
                    run_id,
                    "paused",
                    actor,
                    "pause",
                    reason=f"throttle {verdict.reason}: {verdict.detail}",
                    source="throttle",
                    allowed_from=("running",),
                )
                return str(
                    conn.execute(
                        sa.select(runs_t.c.state).where(runs_t.c.id == run_id)
                    ).scalar_one()
                )
            episode = _record(conn, waits, episode, run_id, worker, verdict)
        interval = settings.throttle.check_interval.total_seconds()
        if stop is not None:
            stop.wait(interval)
        else:
            throttle.sleep(interval)
