"""Benchmark of the re-keying engine (`migrator.runner`) against the two ways it sits between.

One seeded dataset (`migrator.dataset`, `--documents` documents, about 9.3 chunks and as many
embeddings each, FK mode `none`) is loaded once into a template database, `uuidguard migrate
create` (`runs.create`) plans its run there, and each way then runs on its own fresh copy
(`CREATE DATABASE ... TEMPLATE`), so all three re-key the same documents to the same new ids:

- (a) the ceiling: the run's mapping (`uuidguard.id_map`, old_id → new_id) copied into a
  temporary table before timing, then ONE transaction with one set-based UPDATE ... FROM map per
  table (chunks, embeddings, shares, then documents);
- (b) the naive script: one transaction per document, one UPDATE per table, in the order
  uuidguard claims them (user, id); time-boxed to `--naive-seconds` on a prefix of the documents,
  its rate is what it reached in that time;
- (c) uuidguard with its defaults, journal included: `runner.run_batches` on one worker with
  the `Pace` of `settings.migrate` (batch_time 0.2 s, start 50, min 10, max 5000), time-boxed
  to `--uuidguard-seconds`, then `runner.rollback(everything=True, force=True)` of the run.

For each way: documents/s and rows/s (rows rewritten in all four tables), p50/p99/max duration
of its transactions (batches), and two concurrent clients, each its own process with its own
connection, running from `--idle-seconds` before the migration (their idle baseline) to its end:

- a writer that keeps running `UPDATE documents SET access_count = access_count + 1` on one
  document found by (user_id, file_sha256), never by id, since ids change. It picks its target
  among the next `--writer-window` documents the migration will re-key (it follows the
  migration's progress), so it keeps running into the rows a batch holds; reported is the
  longest wall time of one UPDATE, which is the longest a writer waits for a lock;
- a reader that keeps fetching a random re-keyed document with its chunks by owner and sha
  (`documents JOIN document_chunks ON document_id = id`); reported is its p99 latency during the
  migration against its idle p99.

Every statement of (c) is timed with SQLAlchemy `before_cursor_execute` / `after_cursor_execute`
events (and each commit), which says what limits a batch; after the rollback its three costliest
statements on the mapped tables are run again under EXPLAIN ANALYZE on a typical batch, with
the batch table as the runner leaves it and once analyzed. Results go to the
"## Migration (benchmarks/migrate.py)" section of docs/performance.md, other "## " sections are
kept as they are; the targets of the issue are checked there, one verdict each.

Run it from the project root (a default run of 100k documents takes about 7 minutes on 2 cores,
4 of them uuidguard's time box `--uuidguard-seconds`, which it fills at the engine's current pace):

    .venv/bin/python benchmarks/migrate.py
    .venv/bin/python benchmarks/migrate.py --documents 5000 --naive-seconds 10 --no-write

Without `--dsn` it starts its own embedded PostgreSQL under `--state-dir` (a temporary directory
by default) and stops it at the end; with `--dsn` it uses that server. Either way it creates the
template and one database per way (`bench_migrate_*_<pid>`) and drops each afterwards; the client
processes are stopped at the end of each way, and every loop has a time bound.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import multiprocessing as mp
import os
import random
import re
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import sqlalchemy as sa
from benchlib import (
    PERFORMANCE_MD,
    ROOT,
    BenchmarkError,
    database,
    interrupted,
    log,
    machine,
    percentile,
    reconfigure,
    server,
    verdict,
    write_section,
)
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from migrator import dataset, db, journal, runner, runs, seed
from migrator import plan as plan_mod
from migrator import settings as settings_mod
from migrator.errors import UuidguardError
from migrator.idrule import IdRule
from migrator.pace import Pace

SECTION = "Migration (benchmarks/migrate.py)"

DEFAULT_OUT = PERFORMANCE_MD
PG_SETTINGS = ("shared_buffers", "work_mem", "max_wal_size", "synchronous_commit")
_RUNNER = Path(runner.__file__).resolve()

# the targets
TARGET_VS_CEILING = 0.5
TARGET_VS_NAIVE = 3.0
TARGET_BATCH_P99 = 0.25
TARGET_WRITER_WAIT = 0.3
TARGET_READER = 1.5
TARGET_ROLLBACK = 0.8
TARGET_ETA = 0.2  # after 10% of the run, the ETA within 20% of the real remaining time
ETA_CHECKPOINTS = (0.1, 0.25, 0.5, 0.75)

#: server-side bound on every statement the benchmark itself sends (the ceiling's UPDATEs too)
STATEMENT_TIMEOUT = "900s"
#: a client process that outlives this is stopped by its own loop
CLIENT_LIFETIME = 3600.0

WAYS = ("ceiling", "naive", "uuidguard")
LABELS = {
    "ceiling": "(a) ceiling: one transaction, one UPDATE per table",
    "naive": "(b) naive: one transaction per document",
    "uuidguard": "(c) uuidguard, default settings, journal",
}


class TimeBox(Exception):
    """Raised from the batch callback once uuidguard's time box is spent."""


# --- the concurrent clients ---------------------------------------------------------------------

WRITE = (
    "UPDATE documents SET access_count = access_count + 1 WHERE user_id = %s AND file_sha256 = %s"
)
READ = (
    "SELECT d.id, d.filename, c.id, c.chunk_index, c.content FROM documents d"
    " JOIN document_chunks c ON c.document_id = d.id WHERE d.user_id = %s AND d.file_sha256 = %s"
)

Target = tuple[str, str]  # (user_id, file_sha256)
Sample = tuple[float, float]  # (start on the monotonic clock, seconds)


