"""Benchmark of the daemon's probes (`monitor.probes`, `monitor.migration_probe`) and of /metrics.

For each target chunk count (`--sizes`) the script seeds a fresh database with the reference
dataset (`migrator.dataset`, about 9.3 chunks per document, one embedding per chunk, FK mode
`none`), creates the journal and plans a run of option A there (`runs.create`, what `uuidguard
migrate create` does), so the migration probe reads a real run. Then:

- every probe of `probes.probe_specs(settings)` plus `migration_probe.spec(settings)` runs through
  `probing.run_probe` with one `ProbeContext` per probe kept between its runs, as the daemon's
  scheduler keeps it: a first run (the warm-up, which for the incremental probes is also the
  catch-up past the existing rows), then `--runs` timed runs; reported are the median and the
  maximum of those, with the probe's budget (full, incremental, sampled);
- new rows: `--rounds` times, `--new-documents` new documents (9 chunks and 9 embeddings each;
  every tenth with a random v4 id, the others with their rule id) are inserted and committed,
  the same number at every size, and each incremental probe then runs once more, timed. The
  new-upload probe must report exactly those documents, and the random ones as nonconforming.
  The ratio of the largest size to the smallest is the issue's target ("same order": at most
  3 times); the full classification's growth over the same sizes is the baseline (a full scan
  grows with the table).

On the largest size, /metrics: a `Daemon` (scheduler not started) gets one round of all its
probes into its store, `api.create_app(daemon)` is served by uvicorn in a thread, and
`daemon.engine` is replaced by an engine that cannot connect (its connection attempts and
statements are counted), so a scrape that touched the database would fail. `--scrapers`
concurrent scrapers (threads of a second process, each its own `httpx.Client` with keep-alive)
do `--scrapes` back-to-back scrapes each after one untimed scrape; every response must be 200
and hold `uuidguard_migration_state`. The baseline in the same run is a query-per-scrape
exporter (what SQL exporters such as query-exporter do): a starlette endpoint in the same
process that runs the latency and id_versions probes through `run_probe` on a working engine at
each scrape and renders them the same way (`metrics.registry` of a store), scraped by the same
scrapers, `--baseline-scrapes` times each (each of its scrapes scans the documents table). Both
are also scraped by a single scraper, whose latency is the cost of one scrape.

For the sampled and incremental probes, the statements of their last run are timed with
SQLAlchemy's cursor events, and the slowest is run again alone under EXPLAIN (ANALYZE, BUFFERS):
the shared buffers it touched (hit, and read from outside shared_buffers) say what grows.

Results go to the "## Probes (benchmarks/probes.py)" section of docs/performance.md; other
"## " sections are kept as they are.

Run it from the project root (a default run takes about 4 minutes on 2 cores, a third of it
seeding the 1M-chunk database, a third the baseline's scrapes):

    .venv/bin/python benchmarks/probes.py
    .venv/bin/python benchmarks/probes.py --sizes 20000 --no-write
    .venv/bin/python benchmarks/probes.py --sizes 100000,1000000,5000000   # about 12 minutes

Without `--dsn` it starts its own embedded PostgreSQL under `--state-dir` (a temporary directory
by default) and stops it at the end; with `--dsn` it uses that server. Either way it creates one
database per size (`bench_probes_<chunks>_<pid>`) and drops it afterwards; the scraper process
and the HTTP servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import queue
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa
import uvicorn
from benchlib import (
    PERFORMANCE_MD,
    ROOT,
    BenchmarkError,
    database,
    interrupted,
    log,
    machine,
    percentile,
    server,
    verdict,
    write_section,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg import sql
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from migrator import dataset, db, journal, runs, seed, textvec
from migrator import settings as settings_mod
from migrator.errors import UuidguardError
from migrator.idrule import IdRule
from monitor import api, migration_probe, probes
from monitor.daemon import Daemon
from monitor.metrics import registry
from monitor.probing import ProbeContext, ProbeOutput, ProbeSpec, run_probe
from monitor.store import STALE_AFTER_INTERVALS, Store

SECTION = "Probes (benchmarks/probes.py)"
DEFAULT_OUT = PERFORMANCE_MD
PG_SETTINGS = ("shared_buffers", "work_mem", "effective_cache_size")
CHUNKS_PER_DOCUMENT = 9.3
#: the mapped tables whose size (with indexes) is reported
RELATIONS = ("documents", "document_chunks", "embeddings")

# the targets
TARGET_INCREMENTAL_RATIO = 3.0
TARGET_METRICS_P99 = 0.010

#: the new documents of a round: chunks (and embeddings) each, and one in this many nonconforming
NEW_CHUNKS = 9
NONCONFORMING_EVERY = 10
#: an engine no scrape can use: nothing listens on port 1
DEAD_DSN = "postgresql+psycopg://nobody@127.0.0.1:1/none"
#: what every /metrics response must hold; the baseline's must hold its own metric
OURS_MUST_HOLD = "uuidguard_migration_state"
BASELINE_MUST_HOLD = "uuidguard_documents_by_id_version"
#: the probes a query-per-scrape exporter runs at each scrape
BASELINE_PROBES = ("latency", "id_versions")
SCRAPE_TIMEOUT = 120.0
#: in-process renderings of the daemon's registry timed for the cost of one exposition
RENDERS = 200
#: the longest wait for the scraper process's answer to one task
TASK_TIMEOUT = 900.0


# --- the scrapers: threads of their own process ---------------------------------------------------


@dataclass
class ScrapeResult:
    label: str
    scrapers: int
    per_scraper: int
    latencies: list[float]
    #: responses that were not 200 or lacked the metric they must hold
    bad: int
    wall: float
    body_bytes: tuple[int, int]
    errors: list[str]
    #: connection attempts and statements of the engine the endpoint could use, during the scrapes
    connects: int = 0
    statements: int = 0
    #: CPU seconds of the servers' process and of the scrapers' process over the timed scrapes
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    #: statements during the timed scrapes only (the others include the untimed first ones)
    timed_statements: int = 0

    @property
    def scrapes(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return self.scrapes / self.wall if self.wall > 0 else 0.0

    def p(self, q: float) -> float | None:
        return percentile(self.latencies, q)


def scrape(
    url: str, scrapers: int, per_scraper: int, must_hold: str, started: Callable[[], None]
) -> dict[str, Any]:
    """`scrapers` threads, each its own keep-alive client: one untimed scrape (the connection),
    then, all together, `per_scraper` back-to-back timed scrapes; `started()` is called when
    they are released."""
    start = threading.Barrier(scrapers + 1)
    latencies: list[list[float]] = [[] for _ in range(scrapers)]
    bad = [0] * scrapers
    errors: list[str] = []
    sizes: list[int] = []
    needle = must_hold.encode()

    def worker(i: int) -> None:
        try:
            client = httpx.Client(timeout=SCRAPE_TIMEOUT)
            client.get(url)
            start.wait()
        except (httpx.HTTPError, threading.BrokenBarrierError) as exc:
            errors.append(f"scraper {i}: {type(exc).__name__}: {exc}")
            start.abort()
            return
        try:
            for _ in range(per_scraper):
                t0 = time.perf_counter()
                try:
                    response = client.get(url)
                except httpx.HTTPError:
                    # an overloaded server drops the connection: a failed scrape (counted as
                    # bad, with the time it took to fail), and the scraper reconnects
                    latencies[i].append(time.perf_counter() - t0)
                    bad[i] += 1
                    client.close()
                    client = httpx.Client(timeout=SCRAPE_TIMEOUT)
                    continue
                latencies[i].append(time.perf_counter() - t0)
                if response.status_code != 200 or needle not in response.content:
                    bad[i] += 1
                sizes.append(len(response.content))
        finally:
            client.close()

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"scraper-{i}") for i in range(scrapers)
    ]
    for t in threads:
        t.start()
    try:
        start.wait(timeout=SCRAPE_TIMEOUT)
    except threading.BrokenBarrierError:
        errors.append("the scrapers could not all start")
    started()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "cpu": time.process_time() - cpu0,
        "latencies": [x for per in latencies for x in per],
        "bad": sum(bad),
        "wall": wall,
        "body_bytes": (min(sizes, default=0), max(sizes, default=0)),
        "errors": errors,
    }


def _scraper_process(tasks: Any, results: Any) -> None:
    """Runs scrape tasks from the parent until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    results.put("ready")
    while True:
        task = tasks.get()
        if task is None:
            return
        try:
            url, scrapers, per_scraper, must_hold = task
            results.put(
                scrape(url, scrapers, per_scraper, must_hold, lambda: results.put("started"))
            )
        except Exception as exc:  # reported to the parent, which fails the benchmark
            results.put({"failed": f"{type(exc).__name__}: {exc}"})


