"""`uuidguard plan`: options A, B and C side by side, measured on this database (DESIGN §3.5).

The counts come from the same classification a run is created from, so the rows a plan says an
option rewrites are the rows the run then rewrites. The duration comes from a short rehearsal:
real batches applied to this database inside one transaction that is rolled back, so nothing
changes and the rate is this database's, with its indexes, foreign keys and load.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from migrator import assess, catalog, db, journal, runner, runs
from migrator.errors import UuidguardError
from migrator.pace import Pace
from migrator.reports.format import duration
from migrator.settings import Settings

#: an online run longer than this is better split: the priority documents first (option B)
LONG_RUN = timedelta(hours=8)
#: how long the rehearsal applies batches before it rolls them back
REHEARSAL_SECONDS = 3.0
STRATEGY_REASON = {
    None: "no foreign key: the rows are rewritten explicitly, in the batch's transaction",
    "cascade": "ON UPDATE CASCADE: the rows follow their document; they are journaled first",
    "deferred": "DEFERRABLE: checked at commit (SET CONSTRAINTS … DEFERRED) after both sides moved",
    "copy": "NOT DEFERRABLE: the document is copied under its new id, its rows moved, the old row"
    " deleted — in one transaction, no constraint dropped",
}


def plan(
    engine: Engine, settings: Settings, now: datetime, rehearsal_seconds: float = REHEARSAL_SECONDS
) -> dict[str, Any]:
    with db.connect(engine) as conn:
        with conn.begin():
            journal.require_current(conn, settings.journal_schema)
            fks = catalog.strategies(conn, settings)
            options, invisible_total, users_total = _counts(conn, settings, now)
        rate = _rate(conn, settings, now, rehearsal_seconds)
    for key in ("A", "B"):
        o = options[key]
        work = sum(o["rows"].values())
        o["estimated_seconds"] = work / rate["rows_per_second"] if rate["rows_per_second"] else None
    options["C"] = {
        "documents": 0,
        "rows": dict.fromkeys(options["A"]["rows"], 0),
        "users_restored": 0,
        "documents_restored": 0,
        "estimated_seconds": 0.0,
    }
    for o in options.values():
        o["documents_left_invisible"] = invisible_total - o["documents_restored"]
    refs = settings.reference_columns()
    report = {
        "generated_at": now.isoformat(),
        "documents_invisible": invisible_total,
        "users_with_invisible_documents": users_total,
        "options": options,
        "rehearsal": rate,
        "foreign_keys": [
            _strategy(f"{ref.table}.{ref.column}", fks[i]) for i, ref in enumerate(refs)
        ],
    }
    report["risks"] = _risks(options, settings)
    report["decision_points"] = _decision_points(options)
    report["success_criteria"] = _success_criteria(options)
    report["recommendation"] = _recommend(options)
    return report


def _strategy(reference: str, fk: catalog.ForeignKey | None) -> dict[str, Any]:
    strategy = fk.strategy if fk is not None else None
    return {
        "reference": reference,
        "constraint": fk.name if fk is not None else None,
        "strategy": strategy or "none",
        "why": STRATEGY_REASON[strategy],
    }


def _counts(
    conn: Connection, settings: Settings, now: datetime
) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Per option: documents re-keyed, rows rewritten per table, documents and users restored."""
    cl = assess.classify(conn, settings)
    recent, frequent, _, _ = assess.priority_conditions(conn, cl.docs, settings, now)
    c = cl.docs.c
    priority = sa.func.coalesce(sa.or_(recent, frequent, c.invisible), False)
    m = settings.mapping.documents
    out: dict[str, dict[str, Any]] = {}
    for key, chosen in (("A", c.rekey), ("B", sa.and_(c.rekey, priority))):
        head = conn.execute(
            sa.select(
                assess.count_if(chosen),
                assess.count_if(sa.and_(chosen, c.invisible)),
                sa.func.count(sa.distinct(sa.case((sa.and_(chosen, c.invisible), c.user_id)))),
                assess.count_if(sa.and_(chosen, c["class"] == "random_unprocessed")),
                assess.count_if(sa.and_(c.rekey, ~chosen)),
            )
        ).one()
        ids = sa.select(c.key).where(chosen)
        rows = {f"{m.table}.{m.id}": int(head[0])}
        for ref, t in cl.tables.references:
            rows[f"{ref.table}.{ref.column}"] = int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(t.table).where(t.c(ref.column).in_(ids))
                ).scalar_one()
            )
        out[key] = {
            "documents": int(head[0]),
            "rows": rows,
            "documents_restored": int(head[1]),
            "users_restored": int(head[2]),
            "unprocessed_rekeyed": int(head[3]),
            "random_left": int(head[4]),
        }
    totals = conn.execute(
        sa.select(
            assess.count_if(c.invisible),
            sa.func.count(sa.distinct(sa.case((c.invisible, c.user_id)))),
        )
    ).one()
    out["A"]["conflicts_left"] = out["B"]["conflicts_left"] = int(
        conn.execute(
            sa.select(assess.count_if(sa.and_(c["class"] == "conflict", ~c.rekey)))
        ).scalar_one()
    )
    return out, int(totals[0]), int(totals[1])


