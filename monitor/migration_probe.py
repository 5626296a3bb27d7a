"""The migration as metrics: one cheap probe over the journal (never the mapped tables).

It runs on every replica (the journal is shared), so each exports the same numbers; Prometheus
aggregates with max() where replicas overlap.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from migrator import journal, runs
from migrator.settings import Settings
from monitor.probing import ProbeContext, ProbeOutput, ProbeSpec

STATES = (
    "none",
    "planned",
    "running",
    "paused",
    "completed",
    "rolling_back",
    "rolled_back",
    "failed",
)
BATCH_BUCKETS = (0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0, 2.0, 5.0)
SIZE_BUCKETS = (10, 50, 100, 250, 500, 1000, 2500, 5000)

METRICS = (
    "migration_state",
    "migration_run_id",
    "migration_documents",
    "migration_documents_remaining",
    "migration_progress_ratio",
    "migration_rows_migrated_total",
    "migration_rows_rolled_back_total",
    "migration_batches_total",
    "migration_batch_duration_seconds",
    "migration_batch_size",
    "migration_lock_wait_seconds_total",
    "migration_throttle_seconds_total",
    "migration_throttled",
    "migration_rollbacks_total",
    "migration_eta_seconds",
    "migration_documents_per_second",
)


def probe(conn: Connection, settings: Settings, ctx: ProbeContext) -> ProbeOutput:
    out = ProbeOutput()
    schema = settings.journal_schema
    md = journal.metadata(schema)
    runs_t = md.tables[f"{schema}.runs"]
    latest = conn.execute(sa.select(sa.func.max(runs_t.c.id))).scalar_one()
    if latest is None:
        for state in STATES:
            out.add("migration_state", 1.0 if state == "none" else 0.0, state=state)
        out.detail = {"run": None}
        return out
    st = runs.status(conn, settings, int(latest))
    for state in STATES:
        out.add("migration_state", 1.0 if state == st["state"] else 0.0, state=state)
    out.add("migration_run_id", float(st["run"]))
    docs = st["documents"]
    for key in ("total", "done", "pending", "skipped", "rolled_back"):
        out.add("migration_documents", docs[key], state=key)
    out.add("migration_documents_remaining", docs["pending"])
    out.add("migration_progress_ratio", st["percent"] / 100.0)
    out.add("migration_eta_seconds", st["eta_seconds"] if st["eta_seconds"] is not None else -1)
    out.add("migration_documents_per_second", st["documents_per_second"] or 0.0)
    batches = md.tables[f"{schema}.batches"]
    b = batches.c
    run_id = int(latest)
    by_state: dict[str, int] = dict(
        conn.execute(
            sa.select(b.state, sa.func.count()).where(b.run_id == run_id).group_by(b.state)
        ).all()
    )
    for state in ("committed", "rolled_back", "failed"):
        out.add("migration_batches_total", by_state.get(state, 0), state=state)
    rows = conn.execute(
        sa.select(
            sa.func.coalesce(
                sa.func.sum(b.documents).filter(b.state.in_(("committed", "rolled_back"))), 0
            ),
            sa.func.coalesce(sa.func.sum(b.documents).filter(b.state == "rolled_back"), 0),
            sa.func.coalesce(sa.func.sum(b.lock_wait_seconds), 0.0),
        ).where(b.run_id == run_id)
    ).one()
    kv = sa.func.jsonb_each_text(b.rows).table_valued("key", "value")
    per_table = conn.execute(
        sa.select(b.state, kv.c.key, sa.func.sum(sa.cast(kv.c.value, sa.BigInteger)))
        .select_from(batches.join(kv, sa.true()))
        .where(b.run_id == run_id, b.state.in_(("committed", "rolled_back")))
        .group_by(b.state, kv.c.key)
    ).all()
    migrated: dict[str, float] = {"documents": float(rows[0])}
    rolled: dict[str, float] = {"documents": float(rows[1])}
    for state, table, n in per_table:
        migrated[table] = migrated.get(table, 0.0) + float(n)
        if state == "rolled_back":
            rolled[table] = rolled.get(table, 0.0) + float(n)
    for table, n in migrated.items():
        out.add("migration_rows_migrated_total", n, table=table)
    for table, n in rolled.items():
        out.add("migration_rows_rolled_back_total", n, table=table)
    out.add("migration_lock_wait_seconds_total", float(rows[2]))
    _histogram(conn, out, "migration_batch_duration_seconds", b.seconds, BATCH_BUCKETS, run_id, b)
    _histogram(conn, out, "migration_batch_size", b.documents, SIZE_BUCKETS, run_id, b)
    waits = md.tables[f"{schema}.waits"]
    w = waits.c
    for reason, seconds in conn.execute(
        sa.select(w.reason, sa.func.sum(w.seconds)).where(w.run_id == run_id).group_by(w.reason)
    ).all():
        out.add("migration_throttle_seconds_total", float(seconds or 0), reason=str(reason))
    out.add("migration_throttled", 1.0 if st.get("waiting") else 0.0)
    audit = md.tables[f"{schema}.audit"]
    a = audit.c
    triggers: dict[str, int] = dict(
        conn.execute(
            sa.select(a.source, sa.func.count())
            .where(a.run_id == run_id, a.action == "rollback")
            .group_by(a.source)
        ).all()
    )
    for source in ("cli", "api", "slack", "alert", "daemon"):
        out.add("migration_rollbacks_total", triggers.get(source, 0), trigger=source)
    out.detail = st
    return out


def _histogram(
    conn: Connection,
    out: ProbeOutput,
    name: str,
    column: sa.ColumnElement[float],
    bounds: tuple[float, ...],
    run_id: int,
    b: sa.ColumnCollection[str, sa.Column[object]],
) -> None:
    counts = conn.execute(
        sa.select(
            *[sa.func.count().filter(column <= bound) for bound in bounds],
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(column), 0),
        ).where(b.run_id == run_id, b.state.in_(("committed", "rolled_back")))
    ).one()
    for bound, n in zip(bounds, counts, strict=False):
        out.add(f"{name}_bucket", n, le=repr(float(bound)))
    out.add(f"{name}_bucket", counts[len(bounds)], le="+Inf")
    out.add(f"{name}_count", counts[len(bounds)])
    out.add(f"{name}_sum", float(counts[len(bounds) + 1]))


def spec(settings: Settings) -> ProbeSpec:
    return ProbeSpec(
        name="migration",
        interval=timedelta(seconds=5),
        budget="incremental",
        description="the active or latest run from the journal: state, progress, batches,"
        " rows, waits, rollbacks (journal only; never the mapped tables)",
        func=probe,
        metrics=METRICS,
    )