class Scrapers:
    """The scraper process: started before it is needed, so its imports cost no probe freshness."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._tasks = ctx.Queue()
        self._results = ctx.Queue()
        self._proc = ctx.Process(
            target=_scraper_process, args=(self._tasks, self._results), daemon=True
        )

    def __enter__(self) -> Scrapers:
        self._proc.start()
        return self

    def wait_ready(self) -> None:
        try:
            ready = self._results.get(timeout=120)
        except queue.Empty:
            ready = None
        if ready != "ready":
            raise BenchmarkError("the scraper process did not start within 120 s")

    def run(
        self,
        label: str,
        url: str,
        scrapers: int,
        per_scraper: int,
        must_hold: str,
        engine: Engine,
    ) -> ScrapeResult:
        counts = {"connects": 0, "statements": 0}

        def connecting(*_: Any) -> None:
            counts["connects"] += 1

        def statement(*_: Any) -> None:
            counts["statements"] += 1

        sa.event.listen(engine, "do_connect", connecting)
        sa.event.listen(engine, "before_cursor_execute", statement)
        try:
            self._tasks.put((url, scrapers, per_scraper, must_hold))
            got = self._results.get(timeout=TASK_TIMEOUT)
            # this process's CPU (the HTTP servers' threads) from the scrapers' release on; the
            # untimed first scrapes are all done by then
            cpu0 = time.process_time()
            warm_up = dict(counts)
            if got == "started":
                got = self._results.get(timeout=TASK_TIMEOUT)
            server_cpu = time.process_time() - cpu0
        except queue.Empty:
            raise BenchmarkError(
                f"{label}: no answer from the scrapers in {TASK_TIMEOUT:.0f} s"
            ) from None
        finally:
            sa.event.remove(engine, "do_connect", connecting)
            sa.event.remove(engine, "before_cursor_execute", statement)
        if "failed" in got:
            raise BenchmarkError(f"{label}: the scrapers failed: {got['failed']}")
        result = ScrapeResult(
            label,
            scrapers,
            per_scraper,
            got["latencies"],
            got["bad"],
            got["wall"],
            got["body_bytes"],
            got["errors"],
            counts["connects"],
            counts["statements"],
            server_cpu,
            got["cpu"],
            counts["statements"] - warm_up["statements"],
        )
        log(
            f"{label}, {scrapers} scrapers × {per_scraper}: p50 {_ms(result.p(50))}, p99"
            f" {_ms(result.p(99))}, max {_ms(max(result.latencies, default=None))},"
            f" {result.per_second:,.0f} scrapes/s, {result.bad} bad, {len(result.errors)} errors,"
            f" {result.connects} connection attempts, {result.statements} statements"
        )
        return result

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._tasks.put(None)
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=10)


# --- HTTP servers in threads of this process ------------------------------------------------------


@contextlib.contextmanager
def serving(app: ASGIApp, name: str) -> Iterator[str]:
    """`app` served by uvicorn (as `uuidguard serve` configures it) on a free local port."""
    # IPPROTO_TCP given, as getaddrinfo gives it when uvicorn binds host and port itself:
    # asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it every
    # keep-alive response waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise BenchmarkError(f"{name}: uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


def query_per_scrape_app(
    engine: Engine, settings: settings_mod.Settings, specs: list[ProbeSpec]
) -> Starlette:
    """The baseline exporter: the probes' SQL at every scrape, rendered like ours."""

    def metrics(_: Request) -> Response:  # sync: starlette runs it in its thread pool
        store = Store(specs)
        for spec in specs:
            out, seconds = run_probe(engine, settings, spec, ProbeContext())
            store.success(spec.name, out, seconds)
        return Response(
            generate_latest(registry(store, api.VERSION)), media_type=CONTENT_TYPE_LATEST
        )

    return Starlette(routes=[Route("/metrics", metrics)])


# --- what a probe run sends -----------------------------------------------------------------------


@dataclass
class StatementStat:
    """One statement text of a probe run: its executions, their time, and the shared buffers
    they touched when run again (hit, and read from outside shared_buffers)."""

    text: str
    calls: int = 0
    seconds: float = 0.0
    hit: int = 0
    read: int = 0
    explained: bool = False


@dataclass
class StatementProfile:
    """Every statement of one probe run, grouped by text."""

    statements: int
    seconds: float
    #: the whole run, as run_probe measured it
    run_seconds: float
    by_text: dict[str, StatementStat]

    def slowest(self) -> StatementStat:
        return max(self.by_text.values(), key=lambda st: st.seconds)


_PARAM = re.compile(r"%\(\w+\)s(?:::[\w\[\]]+)?")


def summary(text: str, width: int = 110) -> str:
    """A statement on one line, parameters as `?`, cut to `width`."""
    short = _PARAM.sub("?", " ".join(text.split()))
    return short if len(short) <= width else short[: width - 1] + "…"


