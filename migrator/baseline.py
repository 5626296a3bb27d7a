"""A run's before/after figures: classes, orphans, users with invisible documents, and RAG
accessibility and retrieval latency on a fixed canary set, kept in the journal.

`measure` reads the temporary tables of one classification (assess.classify), so the "before"
taken when a run is created costs a few grouped reads of tables already built, plus one
retrieval query per canary document. The canary set is picked once, deterministically (by a
hash of the id), and followed through the run's id map afterwards, so "after" checks the very
same documents.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from migrator import assess, journal, ruleids
from migrator import tables as tables_mod
from migrator.dataset import CHUNK_CLASSES, DOCUMENT_CLASSES
from migrator.settings import Settings

#: documents in the fixed canary set: up to half invisible ones, the rest reachable ones
CANARY_SET = 20
#: timed executions of the retrieval query per canary document
ROUNDS = 3
PHASES = ("before", "after")


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation between closest ranks. No I/O."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def pick_canary(
    conn: Connection, cl: assess.Classified, n: int = CANARY_SET
) -> list[dict[str, Any]]:
    """A fixed set of documents: up to n/2 invisible ones a re-key heals and reachable ones for
    the rest, each the first by md5 of its id (deterministic, spread over users). Invisible
    duplicates that are not their group's canonical member stay out: no re-key can heal them,
    and the report lists them for a human anyway."""
    c = cl.docs.c
    order = sa.func.md5(c.id_text)
    invisible = conn.execute(
        sa.select(c.id_text, c.user_id).where(c.invisible, c.rekey).order_by(order).limit(n // 2)
    ).all()
    reachable = conn.execute(
        sa.select(c.id_text, c.user_id)
        .where(c.own_chunks > 0)
        .order_by(order)
        .limit(n - len(invisible))
    ).all()
    return [{"id": r[0], "user_id": r[1]} for r in [*invisible, *reachable]]


def retrieval_stmt(settings: Settings, mt: tables_mod.MappedTables) -> sa.Select[Any]:
    """The retrieval path for one document and its owner (binds `doc` and `owner`): the
    document joined to its owner's chunks and, where mapped, their embeddings; top_k rows."""
    m = settings.mapping
    d, ch = mt.documents, mt.chunks
    uuid_mode = tables_mod.uuid_keys(settings, mt)

    def key(col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return ruleids.key_expr(col, uuid_mode)

    doc_key = key(d.c(m.documents.id))
    on = [key(ch.c(m.chunks.document_id)) == doc_key]
    if m.chunks.user_id is not None:
        on.append(tables_mod.same_owner(ch, m.chunks.user_id, d, m.documents.user_id))
    joined = d.table.join(ch.table, sa.and_(*on))
    e, em = mt.embeddings, m.embeddings
    if e is not None and em is not None and em.chunk_id is not None:
        joined = joined.join(
            e.table,
            sa.and_(e.c(em.chunk_id) == ch.c(m.chunks.id), key(e.c(em.document_id)) == doc_key),
        )
    return (
        sa.select(ch.c(m.chunks.id))
        .select_from(joined)
        .where(
            sa.cast(d.c(m.documents.id), sa.Text) == sa.bindparam("doc", type_=sa.Text),
            sa.cast(d.c(m.documents.user_id), sa.Text) == sa.bindparam("owner", type_=sa.Text),
        )
        .limit(settings.probes.canary.top_k)
    )


def _current_ids(
    conn: Connection, settings: Settings, run_id: int, ids: list[str]
) -> dict[str, str]:
    """Each canary id as the documents table holds it now: its new id where the run re-keyed it."""
    id_map = journal.table(settings.journal_schema, "id_map")
    moved = {
        str(old): str(new)
        for old, new in conn.execute(
            sa.select(id_map.c.old_id, id_map.c.new_id).where(
                id_map.c.run_id == run_id,
                sa.cast(id_map.c.old_id, sa.Text).in_(ids),
                id_map.c.state == "done",
            )
        )
    }
    return {i: moved.get(i, i) for i in ids}


def measure(
    conn: Connection,
    settings: Settings,
    cl: assess.Classified,
    run_id: int,
    canary: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The figures of DESIGN §3.6's before/after comparison, from one classification."""
    started = time.perf_counter()
    c = cl.docs.c
    by_class = {k: 0 for k in DOCUMENT_CLASSES}
    by_class.update(
        {
            cls: int(n)
            for cls, n in conn.execute(sa.select(c["class"], sa.func.count()).group_by(c["class"]))
        }
    )
    invisible, users_invisible = conn.execute(
        sa.select(
            assess.count_if(c.invisible), sa.func.count(sa.distinct(c.user_id)).filter(c.invisible)
        )
    ).one()
    cc = assess.chunk_classes(conn, cl.docs, cl.chunk_groups)
    chunks = {k: 0 for k in CHUNK_CLASSES}
    chunks.update(
        {
            cls: int(n)
            for cls, n in conn.execute(
                sa.select(cc.c["class"], sa.func.sum(cc.c.n)).group_by(cc.c["class"])
            )
        }
    )
    canary = canary if canary is not None else pick_canary(conn, cl)
    current = _current_ids(conn, settings, run_id, [d["id"] for d in canary])
    stmt = retrieval_stmt(settings, cl.tables)
    reachable: dict[str, bool] = {}
    timings: list[float] = []
    for _ in range(ROUNDS):
        for doc in canary:
            params = {"doc": current[doc["id"]], "owner": str(doc["user_id"])}
            t0 = time.perf_counter()
            rows = conn.execute(stmt, params).all()
            timings.append(time.perf_counter() - t0)
            reachable[doc["id"]] = bool(rows)
    ok = sum(reachable.values())
    return {
        "documents": {
            "total": sum(by_class.values()),
            "by_class": by_class,
            "invisible": int(invisible),
        },
        "chunks": {
            "by_class": chunks,
            "orphan": chunks["orphan_healable"] + chunks["orphan_unmatched"],
        },
        "users_with_invisible_documents": int(users_invisible or 0),
        "canary": {
            "documents": canary,
            "checked": len(canary),
            "reachable": ok,
            "invisible": sorted(current[i] for i, hit in reachable.items() if not hit),
            "accessibility": round(ok / len(canary), 4) if canary else None,
        },
        "latency": {
            "p50_seconds": percentile(timings, 0.5),
            "p99_seconds": percentile(timings, 0.99),
            "samples": len(timings),
            "rounds": ROUNDS,
        },
        "seconds": round(time.perf_counter() - started, 4),
    }


def record(
    conn: Connection, settings: Settings, run_id: int, phase: str, figures: dict[str, Any]
) -> int:
    """Keep one measurement of a run in the journal; returns its id."""
    t = journal.table(settings.journal_schema, "measurements")
    return int(
        conn.execute(
            sa.insert(t)
            .values(run_id=run_id, phase=phase, seconds=figures["seconds"], figures=figures)
            .returning(t.c.id)
        ).scalar_one()
    )


def latest(conn: Connection, settings: Settings, run_id: int, phase: str) -> dict[str, Any] | None:
    """The latest measurement of a run in a phase, with its id and time, or None."""
    t = journal.table(settings.journal_schema, "measurements")
    row = (
        conn.execute(
            sa.select(t.c.id, t.c.measured_at, t.c.figures)
            .where(t.c.run_id == run_id, t.c.phase == phase)
            .order_by(t.c.id.desc())
            .limit(1)
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        return None
    return {"id": row["id"], "measured_at": row["measured_at"].isoformat(), **row["figures"]}