def _client(
    kind: str,
    url: str,
    targets: list[Target],
    front: Any,
    window: int,
    interval: float,
    seed_: int,
    stop: Any,
    out: Any,
) -> None:
    """A writer or reader process: one statement at a time until told to stop (or its lifetime).

    `time.monotonic` is CLOCK_MONOTONIC on Linux, one clock for every process, so the parent can
    place each sample in its own timeline.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    rng = random.Random(seed_)
    samples: list[Sample] = []
    error: str | None = None
    try:
        with psycopg.connect(url, autocommit=True, application_name=f"bench-{kind}") as conn:
            conn.execute(
                sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT))
            )
            query = WRITE if kind == "writer" else READ
            out.put(("ready", kind, None))
            end = time.monotonic() + CLIENT_LIFETIME
            while not stop.is_set() and time.monotonic() < end:
                if kind == "writer":
                    lo = max(0, min(int(front.value), len(targets) - window))
                    target = targets[rng.randrange(lo, min(lo + window, len(targets)))]
                else:
                    # the same reads in the same order, idle and during the migration: the
                    # reads' own costs differ 10x (owners with many documents), and drawn at
                    # random they made the p99s of two idle windows differ by a third
                    target = targets[len(samples) % len(targets)]
                t0 = time.monotonic()
                cur = conn.execute(query, target)
                if cur.description is not None:
                    cur.fetchall()
                samples.append((t0, time.monotonic() - t0))
                stop.wait(interval)
    except Exception as exc:  # reported to the parent, which fails the benchmark
        error = f"{type(exc).__name__}: {exc}"
    out.put(("done", kind, (samples, error)))


class Clients:
    """The writer and reader processes of one way; `front` tells the writer where the migration is."""

    def __init__(
        self,
        ctx: SpawnContext,
        url: str,
        writer_targets: list[Target],
        reader_targets: list[Target],
        opts: argparse.Namespace,
    ) -> None:
        self.front = ctx.Value("q", 0)
        self._stop = ctx.Event()
        self._out = ctx.Queue()
        window = max(1, min(opts.writer_window, len(writer_targets)))
        self._procs: list[SpawnProcess] = [
            ctx.Process(
                target=_client,
                args=(
                    kind,
                    url,
                    targets,
                    self.front,
                    window,
                    opts.client_interval,
                    i,
                    self._stop,
                    self._out,
                ),
                name=f"bench-{kind}",
                daemon=True,
            )
            for i, (kind, targets) in enumerate(
                (("writer", writer_targets), ("reader", reader_targets))
            )
        ]
        self.samples: dict[str, list[Sample]] = {}
        self.ready_at = 0.0

    def __enter__(self) -> Clients:
        for p in self._procs:
            p.start()
        ready = 0
        deadline = time.monotonic() + 60
        while ready < len(self._procs):
            kind, what, payload = self._get(deadline - time.monotonic())
            if kind == "done":  # failed before it was ready
                raise BenchmarkError(f"the {what} client failed: {payload[1]}")
            ready += 1
        self.ready_at = time.monotonic()
        return self

    def _get(self, timeout: float) -> tuple[str, str, Any]:
        try:
            msg: tuple[str, str, Any] = self._out.get(timeout=max(timeout, 0.1))
        except Exception as exc:  # queue.Empty
            raise BenchmarkError("a client process did not answer in time") from exc
        return msg

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        errors: list[str] = []
        deadline = time.monotonic() + 60
        with contextlib.suppress(BenchmarkError):
            while len(self.samples) < len(self._procs) and time.monotonic() < deadline:
                kind, what, payload = self._get(deadline - time.monotonic())
                if kind == "done":
                    self.samples[what] = payload[0]
                    if payload[1]:
                        errors.append(f"the {what} client failed: {payload[1]}")
        for p in self._procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        self._out.close()
        if errors and exc[0] is None:
            raise BenchmarkError("; ".join(errors))
        if len(self.samples) < len(self._procs) and exc[0] is None:
            raise BenchmarkError("a client process ended without its samples")


def _during(samples: list[Sample], start: float, end: float) -> list[float]:
    """Durations of the statements that overlapped [start, end]."""
    return [s for t, s in samples if t < end and t + s > start]


def _idle(samples: list[Sample], start: float, end: float) -> list[float]:
    return [s for t, s in samples if start <= t and t + s <= end]


@dataclass
class ClientStats:
    writer_idle_max: float | None
    writer_idle_p99: float | None
    writer_max: float | None
    writer_p99: float | None
    writer_updates: int
    writer_waits: int  # updates slower than 10x the idle p99: they waited for a lock
    reader_idle_p99: float | None
    reader_p99: float | None
    reader_queries: int
    reader_idle_queries: int

    @property
    def reader_ratio(self) -> float | None:
        if self.reader_p99 is None or not self.reader_idle_p99:
            return None
        return self.reader_p99 / self.reader_idle_p99


def client_stats(clients: Clients, idle_start: float, start: float, end: float) -> ClientStats:
    w, r = clients.samples.get("writer", []), clients.samples.get("reader", [])
    w_idle, w_run = _idle(w, idle_start, start), _during(w, start, end)
    r_idle, r_run = _idle(r, idle_start, start), _during(r, start, end)
    idle_p99 = percentile(w_idle, 99)
    waits = 0 if idle_p99 is None else sum(1 for s in w_run if s > 10 * idle_p99)
    return ClientStats(
        writer_idle_max=max(w_idle, default=None),
        writer_idle_p99=idle_p99,
        writer_max=max(w_run, default=None),
        writer_p99=percentile(w_run, 99),
        writer_updates=len(w_run),
        writer_waits=waits,
        reader_idle_p99=percentile(r_idle, 99),
        reader_p99=percentile(r_run, 99),
        reader_queries=len(r_run),
        reader_idle_queries=len(r_idle),
    )


# --- where a batch's time goes --------------------------------------------------------------------


@dataclass
class Statement:
    label: str
    text: str
    seconds: float = 0.0
    calls: int = 0
    #: the parameters of its last call, to EXPLAIN it afterwards
    params: Any = None


@dataclass
class BatchProfile:
    """Every statement sent inside `runner.forward_batch`, summed over all batches of the run."""

    statements: dict[tuple[str, str], Statement] = field(default_factory=dict)
    #: statements sent between batches (the run-state check of each loop turn)
    outside_seconds: float = 0.0
    outside_calls: int = 0
    commit_seconds: float = 0.0
    commits: int = 0
    _commit_started: float | None = None

    def top(self, n: int) -> list[Statement]:
        return sorted(self.statements.values(), key=lambda s: s.seconds, reverse=True)[:n]

    @property
    def statement_seconds(self) -> float:
        return sum(s.seconds for s in self.statements.values())


@functools.cache
def _code_place(filename: str) -> tuple[bool, str | None]:
    """Whether a code object's file is runner.py, and the module name when it is in migrator/.
    Cached: resolving a path for every frame of every statement cost about 8% of the measured
    run's wall time (py-spy), which the profile then reported as uuidguard's own."""
    path = Path(filename).resolve()
    return path == _RUNNER, path.stem if path.parent == _RUNNER.parent else None


def _where_in_batch() -> str | None:
    """`runner.py:<line>` of the forward_batch line that sent the current statement (and the
    migrator/ helper it went through), else None."""
    frame: FrameType | None = sys._getframe(2)
    inner: str | None = None
    while frame is not None:
        code = frame.f_code
        is_runner, module = _code_place(code.co_filename)
        if is_runner and code.co_name == "forward_batch":
            return f"runner.py:{frame.f_lineno}" + (f" via {inner}" if inner else "")
        if inner is None and module is not None:
            inner = code.co_name if is_runner else f"{module}.{code.co_name}"
        frame = frame.f_back
    return None


@contextlib.contextmanager
def profiled(engine: Engine) -> Iterator[BatchProfile]:
    profile = BatchProfile()
    started: dict[int, tuple[float, str | None]] = {}

    def before(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        started[id(cursor)] = (time.perf_counter(), _where_in_batch())

    def after(conn: Connection, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        t0, where = started.pop(id(cursor))
        seconds = time.perf_counter() - t0
        if where is None:
            profile.outside_seconds += seconds
            profile.outside_calls += 1
            return
        text = " ".join(statement.split())
        st = profile.statements.setdefault((where, text), Statement(where, text))
        st.seconds += seconds
        st.calls += 1
        st.params = params

    def commit(conn: Connection) -> None:
        profile._commit_started = time.perf_counter()

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    sa.event.listen(engine, "commit", commit)
    try:
        yield profile
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "after_cursor_execute", after)
        sa.event.remove(engine, "commit", commit)


_PARAM = re.compile(r"%\(\w+\)s(?:::\w+)?")
_ALIAS = re.compile(r" AS (?!\()\w+")
_QUALIFIED = re.compile(r"\b\w+\.\w+\.(\w+)\b")


def summary(text: str, width: int = 300) -> str:
    """A statement without SQLAlchemy's noise (aliases, typed parameters, qualified columns)."""
    short = _PARAM.sub("?", text)
    short = _ALIAS.sub("", short)
    short = _QUALIFIED.sub(r"\1", short)
    return short if len(short) <= width else short[: width - 1] + "…"


def kind(st: Statement) -> str:
    """Which part of a batch a statement does (by the runner helper that sent it)."""
    t, label = st.text, st.label
    if label.endswith("via _verify"):
        return "the in-transaction check (old ids left, documents re-keyed), one statement"
    if label.endswith("via _lock_and_skip"):
        return "locking the documents, checking for documents gone or new ids taken"
    if label.endswith("via _rewrite") and ".rewrites" in t:
        return "rewriting the references, with their journal rows (UPDATE … RETURNING into INSERT)"
    if label.endswith("via _rewrite"):
        return "re-keying the documents (UPDATE documents)"
    return "claiming and bookkeeping (id_map, batches, temp table, settings)"


# --- servers and databases ------------------------------------------------------------------------


# --- the template: seeded once, the run planned once -------------------------------------------------


@dataclass
class Template:
    documents: int
    chunks: int
    embeddings: int
    shares: int
    seed_seconds: float
    create_seconds: float
    copy_seconds: list[float]
    run_id: int
    #: the run's documents in the order uuidguard claims them: (old_id, new_id, user, sha)
    order: list[tuple[str, str, str, str]]
    by_class: dict[str, int]
    #: `uuidguard plan`'s estimate for option A, the documents it counted, its own time
    plan_estimate: float = 0.0
    plan_documents: int = 0
    plan_seconds: float = 0.0