def profiled_run(
    engine: Engine, settings: settings_mod.Settings, spec: ProbeSpec, ctx: ProbeContext
) -> tuple[ProbeOutput, float, StatementProfile]:
    """`run_probe` with every statement it sends timed by SQLAlchemy's cursor events; then each
    of its queries is run again, alone, under EXPLAIN (ANALYZE, BUFFERS) for what it touched."""
    sent: list[tuple[str, Any, float]] = []
    started: dict[int, float] = {}

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        started[id(cursor)] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        t0 = started.pop(id(cursor), None)
        if t0 is not None:
            sent.append((statement, params, time.perf_counter() - t0))

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        out, seconds = run_probe(engine, settings, spec, ctx)
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "after_cursor_execute", after)
    by_text: dict[str, StatementStat] = {}
    with engine.connect() as conn:
        for statement, params, took in sent:
            # by its start: the same statement with other bound values or an optional
            # condition is one row at every size
            key = summary(statement)
            st = by_text.setdefault(key, StatementStat(key))
            st.calls += 1
            st.seconds += took
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            try:
                with conn.begin():
                    plan = conn.exec_driver_sql(
                        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params
                    ).scalar_one()
            except sa.exc.DBAPIError as exc:  # e.g. a temporary table of the probe's transaction
                log(f"{spec.name}: EXPLAIN failed: {str(exc.orig).splitlines()[0]}")
                continue
            top = plan[0]["Plan"]
            st.hit += int(top.get("Shared Hit Blocks", 0))
            st.read += int(top.get("Shared Read Blocks", 0))
            st.explained = True
    profile = StatementProfile(len(sent), sum(x[2] for x in sent), seconds, by_text)
    return out, seconds, profile


# --- one size ---------------------------------------------------------------------------------


@dataclass
class ProbeTiming:
    name: str
    budget: str
    first: float
    runs: list[float]
    #: what the first and the last timed run read, in words
    first_read: str = ""
    read: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


@dataclass
class SizeResult:
    target: int
    chunks: int
    documents: int
    embeddings: int
    seed_seconds: float
    run_documents: int
    create_seconds: float
    probes: dict[str, ProbeTiming] = field(default_factory=dict)
    #: incremental probe -> seconds of its run after each round of new documents
    after: dict[str, list[float]] = field(default_factory=dict)
    after_read: dict[str, str] = field(default_factory=dict)
    #: sampled and incremental probes: the statements of their last run (after the last round
    #: of new documents for the incremental ones)
    statements: dict[str, StatementProfile] = field(default_factory=dict)
    #: pg_total_relation_size of the mapped tables after the seed, MB
    relation_mb: dict[str, float] = field(default_factory=dict)
    insert_seconds: list[float] = field(default_factory=list)


@dataclass
class MetricsResult:
    chunks: int
    round_seconds: dict[str, float]
    ours: list[ScrapeResult]
    baseline: list[ScrapeResult]
    fresh_window: float
    #: seconds from the end of the store's round to the end of the last scrape of ours
    served_within: float
    exposition_lines: int
    #: median seconds of `generate_latest` over the daemon's registry, in this process
    render_seconds: float
    #: wrk (a C load generator) against ours: connections, seconds, requests, non-2xx, and
    #: its latency percentiles in seconds; None when wrk is not installed
    wrk: dict[str, Any] | None = None


def what_it_read(spec: ProbeSpec, out: ProbeOutput) -> str:
    d = out.detail
    if spec.name == "new_uploads":
        return f"{d.get('checked', 0):,} documents"
    if spec.name == "orphans":
        return f"{d.get('page_rows', 0):,} chunks"
    if spec.name == "migration":
        docs = d.get("documents") or {}
        return f"journal: run of {docs.get('total', 0):,} documents"
    return ""


def insert_documents(
    url: str,
    settings: settings_mod.Settings,
    rng: random.Random,
    n: int,
    dim: int,
    vector_type: str,
) -> tuple[int, float]:
    """`n` new processed documents created now, with chunks and embeddings, in one transaction;
    every NONCONFORMING_EVERY-th has a random v4 id. Returns (nonconforming, seconds)."""
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    literal = textvec.vector_literal if vector_type == "vector" else textvec.array_literal
    vocab = dataset.VOCABULARY
    now = datetime.now(UTC)
    docs: list[tuple[Any, ...]] = []
    chunks: list[tuple[Any, ...]] = []
    embeddings: list[tuple[Any, ...]] = []
    nonconforming = 0
    for i in range(n):
        user = f"user-{rng.randrange(500):05d}"
        sha = f"{rng.getrandbits(256):064x}"
        if i % NONCONFORMING_EVERY == 0:
            doc_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            nonconforming += 1
        else:
            doc_id = str(rule.new_id(user, sha))
        docs.append((doc_id, user, sha, f"new-{i}.pdf", 20_000, "processed", now, None, 0))
        for index in range(NEW_CHUNKS):
            words = [vocab[rng.randrange(len(vocab))] for _ in range(16)]
            chunk_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            chunks.append((chunk_id, doc_id, user, index, " ".join(words), '{"page": 1}', now))
            embeddings.append(
                (
                    str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    chunk_id,
                    doc_id,
                    "hashed-bow-v1",
                    literal(textvec.embed_tokens(words, dim)),
                    now,
                )
            )
    schema = settings.mapping.schema_
    copies = [
        (
            "documents",
            (
                "id",
                "user_id",
                "file_sha256",
                "filename",
                "size_bytes",
                "status",
                "created_at",
                "last_accessed_at",
                "access_count",
            ),
            docs,
        ),
        (
            "document_chunks",
            ("id", "document_id", "user_id", "chunk_index", "content", "metadata", "created_at"),
            chunks,
        ),
        (
            "embeddings",
            ("id", "chunk_id", "document_id", "model", "embedding", "created_at"),
            embeddings,
        ),
    ]
    t0 = time.perf_counter()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for table, columns, rows in copies:
            statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(schema, table), sql.SQL(", ").join(map(sql.Identifier, columns))
            )
            with cur.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
    return nonconforming, time.perf_counter() - t0


