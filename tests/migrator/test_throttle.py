"""Health throttling and run windows on real PostgreSQL, real sessions and a real Prometheus."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa

from migrator import dataset, db, journal, runner, runs, seed
from migrator import throttle as throttle_mod
from migrator.idrule import IdRule
from migrator.pace import Pace
from migrator.settings import Settings, load_settings

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
FAST = {"check_interval": 0.05}
EXE = str(Path(sys.executable).parent / "uuidguard")


def _dsn(settings: Settings) -> str:
    assert settings.database.dsn is not None
    return settings.database.dsn.get_secret_value()


def _with(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """The test's settings with throttle (fast checks) and window options on top."""
    throttle = {**FAST, **sections.pop("throttle", {})}
    return load_settings(None, database={"dsn": _dsn(settings)}, throttle=throttle, **sections)


def _prepare(settings: Settings, documents: int = 60) -> tuple[sa.Engine, int]:
    """A small damaged dataset, the journal, and a planned run."""
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    ds = dataset.generate(dataset.DatasetSpec(documents=documents, seed=7, as_of=AS_OF), rule)
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        seed.seed(conn, ds, "public", "none", replace=False)
        journal.init(conn, settings.journal_schema)
    with engine.begin() as conn:
        run_id = runs.create(conn, settings, "A", AS_OF, "test")
    return engine, run_id


def _pace() -> Pace:
    return Pace(target_seconds=0.2, size=5, min_size=5, max_size=5)


def _until(what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll until `predicate` returns something truthy (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def _waits(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT reason, detail, value, threshold, action, seconds, worker"
                    " FROM uuidguard.waits ORDER BY id"
                )
            )
        )


def _batches(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM uuidguard.batches WHERE state = 'committed'")
            ).scalar_one()
        )