def prepare_template(url: str, opts: argparse.Namespace) -> Template:
    s = settings_mod.load_settings(None, database={"dsn": url})
    rule = IdRule(s.id_rule.namespace, s.id_rule.template)
    t0 = time.perf_counter()
    ds = dataset.generate(
        dataset.DatasetSpec(documents=opts.documents, as_of=datetime.now(UTC)), rule
    )
    manifest = ds.manifest
    log(
        f"generated {opts.documents:,} documents, {manifest['chunks']['total']:,} chunks"
        f" in {time.perf_counter() - t0:.1f}s"
    )
    engine = db.create_engine(s)
    try:
        t0 = time.perf_counter()

        def progress(done: int) -> None:
            if done % 500_000 == 0:
                log(f"seeded {done:,} chunks")

        with db.connect(engine) as conn:
            seed.seed(conn, ds, s.mapping.schema_, "none", replace=False, progress=progress)
        seed_seconds = time.perf_counter() - t0
        del ds
        log(f"seed {seed_seconds:.1f}s")
        with db.connect(engine) as conn:
            journal.init(conn, s.journal_schema)
        # what `uuidguard plan` predicts for option A, before the run exists (its rehearsal
        # is rolled back); compared with uuidguard's measured run at the end
        t0 = time.perf_counter()
        planned = plan_mod.plan(engine, s, datetime.now(UTC))
        plan_seconds = time.perf_counter() - t0
        log(
            f"plan: option A {planned['options']['A']['documents']:,} documents, estimated"
            f" {planned['options']['A']['estimated_seconds']:.1f}s (plan took {plan_seconds:.1f}s)"
        )
        t0 = time.perf_counter()
        with db.connect(engine) as conn, conn.begin():
            run_id = runs.create(conn, s, "A", datetime.now(UTC), "bench")
        create_seconds = time.perf_counter() - t0
        with db.connect(engine) as conn:
            counts = {
                name: conn.execute(
                    sa.text(f"SELECT count(*) FROM {name}")  # noqa: S608 - fixed names
                ).scalar_one()
                for name in ("documents", "document_chunks", "embeddings", "document_shares")
            }
    finally:
        engine.dispose()
    schema = sql.Identifier(s.journal_schema)
    with psycopg.connect(url) as pconn:
        order = [
            (str(old), str(new), user, sha)
            for old, new, user, sha in pconn.execute(
                sql.SQL(
                    "SELECT m.old_id, m.new_id, d.user_id, d.file_sha256 FROM {}.id_map m"
                    " JOIN documents d ON d.id = m.old_id WHERE m.run_id = %s"
                    " ORDER BY m.user_id, m.old_id"
                ).format(schema),
                (run_id,),
            )
        ]
        by_class: dict[str, int] = dict(
            pconn.execute(
                sql.SQL(
                    "SELECT class, count(*) FROM {}.id_map WHERE run_id = %s GROUP BY class"
                ).format(schema),
                (run_id,),
            ).fetchall()
        )
        pconn.execute("CHECKPOINT")
    log(f"run {run_id} planned in {create_seconds:.1f}s: {len(order):,} documents to re-key")
    if not order:
        raise BenchmarkError("the planned run re-keys no document")
    return Template(
        documents=counts["documents"],
        chunks=counts["document_chunks"],
        embeddings=counts["embeddings"],
        shares=counts["document_shares"],
        seed_seconds=seed_seconds,
        create_seconds=create_seconds,
        copy_seconds=[],
        run_id=run_id,
        order=order,
        by_class=by_class,
        plan_estimate=float(planned["options"]["A"]["estimated_seconds"] or 0.0),
        plan_documents=int(planned["options"]["A"]["documents"]),
        plan_seconds=plan_seconds,
    )


# --- the three ways ------------------------------------------------------------------------------


@dataclass
class WayResult:
    way: str
    documents: int
    rows: dict[str, int]
    seconds: float
    batches: list[float]
    batch_sizes: list[int]
    clients: ClientStats | None = None
    complete: bool = True  # False: time-boxed before the end
    #: when the timed migration began, on the monotonic clock the clients share
    started: float = 0.0
    detail: dict[str, float] = field(default_factory=dict)
    profile: BatchProfile | None = None
    rollback_documents: int | None = None
    rollback_seconds: float | None = None
    rollback_clients: ClientStats | None = None
    plans: list[PlanCheck] = field(default_factory=list)
    #: (share of the run done, ETA `uuidguard migrate status` gave then, monotonic time then)
    etas: list[tuple[float, float | None, float]] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def rollback_rate(self) -> float | None:
        if self.rollback_documents is None or not self.rollback_seconds:
            return None
        return self.rollback_documents / self.rollback_seconds


@dataclass
class ConfigResult:
    """The three ways on one server configuration."""

    #: the shared_buffers the embedded server ran with; None: a --dsn server as it is
    shared_buffers: str | None
    pg_settings: str
    results: dict[str, WayResult]

    @property
    def label(self) -> str:
        return (
            f"shared_buffers {self.shared_buffers}"
            if self.shared_buffers
            else "the server as given"
        )


def _refs(s: settings_mod.Settings) -> list[tuple[str, str]]:
    return [(r.table, r.column) for r in s.reference_columns()]


def _counts(url: str, s: settings_mod.Settings, ids: list[str]) -> dict[str, int]:
    """Rows of documents and of every reference column whose document id is one of `ids`."""
    m = s.mapping
    out: dict[str, int] = {}
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TEMPORARY TABLE bench_ids (id uuid PRIMARY KEY)")
        with conn.cursor().copy("COPY bench_ids FROM STDIN") as copy:
            for id_ in ids:
                copy.write_row((id_,))
        for table, column in [(m.documents.table, m.documents.id), *_refs(s)]:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{} t JOIN bench_ids b ON t.{} = b.id").format(
                    sql.Identifier(m.schema_), sql.Identifier(table), sql.Identifier(column)
                )
            ).fetchone()
            out[f"{table}.{column}"] = int(row[0]) if row else -1
    return out


def check_moved(
    url: str, s: settings_mod.Settings, tmpl: Template, before: dict[str, int], back: bool
) -> None:
    """After a whole run: the documents and every row that named one of them carry its new id
    and none its old one. After a whole rollback (`back`): as they were before the run."""
    old = _counts(url, s, [o for o, _, _, _ in tmpl.order])
    new = _counts(url, s, [n for _, n, _, _ in tmpl.order])
    docs = f"{s.mapping.documents.table}.{s.mapping.documents.id}"
    if back:
        if old != before or new[docs]:
            raise BenchmarkError(
                f"after the rollback: {old} rows on the old ids (before the run: {before}),"
                f" {new[docs]} documents on a new id"
            )
    elif any(old.values()) or new[docs] != len(tmpl.order):
        raise BenchmarkError(
            f"after the run: {old} rows still on an old id, {new[docs]} of {len(tmpl.order)}"
            " documents on their new id"
        )


def _check_rows(way: str, rows: dict[str, int], before: dict[str, int]) -> None:
    """A complete way rewrote exactly the rows that named an old id before it ran."""
    if rows != before:
        raise BenchmarkError(f"{way} rewrote {rows}; the old ids were on {before}")


def blocks_read(url: str, s: settings_mod.Settings) -> tuple[int, int]:
    """Heap and index blocks of the mapped tables that PostgreSQL had to read from outside its
    buffer cache since the database was created (pg_statio_user_tables)."""
    m = s.mapping
    tables = [m.documents.table, *{t for t, _ in _refs(s)}]
    with psycopg.connect(url, autocommit=True) as conn:
        heap, idx = conn.execute(
            "SELECT coalesce(sum(heap_blks_read), 0), coalesce(sum(idx_blks_read), 0)"
            " FROM pg_statio_user_tables WHERE schemaname = %s AND relname = ANY(%s)",
            (m.schema_, tables),
        ).fetchone() or (0, 0)
    return int(heap), int(idx)


FLUSH_STATS = "SELECT pg_stat_force_next_flush()"


def record_blocks_read(result: WayResult, url: str, s: settings_mod.Settings) -> None:
    """The blocks read so far into `result.detail` (run_way subtracts those read before the
    way began), once the migration's connection has flushed its statistics (FLUSH_STATS)."""
    time.sleep(0.2)  # the flush is asynchronous to the next statement's reader
    result.detail["heap_blocks_read"], result.detail["index_blocks_read"] = blocks_read(url, s)