def measure(
    admin_url: str, target: int, opts: argparse.Namespace, largest: bool
) -> tuple[SizeResult, MetricsResult | None]:
    documents = round(target / CHUNKS_PER_DOCUMENT)
    with database(admin_url, f"bench_probes_{target}_{os.getpid()}") as url:
        s = settings_mod.load_settings(None, database={"dsn": url})
        rule = IdRule(s.id_rule.namespace, s.id_rule.template)
        t0 = time.perf_counter()
        ds = dataset.generate(
            dataset.DatasetSpec(documents=documents, as_of=datetime.now(UTC)), rule
        )
        manifest = ds.manifest
        dim = ds.spec.dim
        log(
            f"{target:,}: generated {documents:,} documents, {manifest['chunks']['total']:,}"
            f" chunks in {time.perf_counter() - t0:.1f}s"
        )
        engine = db.create_engine(s)
        try:

            def progress(done: int) -> None:
                if done % 1_000_000 == 0:
                    log(f"{target:,}: seeded {done:,} chunks")

            t0 = time.perf_counter()
            with db.connect(engine) as conn:
                seeded = seed.seed(
                    conn, ds, s.mapping.schema_, "none", replace=True, progress=progress
                )
            seed_seconds = time.perf_counter() - t0
            del ds
            log(f"{target:,}: seed {seed_seconds:.1f}s")
            with db.connect(engine) as conn:
                journal.init(conn, s.journal_schema)
            t0 = time.perf_counter()
            with db.connect(engine) as conn, conn.begin():
                run_id = runs.create(conn, s, "A", datetime.now(UTC), "bench")
            create_seconds = time.perf_counter() - t0
            with db.connect(engine) as conn, conn.begin():
                run_documents = int(runs.status(conn, s, run_id)["documents"]["total"])
            log(
                f"{target:,}: run {run_id} planned in {create_seconds:.1f}s: {run_documents:,} documents"
            )
            result = SizeResult(
                target,
                int(manifest["chunks"]["total"]),
                int(manifest["documents"]["total"]),
                int(manifest["embeddings"]["total"]),
                seed_seconds,
                run_documents,
                create_seconds,
            )
            with db.connect(engine) as conn:
                for table in RELATIONS:
                    size = conn.execute(
                        sa.select(sa.func.pg_total_relation_size(sa.func.to_regclass(table)))
                    ).scalar_one()
                    result.relation_mb[table] = int(size or 0) / 2**20
            specs = [*probes.probe_specs(s), migration_probe.spec(s)]
            contexts = {spec.name: ProbeContext() for spec in specs}
            for spec in specs:
                out, first = run_probe(engine, s, spec, contexts[spec.name])
                timing = ProbeTiming(spec.name, spec.budget, first, [], what_it_read(spec, out))
                for i in range(opts.runs):
                    if spec.budget == "sampled" and i == opts.runs - 1:
                        out, seconds, profile = profiled_run(engine, s, spec, contexts[spec.name])
                        result.statements[spec.name] = profile
                    else:
                        out, seconds = run_probe(engine, s, spec, contexts[spec.name])
                    timing.runs.append(seconds)
                timing.read = what_it_read(spec, out)
                if spec.name == "classification":
                    _check_classes(out, manifest)
                result.probes[spec.name] = timing
                log(
                    f"{target:,}: {spec.name} ({spec.budget}): first {_ms(first)}, median"
                    f" {_ms(timing.median)}, max {_ms(max(timing.runs))}"
                )
            incremental = [spec for spec in specs if spec.budget == "incremental"]
            rng = random.Random(target)
            for r in range(opts.rounds):
                nonconforming, seconds = insert_documents(
                    url, s, rng, opts.new_documents, dim, seeded.vector_type
                )
                result.insert_seconds.append(seconds)
                for spec in incremental:
                    if r == opts.rounds - 1:
                        out, seconds, profile = profiled_run(engine, s, spec, contexts[spec.name])
                        result.statements[spec.name] = profile
                    else:
                        out, seconds = run_probe(engine, s, spec, contexts[spec.name])
                    result.after.setdefault(spec.name, []).append(seconds)
                    result.after_read[spec.name] = what_it_read(spec, out)
                    if spec.name == "new_uploads":
                        _check_new_uploads(out, opts.new_documents, nonconforming)
                log(
                    f"{target:,}: round {r + 1}: "
                    + ", ".join(f"{k} {_ms(v[-1])}" for k, v in result.after.items())
                )
        finally:
            engine.dispose()
        metrics = measure_metrics(s, result.chunks, opts) if largest else None
    return result, metrics


def _check_classes(out: ProbeOutput, manifest: dict[str, Any]) -> None:
    got = out.detail.get("documents")
    expected = manifest["documents"]["by_class"]
    if got != expected:
        raise BenchmarkError(f"classification found {got}; the dataset holds {expected}")


def _check_new_uploads(out: ProbeOutput, inserted: int, nonconforming: int) -> None:
    checked, bad = out.detail.get("checked"), out.detail.get("nonconforming")
    if checked != inserted or bad != nonconforming:
        raise BenchmarkError(
            f"new_uploads checked {checked} documents, {bad} nonconforming, after {inserted}"
            f" were inserted, {nonconforming} of them with a random id"
        )


# --- /metrics -----------------------------------------------------------------------------------


def measure_metrics(
    s: settings_mod.Settings, chunks: int, opts: argparse.Namespace
) -> MetricsResult:
    daemon = Daemon(s, probes.probe_specs(s))
    original = daemon.engine
    dead = sa.create_engine(DEAD_DSN)
    baseline_specs = [spec for spec in probes.probe_specs(s) if spec.name in BASELINE_PROBES]
    # the baseline gets a connection per scraper, so its pool is never what it waits for
    baseline_engine = db.create_engine(s, pool_size=opts.scrapers, max_overflow=0)
    try:
        with (
            Scrapers() as scrapers,
            serving(api.create_app(daemon), "uuidguard-api") as ours_url,
            serving(
                query_per_scrape_app(baseline_engine, s, baseline_specs), "query-per-scrape"
            ) as baseline_url,
        ):
            scrapers.wait_ready()
            # longest interval first: the probes whose values go stale soonest are freshest
            round_seconds: dict[str, float] = {}
            for spec in sorted(daemon.specs, key=lambda sp: -sp.interval.total_seconds()):
                out, seconds = run_probe(original, s, spec, daemon.contexts[spec.name])
                daemon.store.success(spec.name, out, seconds)
                round_seconds[spec.name] = seconds
            stored = time.monotonic()
            daemon.engine = dead
            original.dispose()
            fresh_window = min(
                STALE_AFTER_INTERVALS * sp.interval.total_seconds() for sp in daemon.specs
            )
            exposition = httpx.get(ours_url, timeout=SCRAPE_TIMEOUT).text
            lines = sum(1 for line in exposition.splitlines() if not line.startswith("#"))
            # what one scrape costs the collector alone: the same rendering, without HTTP
            reg = registry(daemon.store, api.VERSION)
            renders = []
            for _ in range(RENDERS):
                t0 = time.perf_counter()
                generate_latest(reg)
                renders.append(time.perf_counter() - t0)
            ours = [
                scrapers.run("uuidguard /metrics", ours_url, n, opts.scrapes, OURS_MUST_HOLD, dead)
                for n in (opts.scrapers, 1)
            ]
            served_within = time.monotonic() - stored
            load = wrk(ours_url, opts.scrapers)
            baseline = [
                scrapers.run(
                    "query-per-scrape",
                    baseline_url,
                    n,
                    opts.baseline_scrapes,
                    BASELINE_MUST_HOLD,
                    baseline_engine,
                )
                for n in (opts.scrapers, 1)
            ]
    finally:
        baseline_engine.dispose()
        original.dispose()
        dead.dispose()
    for r in [*ours, *baseline]:
        if r.errors:
            raise BenchmarkError(f"{r.label}: {len(r.errors)} scrapers failed: {r.errors[0]}")
    # the baseline's failed scrapes (a probe past probes.timeout) are a result, shown in its row
    for r in ours:
        if r.bad:
            raise BenchmarkError(
                f"{r.label}: {r.bad} responses were not 200 with {OURS_MUST_HOLD} (the store's"
                f" shortest freshness is {fresh_window:.0f} s; the scrapes ended"
                f" {served_within:.1f} s after the round: lower --scrapes)"
            )
        if r.connects or r.statements:
            raise BenchmarkError(
                f"{r.label}: {r.connects} connection attempts, {r.statements} statements"
                " during the scrapes"
            )
    return MetricsResult(
        chunks,
        round_seconds,
        ours,
        baseline,
        fresh_window,
        served_within,
        lines,
        statistics.median(renders),
        load,
    )