def _status(engine: sa.Engine, settings: Settings, run_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return runs.status(conn, settings, run_id)


class _Run(threading.Thread):
    """run_batches in a thread of the test process, its outcome kept."""

    def __init__(self, fn: Callable[[], str]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the test by outcome()
            self.error = exc

    def outcome(self) -> str | None:
        self.join(120)
        assert not self.is_alive(), "run_batches did not return"
        if self.error is not None:
            raise self.error
        return self.result


@contextlib.contextmanager
def _running(
    engine: sa.Engine,
    settings: Settings,
    run_id: int,
    max_batches: int | None = 2,
    throttle: throttle_mod.Throttle | None = None,
) -> Iterator[_Run]:
    """A worker on the run in the background; paused on the way out if still waiting."""
    worker = _Run(
        lambda: runner.run_batches(
            engine, settings, run_id, "w1", _pace(), max_batches, throttle=throttle
        )
    )
    worker.start()
    try:
        yield worker
    finally:
        if worker.is_alive():
            with engine.begin() as conn:
                runs.set_state(conn, settings, run_id, "paused", "test", "pause")
            worker.join(60)


def _waiting_for(engine: sa.Engine, reason: str) -> Callable[[], Any]:
    return lambda: [w for w in _waits(engine) if w.reason == reason]


# -- lock waiters, transactions, the user's query, connections -------------------------------


@pytest.mark.parametrize("lock", ["row", "access-exclusive"])
def test_lock_waiters_make_the_run_wait(settings: Settings, lock: str) -> None:
    """A session holding a lock on a mapped table while another waits for it: the worker waits
    (reason lock_waiters) before its first batch, and goes on once the lock is released."""
    s = _with(settings, throttle={"lock_waiters_max": 1})
    engine, run_id = _prepare(s)
    holder = psycopg.connect(_dsn(s))
    waiter = psycopg.connect(_dsn(s))
    if lock == "row":
        table = "public.document_chunks"
        chunk = holder.execute("SELECT id FROM document_chunks ORDER BY id LIMIT 1 FOR UPDATE")
        blocked = ("UPDATE document_chunks SET content = content WHERE id = %s", chunk.fetchone())
    else:
        table = "public.document_shares"
        holder.execute("LOCK TABLE document_shares IN ACCESS EXCLUSIVE MODE")
        blocked = ("SELECT count(*) FROM document_shares", None)
    waiter_pid = waiter.info.backend_pid
    blocked_thread = threading.Thread(target=lambda: waiter.execute(*blocked), daemon=True)
    blocked_thread.start()
    try:
        with engine.connect() as conn:
            _until(
                "the third session to wait",
                lambda: conn.execute(
                    sa.text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"),
                    {"p": waiter_pid},
                ).scalar(),
            )
            conn.rollback()
            verdict = throttle_mod.Throttle(s).check(conn, AS_OF)
        assert (verdict.decision, verdict.reason, verdict.value, verdict.threshold) == (
            "wait",
            "lock_waiters",
            1,
            1,
        )
        assert verdict.detail == f"1 session waits for locks on {table} (max 1)"
        with _running(engine, s, run_id) as worker:
            _until("a lock_waiters wait", _waiting_for(engine, "lock_waiters"))
            assert _batches(engine) == 0
            holder.rollback()
            blocked_thread.join(30)
            waiter.rollback()
            assert worker.outcome() == "running"
        assert _batches(engine) == 2
        (wait,) = _waits(engine)
        assert (wait.reason, wait.action, wait.value, wait.threshold) == (
            "lock_waiters",
            "wait",
            1,
            1,
        )
        assert table in wait.detail
    finally:
        holder.close()
        waiter.close()


def _idle_in_transaction(settings: Settings, older_than: float) -> psycopg.Connection[Any]:
    """A session left idle in a transaction, returned once that transaction is old enough."""
    idle = psycopg.connect(_dsn(settings))
    idle.execute("SELECT 1")
    pid = idle.info.backend_pid
    with psycopg.connect(_dsn(settings), autocommit=True) as probe:

        def aged() -> bool:
            row = probe.execute(
                "SELECT clock_timestamp() - xact_start > make_interval(secs => %s)"
                " FROM pg_stat_activity WHERE pid = %s",
                (older_than, pid),
            ).fetchone()
            return bool(row and row[0])

        _until("the idle transaction to age", aged)
    return idle


def test_an_old_transaction_makes_the_run_wait_until_it_ends(settings: Settings) -> None:
    """An idle-in-transaction session older than transaction_age_max: the worker waits, the wait
    shows in `migrate status` as it happens; once the session commits, the run proceeds."""
    s = _with(settings, throttle={"transaction_age_max": "1s"})
    engine, run_id = _prepare(s)
    idle = _idle_in_transaction(s, 1.0)
    try:
        with _running(engine, s, run_id) as worker:
            _until("a transaction_age wait", _waiting_for(engine, "transaction_age"))
            waiting = _until(
                "status to show the wait", lambda: _status(engine, s, run_id)["waiting"]
            )
            assert waiting["reason"] == "transaction_age" and waiting["worker"] == "w1"
            assert f"pid {idle.info.backend_pid}, idle in transaction" in waiting["detail"]
            assert _batches(engine) == 0
            idle.commit()
            assert worker.outcome() == "running"
    finally:
        idle.close()
    assert _batches(engine) == 2
    (wait,) = _waits(engine)
    assert wait.reason == "transaction_age" and wait.value >= 1 and wait.threshold == 1
    st = _status(engine, s, run_id)
    assert st["waiting"] is None  # batches ran after it
    assert list(st["waits"]) == ["transaction_age"] and st["waits"]["transaction_age"] > 0
    proc = subprocess.run(
        [EXE, "migrate", "status", str(run_id), "--dsn", _dsn(s)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("UUIDGUARD_")},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "throttle waits: transaction_age" in proc.stdout


def test_a_critical_transaction_age_pauses_the_run(settings: Settings) -> None:
    """Above transaction_age_critical the run is paused with the reason, audited, no batch run."""
    s = _with(settings, throttle={"transaction_age_max": 0, "transaction_age_critical": "1s"})
    engine, run_id = _prepare(s)
    idle = _idle_in_transaction(s, 1.0)
    try:
        state = runner.run_batches(engine, s, run_id, "w1", _pace())
    finally:
        idle.close()
    assert state == "paused"
    st = _status(engine, s, run_id)
    assert st["state"] == "paused" and st["reason"].startswith("throttle transaction_age: ")
    assert "(critical 1 s)" in st["reason"]
    assert _batches(engine) == 0
    (wait,) = _waits(engine)
    assert (wait.reason, wait.action, wait.threshold) == ("transaction_age", "pause", 1)
    with engine.connect() as conn:
        audit = conn.execute(
            sa.text("SELECT action, source, detail FROM uuidguard.audit ORDER BY id DESC LIMIT 1")
        ).one()
    assert audit.action == "pause" and audit.source == "throttle"
    assert audit.detail["state"] == "paused"


def test_the_sql_query_signal(settings: Settings) -> None:
    """The user's query: above query_max the worker waits; when the query starts failing
    mid-run the wait goes on with the error as its detail; back below max, the run goes on.
    The query reaches the server as written (`%` and `:x` are SQL, not parameters)."""
    query = "SELECT v FROM knob WHERE 'a%' LIKE 'a%' AND ':x' = ':x'"
    s = _with(settings, throttle={"query": query, "query_max": 3})
    engine, run_id = _prepare(s)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE knob (v float)"))
        conn.execute(sa.text("INSERT INTO knob VALUES (5)"))
    with _running(engine, s, run_id) as worker:
        (wait,) = _until("a query wait", _waiting_for(engine, "query"))
        assert wait.detail == "the throttle query returned 5 (max 3)" and wait.value == 5
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE knob RENAME TO knob_gone"))
        _until(
            "the failing query to show",
            lambda: "failed" in _waits(engine)[-1].detail,
        )
        assert _waits(engine)[-1].detail.startswith(
            'the throttle query failed: relation "knob" does not exist'
        )
        assert _batches(engine) == 0
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE knob_gone RENAME TO knob"))
            conn.execute(sa.text("UPDATE knob SET v = 0"))
        assert worker.outcome() == "running"
    assert _batches(engine) == 2
    assert [w.reason for w in _waits(engine)] == ["query"]  # one continuous wait


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("DELETE FROM documents RETURNING 1", "read-only transaction"),
        ("SELECT 1, 2", "returned 1 rows of 2 columns, not one number"),
        ("SELECT 'high'", "returned 'high', not a number"),
        ("SELEC 1", "syntax error"),
    ],
    ids=["writes", "two-columns", "text", "syntax"],
)
def test_a_bad_query_stops_the_run_before_any_batch(
    settings: Settings, query: str, problem: str
) -> None:
    """A query that cannot give a number: one clear error when the run starts; nothing ran."""
    s = _with(settings, throttle={"query": query, "query_max": 1})
    engine, run_id = _prepare(s)
    with pytest.raises(throttle_mod.ThrottleError) as info:
        runner.run_batches(engine, s, run_id, "w1", _pace())
    assert info.value.key == "throttle.query"
    assert problem in str(info.value) and "Fix: " in str(info.value)
    st = _status(engine, s, run_id)
    assert st["state"] == "planned" and st["documents"]["done"] == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM documents")).scalar_one() == 60


def test_connections_wait_and_a_pause_from_elsewhere_is_honoured(settings: Settings) -> None:
    """Connections above their share: the worker waits; a pause issued by another process
    while it waits ends the wait, and run_batches returns the paused state."""
    s = _with(settings, throttle={"connections_max": 0.001})
    engine, run_id = _prepare(s)
    with _running(engine, s, run_id, max_batches=None) as worker:
        (wait,) = _until("a connections wait", _waiting_for(engine, "connections"))
        assert wait.detail.endswith("(max 0.1%)") and "connections are in use" in wait.detail
        with engine.begin() as conn:
            runs.set_state(conn, s, run_id, "paused", "someone", "pause", allowed_from=("running",))
        assert worker.outcome() == "paused"
    assert _batches(engine) == 0
    assert _status(engine, s, run_id)["waiting"] is None


def test_the_flag_file_holds_every_worker_while_it_exists(settings: Settings) -> None:
    """While the flag file exists the worker waits (reason flag_file); removed, it goes on."""
    s = _with(settings)
    assert s.throttle.flag_file is not None
    engine, run_id = _prepare(s)
    s.throttle.flag_file.parent.mkdir(parents=True, exist_ok=True)
    s.throttle.flag_file.touch()
    with _running(engine, s, run_id) as worker:
        (wait,) = _until("a flag_file wait", _waiting_for(engine, "flag_file"))
        assert str(s.throttle.flag_file) in wait.detail
        assert _batches(engine) == 0
        s.throttle.flag_file.unlink()
        assert worker.outcome() == "running"
    assert _batches(engine) == 2


def test_a_stopping_daemon_leaves_a_wait_and_the_run_goes_on(settings: Settings) -> None:
    """`stop` set while the worker waits: run_batches returns at once, the run stays running
    for the other workers, and the wait is closed."""
    s = _with(settings, throttle={"check_interval": 3600})  # only `stop` can end the sleep
    assert s.throttle.flag_file is not None
    engine, run_id = _prepare(s)
    s.throttle.flag_file.parent.mkdir(parents=True, exist_ok=True)
    s.throttle.flag_file.touch()
    stop = threading.Event()
    worker = _Run(lambda: runner.run_batches(engine, s, run_id, "w1", _pace(), stop=stop))
    worker.start()
    _until("a flag_file wait", _waiting_for(engine, "flag_file"))
    stop.set()
    assert worker.outcome() == "running"
    assert _status(engine, s, run_id)["state"] == "running" and _batches(engine) == 0


# -- windows ---------------------------------------------------------------------------------


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_outside_the_allowed_windows_the_run_waits(settings: Settings) -> None:
    """With an injected clock outside every allowed window the worker waits (reason window,
    naming when the next one opens); moved inside, it runs."""
    s = _with(settings, windows={"allowed": ["* 1-2 * * *", "30 5 * * *"]})
    engine, run_id = _prepare(s)
    clock = _Clock(datetime(2026, 6, 1, 3, 0, tzinfo=UTC))
    throttle = throttle_mod.Throttle(s, clock=clock)
    with _running(engine, s, run_id, throttle=throttle) as worker:
        (wait,) = _until("a window wait", _waiting_for(engine, "window"))
        assert wait.detail == (
            "outside the allowed windows; the next one opens at 2026-06-01T05:30:00+00:00"
        )
        assert _batches(engine) == 0
        clock.now = datetime(2026, 6, 1, 1, 59, 30, tzinfo=UTC)
        assert worker.outcome() == "running"
    assert _batches(engine) == 2


def test_low_traffic_windows_retarget_the_pace(settings: Settings) -> None:
    """Inside a low-traffic window batches target low_traffic_batch_time, outside the run's own
    batch time again; a batch time set on the run (`migrate set`) wins over both."""
    s = _with(settings, windows={"low_traffic": ["* 1 * * *"], "low_traffic_batch_time": 0.5})
    engine, run_id = _prepare(s)
    clock = _Clock(datetime(2026, 6, 1, 1, 30, tzinfo=UTC))
    throttle = throttle_mod.Throttle(s, clock=clock)
    pace = Pace(target_seconds=0.2, size=4, min_size=1, max_size=5)
    targets: list[float] = []
    then = [datetime(2026, 6, 1, 3, 0, tzinfo=UTC), datetime(2026, 6, 1, 1, 45, tzinfo=UTC)]

    def next_hour(_: runner.BatchResult) -> None:
        targets.append(pace.target_seconds)
        if len(targets) == 2:
            with engine.begin() as conn:
                runs.set_options(conn, s, run_id, "test", batch_time=0.05)
        if then:
            clock.now = then.pop(0)

    state = runner.run_batches(
        engine, s, run_id, "w1", pace, 3, on_batch=next_hour, throttle=throttle
    )
    assert state == "running"
    assert targets == [0.5, 0.2, 0.05]
    assert _waits(engine) == []


@pytest.mark.parametrize(
    ("expr", "zone", "now", "inside"),
    [
        ("* 1-2 * * *", "UTC", datetime(2026, 6, 1, 2, 59, 59, tzinfo=UTC), True),
        ("* 1-2 * * *", "UTC", datetime(2026, 6, 1, 3, 0, tzinfo=UTC), False),
        # 01:30 in Berlin is 23:30 UTC the day before (summer time)
        ("* 1 * * *", "Europe/Berlin", datetime(2026, 5, 31, 23, 30, tzinfo=UTC), True),
        ("* 1 * * *", "Europe/Berlin", datetime(2026, 6, 1, 1, 30, tzinfo=UTC), False),
        # crontab weekdays: 1-5 is Monday to Friday, 0 and 7 are Sunday
        ("* * * * 1-5", "UTC", datetime(2026, 6, 1, 12, tzinfo=UTC), True),  # a Monday
        ("* * * * 1-5", "UTC", datetime(2026, 6, 6, 12, tzinfo=UTC), False),  # a Saturday
        ("* * * * 0", "UTC", datetime(2026, 6, 7, 12, tzinfo=UTC), True),  # a Sunday
        ("* * * * 7", "UTC", datetime(2026, 6, 7, 12, tzinfo=UTC), True),
        ("*/15 * * * *", "UTC", datetime(2026, 6, 1, 12, 15, 40, tzinfo=UTC), True),
        ("*/15 * * * *", "UTC", datetime(2026, 6, 1, 12, 16, tzinfo=UTC), False),
    ],
    ids=[
        "last-second-inside",
        "first-minute-after",
        "berlin-summer-inside",
        "berlin-summer-outside",
        "weekday",
        "saturday",
        "sunday-0",
        "sunday-7",
        "step-minute",
        "step-off-minute",
    ],
)
def test_window_membership(expr: str, zone: str, now: datetime, inside: bool) -> None:
    """A minute the expression matches, read in the configured time zone, is inside."""
    assert throttle_mod.Windows([expr], [], zone).is_allowed(now) is inside
    assert throttle_mod.Windows([], [expr], zone).is_low_traffic(now) is inside


@pytest.mark.parametrize(
    ("section", "key", "problem"),
    [
        ({"windows": {"allowed": ["61 * * * *"]}}, "windows.allowed", "not a cron expression"),
        ({"windows": {"low_traffic": ["* * *"]}}, "windows.low_traffic", "has 3 fields"),
        ({"windows": {"allowed": ["* * * * 8"]}}, "windows.allowed", "not within 0-7"),
        ({"windows": {"timezone": "Mars/Olympus"}}, "windows.timezone", "unknown time zone"),
        (
            {"throttle": {"prometheus_url": "http://p:9090"}},
            "throttle.prometheus_query",
            "set both or neither",
        ),
        (
            {"throttle": {"prometheus_url": "p:9090", "prometheus_query": "up"}},
            "throttle.prometheus_url",
            "expected a URL",
        ),
        ({"throttle": {"query": "SELECT 1"}}, "throttle", "query_max and query_critical are 0"),
        (
            {"throttle": {"lock_waiters_max": 5, "lock_waiters_critical": 2}},
            "throttle",
            "lock_waiters_critical is below lock_waiters_max",
        ),
    ],
    ids=["minute", "fields", "weekday", "zone", "url-alone", "url", "query-thresholds", "order"],
)
def test_bad_throttle_and_window_settings_name_the_key(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    section: dict[str, Any],
    key: str,
    problem: str,
) -> None:
    """Wrong windows or throttle settings: one error naming the key, found at load time."""
    from migrator.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("UUIDGUARD_"):
            monkeypatch.delenv(name)
    with pytest.raises(ConfigError) as info:
        load_settings(None, **section)
    assert info.value.key == key and problem in str(info.value)


def test_an_empty_flag_file_setting_switches_it_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """flag_file = "" means no flag file (not the current directory, which always exists)."""
    monkeypatch.chdir(tmp_path)
    assert load_settings(None, throttle={"flag_file": ""}).throttle.flag_file is None


# -- what the throttle cannot see -----------------------------------------------------------


def test_a_quiet_server_lets_batches_go(settings: Settings) -> None:
    """No waiters, no old transaction, no replica, no archive backlog, no autovacuum: go, and
    a run with the default throttle completes without a wait."""
    engine, run_id = _prepare(settings)
    throttle = throttle_mod.Throttle(settings)
    with engine.connect() as conn:
        assert throttle.check(conn, AS_OF) == throttle_mod.GO
        with conn.begin():
            assert throttle.replica_lag(conn) is None  # no replica streams from here
            backlog = throttle.archive_backlog(conn)
            assert backlog is not None and backlog.value == 0
            vacuum = throttle.autovacuum(conn)
            assert vacuum is not None and vacuum.value == 0
    assert throttle.notes == []
    assert runner.run_batches(engine, settings, run_id, "w1", _pace()) == "completed"
    assert _waits(engine) == []
    st = _status(engine, settings, run_id)
    assert st["waits"] == {} and st["waiting"] is None


def test_a_role_without_pg_monitor_skips_the_archive_signal_and_says_so(
    settings: Settings,
) -> None:
    """A plain role may not list the archiver's status: that signal is skipped, said once,
    and the check still answers."""
    import uuid

    engine, _ = _prepare(settings)
    role = f"plain_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
    url = sa.make_url(_dsn(settings)).set(username=role)
    limited = load_settings(None, database={"dsn": url.render_as_string(hide_password=False)})
    try:
        throttle = throttle_mod.Throttle(limited)
        lim_engine = db.create_engine(limited)
        with lim_engine.connect() as conn:
            assert throttle.check(conn, AS_OF) == throttle_mod.GO
            assert throttle.check(conn, AS_OF) == throttle_mod.GO
            with conn.begin():
                assert throttle.archive_backlog(conn) is None
        lim_engine.dispose()
        assert len(throttle.notes) == 2  # once each, not once per check
        assert any("archive backlog is not checked" in n for n in throttle.notes)
        assert all("GRANT pg_monitor" in n for n in throttle.notes)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))