def ceiling(url: str, s: settings_mod.Settings, tmpl: Template, clients: Clients) -> WayResult:
    """(a): the mapping in a temporary table, then one UPDATE per table in one transaction."""
    m = s.mapping
    schema = sql.Identifier(m.schema_)
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT)))
        conn.execute(
            sql.SQL(
                "CREATE TEMPORARY TABLE bench_map AS SELECT old_id, new_id FROM {}.id_map"
                " WHERE run_id = %s"
            ).format(sql.Identifier(s.journal_schema)),
            (tmpl.run_id,),
        )
        conn.execute("ALTER TABLE bench_map ADD PRIMARY KEY (old_id)")
        conn.execute("ANALYZE bench_map")
        conn.commit()
        statements = [
            (
                f"{table}.{column}",
                sql.SQL(
                    "UPDATE {}.{} t SET {} = m.new_id FROM bench_map m WHERE t.{} = m.old_id"
                ).format(
                    schema,
                    sql.Identifier(table),
                    sql.Identifier(column),
                    sql.Identifier(column),
                ),
            )
            for table, column in [*_refs(s), (m.documents.table, m.documents.id)]
        ]
        rows: dict[str, int] = {}
        detail: dict[str, float] = {}
        clients.front.value = 0
        started = time.monotonic()
        for name, statement in statements:
            t0 = time.monotonic()
            rows[name] = conn.execute(statement).rowcount
            detail[name] = time.monotonic() - t0
            log(f"ceiling: {name}: {rows[name]:,} rows in {detail[name]:.2f}s")
        t0 = time.monotonic()
        conn.commit()
        detail["COMMIT"] = time.monotonic() - t0
        seconds = time.monotonic() - started
        conn.execute(FLUSH_STATS)
        conn.commit()
    documents = rows[f"{m.documents.table}.{m.documents.id}"]
    if documents != len(tmpl.order):
        raise BenchmarkError(f"the ceiling re-keyed {documents} of {len(tmpl.order)} documents")
    return WayResult(
        "ceiling", documents, rows, seconds, [seconds], [documents], started=started, detail=detail
    )


def naive(
    url: str, s: settings_mod.Settings, tmpl: Template, clients: Clients, budget: float
) -> WayResult:
    """(b): a transaction per document, an UPDATE per table, until done or `budget` seconds."""
    m = s.mapping
    schema = sql.Identifier(m.schema_)
    targets = [*_refs(s), (m.documents.table, m.documents.id)]
    statements = [
        (
            f"{table}.{column}",
            sql.SQL("UPDATE {}.{} SET {} = %s WHERE {} = %s").format(
                schema, sql.Identifier(table), sql.Identifier(column), sql.Identifier(column)
            ),
        )
        for table, column in targets
    ]
    rows = {name: 0 for name, _ in statements}
    batches: list[float] = []
    done = 0
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT)))
        conn.commit()
        clients.front.value = 0
        started = time.monotonic()
        deadline = started + budget
        next_log = started + 10
        for old_id, new_id, _, _ in tmpl.order:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_log:
                log(f"naive: {done:,} documents in {now - started:.0f}s")
                next_log = now + 10
            t0 = now
            for name, statement in statements:
                rows[name] += conn.execute(statement, (new_id, old_id)).rowcount
            conn.commit()
            batches.append(time.monotonic() - t0)
            done += 1
            clients.front.value = done
        seconds = time.monotonic() - started
    return WayResult(
        "naive",
        done,
        rows,
        seconds,
        batches,
        [1] * done,
        complete=done == len(tmpl.order),
        started=started,
    )


def uuidguard(
    url: str,
    s: settings_mod.Settings,
    tmpl: Template,
    clients: Clients,
    budget: float,
    before: dict[str, int],
) -> WayResult:
    """(c): `runner.run_batches` with the default pace, profiled, then a rollback of the run."""
    ms = s.migrate
    pace = Pace(
        target_seconds=ms.batch_time,
        min_size=ms.min_batch,
        max_size=ms.max_batch,
        size=ms.start_batch,
    )
    engine = db.create_engine(s)
    status_engine = db.create_engine(s)
    status_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eta")
    readings: list[concurrent.futures.Future[tuple[float, float | None, float]]] = []
    results: list[runner.BatchResult] = []
    checkpoints = list(ETA_CHECKPOINTS)
    try:
        with profiled(engine) as profile:
            clients.front.value = 0
            started = time.monotonic()
            deadline = started + budget
            next_log = started + 5

            def read_eta(done_share: float) -> tuple[float, float | None, float]:
                with status_engine.connect() as sconn:
                    eta = runs.status(sconn, s, tmpl.run_id)["eta_seconds"]
                return done_share, eta, time.monotonic()

            def on_batch(result: runner.BatchResult) -> None:
                nonlocal next_log
                if profile._commit_started is not None:
                    profile.commit_seconds += time.perf_counter() - profile._commit_started
                    profile.commits += 1
                    profile._commit_started = None
                results.append(result)
                clients.front.value = clients.front.value + result.documents + result.skipped
                done_share = clients.front.value / len(tmpl.order)
                if checkpoints and done_share >= checkpoints[0]:
                    # what `uuidguard migrate status` says at this point: asked from another
                    # thread on its own engine, as an operator's terminal would, so that the
                    # reading neither delays the run nor counts in its profile
                    while checkpoints and done_share >= checkpoints[0]:
                        checkpoints.pop(0)
                    readings.append(status_pool.submit(read_eta, done_share))
                now = time.monotonic()
                if now >= next_log:
                    done = sum(r.documents for r in results)
                    log(
                        f"uuidguard: {done:,} documents, {len(results)} batches in"
                        f" {now - started:.0f}s; batch {result.documents} in {result.seconds:.3f}s,"
                        f" next {pace.size}"
                    )
                    next_log = now + 5
                if now >= deadline:
                    raise TimeBox

            state = "time-boxed"
            with contextlib.suppress(TimeBox):
                state = runner.run_batches(
                    engine,
                    s,
                    tmpl.run_id,
                    "bench",
                    pace,
                    on_batch=on_batch,
                    lock_timeout=ms.lock_timeout,
                )
            seconds = time.monotonic() - started
        etas = [f.result() for f in readings]
        documents = sum(r.documents for r in results)
        skipped = sum(r.skipped for r in results)
        rows: dict[str, int] = {}
        for r in results:
            for name, n in r.rows.items():
                rows[name] = rows.get(name, 0) + n
        m = s.mapping
        rows[f"{m.documents.table}.{m.documents.id}"] = documents
        log(
            f"uuidguard: run {state}: {documents:,} documents ({skipped} skipped) in {seconds:.1f}s"
        )
        if state == "completed" and (documents != len(tmpl.order) or skipped):
            raise BenchmarkError(
                f"uuidguard re-keyed {documents} of {len(tmpl.order)} documents ({skipped} skipped)"
            )
        if state not in ("completed", "time-boxed"):
            raise BenchmarkError(f"the run ended {state}")
        with db.connect(engine) as conn:
            journaled = conn.execute(
                sa.text(
                    f"SELECT count(*), sum(seconds) FROM {s.journal_schema}.batches"  # noqa: S608 - the configured schema, a checked identifier
                    " WHERE run_id = :run AND state = 'committed'"
                ),
                {"run": tmpl.run_id},
            ).one()
        if journaled[0] != len(results):
            raise BenchmarkError(f"{journaled[0]} batches journaled, {len(results)} reported")
        result = WayResult(
            "uuidguard",
            documents,
            rows,
            seconds,
            [r.seconds for r in results],
            [r.documents + r.skipped for r in results],
            complete=state == "completed",
            started=started,
            profile=profile,
            detail={"journal_batch_seconds": float(journaled[1] or 0.0)},
            etas=etas,
        )
        if state == "completed":
            check_moved(url, s, tmpl, before, back=False)
            _check_rows("uuidguard", rows, before)
        else:
            prefix = _counts(url, s, [old for old, _, _, _ in tmpl.order[:documents]])
            if any(prefix.values()):
                raise BenchmarkError(f"uuidguard: {prefix} rows still on an old id of its prefix")

        with engine.connect() as fconn:  # the pool's one connection, the run's
            fconn.execute(sa.text(FLUSH_STATS))
            fconn.commit()
        record_blocks_read(result, url, s)

        # the rollback: the writer now follows the end of the list, which is undone first
        clients.front.value = max(0, documents - 1)
        t0 = time.monotonic()
        restored = runner.rollback(engine, s, tmpl.run_id, everything=True, force=True)
        result.rollback_seconds = time.monotonic() - t0
        result.rollback_documents = restored
        result.detail["rollback_start"] = t0
        log(f"uuidguard: rollback of {restored:,} documents in {result.rollback_seconds:.1f}s")
        if restored != documents:
            raise BenchmarkError(f"the rollback restored {restored} of {documents} documents")
        check_moved(url, s, tmpl, before, back=True)
        size = int(percentile([float(x) for x in result.batch_sizes[len(results) // 2 :]], 50) or 1)
        result.plans = explain_batch(url, s, tmpl, profile, size)
        return result
    finally:
        status_pool.shutdown(wait=True)
        status_engine.dispose()
        engine.dispose()


@dataclass
class PlanCheck:
    """One statement of a batch run again on the same rows, with the batch table unanalyzed
    (PostgreSQL's default guess of its size) and after `ANALYZE` of that table."""

    label: str
    text: str
    share: float  # of the run's batch time
    plain_ms: float
    analyzed_ms: float
    plain_rows: int | None  # the rows the planner assumed the unanalyzed batch table holds
    plain_scans: list[str]  # mapped tables read whole (sequential scans)
    analyzed_scans: list[str]
    hashed_subplans: bool  # the analyzed plan runs subqueries as hashed subplans
    plan: str  # the plan as the runner runs the statement


_EXEC = re.compile(r"Execution Time: ([\d.]+) ms")
_SEQ = re.compile(r"Seq Scan on (\w+)")
_BATCH_ROWS = re.compile(r"Seq Scan on ug_batch .*?rows=(\d+)")


def runner_analyzes(profile: BatchProfile) -> bool:
    """Whether the runner analyzes its batch table inside each batch (seen in its statements)."""
    return any(
        st.text.startswith("ANALYZE") and runner.BATCH in st.text
        for st in profile.statements.values()
    )


def explain_batch(
    url: str, s: settings_mod.Settings, tmpl: Template, profile: BatchProfile, size: int
) -> list[PlanCheck]:
    """EXPLAIN ANALYZE the three costliest statements of a batch that touch the mapped tables.

    After the rollback, in one transaction that is rolled back: the batch table created with
    the runner's own DDL and filled with the first `size` documents of the run (a typical
    batch), each statement run twice under a savepoint (the second run counts, caches warm),
    first with the batch table unanalyzed, then after `ANALYZE` of it.
    """
    create = next(
        (st.text for st in profile.statements.values() if st.text.startswith("CREATE TEMPORARY")),
        None,
    )
    mapped = f" {s.mapping.schema_}."
    top = [
        st
        for st in profile.top(len(profile.statements))
        if mapped in st.text and not st.text.startswith("SELECT count")
    ][:3]
    if create is None or not top:
        return []
    batch_total = sum(st.seconds for st in profile.statements.values()) or 1.0
    pairs = [(old, new) for old, new, _, _ in tmpl.order[:size]]

    def explain(cur: psycopg.Cursor[Any], st: Statement) -> str:
        plan = ""
        for _ in range(2):
            cur.execute("SAVEPOINT bench_plan")
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + st.text, st.params)
            plan = "\n".join(r[0] for r in cur.fetchall())
            cur.execute("ROLLBACK TO SAVEPOINT bench_plan")
        return plan

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT)))
        cur.execute(create)
        with cur.copy(f"COPY {runner.BATCH} (old_id, new_id) FROM STDIN") as copy:
            for pair in pairs:
                copy.write_row(pair)
        plain = {id(st): explain(cur, st) for st in top}
        cur.execute(f"ANALYZE {runner.BATCH}")
        analyzed = {id(st): explain(cur, st) for st in top}
        conn.rollback()
    as_run = analyzed if runner_analyzes(profile) else plain
    out: list[PlanCheck] = []
    for st in top:
        before, after = plain[id(st)], analyzed[id(st)]
        t1, t2 = _EXEC.search(before), _EXEC.search(after)
        est = _BATCH_ROWS.search(before)
        pc = PlanCheck(
            label=st.label,
            text=st.text,
            share=st.seconds / batch_total,
            plain_ms=float(t1[1]) if t1 else float("nan"),
            analyzed_ms=float(t2[1]) if t2 else float("nan"),
            plain_rows=int(est[1]) if est else None,
            plain_scans=sorted(set(_SEQ.findall(before)) - {runner.BATCH}),
            analyzed_scans=sorted(set(_SEQ.findall(after)) - {runner.BATCH}),
            hashed_subplans="hashed SubPlan" in after,
            plan=as_run[id(st)],
        )
        out.append(pc)
        log(
            f"plan check {st.label}: {pc.plain_ms:.1f} ms unanalyzed (seq scans"
            f" {pc.plain_scans}), {pc.analyzed_ms:.1f} ms analyzed (seq scans"
            f" {pc.analyzed_scans})"
        )
    return out