WRK_SECONDS = 5
_WRK_LINE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk(url: str, connections: int) -> dict[str, Any] | None:
    """`connections` keep-alive connections scraping back to back for WRK_SECONDS with wrk
    (Debian's package): a client in C, so the latency is the server's, not a Python client's
    GIL (the threads above share one interpreter and the machine's two cores)."""
    binary = shutil.which("wrk")
    if binary is None:
        return None
    proc = subprocess.run(
        [binary, f"-c{connections}", "-t2", f"-d{WRK_SECONDS}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=WRK_SECONDS + 60,
    )
    if proc.returncode != 0:
        raise BenchmarkError(f"wrk failed: {proc.stderr.strip() or proc.stdout.strip()}")
    latency: dict[str, float] = {}
    requests, non2xx = 0, 0
    for line in proc.stdout.splitlines():
        m = _WRK_LINE.match(line)
        if m:
            latency[m.group(1)] = float(m.group(2)) * _UNIT[m.group(3)]
        elif "requests in" in line:
            requests = int(line.split()[0])
        elif "Non-2xx" in line:
            non2xx = int(line.split()[-1])
    if non2xx:
        raise BenchmarkError(f"wrk: {non2xx} of {requests} responses were not 2xx")
    return {
        "connections": connections,
        "seconds": WRK_SECONDS,
        "requests": requests,
        "latency": latency,
    }


# --- the document ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 10:
        return f"{value:,.1f} s"
    if value >= 0.1:
        return f"{value * 1000:,.0f} ms"
    return f"{value * 1000:.1f} ms" if value >= 0.001 else f"{value * 1000:.2f} ms"


def _ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}×" if value < 10 else f"{value:,.0f}×"


def _growth(results: list[SizeResult], values: dict[int, float]) -> float | None:
    lo, hi = values.get(results[0].target), values.get(results[-1].target)
    if lo is None or hi is None or lo <= 0 or len(results) < 2:
        return None
    return hi / lo