# -- Prometheus ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Exporter:
    """A tiny exporter in a thread: one gauge in the text format, its value set by the test."""

    def __init__(self) -> None:
        self.value = 0.0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"# TYPE rag_p99_seconds gauge\nrag_p99_seconds {exporter.value}\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Prometheus:
    """The real `prometheus` binary scraping the exporter every second, in a temp dir."""

    def __init__(self, tmp: Path, exporter: Exporter) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed (`make test` installs it)")
        self.exporter = exporter
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: rag\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{exporter.port}']}}]\n"
        )
        self.log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self) -> float | None:
        try:
            r = httpx.get(f"{self.url}/api/v1/query", params={"query": "rag_p99_seconds"})
            result = r.json()["data"]["result"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        return float(result[0]["value"][1]) if result else None

    def set(self, value: float) -> None:
        """Set the exporter's value and wait until Prometheus has scraped it."""
        self.exporter.value = value
        _until(f"Prometheus to see {value}", lambda: self.query() == value)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    exporter = Exporter()
    (tmp_path / "prom").mkdir()
    prom = Prometheus(tmp_path / "prom", exporter)
    try:
        prom.set(0.1)
        yield prom
    finally:
        prom.stop()
        exporter.server.shutdown()
        exporter.server.server_close()


def _prom_settings(settings: Settings, url: str) -> Settings:
    return _with(
        settings,
        throttle={
            "prometheus_url": url,
            "prometheus_query": "rag_p99_seconds",
            "prometheus_max": 0.5,
            "prometheus_critical": 2,
        },
    )


def test_prometheus_above_max_waits_and_above_critical_pauses(
    settings: Settings, prometheus: Prometheus
) -> None:
    """A real Prometheus scraping the exporter: above max the worker waits, above critical the
    run is paused with the reason."""
    s = _prom_settings(settings, prometheus.url)
    engine, run_id = _prepare(s)
    prometheus.set(0.7)
    with _running(engine, s, run_id, max_batches=None) as worker:
        (wait,) = _until("a prometheus wait", _waiting_for(engine, "prometheus"))
        assert wait.detail == "the Prometheus query returned 0.7 (max 0.5)"
        assert (wait.value, wait.threshold, wait.action) == (0.7, 0.5, "wait")
        assert _batches(engine) == 0
        prometheus.set(5)
        assert worker.outcome() == "paused"
    st = _status(engine, s, run_id)
    assert st["reason"] == "throttle prometheus: the Prometheus query returned 5 (critical 2)"
    assert [(w.reason, w.action) for w in _waits(engine)] == [
        ("prometheus", "wait"),
        ("prometheus", "pause"),
    ]
    assert _batches(engine) == 0
    assert st["waits"]["prometheus"] > 0


def test_prometheus_going_away_mid_run_is_a_wait(
    settings: Settings, prometheus: Prometheus
) -> None:
    """Reachable at the start, then gone: the check says wait (reason prometheus), naming it."""
    s = _prom_settings(settings, prometheus.url)
    engine, _ = _prepare(s)
    throttle = throttle_mod.Throttle(s)
    with engine.connect() as conn:
        throttle.validate(conn)
        assert throttle.check(conn, AS_OF) == throttle_mod.GO
        prometheus.stop()
        # a healthy reading holds for check_interval; the next look after it sees the loss
        assert throttle.check(conn, AS_OF) == throttle_mod.GO
        time.sleep(s.throttle.check_interval.total_seconds())
        verdict = throttle.check(conn, AS_OF)
    assert (verdict.decision, verdict.reason) == ("wait", "prometheus")
    assert verdict.detail.startswith(f"Prometheus at {prometheus.url} is unreachable")


def test_unreachable_prometheus_stops_migrate_run_with_one_line(settings: Settings) -> None:
    """`uuidguard migrate run` with Prometheus unreachable: one line naming the key and the
    fix, a non-zero exit, no batch run; credentials in the URL are never shown."""
    engine, run_id = _prepare(settings)
    url = f"http://scraper:s3cret@127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UUIDGUARD_")}
    env |= {
        "UUIDGUARD_THROTTLE__PROMETHEUS_URL": url,
        "UUIDGUARD_THROTTLE__PROMETHEUS_QUERY": "rag_p99_seconds",
        "UUIDGUARD_THROTTLE__PROMETHEUS_MAX": "0.5",
    }
    proc = subprocess.run(
        [EXE, "migrate", "run", str(run_id), "--dsn", _dsn(settings)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    error = lines[-1]
    assert "Traceback" not in proc.stderr
    assert error.startswith(
        "error: config throttle.prometheus_url: Prometheus at http://127.0.0.1:"
    )
    assert "is unreachable" in error and "Fix: start Prometheus" in error
    assert "s3cret" not in proc.stderr
    assert _status(engine, settings, run_id)["state"] == "planned"
    assert _batches(engine) == 0