def run_way(
    way: str, admin_url: str, tmpl_name: str, tmpl: Template, opts: argparse.Namespace
) -> WayResult:
    ctx = mp.get_context("spawn")
    rng = random.Random(7)
    writer_targets = [(user, sha) for _, _, user, sha in tmpl.order]
    reader_targets = rng.sample(writer_targets, min(len(writer_targets), opts.reader_documents))
    t0 = time.perf_counter()
    with database(admin_url, f"bench_migrate_{way}_{os.getpid()}", template=tmpl_name) as url:
        tmpl.copy_seconds.append(time.perf_counter() - t0)
        log(f"{way}: fresh copy of the template in {tmpl.copy_seconds[-1]:.1f}s")
        s = settings_mod.load_settings(None, database={"dsn": url})
        before = _counts(url, s, [old for old, _, _, _ in tmpl.order])
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        heap0, idx0 = blocks_read(url, s)
        with Clients(ctx, url, writer_targets, reader_targets, opts) as clients:
            idle_start = clients.ready_at
            time.sleep(opts.idle_seconds)
            if way == "ceiling":
                result = ceiling(url, s, tmpl, clients)
            elif way == "naive":
                result = naive(url, s, tmpl, clients, opts.naive_seconds)
            else:
                result = uuidguard(url, s, tmpl, clients, opts.uuidguard_seconds, before)
        if way == "ceiling":
            record_blocks_read(result, url, s)
        for key, base in (("heap_blocks_read", heap0), ("index_blocks_read", idx0)):
            if key in result.detail:
                result.detail[key] -= base
        if way == "ceiling":
            check_moved(url, s, tmpl, before, back=False)
            _check_rows(way, result.rows, before)
        elif way == "naive":
            prefix = _counts(url, s, [old for old, _, _, _ in tmpl.order[: result.documents]])
            if any(prefix.values()):
                raise BenchmarkError(f"naive: {prefix} rows still on an old id of its prefix")
            if result.complete:
                _check_rows(way, result.rows, before)
        result.clients = client_stats(
            clients, idle_start, result.started, result.started + result.seconds
        )
        if result.rollback_seconds is not None:
            rb = result.detail["rollback_start"]
            result.rollback_clients = client_stats(
                clients, idle_start, rb, rb + result.rollback_seconds
            )
        c = result.clients
        log(
            f"{way}: {result.documents:,} documents in {result.seconds:.1f}s"
            f" ({result.docs_per_second:,.0f}/s, {result.rows_per_second:,.0f} rows/s);"
            f" writer max {_ms(c.writer_max)}, reader p99 {_ms(c.reader_p99)}"
            f" (idle {_ms(c.reader_idle_p99)})"
        )
    return result


# --- the machine ---------------------------------------------------------------------------------


# --- the document --------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:,.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f} s"


def _ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.3f}×"


def _msf(value: float) -> str:
    """Milliseconds from EXPLAIN, with the digits a small value needs."""
    return f"{value:,.1f}" if value >= 1 else f"{value:.3f}"


