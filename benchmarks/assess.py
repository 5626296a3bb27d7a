"""Benchmark of the damage assessment (`migrator.assess.run`) and where its time goes.

For each target chunk count (`--sizes`) the script seeds a fresh database with the reference
dataset (`migrator.dataset`, about 9.3 chunks per document and one embedding per chunk), then
measures:

- seed: the wall time of `migrator.seed.seed` (COPY of every table, keys and indexes, ANALYZE);
- assess: the wall time of `assess.run`, the median of `--repeat` runs; the document and chunk
  classes it reports must equal the dataset's manifest, or the script fails;
- baseline: the naive approach the assessment replaces, "row-by-row Python": every document
  (id, user_id, file_sha256) and every chunk's document_id streamed out of PostgreSQL with plain
  SELECTs on server-side cursors, rule ids computed with `IdRule` in Python and the documents and
  chunks classified in dicts and sets by the taxonomy of DESIGN §2.3; it must produce the same
  counts, so the speed-up (baseline / assess) compares two ways to the same answer;
- growth: seconds per million chunks at each size, and the ratio of that cost at the largest size
  to the smallest (the target is no worse than linear: a ratio of about 1.2 at most);
- where the time goes at the largest size: every statement the assessment sends through
  SQLAlchemy is timed with engine events, plus the one step that bypasses them (rule ids computed
  in Python and sent back with COPY), and every query is EXPLAINed inside the run's transaction;
  reported are the time by part, the top three statements, whether any plan runs a subplan once
  per outer row (work that grows with the product of two sizes), and the slowest query's plan.

Results go to the "## Assessment (benchmarks/assess.py)" section of docs/performance.md; other
"## " sections of that file are kept as they are.

Run it from the project root (a default run takes about 8 minutes on 2 cores, three quarters
of it seeding the 5M-chunk database):

    .venv/bin/python benchmarks/assess.py
    .venv/bin/python benchmarks/assess.py --sizes 20000,100000 --repeat 1 --no-write

Without `--dsn` it starts its own embedded PostgreSQL under `--state-dir` (a temporary directory
by default) and stops it at the end; with `--dsn` it uses that server. Either way it creates one
database per size (`bench_assess_<chunks>_<pid>`) and drops it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from unittest import mock

import psycopg
import sqlalchemy as sa
from benchlib import (
    PERFORMANCE_MD,
    ROOT,
    BenchmarkError,
    database,
    log,
    machine,
    server,
    write_section,
)
from psycopg import sql
from sqlalchemy.engine import Connection, Engine

from migrator import assess, dataset, db, ruleids, seed
from migrator import settings as settings_mod
from migrator.errors import UuidguardError
from migrator.idrule import UUID_V4_PATTERN, IdRule

CHUNKS_PER_DOCUMENT = 9.3
SECTION = "Assessment (benchmarks/assess.py)"

DEFAULT_OUT = PERFORMANCE_MD
PG_SETTINGS = ("shared_buffers", "work_mem", "temp_buffers")
TARGET_SECONDS_AT_1M = 10.0
TARGET_GROWTH = 1.2
_FETCH = 50_000
_MIGRATOR_DIR = Path(assess.__file__).resolve().parent
#: frames in these modules only relay a statement; the caller above them is the one to name
_RELAY_MODULES = {"db.py", "sqlutil.py"}
_V4 = re.compile(UUID_V4_PATTERN)
#: how the profile names the one step that bypasses SQLAlchemy (raw psycopg COPY)
RULE_STEP = "rule ids: uuid5 in Python over a server-side cursor, COPY into ug_rule"


# --- where an assessment's time goes -----------------------------------------------------------


@dataclass
class Statement:
    """One statement text as issued from one place in migrator/, with its summed time."""

    text: str
    caller: str
    seconds: float = 0.0
    calls: int = 0
    params: Any = None


@dataclass
class Profile:
    """Per-statement timings of one assessment run, and the plans of its queries."""

    statements: dict[tuple[str, str], Statement] = field(default_factory=dict)
    #: EXPLAIN output by (caller, text), for every statement EXPLAIN can show
    plans: dict[tuple[str, str], str] = field(default_factory=dict)
    #: time spent taking those plans inside the run, to be left out of its wall time
    explain_seconds: float = 0.0

    def top(self, n: int) -> list[Statement]:
        return sorted(self.statements.values(), key=lambda s: s.seconds, reverse=True)[:n]

    def add(self, text: str, caller: str, seconds: float, params: Any) -> None:
        st = self.statements.setdefault((caller, text), Statement(text, caller, params=params))
        st.seconds += seconds
        st.calls += 1


_CTAS = re.compile(r"^CREATE TEMPORARY TABLE \S+ ON COMMIT DROP AS (SELECT .*)$")


_SUBPLAN = re.compile(r"^\s*(hashed )?SubPlan (\d+)", re.MULTILINE)


def per_row_subplans(plan: str) -> int:
    """Subplans run once per outer row: not hashed, so the work grows with the product of sizes.

    PostgreSQL 17+ marks a hashed subplan where it is used ("(hashed SubPlan 1)"), older
    versions on its own line ("hashed SubPlan 1").
    """
    return sum(
        1
        for hashed, n in _SUBPLAN.findall(plan)
        if not hashed and f"hashed SubPlan {n}" not in plan
    )


def explainable(statement: str) -> str | None:
    """The query a statement runs, if EXPLAIN can show it: a SELECT, or the body of a CTAS."""
    if statement.startswith("SELECT "):
        return statement
    match = _CTAS.match(statement)
    return match[1] if match else None


def _caller() -> str:
    """The innermost migrator/ frame that is not a mere relay, as `migrator/file.py:line (func)`."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.parent == _MIGRATOR_DIR and path.name not in _RELAY_MODULES:
            return f"migrator/{path.name}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "?"