def render(
    results: list[SizeResult],
    metrics: MetricsResult | None,
    info: dict[str, str],
    command: str,
    opts: argparse.Namespace,
    embedded_server: bool,
    total_seconds: float,
) -> str:
    now = datetime.now(UTC)
    where = "embedded server, default settings" if embedded_server else "server given by --dsn"
    p = settings_mod.ProbeSettings()
    first, last = results[0], results[-1]
    table_ratio = last.chunks / first.chunks if len(results) > 1 else None
    out = [
        f"## {SECTION}",
        "",
        f"- Date: {now:%Y-%m-%d %H:%M} UTC",
        f"- Machine: {info['cpus']} CPUs (`nproc`), {info['cpu']}, {info['memory']} memory",
        f"- PostgreSQL {info['postgres']} ({where}: {info['pg_settings']})",
        f"- Code: commit {info['revision']}",
        "- Reproduce (from the project root):",
        "",
        "  ```sh",
        f"  {command}",
        "  ```",
        "",
        "Each size is seeded into a fresh database (`migrator.dataset`, about 9.3 chunks per"
        " document, one embedding per chunk, FK mode `none`) with the journal and a planned run"
        " of option A (`runs.create`), so the migration probe reads a real run. Every probe of"
        " `probes.probe_specs` and the migration probe runs through `probing.run_probe` (its"
        " read-only, bounded transaction) with one `ProbeContext` per probe kept between runs,"
        f" as the daemon keeps it, with the default settings (`probes.new_uploads_page`"
        f" {p.new_uploads_page:,}, `probes.orphan_scan_page` {p.orphan_scan_page:,},"
        f" `probes.pipeline_sample` {p.pipeline_sample}, `probes.canary.sample`"
        f" {p.canary.sample}, canary modes {', '.join(p.canary.modes)}): a first run, then"
        f" {opts.runs} timed runs.",
        "",
        "| chunks | documents | embeddings | on disk, with indexes | seed seconds"
        " | run: documents to re-key | planned in |",
        "|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        disk = ", ".join(f"{table} {r.relation_mb[table]:,.0f} MB" for table in RELATIONS)
        out.append(
            f"| {r.chunks:,} | {r.documents:,} | {r.embeddings:,} | {disk} | {r.seed_seconds:.1f}"
            f" | {r.run_documents:,} | {r.create_seconds:.1f} s |"
        )
    header = " | ".join(f"{r.chunks:,} chunks: median (max)" for r in results)
    out += [
        "",
        "### Probe durations",
        "",
        "Wall time of `run_probe` (connection from the pool, transaction, the probe, commit),"
        f" median and maximum of {opts.runs} runs after the first; the last column is the"
        " median at the largest size over the median at the smallest"
        + (f" ({_ratio(table_ratio)} the chunks)." if table_ratio else "."),
        "",
        f"| probe | budget | {header} | largest ÷ smallest |",
        "|---|---|" + "---:|" * len(results) + "---:|",
    ]
    names = list(first.probes)
    for name in names:
        cells = " | ".join(
            f"{_ms(r.probes[name].median)} ({_ms(max(r.probes[name].runs))})" for r in results
        )
        growth = _growth(results, {r.target: r.probes[name].median for r in results})
        out.append(f"| `{name}` | {first.probes[name].budget} | {cells} | {_ratio(growth)} |")
    catch_up = [
        f"`{name}` {', '.join(f'{_ms(r.probes[name].first)} ({r.probes[name].first_read})' for r in results)}"
        for name in names
        if first.probes[name].budget == "incremental"
    ]
    out += [
        "",
        "First runs of the incremental probes (not in the table; the new-upload probe catches up"
        f" on the documents of the last `probes.conformance_window`, at most"
        f" `probes.new_uploads_page` of them, by size): {'; '.join(catch_up)}.",
    ]
    out += incremental_section(results, opts, table_ratio)
    if metrics is not None:
        out += metrics_section(metrics, opts)
    out += ["", "### Targets", "", *targets(results, metrics)]
    out += ["", "### What limits the numbers", "", *statements_table(results)]
    shared_buffers = re.search(r"shared_buffers (\S+?),?(?: |$)", info["pg_settings"])
    out += [
        "",
        limits(
            results,
            metrics,
            opts,
            info["cpus"],
            shared_buffers.group(1) if shared_buffers else "unknown",
        ),
    ]
    out += ["", f"The whole benchmark took {total_seconds / 60:.1f} min."]
    return "\n".join(out) + "\n"


def incremental_section(
    results: list[SizeResult], opts: argparse.Namespace, table_ratio: float | None
) -> list[str]:
    first = results[0]
    header = " | ".join(f"{r.chunks:,} chunks: median (max)" for r in results)
    inserts = ", ".join(f"{statistics.median(r.insert_seconds):.2f}" for r in results)
    out = [
        "",
        "### Incremental probes after new rows",
        "",
        f"{opts.rounds} rounds at every size, once the first runs have moved the watermarks: insert"
        f" and commit {opts.new_documents:,} new processed documents (created now, {NEW_CHUNKS}"
        f" chunks and {NEW_CHUNKS} embeddings each, every {NONCONFORMING_EVERY}th with a random v4"
        f" id, the others with their rule id; median {inserts} s per round by size), then run each"
        " incremental probe once, timed. Each round, the new-upload probe reported exactly the"
        " new documents and the random ones as nonconforming. The full classification's median"
        " from above is the baseline: it reads every table.",
        "",
        f"| probe | budget | what its run read | {header} | largest ÷ smallest"
        f" | target ≤ {TARGET_INCREMENTAL_RATIO:g}× |",
        "|---|---|---|" + "---:|" * len(results) + "---:|---|",
    ]
    for name, _ in first.after.items():
        cells = " | ".join(
            f"{_ms(statistics.median(r.after[name]))} ({_ms(max(r.after[name]))})" for r in results
        )
        growth = _growth(results, {r.target: statistics.median(r.after[name]) for r in results})
        said = "—" if growth is None else verdict(growth <= TARGET_INCREMENTAL_RATIO)
        reads = " / ".join(dict.fromkeys(r.after_read[name] for r in results))
        out.append(f"| `{name}` | incremental | {reads} | {cells} | {_ratio(growth)} | {said} |")
    if "classification" in first.probes:
        cells = " | ".join(
            f"{_ms(r.probes['classification'].median)} ({_ms(max(r.probes['classification'].runs))})"
            for r in results
        )
        growth = _growth(results, {r.target: r.probes["classification"].median for r in results})
        tables = f"every table ({_ratio(table_ratio)} the chunks)" if table_ratio else "every table"
        out.append(
            f"| `classification` (baseline) | full | {tables} | {cells} | {_ratio(growth)} | — |"
        )
    return out


def _scrape_row(r: ScrapeResult, engine: str) -> str:
    return (
        f"| {r.label} | {r.scrapers} × {r.per_scraper} | {r.scrapes - r.bad:,} of {r.scrapes:,}"
        f" | {_ms(r.p(50))} | {_ms(r.p(99))} | {_ms(max(r.latencies, default=None))}"
        f" | {r.per_second:,.0f}"
        f" | {_ms(r.server_cpu / max(r.scrapes, 1))} / {_ms(r.client_cpu / max(r.scrapes, 1))}"
        f" | {engine}: {r.connects} connection attempts,"
        f" {r.statements:,} statements ({r.timed_statements / max(r.scrapes, 1):,.1f} per timed"
        " scrape) |"
    )


def metrics_section(m: MetricsResult, opts: argparse.Namespace) -> list[str]:
    ours, base = m.ours[0], m.baseline[0]
    ours_p99, base_p99 = ours.p(99), base.p(99)
    ratio = base_p99 / ours_p99 if ours_p99 and base_p99 is not None else None
    round_total = sum(m.round_seconds.values())
    lo, hi = ours.body_bytes
    out = [
        "",
        "### /metrics",
        "",
        f"On the largest size ({m.chunks:,} chunks): a `Daemon` (scheduler not started) got one"
        f" round of its {len(m.round_seconds)} probes into its store ({round_total:.1f} s), then"
        " `api.create_app(daemon)` was served by uvicorn in a thread of the benchmark's process"
        " (as `uuidguard serve` configures it: log level warning, no lifespan) and"
        f" `daemon.engine` was replaced by an engine on `{DEAD_DSN}`, on which every connection"
        " attempt and statement was counted. The exposition held"
        f" {m.exposition_lines} samples ({lo:,}–{hi:,} bytes per response). The scrapers are"
        " threads of a second process, each with its own `httpx.Client` (keep-alive): one"
        " untimed scrape to open the connection, then, all released together, back-to-back"
        " scrapes; latency is the client's wall time of one GET with its body. The baseline is a"
        " query-per-scrape exporter in the same process (a starlette endpoint on its own uvicorn"
        f" server, `{'` and `'.join(BASELINE_PROBES)}` through `run_probe` at each scrape on a"
        f" working engine with a pool of {opts.scrapers}, rendered by the same `metrics.registry`)."
        f" Our scrapes ended {m.served_within:.1f} s after the round, within the store's"
        f" freshness ({m.fresh_window:.0f} s for the migration probe), so every response held"
        " every probe's values.",
        "",
        "| endpoint | scrapers × scrapes | 200 with the metric | p50 | p99 | max | scrapes/s"
        " | CPU per scrape: servers' process / scrapers' process | database during the scrapes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    out += [_scrape_row(r, "the unreachable engine") for r in m.ours]
    out += [_scrape_row(r, "its engine") for r in m.baseline]
    if m.wrk is not None:
        w = m.wrk
        lat = w["latency"]
        out += [
            "",
            f"The same endpoint under `wrk -c{w['connections']} -t2 -d{w['seconds']}s`"
            " (a load generator in C: the Python scrapers above spend about a millisecond of"
            " their own CPU per scrape in one interpreter, on the same two cores as the server,"
            " and that queueing is in their latencies): "
            f"{w['requests']:,} scrapes, {w['requests'] / w['seconds']:,.0f} per second, all 2xx;"
            f" latency p50 {_ms(lat.get('50'))}, p90 {_ms(lat.get('90'))}, p99"
            f" {_ms(lat.get('99'))}.",
        ]
    out += [
        "",
        f"With {ours.scrapers} scrapers, the query-per-scrape exporter's p99 is {_ratio(ratio)}"
        f" ours ({_ms(base.p(99))} against {_ms(ours.p(99))}), at"
        f" {base.per_second / ours.per_second if ours.per_second else 0:.3f}× our throughput.",
    ]
    return out


def targets(results: list[SizeResult], m: MetricsResult | None) -> list[str]:
    rows: list[tuple[str, str, bool]] = []
    # the target compares the two largest sizes (the 1M and 5M chunks) when there are
    # three or more; with two, the only pair
    first, last = results[-2] if len(results) > 2 else results[0], results[-1]
    if len(results) > 1:
        for name in first.after:
            lo = statistics.median(first.after[name])
            hi = statistics.median(last.after[name])
            growth = hi / lo if lo > 0 else float("inf")
            rows.append(
                (
                    f"`{name}` after the same new rows: same order at {last.chunks:,} as at"
                    f" {first.chunks:,} chunks (≤ {TARGET_INCREMENTAL_RATIO:g}×)",
                    f"{_ratio(growth)} ({_ms(hi)} against {_ms(lo)})",
                    growth <= TARGET_INCREMENTAL_RATIO,
                )
            )
    else:
        rows.append(
            (
                "incremental probes independent of table size",
                "not measured: one size only (`--sizes`)",
                False,
            )
        )
    if m is not None:
        ours = m.ours[0]
        p99 = ours.p(99) or 0.0
        target = (
            f"/metrics p99 < {TARGET_METRICS_P99 * 1000:.0f} ms under {ours.scrapers}"
            " concurrent scrapers"
        )
        python = (
            f"Python threads: {_ms(p99)} (p50 {_ms(ours.p(50))}; one scraper alone: p99"
            f" {_ms(m.ours[1].p(99))})"
        )
        if m.wrk is not None and "99" in m.wrk["latency"]:
            wrk_p99 = m.wrk["latency"]["99"]
            rows.append(
                (
                    target,
                    f"wrk, {m.wrk['connections']} connections: {_ms(wrk_p99)}; {python}",
                    wrk_p99 < TARGET_METRICS_P99,
                )
            )
        else:
            rows.append((target, python, p99 < TARGET_METRICS_P99))
        connects = sum(r.connects for r in m.ours)
        statements = sum(r.statements for r in m.ours)
        scrapes = sum(r.scrapes for r in m.ours)
        rows.append(
            (
                "no database query per scrape",
                f"{connects} connection attempts, {statements} statements over {scrapes:,}"
                f" scrapes, all 200 with `{OURS_MUST_HOLD}`, served by an engine that cannot"
                " connect",
                connects == 0 and statements == 0,
            )
        )
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {verdict(ok)} |" for t, v, ok in rows]
    missed = [t for t, _, ok in rows if not ok]
    lines += [
        "",
        f"Met: {len(rows) - len(missed)} of {len(rows)}"
        + (f"; **not met: {'; '.join(missed)}**." if missed else "."),
    ]
    return lines


def _stat_cell(st: StatementStat | None, run: StatementProfile | None) -> str:
    if st is None or run is None:
        return "—"
    buffers = f"{st.hit:,} + {st.read:,}" if st.explained else "—"
    return f"{st.calls}× {_ms(st.seconds)} / {_ms(run.seconds)} / {_ms(run.run_seconds)}; {buffers}"


def statements_table(results: list[SizeResult]) -> list[str]:
    """The sampled and incremental probes' statements, and what their costliest touched."""
    first, last = results[0], results[-1]
    if not last.statements:
        return []
    header = " | ".join(f"{r.chunks:,} chunks" for r in results)
    out = [
        "The statements of the sampled probes' last timed run and of the incremental probes' run"
        " after the last round of new rows, timed with SQLAlchemy's cursor events and grouped"
        " by text; each query was then run again alone under `EXPLAIN (ANALYZE, BUFFERS)`. Shown"
        f" is the costliest statement of the run at {last.chunks:,} chunks and, at each size:"
        " its executions and their time / all the run's statements / the whole run; the shared"
        " buffers its executions touched when run again (hit + read from outside"
        " shared_buffers).",
        "",
        f"| probe | budget | statements per run | costliest statement | {header} |",
        "|---|---|---:|---|" + "---:|" * len(results),
    ]
    for name, prof in last.statements.items():
        key, top = max(prof.by_text.items(), key=lambda kv: kv[1].seconds)
        cells = []
        for r in results:
            run = r.statements.get(name)
            cells.append(_stat_cell(run.by_text.get(key) if run else None, run))
        text = top.text.replace("|", "\\|")
        counts = " / ".join(
            dict.fromkeys(
                str(r.statements[name].statements) for r in results if name in r.statements
            )
        )
        out.append(
            f"| `{name}` | {first.probes[name].budget} | {counts} | `{text}` | {' | '.join(cells)} |"
        )
    return out


def _growth_of(results: list[SizeResult], name: str) -> float | None:
    """Largest over smallest size: the run after new rows for an incremental probe, the
    timed runs' median for the others."""
    if name in results[0].after:
        return _growth(results, {r.target: statistics.median(r.after[name]) for r in results})
    return _growth(results, {r.target: r.probes[name].median for r in results})


#: why a sampled or incremental probe can grow with the data, from what its code reads
WHY_GROWN = {
    "orphans": "The orphan scan reads a range of heap blocks of about a page of chunks in"
    " physical order (a TID range scan) and probes each chunk's document id in the documents'"
    " primary key: the heap it reads does not grow with the table, the documents' index does,"
    " so more of each probe's path lies outside shared_buffers and the CPU's caches.",
    "canary": "The canary's vector_self mode runs the application's similarity query for the"
    " document's owner: the owner's embeddings ranked by distance, with no vector index, so it"
    " reads every embedding of that user, and the heaviest users of the dataset's long tail"
    " own more documents in a larger dataset.",
}


def _bounded_probes(
    results: list[SizeResult], opts: argparse.Namespace, shared_buffers: str
) -> list[str]:
    """Sentences on the sampled and incremental probes, from their statement profiles."""
    first, last = results[0], results[-1]
    small, large = f"{first.chunks:,}", f"{last.chunks:,}"
    grew: dict[str, str] = {}
    flat: dict[str, str] = {}
    for name, sp1 in last.statements.items():
        sp0 = first.statements.get(name)
        growth = _growth_of(results, name)
        if sp0 is None or growth is None:
            continue
        key, st1 = max(sp1.by_text.items(), key=lambda kv: kv[1].seconds)
        st0 = sp0.by_text.get(key)
        b1 = st1.hit + st1.read
        b0 = None if st0 is None else st0.hit + st0.read
        buffers = f"{b0:,} → {b1:,}" if b0 is not None else f"{b1:,} at {large}"
        if growth > TARGET_INCREMENTAL_RATIO:
            grew[name] = (
                f"`{name}` ({first.probes[name].budget}) took {_ratio(growth)} as long at {large}"
                f" as at {small} chunks; its costliest statement took {_ms(st1.seconds)}"
                + (f" against {_ms(st0.seconds)}" if st0 is not None else "")
                + f" and, run again, touched buffers {buffers}"
                + (f" ({st1.read:,} read from outside shared_buffers)" if st1.read else "")
            )
        else:
            flat[name] = (
                f"`{name}` {_ratio(growth)} (its costliest statement's buffers {buffers};"
                f" {sp1.seconds / sp1.run_seconds:.0%} of its run in its {sp1.statements}"
                " statements)"
            )
    out = []
    if flat:
        text = (
            f"The sampled and incremental probes within {TARGET_INCREMENTAL_RATIO:g}× from"
            f" {small} to {large} chunks are bounded by what they read per run, not by the"
            f" tables: {'; '.join(flat.values())}; the rest of a run, outside its statements, is"
            " Python (SQLAlchemy building and compiling the statements, which each run builds"
            " anew) and the pool's checkout with its pre-ping."
        )
        if "new_uploads" in flat:
            text += (
                f" The new-upload probe reads the {opts.new_documents:,} new rows by the"
                " `created_at` index and computes their rule ids in Python; the rows it reads"
                " again in the `probes.commit_lag` window grow with the insert rate, not the table."
            )
        if "migration" in flat:
            text += (
                " The migration probe reads only the journal, so it follows the run's size"
                f" ({first.run_documents:,} against {last.run_documents:,} documents), not the"
                " mapped tables."
            )
        out.append(text)
    if grew:
        sizes = ", ".join(f"`{table}` {last.relation_mb[table]:,.0f} MB" for table in RELATIONS)
        why = [WHY_GROWN[name] for name in grew if name in WHY_GROWN]
        out.append(
            f"More than {TARGET_INCREMENTAL_RATIO:g}×: {'; '.join(grew.values())}. "
            + " ".join(why)
            + f" At {large} chunks the tables with their indexes take {sizes}, against"
            f" shared_buffers {shared_buffers}."
        )
    return out


def limits(
    results: list[SizeResult],
    m: MetricsResult | None,
    opts: argparse.Namespace,
    cpus: str,
    shared_buffers: str,
) -> str:
    """One paragraph: what bounds each number, from what was measured."""
    first, last = results[0], results[-1]
    parts: list[str] = []
    full = [n for n, t in last.probes.items() if t.budget == "full"]
    if len(results) > 1 and full:
        per_m = ", ".join(
            f"`{n}` {last.probes[n].median / (last.chunks / 1e6):.2f} s" for n in full
        )
        parts.append(
            "The full probes are bounded by the scans of the mapped tables: their time grows with"
            f" the tables (seconds per million chunks at {last.chunks:,}: {per_m}), which is why"
            " they run on the slow schedules (`probes.documents_interval`,"
            " `probes.full_sweep_interval`)."
        )
    if len(results) > 1 and first.statements:
        parts += _bounded_probes(results, opts, shared_buffers)
    if m is not None:
        ours, one = m.ours[0], m.ours[1]
        one_p50 = one.p(50) or 0.0
        p50 = ours.p(50) or 0.0
        server = ours.server_cpu / max(ours.scrapes, 1)
        busy = ours.server_cpu / ours.wall if ours.wall else 0.0
        client_busy = ours.client_cpu / ours.wall if ours.wall else 0.0
        base, base_one = m.baseline[0], m.baseline[1]
        parts.append(
            f"Rendering the store's {m.exposition_lines} samples with `prometheus_client`"
            f" (`generate_latest`, in-process, median of {RENDERS}) takes"
            f" {_ms(m.render_seconds)}; with HTTP (uvicorn, starlette) a scrape cost the server's"
            f" process {_ms(server)} of CPU under {ours.scrapers} scrapers, and one scraper alone"
            f" waited {_ms(one_p50)} (p50). One event loop under one GIL serves the scrapes one"
            f" at a time, and the {ours.scrapers} scrapers scrape back to back (a closed loop, no"
            " pause between scrapes), so a scrape mostly waits behind the others: p50"
            f" {_ms(p50)} is {p50 / one_p50 if one_p50 else 0:.0f}× the single scraper's, and the"
            f" throughput ({ours.per_second:,.0f} scrapes/s) is where the server's process was"
            f" busy {busy:.0%} of a CPU while the scrapers' process, on the same {cpus} CPUs, used"
            f" {client_busy:.0%} of one. The latency under {ours.scrapers} scrapers is that queue:"
            f" {ours.scrapers} × {_ms(server)} = {_ms(ours.scrapers * server)}, against p50"
            f" {_ms(p50)} and p99 {_ms(ours.p(99))}; no database wait is in it. The"
            " query-per-scrape baseline is bounded by the database: one scrape alone takes"
            f" {_ms(base_one.p(50))} (`id_versions` reads every document each time), and its"
            f" {base.scrapers} concurrent scrapes ({base.timed_statements / max(base.scrapes, 1):.0f}"
            " statements each) queue for the CPUs PostgreSQL shares with both Python processes."
        )
    return " ".join(parts)


# --- entry point ---------------------------------------------------------------------------------


def _sizes(value: str) -> list[int]:
    try:
        sizes = sorted({int(v.replace("_", "")) for v in value.split(",") if v.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of chunk counts: {value}") from exc
    if not sizes or sizes[0] < 1000:
        raise argparse.ArgumentTypeError("sizes are chunk counts of at least 1000")
    return sizes


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=_sizes("100000,1000000"),
        help="chunk counts, comma-separated, about 9.3 per document (default: 100000,1000000)",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=3,
        help="timed runs of each probe per size (default: %(default)s)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of new documents, each followed by a run of every incremental probe"
        " (default: %(default)s)",
    )
    p.add_argument(
        "--new-documents",
        type=int,
        default=1000,
        help="new documents per round, the same at every size (default: %(default)s)",
    )
    p.add_argument(
        "--scrapers",
        type=int,
        default=50,
        help="concurrent /metrics scrapers (default: %(default)s)",
    )
    p.add_argument(
        "--scrapes",
        type=int,
        default=20,
        help="timed scrapes per scraper (default: %(default)s)",
    )
    p.add_argument(
        "--baseline-scrapes",
        type=int,
        default=5,
        help="timed scrapes per scraper of the query-per-scrape baseline, whose every scrape"
        " scans the documents (default: %(default)s)",
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
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown file to update")
    p.add_argument(
        "--no-write", action="store_true", help="print the section instead of writing it"
    )
    opts = p.parse_args(argv)
    counts = (opts.runs, opts.rounds, opts.new_documents, opts.scrapers, opts.scrapes)
    if min(*counts, opts.baseline_scrapes) < 1:
        p.error(
            "--runs, --rounds, --new-documents, --scrapers, --scrapes and --baseline-scrapes"
            " must be at least 1"
        )
    if opts.new_documents > settings_mod.ProbeSettings().new_uploads_page:
        p.error("--new-documents must fit in one page of the new-upload probe")
    if opts.state_dir is not None and opts.dsn is not None:
        p.error("--state-dir and --dsn exclude each other")
    if opts.state_dir is not None and opts.state_dir.resolve() in {
        (d / ".uuidguard").resolve() for d in (Path.cwd(), ROOT)
    }:
        p.error("--state-dir .uuidguard belongs to the uuidguard CLI; pick another directory")
    return opts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    opts = parse_args(args)
    # stopped by a signal, still drop the databases and stop the server on the way out
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    command = shlex.join([".venv/bin/python", "benchmarks/probes.py", *args])
    started = time.perf_counter()
    results: list[SizeResult] = []
    metrics: MetricsResult | None = None
    try:
        with server(opts.dsn, opts.state_dir) as admin_url:
            info = machine(admin_url, PG_SETTINGS)
            log(f"PostgreSQL {info['postgres']}; sizes {', '.join(f'{x:,}' for x in opts.sizes)}")
            for i, target in enumerate(opts.sizes):
                result, m = measure(admin_url, target, opts, largest=i == len(opts.sizes) - 1)
                results.append(result)
                metrics = m or metrics
    except (BenchmarkError, UuidguardError) as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'SIGINT'}); databases dropped, server stopped")
        return 130
    total = time.perf_counter() - started
    section = render(
        results,
        metrics,
        info,
        command,
        opts,
        embedded_server=opts.dsn is None,
        total_seconds=total,
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