def render(
    tmpl: Template,
    configs: list[ConfigResult],
    info: dict[str, str],
    command: str,
    opts: argparse.Namespace,
    embedded_server: bool,
    total_seconds: float,
) -> str:
    now = datetime.now(UTC)
    where = (
        "embedded server, default settings but shared_buffers, which each run below sets"
        if embedded_server
        else f"server given by --dsn: {configs[0].pg_settings}"
    )
    # the descriptions of the ways speak of the first configuration's runs
    results = configs[0].results
    b, c = results["naive"], results["uuidguard"]
    ms = settings_mod.MigrateSettings()
    n = len(tmpl.order)
    classes = ", ".join(f"{k} {v:,}" for k, v in sorted(tmpl.by_class.items()))
    out = [
        f"## {SECTION}",
        "",
        f"- Date: {now:%Y-%m-%d %H:%M} UTC",
        f"- Machine: {info['cpus']} CPUs (`nproc`), {info['cpu']}, {info['memory']} memory",
        f"- PostgreSQL {info['postgres']} ({where})",
        f"- Code: commit {info['revision']}",
        "- Reproduce (from the project root):",
        "",
        "  ```sh",
        f"  {command}",
        "  ```",
        "",
        f"The dataset (`migrator.dataset`, FK mode `none`): {tmpl.documents:,} documents,"
        f" {tmpl.chunks:,} chunks, {tmpl.embeddings:,} embeddings, {tmpl.shares:,} shares,"
        f" seeded once into a template database in {tmpl.seed_seconds:.0f} s. `runs.create`"
        f" (what `uuidguard migrate create` does) planned the run there in"
        f" {tmpl.create_seconds:.1f} s: {n:,} documents to re-key ({classes}). Each way ran on its"
        " own copy of that template (`CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY`,"
        f" {', '.join(f'{x:.1f}' for x in tmpl.copy_seconds)} s), so all three re-key the same"
        " documents to the same new ids:",
        "",
        "- **(a) ceiling**: the run's mapping (`uuidguard.id_map`) copied into a temporary table"
        " with a primary key before timing, then one transaction: `UPDATE <table> SET document_id"
        " = m.new_id FROM map m WHERE document_id = m.old_id` for chunks, embeddings and shares,"
        " then the same on `documents.id`. No journal, no check, every row locked to the end.",
        "- **(b) naive**: one transaction per document, one UPDATE per table (same order as"
        " uuidguard: by user, then id), psycopg with its automatic prepared statements, over a"
        f" local socket. **Time-boxed** to {opts.naive_seconds:.0f} s (`--naive-seconds`): "
        + (
            f"it finished all {n:,} documents within that time."
            if b.complete
            else f"it ran on the first {b.documents:,} of the {n:,} documents only, and its"
            " rate is the one it reached in that time; the whole run would take about"
            f" {n / b.docs_per_second / 60 if b.docs_per_second else float('nan'):.1f} min"
            " at that rate."
        ),
        f"- **(c) uuidguard**: `runner.run_batches` on one worker, `Pace` from the default"
        f" `settings.migrate` (batch_time {ms.batch_time} s, start {ms.start_batch}, min"
        f" {ms.min_batch}, max {ms.max_batch}), lock_timeout"
        f" {ms.lock_timeout.total_seconds():.0f} s; every rewritten row journaled, every batch"
        " verified in its transaction. Its time includes the run-state check between batches."
        f" Time-boxed to {opts.uuidguard_seconds:.0f} s (`--uuidguard-seconds`): "
        + (
            f"it finished all {n:,} documents within that time."
            if c.complete
            else f"**it re-keyed only the first {c.documents:,} of the {n:,} documents in that"
            " time**, and its figures are over those; the whole run would take about"
            f" {n / c.docs_per_second / 60 if c.docs_per_second else float('nan'):.0f} min at"
            " that rate."
        )
        + " Then `runner.rollback(everything=True, force=True)` of the whole run (what it did).",
        "",
        "During each way two client processes run, each on its own connection, from"
        f" {opts.idle_seconds:.0f} s before the migration (their idle baseline) to its end, one"
        f" statement every {opts.client_interval * 1000:.0f} ms: a **writer** that increments"
        " `documents.access_count` of one document found by `user_id` and `file_sha256` (never"
        " by id: ids change), one autocommitted UPDATE at a time; it"
        f" picks its document among the next {opts.writer_window:,} the migration will re-key (it"
        " follows the migration's progress, so it keeps running into rows a batch holds; for (a)"
        " the first ones, all locked from the documents UPDATE to the commit), and a **reader**"
        f" fetching re-keyed documents with their chunks by owner and sha (`documents JOIN"
        f" document_chunks ON document_id = id`), {opts.reader_documents:,} of them drawn once,"
        " read in one fixed cycle, so that the idle window and the migration's window read the"
        " same documents in the same mix (their costs differ tenfold: owners with many"
        " documents). The longest writer UPDATE is the longest a writer waited for a lock.",
        "",
    ]
    for cfg in configs:
        out += config_section(cfg, tmpl)
    if len(configs) > 1:
        out += cache_effect(configs)
    first = configs[0].results
    out += limits(first["uuidguard"], first["ceiling"], configs[0].label)
    out += ["", f"The whole benchmark took {total_seconds / 60:.1f} min."]
    return "\n".join(out) + "\n"