def _rate(conn: Connection, settings: Settings, now: datetime, seconds: float) -> dict[str, Any]:
    """Rows per second of real batches on this database: applied in one transaction for about
    `seconds`, then rolled back. With a run already active, its journal says the rate instead."""
    with conn.begin():
        active = runs.active_run(conn, settings)
        if active is not None:
            return _journaled_rate(conn, settings, active)
    tx = conn.begin()
    try:
        run_id = runs.create(conn, settings, "A", now, "plan", take_fingerprint=False)
        runs_t = journal.metadata(settings.journal_schema).tables[f"{settings.journal_schema}.runs"]
        conn.execute(sa.update(runs_t).where(runs_t.c.id == run_id).values(state="running"))
        runner.set_batch_locals(conn, settings, settings.migrate.lock_timeout)
        p = runner.plan(conn, settings)
        ms = settings.migrate
        pace = Pace(ms.batch_time, ms.min_batch, ms.max_batch, ms.start_batch)
        measured: list[tuple[int, int, float]] = []
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            t0 = time.monotonic()
            result = runner.apply_batch(
                conn, settings, p, run_id, pace.size, "plan", t0, clear=True
            )
            if result is None:
                break
            took = time.monotonic() - t0
            measured.append((result.documents, result.documents + sum(result.rows.values()), took))
            pace.observe(result.documents + result.skipped, took)
    finally:
        tx.rollback()
    # the first batches are small (the pace starts low): the later half says the steady rate
    steady = measured[len(measured) // 2 :] or measured
    busy = sum(s for _, _, s in steady)
    return {
        "source": "rehearsal: batches applied and rolled back in one transaction",
        "rows_per_second": sum(r for _, r, _ in steady) / busy if busy else None,
        "documents_per_second": sum(d for d, _, _ in steady) / busy if busy else None,
        "batches": len(measured),
        "seconds": sum(s for _, _, s in measured),
    }


def _journaled_rate(conn: Connection, settings: Settings, run_id: int) -> dict[str, Any]:
    schema = settings.journal_schema
    batches = journal.metadata(schema).tables[f"{schema}.batches"]
    done = conn.execute(
        sa.select(batches.c.documents, batches.c.rows, batches.c.seconds).where(
            batches.c.run_id == run_id, batches.c.state == "committed"
        )
    ).all()
    busy = sum(float(b.seconds or 0) for b in done)
    if not busy:
        raise UuidguardError(
            f"run {run_id} is active and has no batch yet, so there is nothing to measure."
            f" Fix: run a first batch (`uuidguard migrate run {run_id} --max-batches 1`)"
            " or roll the run back, then plan again"
        )
    rows = sum(int(b.documents) + sum(int(v) for v in (b.rows or {}).values()) for b in done)
    return {
        "source": f"the journal of run {run_id} (active: no rehearsal while a run is active)",
        "rows_per_second": rows / busy,
        "documents_per_second": sum(int(b.documents) for b in done) / busy,
        "batches": len(done),
        "seconds": busy,
    }


def _risks(options: dict[str, dict[str, Any]], settings: Settings) -> dict[str, list[str]]:
    a, b = options["A"], options["B"]
    batch = settings.migrate.batch_time
    common = [
        f"application writes to a document being re-keyed wait for its batch (about {batch:g} s,"
        " bounded by lock_timeout)",
        "the journal grows by one row per document and reference re-keyed, kept until the run"
        " is dropped",
    ]
    return {
        "A": [
            *common,
            f"{a['conflicts_left']} conflict documents stay on their ids and need a human"
            " (choose the canonical upload)",
        ],
        "B": [
            *common,
            f"{b['random_left']} random-id documents are left as they are: visible now, but"
            " they become invisible the day they are reprocessed (run A later)",
            f"{a['unprocessed_rekeyed'] - b['unprocessed_rekeyed']} never-processed documents"
            " keep their random id: when processing runs they will be invisible",
        ],
        "C": [
            f"{options['C']['documents_left_invisible']} documents stay invisible to retrieval",
            "every random-id document becomes invisible when it is reprocessed; monitoring only"
            " reports it",
        ],
    }


def _decision_points(options: dict[str, dict[str, Any]]) -> list[str]:
    return [
        "before the run: `uuidguard preflight` passes (verified backup, calibrated id rule,"
        " journal current, privileges, monitoring reachable)",
        "after the first batch (`uuidguard migrate run --max-batches 1`): `uuidguard migrate"
        " verify` passes and the RAG canary finds the batch's documents",
        "during the run: a failed batch verification pauses the run by itself; roll back"
        " (`uuidguard migrate rollback --last 1`) if the cause is not understood",
        "during the run: roll back the whole run (`uuidguard migrate rollback --all`) if the"
        " canary accessibility ratio falls below its value before the run, or the RAG"
        " service's error rate or p99 latency rises beyond the throttle's critical threshold",
        "after the run: `uuidguard migrate verify`; a completed run is rolled back only with"
        " --force",
    ]


def _success_criteria(options: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key in ("A", "B"):
        o = options[key]
        out[key] = [
            f"{o['documents']:,} documents re-keyed, {sum(o['rows'].values()):,} rows rewritten,"
            " no reference to an old id left (`uuidguard migrate verify`)",
            f"{o['documents_restored']:,} documents of {o['users_restored']:,} users visible to"
            f" retrieval again; {o['documents_left_invisible']:,} still invisible",
            "row counts and content fingerprints of every mapped table unchanged",
        ]
    out["C"] = ["no data changed; the daemon's probes and alerts watch new uploads"]
    return out


def _recommend(options: dict[str, dict[str, Any]]) -> dict[str, str]:
    a, b = options["A"], options["B"]
    if a["documents"] == 0:
        return {"option": "C", "reason": "no document needs re-keying: keep monitoring"}
    seconds = a["estimated_seconds"]
    if seconds is not None and seconds > LONG_RUN.total_seconds() and b["documents"]:
        return {
            "option": "B",
            "reason": f"A would run about {duration(seconds)}; B restores all"
            f" {b['documents_restored']:,} invisible documents in"
            f" {duration(b['estimated_seconds'])} — run A afterwards for the rest",
        }
    when = f"about {duration(seconds)}" if seconds is not None else "an unmeasured time"
    return {
        "option": "A",
        "reason": f"A restores {a['documents_restored']:,} documents of {a['users_restored']:,} users"
        f" and removes every random id in {when}, online in small reversible batches; B would"
        f" leave {b['random_left']:,} random ids to become invisible when reprocessed",
    }