@contextlib.contextmanager
def profiled(engine: Engine, explain: bool) -> Iterator[Profile]:
    """Time every statement sent through `engine`, and the Python rule-id step beside them.

    With `explain`, every query is EXPLAINed (not run again) just before the assessment's
    transaction commits, while its temporary tables still exist; the time that takes is kept
    apart in `explain_seconds`.
    """
    profile = Profile()
    started: dict[int, tuple[float, str]] = {}

    def before(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        started[id(cursor)] = (time.perf_counter(), _caller())

    def after(conn: Connection, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        t0, caller = started.pop(id(cursor))
        profile.add(" ".join(statement.split()), caller, time.perf_counter() - t0, params)

    def before_commit(conn: Connection) -> None:
        if not explain:
            return
        t0 = time.perf_counter()
        with db.raw_connection(conn).cursor() as cur:
            for key, st in profile.statements.items():
                query = explainable(st.text)
                if query is None:
                    continue
                # in a savepoint: a failed EXPLAIN must not abort the assessment's transaction
                cur.execute("SAVEPOINT bench_explain")
                try:
                    cur.execute(f"EXPLAIN {query}", st.params)
                    profile.plans[key] = "\n".join(r[0] for r in cur.fetchall())
                    cur.execute("RELEASE SAVEPOINT bench_explain")
                except psycopg.Error as exc:
                    log(f"EXPLAIN failed for {st.caller}: {exc}")
                    cur.execute("ROLLBACK TO SAVEPOINT bench_explain")
        profile.explain_seconds = time.perf_counter() - t0

    copy_step = ruleids._copy_from_python

    def timed_copy(*args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        copy_step(*args, **kwargs)
        profile.add(
            RULE_STEP,
            "migrator/ruleids.py (_copy_from_python)",
            time.perf_counter() - t0,
            None,
        )

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    sa.event.listen(engine, "commit", before_commit)
    try:
        with mock.patch.object(ruleids, "_copy_from_python", timed_copy):
            yield profile
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "after_cursor_execute", after)
        sa.event.remove(engine, "commit", before_commit)


# --- the baseline: row-by-row Python -----------------------------------------------------------


def row_by_row(dsn: str, settings: settings_mod.Settings) -> dict[str, dict[str, int]]:
    """Classify documents and chunks in Python from plain SELECTs; counts as the report has them.

    The rules are those of DESIGN §2.3 as `migrator.assess` applies them (keys compared as
    lower-case text). Which member of a free conflict group is re-keyed does not change any count
    here: every member shares the rule id, so the chunks under it are healable either way.
    """
    m = settings.mapping
    schema = sql.Identifier(m.schema_)
    d, c = m.documents, m.chunks
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    new_id = rule.new_id_text
    docs_q = sql.SQL("SELECT {id}::text, {user}::text, {sha}::text FROM {schema}.{table}").format(
        id=sql.Identifier(d.id),
        user=sql.Identifier(d.user_id),
        sha=sql.Identifier(d.file_sha256),
        schema=schema,
        table=sql.Identifier(d.table),
    )
    chunks_q = sql.SQL("SELECT {ref}::text FROM {schema}.{table}").format(
        ref=sql.Identifier(c.document_id), schema=schema, table=sql.Identifier(c.table)
    )
    docs: list[tuple[str, str | None, bool]] = []  # key, rule id, is v4
    chunks_by_ref: Counter[str | None] = Counter()
    with psycopg.connect(dsn) as conn:
        with conn.cursor(name="bench_docs") as cur:
            cur.itersize = _FETCH
            cur.execute(docs_q)
            for doc_id, user, sha in cur:
                key = doc_id.lower()
                rid = None if user is None or sha is None else new_id(user, sha)
                docs.append((key, rid, _V4.match(key) is not None))
        with conn.cursor(name="bench_chunks") as cur:
            cur.itersize = _FETCH
            cur.execute(chunks_q)
            for (ref,) in cur:
                chunks_by_ref[None if ref is None else ref.lower()] += 1

    keys = {key for key, _, _ in docs}
    # v4 documents competing for a rule id that is not their own
    group = Counter(rid for key, rid, v4 in docs if v4 and rid is not None and rid != key)
    by_class = dict.fromkeys(dataset.DOCUMENT_CLASSES, 0)
    healable: set[str] = set()
    for key, rid, v4 in docs:
        if rid == key:
            cls = "deterministic"
        elif not v4 or rid is None:
            cls = "other"
        else:
            taken = rid in keys
            if not taken:
                healable.add(rid)  # one member of the group is re-keyed onto it
            if taken or group[rid] > 1:
                cls = "conflict"
            elif chunks_by_ref[key] > 0:
                cls = "random_consistent"
            elif chunks_by_ref[rid] > 0:
                cls = "random_mismatched"
            else:
                cls = "random_unprocessed"
        by_class[cls] += 1
    chunks = dict.fromkeys(dataset.CHUNK_CLASSES, 0)
    for ref, n in chunks_by_ref.items():
        if ref in keys:
            chunks["attached"] += n
        elif ref in healable:
            chunks["orphan_healable"] += n
        else:
            chunks["orphan_unmatched"] += n
    return {"documents": by_class, "chunks": chunks}


# --- servers and databases ---------------------------------------------------------------------


# --- one size ----------------------------------------------------------------------------------


@dataclass
class Result:
    target: int
    chunks: int
    documents: int
    seed_seconds: float
    assess_runs: list[float]
    baseline_seconds: float | None
    profile: Profile

    @property
    def assess_seconds(self) -> float:
        return statistics.median(self.assess_runs)

    @property
    def per_million(self) -> float:
        return self.assess_seconds / (self.chunks / 1_000_000)


def _check(what: str, got: dict[str, int], expected: dict[str, int]) -> None:
    if got != expected:
        diff = {k: (got.get(k), expected.get(k)) for k in expected if got.get(k) != expected.get(k)}
        raise BenchmarkError(f"{what} differ from the manifest (got, expected): {diff}")


def measure(admin_url: str, target: int, opts: argparse.Namespace, largest: bool) -> Result:
    documents = round(target / CHUNKS_PER_DOCUMENT)
    with database(admin_url, f"bench_assess_{target}_{os.getpid()}") as url:
        settings = settings_mod.load_settings(None, database={"dsn": url})
        rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
        t0 = time.perf_counter()
        spec = dataset.DatasetSpec(documents=documents, as_of=datetime.now(UTC))
        ds = dataset.generate(spec, rule)
        manifest = ds.manifest
        chunks = manifest["chunks"]["total"]
        log(
            f"{target:,}: generated {documents:,} documents, {chunks:,} chunks in {time.perf_counter() - t0:.1f}s"
        )
        engine = db.create_engine(settings)
        try:

            def progress(done: int) -> None:
                if done % 1_000_000 == 0:
                    log(f"{target:,}: seeded {done:,} chunks")

            t0 = time.perf_counter()
            with db.connect(engine) as conn:
                seed.seed(
                    conn, ds, settings.mapping.schema_, "none", replace=True, progress=progress
                )
            seed_seconds = time.perf_counter() - t0
            del ds
            log(f"{target:,}: seed {seed_seconds:.1f}s")

            runs: list[float] = []
            profiles: list[Profile] = []
            for i in range(opts.repeat):
                with profiled(engine, explain=largest) as profile:
                    profiles.append(profile)
                    t0 = time.perf_counter()
                    report = assess.run(engine, settings)
                    runs.append(time.perf_counter() - t0 - profile.explain_seconds)
                _check(
                    "assess documents.by_class",
                    report["documents"]["by_class"],
                    manifest["documents"]["by_class"],
                )
                _check(
                    "assess chunks.by_class",
                    report["chunks"]["by_class"],
                    manifest["chunks"]["by_class"],
                )
                log(f"{target:,}: assess run {i + 1}: {runs[-1]:.2f}s")
                if sum(runs) >= opts.assess_budget and i < opts.repeat - 1:
                    log(
                        f"{target:,}: assess budget of {opts.assess_budget:.0f}s spent; no more repeats"
                    )
                    break
        finally:
            engine.dispose()

        baseline: float | None = None
        if opts.baseline_max_chunks is None or chunks <= opts.baseline_max_chunks:
            t0 = time.perf_counter()
            counts = row_by_row(url, settings)
            baseline = time.perf_counter() - t0
            _check(
                "baseline documents.by_class",
                counts["documents"],
                manifest["documents"]["by_class"],
            )
            _check("baseline chunks.by_class", counts["chunks"], manifest["chunks"]["by_class"])
            log(f"{target:,}: baseline {baseline:.2f}s")
        else:
            log(f"{target:,}: baseline skipped (more than {opts.baseline_max_chunks:,} chunks)")
    if largest:
        log(f"{target:,}: slowest statements of the last assess run:")
        for st in profiles[-1].top(10):
            log(f"  {st.seconds:7.2f}s  x{st.calls:<3} {st.caller}  {_short(st.text, 90)}")
    return Result(target, chunks, documents, seed_seconds, runs, baseline, profiles[-1])


# --- the machine -------------------------------------------------------------------------------


# --- the document ------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _nearest_1m(results: list[Result]) -> Result | None:
    near = [r for r in results if 500_000 <= r.chunks <= 2_000_000]
    return min(near, key=lambda r: abs(r.chunks - 1_000_000)) if near else None


def _short(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


_TABLES = re.compile(r"\b(?:FROM|JOIN)\s+([\w.]+)")


def summary(statement: str) -> str:
    """What a statement does, short enough for a table: its verb and the tables it reads."""
    match = _CTAS.match(statement)
    head = f"CREATE TEMPORARY TABLE {statement.split()[3]} AS SELECT" if match else None
    if head is None:
        head = "SELECT" if statement.startswith("SELECT ") else _short(statement, 80)
    tables = list(dict.fromkeys(_TABLES.findall(statement)))
    return f"{head} … FROM {', '.join(tables)}" if tables else head


def render(
    results: list[Result],
    info: dict[str, str],
    command: str,
    opts: argparse.Namespace,
    embedded_server: bool,
) -> str:
    now = datetime.now(UTC)
    where = "embedded server, default settings" if embedded_server else "server given by --dsn"
    out = [
        f"## {SECTION}",
        "",
        f"- Date: {now:%Y-%m-%d %H:%M} UTC",
        f"- Machine: {info['cpus']} CPUs (`nproc`), {info['cpu']}, {info['memory']} memory",
        f"- PostgreSQL {info['postgres']} ({where}: {info['pg_settings']}; the assessment"
        " sets work_mem for its own transaction from `assess.work_mem`, 64MB by default)",
        f"- Code: commit {info['revision']}",
        "- Reproduce (from the project root):",
        "",
        "  ```sh",
        f"  {command}",
        "  ```",
        "",
        "Each size is seeded into a fresh database with the reference dataset (`migrator.dataset`,"
        " about 9.3 chunks per document, one embedding per chunk, the FK mode `none`). *Assess* is"
        f" the wall time of `assess.run`, the median of up to {opts.repeat} runs (fewer once"
        f" {opts.assess_budget:.0f} s are spent at one size; the count is in parentheses); every run's"
        " document and chunk classes equal the dataset's manifest. The *baseline* is the"
        " row-by-row Python approach the issue rules out: all documents and all chunk"
        " `document_id`s streamed with plain SELECTs over server-side cursors, uuid5 rule ids"
        " computed with `IdRule`, documents and chunks classified in Python dicts and sets; it"
        " must produce the same class counts. It computes those counts and nothing else (assess"
        " also computes bytes, users, months, statuses, priority, conflict groups and samples),"
        " and it reads over a local Unix socket, its best case: over a network every chunk row"
        " would cross it.",
        "",
        "| chunks | documents | seed seconds | assess seconds (median) | baseline seconds"
        " | speed-up (baseline/assess) | seconds per 1M chunks |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        speedup = None if r.baseline_seconds is None else r.baseline_seconds / r.assess_seconds
        out.append(
            f"| {r.chunks:,} | {r.documents:,} | {_num(r.seed_seconds, 1)}"
            f" | {_num(r.assess_seconds)} ({len(r.assess_runs)}) | {_num(r.baseline_seconds)}"
            f" | {'—' if speedup is None else f'{speedup:.2f}×'} | {_num(r.per_million)} |"
        )
    if any(r.baseline_seconds is None for r in results):
        out += [
            "",
            f"The baseline was not run above {opts.baseline_max_chunks:,} chunks"
            " (`--baseline-max-chunks`), to keep the run bounded.",
        ]
    else:
        out += ["", "The baseline ran at every size: it is fast enough not to need skipping."]
    out += ["", _runs(results), "", *_verdict(results)]
    out += ["", *_limits(results[-1])]
    return "\n".join(out) + "\n"


def _runs(results: list[Result]) -> str:
    runs = "; ".join(
        f"{r.chunks:,}: {', '.join(f'{x:.2f}' for x in r.assess_runs)} s" for r in results
    )
    text = f"Every assess run, in order: {runs}."

    def first_slow(runs: list[float]) -> bool:
        if len(runs) < 2:
            return False
        later = statistics.median(runs[1:])
        return runs[0] > 1.2 * later and runs[0] - later > 0.5

    if any(first_slow(r.assess_runs) for r in results):
        text += (
            " The first run after the load is the slowest: its scans set the hint bits of the"
            " freshly COPYed rows (a VACUUM after the seed removes the difference), which a"
            " table in service has long had; the median damps it."
        )
    return text


def _verdict(results: list[Result]) -> list[str]:
    lines = []
    at_1m = _nearest_1m(results)
    if at_1m is None:
        lines.append("Target at 1M chunks (assess under 10 s): not measured in this run.")
    else:
        met = "met" if at_1m.assess_seconds < TARGET_SECONDS_AT_1M else "**missed**"
        lines.append(
            f"Target at 1M chunks (assess under {TARGET_SECONDS_AT_1M:.0f} s on this machine):"
            f" {met} — {at_1m.assess_seconds:.2f} s at {at_1m.chunks:,} chunks."
        )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        growth = large.per_million / small.per_million
        met = "met" if growth <= TARGET_GROWTH else "**missed**"
        lines.append(
            f"Growth (target: no worse than linear, ratio ≤ {TARGET_GROWTH}): {met} — the cost per"
            f" chunk at {large.chunks:,} chunks is {growth:.2f}× that at {small.chunks:,}"
            f" ({large.per_million:.2f} s against {small.per_million:.2f} s per 1M chunks)."
        )
    compared = [r for r in results if r.baseline_seconds is not None]
    if compared:
        ratios = ", ".join(
            f"{(r.baseline_seconds or 0.0) / r.assess_seconds:.2f}× at {r.chunks:,}"
            for r in compared
        )
        lines.append(f"Against the row-by-row baseline: {ratios} (above 1 means assess is faster).")
    return [" ".join(lines)]


_BUILDS = ("CREATE TEMPORARY TABLE", "CREATE INDEX", "ANALYZE")


def kind(st: Statement) -> str:
    """Which part of the assessment a statement belongs to, for the breakdown."""
    if st.text == RULE_STEP:
        return "rule ids computed in Python and sent back with COPY"
    if any("." in t for t in _TABLES.findall(st.text)):
        # the mapped tables are schema-qualified; the temporary tables are not
        return "statements reading the mapped tables (documents, chunks, embeddings)"
    if st.text.startswith(_BUILDS):
        return "building, indexing and analysing the derived temporary tables"
    return "report queries over the temporary tables (and the catalog)"


def _limits(r: Result) -> list[str]:
    p = r.profile
    total = r.assess_runs[-1]
    if not p.statements:
        return []
    ranked = p.top(len(p.statements))
    top, rest = ranked[:3], ranked[3:]
    traced = sum(s.seconds for s in ranked)
    calls = sum(s.calls for s in ranked)
    parts: dict[str, list[Statement]] = {}
    for st in ranked:
        parts.setdefault(kind(st), []).append(st)
    breakdown = "; ".join(
        f"{sum(s.seconds for s in sts) / total:.0%} {name} ({sum(s.calls for s in sts)})"
        for name, sts in sorted(parts.items(), key=lambda kv: -sum(s.seconds for s in kv[1]))
    )
    first = top[0].seconds / total
    lead = (
        f"One statement dominates ({first:.0%} of the run, #1 below)"
        if first > 0.5
        else f"No single statement dominates (the largest takes {first:.0%})"
    )
    lines = [
        f"### What limits the assessment ({r.chunks:,} chunks)",
        "",
        f"Measured in the last run ({total:.2f} s) with SQLAlchemy `before_cursor_execute` /"
        f" `after_cursor_execute` events around each of its {calls} statements, plus a timer"
        " around the Python rule-id step, which talks to psycopg directly; together they cover"
        f" {traced / total:.0%} of the run. {lead}. By part (statements in parentheses):"
        f" {breakdown}; {max(total - traced, 0.0) / total:.0%} is Python outside any statement.",
    ]
    if p.plans:
        slow = {k: n for k, plan in p.plans.items() if (n := per_row_subplans(plan))}
        if slow:
            where = ", ".join(f"`{caller}`" for caller, _ in slow)
            lines += [
                "",
                f"**{len(slow)} of the {len(p.plans)} query plans run a subplan once per outer"
                f" row** (a correlated subquery, or `IN (subquery)` past `work_mem`), which makes"
                f" the work grow with the product of two table sizes: {where}.",
            ]
        else:
            lines += [
                "",
                f"None of the {len(p.plans)} query plans (EXPLAIN of every SELECT and CREATE ..."
                " AS SELECT, taken inside the run's transaction) runs a subplan once per outer"
                " row, the pattern whose work grows with the product of two table sizes.",
            ]
    lines += [
        "",
        "The three most expensive statements:",
        "",
        "| # | issued by | statement | calls | seconds | share |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for i, st in enumerate(top, 1):
        text = summary(st.text).replace("|", "\\|")
        lines.append(
            f"| {i} | `{st.caller}` | `{text}` | {st.calls} | {st.seconds:.2f}"
            f" | {st.seconds / total:.1%} |"
        )
    if rest:
        lines += [
            "",
            f"The other {sum(s.calls for s in rest)} statements take"
            f" {sum(s.seconds for s in rest) / total:.0%} together, none more than"
            f" {rest[0].seconds:.2f} s ({rest[0].seconds / total:.1%}).",
        ]
    slowest = next(((s.caller, s.text) for s in ranked if (s.caller, s.text) in p.plans), None)
    if slowest is not None:
        lines += [
            "",
            f"Plan of the slowest query (`{slowest[0]}`):",
            "",
            "```text",
            p.plans[slowest],
            "```",
        ]
    return lines


# --- entry point -------------------------------------------------------------------------------


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {value!r}"
        ) from exc
    if not sizes or min(sizes) < 10:
        raise argparse.ArgumentTypeError("give at least one size of 10 chunks or more")
    return sorted(set(sizes))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=_sizes("100000,1000000,5000000"),
        help="comma-separated target chunk counts (default: %(default)s)",
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
    p.add_argument("--repeat", type=int, default=3, help="assess runs per size; the median counts")
    p.add_argument(
        "--assess-budget",
        type=float,
        default=240.0,
        help="stop repeating assess at one size once its runs took this many seconds",
    )
    p.add_argument(
        "--baseline-max-chunks",
        type=int,
        default=None,
        help="skip the row-by-row baseline above this many chunks (default: run it at every size)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown file to update")
    p.add_argument(
        "--no-write", action="store_true", help="print the section instead of writing it"
    )
    opts = p.parse_args(argv)
    if opts.repeat < 1:
        p.error("--repeat must be at least 1")
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
    command = shlex.join([".venv/bin/python", "benchmarks/assess.py", *args])
    started = time.perf_counter()
    results: list[Result] = []
    try:
        with server(opts.dsn, opts.state_dir) as admin_url:
            info = machine(admin_url, PG_SETTINGS)
            log(f"PostgreSQL {info['postgres']}; sizes {', '.join(f'{s:,}' for s in opts.sizes)}")
            for i, target in enumerate(opts.sizes):
                results.append(measure(admin_url, target, opts, largest=i == len(opts.sizes) - 1))
    except (BenchmarkError, UuidguardError) as exc:
        log(f"FAILED: {exc}")
        return 1
    section = render(results, info, command, opts, embedded_server=opts.dsn is None)
    if opts.no_write:
        print(section)
    else:
        write_section(opts.out, SECTION, section)
        log(f"wrote {opts.out}")
    log(f"done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