def config_section(cfg: ConfigResult, tmpl: Template) -> list[str]:
    """One server configuration's table, rollback and targets."""
    results = cfg.results
    a, c = results["ceiling"], results["uuidguard"]
    out = [
        "",
        f"### {cfg.label}",
        "",
        f"Settings: {cfg.pg_settings}.",
        "",
        "| way | documents | rows rewritten | seconds | documents/s | rows/s"
        " | (c) ÷ this (documents/s) | transactions | batch p50 | batch p99 | batch max"
        " | writer: longest UPDATE (idle max) | reader p99 (idle p99) | reader ÷ idle |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for way in WAYS:
        r = results[way]
        cs = r.clients
        assert cs is not None
        vs = c.docs_per_second / r.docs_per_second if r.docs_per_second else None
        out.append(
            f"| {LABELS[way]} | {r.documents:,} | {r.total_rows:,} | {r.seconds:.1f}"
            f" | {r.docs_per_second:,.0f} | {r.rows_per_second:,.0f}"
            f" | {'—' if way == 'uuidguard' else _ratio(vs)} | {len(r.batches):,}"
            f" | {_s(percentile(r.batches, 50))} | {_s(percentile(r.batches, 99))}"
            f" | {_s(max(r.batches, default=None))}"
            f" | {_ms(cs.writer_max)} ({_ms(cs.writer_idle_max)})"
            f" | {_ms(cs.reader_p99)} ({_ms(cs.reader_idle_p99)}) | {_ratio(cs.reader_ratio)} |"
        )
    rb_rate = c.rollback_rate
    rb_ratio = rb_rate / c.docs_per_second if rb_rate and c.docs_per_second else None
    rbc = c.rollback_clients
    out += [
        "",
        f"Rows rewritten, by table: {_rows(results)}. Clients, in the migration window:"
        f" {_clients(results)}.",
        "",
        f"Rollback of (c): {c.rollback_documents or 0:,} documents restored in"
        f" {c.rollback_seconds or 0:.1f} s, {rb_rate or 0:,.0f} documents/s,"
        f" {_ratio(rb_ratio)} the forward rate"
        + (
            f"; meanwhile the writer's longest UPDATE took {_ms(rbc.writer_max)} and the reader's"
            f" p99 was {_ms(rbc.reader_p99)}."
            if rbc is not None
            else "."
        ),
    ]
    if a.detail:
        parts = ", ".join(
            f"{k} {v:.2f} s" for k, v in a.detail.items() if not k.endswith("_blocks_read")
        )
        out += ["", f"The ceiling's transaction, statement by statement: {parts}."]
    out += ["", "#### Targets", "", *targets(results, tmpl)]
    return out


def _rows(results: dict[str, WayResult]) -> str:
    parts = []
    for way in WAYS:
        r = results[way]
        parts.append(f"{way} " + ", ".join(f"`{k}` {v:,}" for k, v in r.rows.items()))
    return "; ".join(parts)


def _clients(results: dict[str, WayResult]) -> str:
    parts = []
    for way in WAYS:
        cs = results[way].clients
        assert cs is not None
        parts.append(
            f"{way}: {cs.writer_updates:,} writer UPDATEs ({cs.writer_waits:,} slower than 10×"
            f" the idle p99 of {_ms(cs.writer_idle_p99)}, i.e. waited for a lock; p99"
            f" {_ms(cs.writer_p99)}), {cs.reader_queries:,} reads (idle: {cs.reader_idle_queries:,})"
        )
    return "; ".join(parts)


def targets(results: dict[str, WayResult], tmpl: Template) -> list[str]:
    a, b, c = results["ceiling"], results["naive"], results["uuidguard"]
    cs = c.clients
    assert cs is not None and a.clients is not None
    vs_a = c.docs_per_second / a.docs_per_second if a.docs_per_second else 0.0
    vs_b = c.docs_per_second / b.docs_per_second if b.docs_per_second else float("inf")
    p99 = percentile(c.batches, 99) or 0.0
    wait = cs.writer_max or 0.0
    reader = cs.reader_ratio
    rb = (c.rollback_rate or 0.0) / c.docs_per_second if c.docs_per_second else 0.0
    rows = [
        (
            f"(c) throughput ≥ {TARGET_VS_CEILING}× the ceiling (a)",
            f"{_ratio(vs_a)} ({c.docs_per_second:,.0f} against {a.docs_per_second:,.0f} documents/s)",
            vs_a >= TARGET_VS_CEILING,
        ),
        (
            f"(c) throughput ≥ {TARGET_VS_NAIVE:.0f}× the naive script (b)",
            f"{_ratio(vs_b)} ({c.docs_per_second:,.0f} against {b.docs_per_second:,.0f} documents/s)",
            vs_b >= TARGET_VS_NAIVE,
        ),
        (
            f"(c) batch p99 ≤ {TARGET_BATCH_P99} s",
            f"{p99:.3f} s (max {max(c.batches, default=0.0):.3f} s)",
            p99 <= TARGET_BATCH_P99,
        ),
        (
            f"(c) longest writer wait ≤ {TARGET_WRITER_WAIT} s",
            f"{wait:.3f} s (the ceiling: {a.clients.writer_max or 0.0:.3f} s"
            f" of its {a.seconds:.1f} s transaction)",
            wait <= TARGET_WRITER_WAIT,
        ),
        (
            f"(c) reader p99 ≤ {TARGET_READER}× idle",
            f"{_ratio(reader)} ({_ms(cs.reader_p99)} against {_ms(cs.reader_idle_p99)})",
            reader is not None and reader <= TARGET_READER,
        ),
        (
            f"(c) rollback ≥ {TARGET_ROLLBACK}× forward",
            f"{_ratio(rb)} ({c.rollback_rate or 0.0:,.0f} against {c.docs_per_second:,.0f}"
            " documents/s)",
            rb >= TARGET_ROLLBACK,
        ),
    ]
    eta = eta_errors(c)
    if eta:
        share, predicted, actual, error = eta[0]
        rows.append(
            (
                f"(c) ETA after 10% within {TARGET_ETA:.0%} of the real remaining time",
                f"{error:+.0%} at {share:.0%} done ({predicted:.1f} s said, {actual:.1f} s taken)",
                abs(error) <= TARGET_ETA,
            )
        )
    else:
        rows.append(
            (
                f"(c) ETA after 10% within {TARGET_ETA:.0%} of the real remaining time",
                "not measured: the run was time-boxed before its end",
                False,
            )
        )
    plan_target = "`uuidguard plan`'s estimate for option A within 2× of the measured run"
    if c.complete and c.seconds > 0 and tmpl.plan_estimate > 0:
        ratio = tmpl.plan_estimate / c.seconds
        rows.append(
            (
                plan_target,
                f"{ratio:.2f}× ({tmpl.plan_estimate:.1f} s estimated for"
                f" {tmpl.plan_documents:,} documents, {c.seconds:.1f} s taken; the plan itself"
                f" took {tmpl.plan_seconds:.1f} s)",
                0.5 <= ratio <= 2.0,
            )
        )
    else:
        rows.append((plan_target, "not measured: the run was time-boxed before its end", False))
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {verdict(ok)} |" for t, m, ok in rows]
    met = [t for t, _, ok in rows if ok]
    missed = [t for t, _, ok in rows if not ok]
    lines += [
        "",
        f"Met: {len(met)} of {len(rows)}"
        + (f"; **not met: {'; '.join(missed)}**." if missed else "."),
    ]
    if not c.complete:
        lines += [
            "",
            f"uuidguard was time-boxed (`--uuidguard-seconds`) before it finished the run; its"
            f" figures are over the {c.documents:,} documents it re-keyed.",
        ]
    return lines


def eta_errors(c: WayResult) -> list[tuple[float, float, float, float]]:
    """For each checkpoint of a completed run: (share done, ETA said, seconds it really took
    from there, relative error of the ETA)."""
    if not c.complete:
        return []
    end = c.started + c.seconds
    out = []
    for share, eta, at in c.etas:
        actual = end - at
        if eta is not None and actual > 0:
            out.append((share, eta, actual, eta / actual - 1))
    return out


def _per_document(r: WayResult, key: str) -> str:
    value = r.detail.get(key)
    return f"{value / r.documents:.2f}" if value is not None and r.documents else "—"


def cache_effect(configs: list[ConfigResult]) -> list[str]:
    """How the buffer cache's size moves (c) against (a): blocks of the mapped tables read from
    outside it, per document re-keyed (pg_statio_user_tables, forward run only)."""
    rows = []
    for cfg in configs:
        a, c = cfg.results["ceiling"], cfg.results["uuidguard"]
        ratio = c.docs_per_second / a.docs_per_second if a.docs_per_second else None
        cells = [
            f"{_per_document(r, 'index_blocks_read')} | {_per_document(r, 'heap_blocks_read')}"
            for r in (a, c)
        ]
        rows.append(f"| {cfg.shared_buffers} | {_ratio(ratio)} | {' | '.join(cells)} |")
    return [
        "",
        "### What the buffer cache does to the comparison",
        "",
        "The same dataset and run on both configurations. Blocks of the mapped tables (heap, and"
        " their indexes) that PostgreSQL read from outside its buffer cache during each forward"
        " run, per document re-keyed (pg_statio_user_tables, flushed after the run):",
        "",
        "| shared_buffers | (c) ÷ (a) | (a) index blocks read per document | (a) heap"
        " | (c) index blocks read per document | (c) heap |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Every updated row inserts into every index of its table (document_id is indexed, so no"
        " update is HOT), and three of those indexes are keyed by random uuids (the two primary"
        " keys and `embeddings.chunk_id`): each batch touches about a third of their leaf pages."
        " When they do not fit in the cache beside the heap pages the batches read through them,"
        " each batch reads back most of what the previous ones pushed out, and writes it again"
        " dirty. The ceiling reads the heap with sequential scans, which PostgreSQL gives a small"
        " ring of buffers of their own, so its index pages stay cached for its one pass. The"
        " smaller cache is what a production database much larger than its shared_buffers"
        " looks like; the larger one is a database whose indexes fit in memory.",
        "",
    ]


def limits(c: WayResult, a: WayResult, where: str) -> list[str]:
    p = c.profile
    if p is None or not c.batches:
        return []
    batch_total = sum(c.batches)
    traced = p.statement_seconds
    sizes = c.batch_sizes
    steady = sizes[len(sizes) // 2 :]
    per_doc = batch_total / max(c.documents, 1)
    parts: dict[str, list[Statement]] = {}
    for st in p.statements.values():
        parts.setdefault(kind(st), []).append(st)
    breakdown = "; ".join(
        f"{sum(s.seconds for s in sts) / batch_total:.0%} {name}"
        f" ({len(sts)} statement{'s' if len(sts) > 1 else ''})"
        for name, sts in sorted(parts.items(), key=lambda kv: -sum(s.seconds for s in kv[1]))
    )
    between = c.seconds - batch_total
    lines = [
        f"### What limits uuidguard's batches ({where})",
        "",
        f"The pace settled at a median of {percentile([float(x) for x in steady], 50) or 0:,.0f}"
        f" documents per batch over the second half of the run (first batch {sizes[0]}, largest"
        f" {max(sizes):,}, {len(sizes)} batches; `Pace` grows a batch by at most {Pace.growth_cap:g}× a step and leaves headroom for the slower recent batches),"
        f" {per_doc * 1000:.2f} ms of batch time per document against"
        f" {a.seconds / max(a.documents, 1) * 1000:.3f} ms in the ceiling's single transaction."
        f" {batch_total:.1f} s of the {c.seconds:.1f} s were inside batches (the journal's"
        f" `batches.seconds` add up to {c.detail.get('journal_batch_seconds', 0.0):.1f} s); {between:.1f} s"
        f" ({between / c.seconds:.0%}) between them (the run-state check each turn:"
        f" {p.outside_calls} statements, {p.outside_seconds:.1f} s, and Python).",
        "",
        "Every statement sent from `runner.forward_batch` was timed with SQLAlchemy"
        " `before_cursor_execute` / `after_cursor_execute` events, summed over all"
        f" {len(c.batches)} batches, and each COMMIT from the `commit` event to the batch's"
        f" return. Of the batch time: {traced / batch_total:.0%} in"
        f" {sum(s.calls for s in p.statements.values()) / len(c.batches):.0f} statements per"
        f" batch, {p.commit_seconds / batch_total:.0%} in COMMIT,"
        f" {max(batch_total - traced - p.commit_seconds, 0.0) / batch_total:.0%} in Python"
        f" (SQLAlchemy compiling and the driver). By part: {breakdown}.",
        "",
        "The most expensive statements (`runner.py:<line>` in `forward_batch`):",
        "",
        "| # | where | statement | calls | seconds | ms per batch | share of batch time |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for i, st in enumerate(p.top(8), 1):
        text = summary(st.text).replace("|", "\\|")
        lines.append(
            f"| {i} | `{st.label}` | `{text}` | {st.calls:,} | {st.seconds:.2f}"
            f" | {st.seconds / len(c.batches) * 1000:.1f} | {st.seconds / batch_total:.1%} |"
        )
    rest = p.top(len(p.statements))[8:]
    if rest:
        lines += [
            "",
            f"The other {len(rest)} statements take {sum(s.seconds for s in rest) / batch_total:.0%}"
            f" of the batch time together, none more than {rest[0].seconds / batch_total:.1%}.",
        ]
    return lines + _plans(c)


def _plans(c: WayResult) -> list[str]:
    if not c.plans or c.profile is None:
        return []
    analyzes = runner_analyzes(c.profile)
    size = int(percentile([float(x) for x in c.batch_sizes[len(c.batch_sizes) // 2 :]], 50) or 1)
    lines = [
        "",
        "Why: the three costliest of those statements that touch the mapped tables, run again"
        " with `EXPLAIN (ANALYZE, BUFFERS)` after the rollback, in a transaction rolled back"
        f" afterwards, on a typical batch (the first {size:,} documents of the run in"
        f" `{runner.BATCH}`, created with the runner's own DDL; each run twice, the second"
        f" counts): with `{runner.BATCH}` unanalyzed, then after `ANALYZE {runner.BATCH}`. "
        + (
            f"The runner analyzes `{runner.BATCH}` in each batch (its statements include"
            f" `ANALYZE {runner.BATCH}`), so the analyzed columns are what it runs."
            if analyzes
            else f"The runner never analyzes `{runner.BATCH}`, so the unanalyzed columns are"
            " what it runs."
        ),
        "",
        f"| where | statement | share of batch time | ms, {runner.BATCH} unanalyzed"
        " | planner's rows for it | sequential scans | ms, analyzed | sequential scans,"
        " analyzed |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for pc in c.plans:
        text = summary(pc.text, 120).replace("|", "\\|")
        lines.append(
            f"| `{pc.label}` | `{text}` | {pc.share:.1%} | {_msf(pc.plain_ms)}"
            f" | {'—' if pc.plain_rows is None else f'{pc.plain_rows:,}'}"
            f" | {', '.join(pc.plain_scans) or 'none'} | {_msf(pc.analyzed_ms)}"
            f" | {', '.join(pc.analyzed_scans) or 'none'} |"
        )
    plain = sum(pc.plain_ms for pc in c.plans)
    analyzed = sum(pc.analyzed_ms for pc in c.plans)
    guess = next((pc.plain_rows for pc in c.plans if pc.plain_rows is not None), None)
    if not analyzes and guess is not None and guess > 5 * size and plain > 5 * analyzed:
        scanned = sorted({t for pc in c.plans for t in pc.plain_scans})
        lines += [
            "",
            f"**The batch table is never analyzed, so the planner assumes it holds {guess:,}"
            f" rows (it holds {size:,}) and reads {', '.join(scanned) or 'the mapped tables'}"
            " whole (sequential scan and hash join) instead of probing their indexes.** That"
            f" cost grows with the tables, not with the batch: these statements take"
            f" {plain:,.0f} ms per batch as run and {_msf(analyzed)} ms once the table is"
            " analyzed."
            + (
                " Since a batch of the minimum size already exceeds the target batch time,"
                " `Pace` stays at its minimum and the throughput follows from that fixed cost"
                " per batch."
                if size <= settings_mod.MigrateSettings().min_batch
                else ""
            ),
        ]
    for pc in c.plans:
        # a plan shape statistics cannot change: the subqueries are hashed whole, not probed
        if not (analyzes and pc.hashed_subplans and pc.analyzed_scans):
            continue
        lines += [
            "",
            f"**`{pc.label}` reads {', '.join(pc.analyzed_scans)} whole in every batch**, with"
            f" `{runner.BATCH}` analyzed too: its `EXISTS` subqueries sit under an `OR`, which"
            " PostgreSQL cannot turn into a semi- or anti-join, so it runs them as hashed"
            " subplans, each built from a sequential scan of the table instead of index probes:"
            f" {_msf(pc.analyzed_ms)} ms for a batch of {size:,}, {pc.share:.0%} of the batch"
            " time. That cost grows with the table, not with the batch, and takes its share of"
            f" the {settings_mod.MigrateSettings().batch_time} s every batch aims at.",
        ]
    first = c.plans[0]
    lines += [
        "",
        f"Plan of `{first.label}` as the runner runs it"
        f" ({runner.BATCH} {'analyzed' if analyzes else 'unanalyzed'}):",
        "",
        "```text",
        first.plan,
        "```",
    ]
    return lines


# --- entry point ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--documents",
        type=int,
        default=100_000,
        help="documents to seed, about 9.3 chunks and embeddings each (default: %(default)s)",
    )
    p.add_argument(
        "--naive-seconds",
        type=float,
        default=60.0,
        help="time box of the naive way (b), run on a prefix of the documents (default: %(default)s)",
    )
    p.add_argument(
        "--uuidguard-seconds",
        type=float,
        default=240.0,
        help="time box of uuidguard's forward run (c); its rollback undoes what it did"
        " (default: %(default)s)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="the clients' idle baseline before each migration (default: %(default)s)",
    )
    p.add_argument(
        "--reader-documents",
        type=int,
        default=400,
        help="the reader cycles through this many re-keyed documents, in one fixed order"
        " (default: %(default)s)",
    )
    p.add_argument(
        "--client-interval",
        type=float,
        default=0.005,
        help="pause between two statements of a client, in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--writer-window",
        type=int,
        default=500,
        help="the writer picks among this many documents ahead of the migration (default: %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the embedded server keeps its data (default: a temporary directory)",
    )
    p.add_argument(
        "--dsn", default=None, help="use this PostgreSQL server instead of an embedded one"
    )
    p.add_argument(
        "--shared-buffers",
        default="128MB,1GB",
        help="the embedded server's shared_buffers, one run of the three ways for each, the first"
        " one's profile explained (default: %(default)s: the server's own default, then a cache"
        " that holds the mapped tables' indexes)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown file to update")
    p.add_argument(
        "--no-write", action="store_true", help="print the section instead of writing it"
    )
    opts = p.parse_args(argv)
    if opts.documents < 100:
        p.error("--documents must be at least 100")
    if min(opts.naive_seconds, opts.uuidguard_seconds, opts.idle_seconds) <= 0:
        p.error("the time boxes must be positive")
    if opts.client_interval < 0 or opts.writer_window < 1 or opts.reader_documents < 1:
        p.error("--client-interval must be ≥ 0, --writer-window and --reader-documents ≥ 1")
    if opts.state_dir is not None and opts.dsn is not None:
        p.error("--state-dir and --dsn exclude each other")
    opts.shared_buffers = [v.strip() for v in opts.shared_buffers.split(",") if v.strip()]
    if not opts.shared_buffers:
        p.error("--shared-buffers needs at least one value, e.g. 128MB")
    if opts.state_dir is not None and opts.state_dir.resolve() in {
        (d / ".uuidguard").resolve() for d in (Path.cwd(), ROOT)
    }:
        p.error("--state-dir .uuidguard belongs to the uuidguard CLI; pick another directory")
    return opts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    opts = parse_args(args)
    # stopped by a signal, still drop the databases and stop the server on the way out (a
    # shell starts a background job with SIGINT ignored, hence both handlers)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    command = shlex.join([".venv/bin/python", "benchmarks/migrate.py", *args])
    started = time.perf_counter()
    configs: list[ConfigResult] = []
    try:
        with server(opts.dsn, opts.state_dir) as admin_url:
            info = machine(admin_url, PG_SETTINGS)
            log(f"PostgreSQL {info['postgres']}; {opts.documents:,} documents")
            tmpl_name = f"bench_migrate_tmpl_{os.getpid()}"
            with database(admin_url, tmpl_name) as tmpl_url:
                tmpl = prepare_template(tmpl_url, opts)
                for shared_buffers in [None] if opts.dsn else opts.shared_buffers:
                    if shared_buffers is not None:
                        reconfigure(admin_url, {"shared_buffers": shared_buffers})
                        log(f"embedded server restarted with shared_buffers {shared_buffers}")
                    results: dict[str, WayResult] = {}
                    for way in WAYS:
                        results[way] = run_way(way, admin_url, tmpl_name, tmpl, opts)
                    cfg_info = machine(admin_url, PG_SETTINGS)
                    configs.append(ConfigResult(shared_buffers, cfg_info["pg_settings"], results))
    except (BenchmarkError, UuidguardError) as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'SIGINT'}); databases dropped, server stopped")
        return 130
    total = time.perf_counter() - started
    section = render(
        tmpl, configs, info, command, opts, embedded_server=opts.dsn is None, total_seconds=total
    )
    if opts.no_write:
        print(section)
    else:
        write_section(opts.out, SECTION, section)
        log(f"wrote {opts.out}")
    log(f"done in {total:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
