"""The daemon's probes (DESIGN §4): what each measures, what it costs, and its metrics.

Each probe is a function `(conn, settings, ctx) -> ProbeOutput` run by `probing.run_probe` in
one read-only, named transaction bounded by `statement_timeout` (the full classification is
the exception: it needs temporary tables, see `classification`). Its budget says what it
reads, so a benchmark knows what must not grow with the tables:

- sampled: a fixed number of index probes (latency, pipeline, canaries);
- incremental: a bounded page past a watermark kept in `ctx.state` (new uploads, the rolling
  orphan scan), independent of the tables' size;
- full: whole tables, on the slow schedules (id versions and unprocessed documents read the
  documents table alone; integrity and the classification read every mapped table).

Metric names are given without the `uuidguard_` prefix; counters carry their running total
since the daemon started (kept in `ctx.state`). No label carries a user or document id; the
few ids in `detail` are for a person reading the status API.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from migrator import assess, idrule, ruleids
from migrator import tables as tables_mod
from migrator.dataset import CHUNK_CLASSES, DOCUMENT_CLASSES
from migrator.settings import Settings
from monitor import canary
from monitor.probing import ProbeContext, ProbeOutput, ProbeSpec

ID_VERSIONS = (*[f"v{n}" for n in range(1, 9)], "nil", "other")
USER_IMPACTS = ("any", "invisible", "unprocessed", "conflict")
CANARY_SOURCES = ("pinned", "sample")
EXAMPLES = 10
NIL = str(uuid.UUID(int=0))
# the planner's row estimate of a table: the rolling scan's progress, at no cost
#: a table's heap blocks now (not as of its last VACUUM), and the planner's rows and pages
_HEAP_SIZE = sa.text(
    "SELECT pg_relation_size(oid) / current_setting('block_size')::int, reltuples, relpages"
    " FROM pg_class WHERE oid = to_regclass(:name)"
)


def probe_specs(settings: Settings) -> list[ProbeSpec]:
    """Every probe of the mapped tables, with its schedule from settings.probes."""
    p = settings.probes
    return [
        ProbeSpec(
            "latency",
            p.latency_interval,
            "sampled",
            "Wall time of a cheap retrieval-shaped query (one document by primary key and its "
            "first chunks): the database's responsiveness as the platform sees it",
            latency,
            ("database_latency_seconds",),
        ),
        ProbeSpec(
            "id_versions",
            p.documents_interval,
            "full",
            "Documents by the version of their id (documents table only, its id column)",
            id_versions,
            ("documents_by_id_version",),
        ),
        ProbeSpec(
            "unprocessed",
            p.documents_interval,
            "full",
            "Documents whose status is not a processed one, by status and whether they are "
            "older than assess.grace_period (documents table only)",
            unprocessed,
            ("documents_unprocessed", "documents_unprocessed_oldest_age_seconds"),
        ),
        ProbeSpec(
            "new_uploads",
            p.interval,
            "incremental",
            "New-upload conformance: documents created since the last run whose id is not the "
            "rule's (UUID generation failures in production); at most probes.new_uploads_page "
            "documents per run by the created_at index, never further back than "
            "probes.conformance_window",
            new_uploads,
            ("new_uploads_total", "new_uploads_watermark_timestamp_seconds"),
        ),
        ProbeSpec(
            "orphans",
            p.interval,
            "incremental",
            "Rolling orphan scan: a range of the chunks' heap per run (about "
            "probes.orphan_scan_page chunks, in physical order, wrapping around), each chunk "
            "looked up in the documents' primary key; a complete cycle counts every chunk that "
            "stayed in place through it once",
            orphans,
            (
                "chunks_orphaned_rolling",
                "chunks_rolling_scan_progress_ratio",
                "chunks_rolling_scan_cycles_total",
            ),
        ),
        ProbeSpec(
            "pipeline",
            p.interval,
            "sampled",
            "Pipeline consistency on probes.pipeline_sample random processed documents: chunks "
            "and embeddings under the document's own id, none left under its rule id",
            pipeline,
            ("pipeline_consistency_sampled_ratio", "pipeline_sampled_documents"),
        ),
        ProbeSpec(
            "integrity",
            p.full_sweep_interval,
            "full",
            "Referential integrity: references to missing documents, embeddings of missing "
            "chunks or of another document than their chunk's, chunks owned by another user "
            "than their document (hash anti-joins over every mapped table)",
            integrity,
            ("integrity_violations",),
        ),
        ProbeSpec(
            "classification",
            p.full_sweep_interval,
            "full",
            "The assessment's classification (DESIGN §2.3) of every document and chunk: id "
            "classes, orphan chunks by class, invisible and stuck documents, users affected, "
            "pipeline consistency over all processed documents",
            classification,
            (
                "documents_by_class",
                "chunks_by_class",
                "documents_invisible",
                "documents_stuck",
                "documents_to_rekey",
                "users",
                "users_affected",
                "users_by_affected_documents",
                "pipeline_consistency_ratio",
                "pipeline_inconsistent_documents",
            ),
            # temporary tables (rule ids come back by COPY) need a read-write transaction;
            # nothing but those ON COMMIT DROP tables is written
            read_only=False,
        ),
        ProbeSpec(
            "canary",
            p.canary_interval,
            "sampled",
            "RAG canaries in the configured modes on the pinned documents and "
            "probes.canary.sample random processed ones: does retrieval reach them for their "
            "owner? Errors (a broken canary) are counted apart from invisible documents",
            canaries,
            ("canary_checks_total", "canary_documents", "rag_accessibility_ratio"),
        ),
    ]


def _rng(ctx: ProbeContext) -> random.Random:
    """The probe's random source (a test may put a seeded one in the context)."""
    rng = ctx.state.setdefault("rng", random.Random())
    assert isinstance(rng, random.Random)
    return rng


def _set_work_mem(conn: Connection, settings: Settings) -> None:
    """Full scans hash whole tables: the assessment's work_mem, for this transaction only."""
    conn.execute(sa.select(sa.func.set_config("work_mem", settings.assess.work_mem, True)))


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


# -- sampled --------------------------------------------------------------------------------------


def latency(conn: Connection, settings: Settings, ctx: ProbeContext) -> ProbeOutput:
    """One document at a random point of the primary key and up to top_k of its chunks."""
    mt = tables_mod.reflect(conn, settings)
    d, ch, m = mt.documents, mt.chunks, settings.mapping
    uuid_mode = tables_mod.uuid_keys(settings, mt)
    doc_key = ruleids.key_expr(d.c(m.documents.id), uuid_mode)
    point = str(uuid.UUID(int=_rng(ctx).getrandbits(128)))
    chunks = (
        sa.select(sa.literal(1))
        .where(ruleids.key_expr(ch.c(m.chunks.document_id), uuid_mode) == doc_key)
        .limit(settings.probes.canary.top_k)
        .subquery("first_chunks")
    )
    chunk_count = sa.select(sa.func.count()).select_from(chunks).scalar_subquery()
    point_value = sa.bindparam("point", point, type_=pg.UUID(as_uuid=False) if uuid_mode else None)
    stmt = (
        sa.select(sa.cast(d.c(m.documents.id), sa.Text), chunk_count)
        .where(doc_key >= point_value)
        .order_by(doc_key)
        .limit(1)
    )
    started = time.perf_counter()
    conn.execute(stmt).all()
    seconds = time.perf_counter() - started
    out = ProbeOutput()
    out.add("database_latency_seconds", seconds)
    out.detail = {"seconds": round(seconds, 6)}
    return out


def pipeline(conn: Connection, settings: Settings, ctx: ProbeContext) -> ProbeOutput:
    """Random processed documents: consistent when chunks (and embeddings, where mapped) are
    under the document's own id and nothing is left under its rule id (unless another
    document holds that id)."""
    mt = tables_mod.reflect(conn, settings)
    ids = canary.sample_documents(conn, settings, settings.probes.pipeline_sample, _rng(ctx), mt)
    targets, _ = canary.resolve(conn, settings, mt, ids)
    consistent = consistency(conn, settings, mt, targets)
    good = sum(1 for ok in consistent.values() if ok)
    bad = len(consistent) - good
    out = ProbeOutput()
    out.add("pipeline_sampled_documents", good, result="consistent")
    out.add("pipeline_sampled_documents", bad, result="inconsistent")
    if consistent:
        out.add("pipeline_consistency_sampled_ratio", good / len(consistent))
    out.detail = {
        "sampled": len(consistent),
        "inconsistent": bad,
        "examples": sorted(k for k, ok in consistent.items() if not ok)[:EXAMPLES],
    }
    return out


def consistency(
    conn: Connection,
    settings: Settings,
    mt: tables_mod.MappedTables,
    targets: list[canary.Target],
) -> dict[str, bool]:
    """Document id -> whether upload, chunks and embeddings agree on its id (index probes)."""
    if not targets:
        return {}
    m = settings.mapping
    uuid_mode = tables_mod.uuid_keys(settings, mt)
    key_type: sa.types.TypeEngine[Any] = pg.UUID(as_uuid=False) if uuid_mode else sa.Text()

    def key(col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return ruleids.key_expr(col, uuid_mode)

    ids = [t.id if uuid_mode else t.id.lower() for t in targets]
    rules = [t.rule_id or t.id for t in targets]
    s = (
        sa.func.unnest(
            sa.bindparam("ids", ids, type_=pg.ARRAY(key_type)),
            sa.bindparam("rules", rules, type_=pg.ARRAY(key_type)),
        )
        .table_valued("id", "rule")
        .render_derived(name="s")
    )
    d, ch = mt.documents, mt.chunks
    ch_doc = key(ch.c(m.chunks.document_id))
    own: sa.ColumnElement[bool] = sa.exists().where(ch_doc == s.c.id)
    stray: sa.ColumnElement[bool] = sa.exists().where(ch_doc == s.c.rule)
    e, em = mt.embeddings, m.embeddings
    if e is not None and em is not None:
        e_doc = key(e.c(em.document_id))
        own = sa.and_(own, sa.exists().where(e_doc == s.c.id))
        stray = sa.or_(stray, sa.exists().where(e_doc == s.c.rule))
    held = sa.exists().where(key(d.c(m.documents.id)) == s.c.rule)
    ok = sa.and_(own, sa.or_(s.c.rule == s.c.id, ~stray, held))
    rows = conn.execute(sa.select(sa.cast(s.c.id, sa.Text), ok).select_from(s)).all()
    return {doc_id: bool(good) for doc_id, good in rows}


def canaries(conn: Connection, settings: Settings, ctx: ProbeContext) -> ProbeOutput:
    """Each configured mode on the pinned documents and a fresh random sample."""
    cs = settings.probes.canary
    mt = tables_mod.reflect(conn, settings)
    pinned = list(dict.fromkeys(cs.pinned))
    pinned_set = set(pinned)
    sample = [
        i
        for i in canary.sample_documents(conn, settings, cs.sample, _rng(ctx), mt)
        if i not in pinned_set
    ]
    docs = pinned + sample
    totals: dict[tuple[str, str, str], int] = ctx.state.setdefault("canary_totals", {})
    out = ProbeOutput()
    detail: dict[str, Any] = {"documents": {"pinned": len(pinned), "sample": len(sample)}}
    client = httpx.Client(timeout=cs.http_timeout.total_seconds()) if "http" in cs.modes else None
    try:
        for mode in cs.modes:
            results = canary.check(conn, settings, mode, docs, client=client, tables=mt)
            counts = {(r, s): 0 for r in canary.RESULTS for s in CANARY_SOURCES}
            for r in results:
                source = "pinned" if r.document_id in pinned_set else "sample"
                counts[(r.result, source)] += 1
            for (result, source), n in counts.items():
                out.add("canary_documents", n, mode=mode, result=result, source=source)
                totals[(mode, result, source)] = totals.get((mode, result, source), 0) + n
            ratio = canary.accessibility(results)
            if ratio is not None:
                out.add("rag_accessibility_ratio", ratio, mode=mode)
            detail[mode] = {
                "ok": sum(1 for r in results if r.result == "ok"),
                "invisible": [r.document_id for r in results if r.result == "invisible"][:EXAMPLES],
                "errors": [
                    {"document": r.document_id, "reason": r.reason}
                    for r in results
                    if r.result == "error"
                ][:EXAMPLES],
            }
    finally:
        if client is not None:
            client.close()
    for (t_mode, t_result, t_source), n in sorted(totals.items()):
        out.add("canary_checks_total", n, mode=t_mode, result=t_result, source=t_source)
    out.detail = detail
    return out


# -- incremental ----------------------------------------------------------------------------------


def new_uploads(conn: Connection, settings: Settings, ctx: ProbeContext) -> ProbeOutput:
    """Documents created since the watermark whose id is not their rule id.

    The watermark is the newest created_at checked. Rows up to probes.commit_lag behind it
    are read again, since a long transaction may commit a row after a newer one; the ids
    already counted there are kept in the state and left out, so nothing is counted twice.
    """
    p = settings.probes
    mt = tables_mod.reflect(conn, settings)
    d, m = mt.documents, settings.mapping.documents
    state: dict[str, Any] = ctx.state.setdefault(
        "new_uploads",
        {"cursor": None, "seen": {}, "totals": {"conforming": 0, "nonconforming": 0}},
    )
    cursor: datetime | None = state["cursor"]
    seen: dict[str, datetime] = state["seen"]
    created = d.c(m.created_at)
    floor = sa.func.now() - sa.literal(p.conformance_window, sa.Interval)
    lower = floor
    if cursor is not None:
        behind = sa.bindparam("cursor", cursor, type_=created.type) - sa.literal(
            p.commit_lag, sa.Interval
        )
        lower = sa.func.greatest(behind, floor)
    id_text = sa.cast(d.c(m.id), sa.Text)
    stmt = (
        sa.select(id_text, d.c(m.user_id), d.c(m.file_sha256), created)
        .where(
            created >= lower,
            id_text != sa.all_(sa.bindparam("seen", list(seen), pg.ARRAY(sa.Text))),
        )
        .order_by(created, d.c(m.id))
        .limit(p.new_uploads_page)
    )
    rows: list[Any] = list(conn.execute(stmt).all())
    rule = idrule.IdRule(settings.id_rule.namespace, settings.id_rule.template)
    bad: list[str] = []
    for doc_id, user, sha, at in rows:
        expected = None if user is None or sha is None else rule.new_id_text(user, sha)
        if expected is None or doc_id.lower() != expected:
            bad.append(doc_id)
        seen[doc_id] = at
    if rows:
        newest: datetime = rows[-1][3]
        cursor = newest if cursor is None else max(cursor, newest)
        state["cursor"] = cursor
        keep_from = cursor - p.commit_lag
        state["seen"] = {k: v for k, v in seen.items() if v >= keep_from}
    totals = state["totals"]
    totals["nonconforming"] += len(bad)
    totals["conforming"] += len(rows) - len(bad)
    out = ProbeOutput()
    for result in ("conforming", "nonconforming"):
        out.add("new_uploads_total", totals[result], result=result)
    if cursor is not None:
        out.add("new_uploads_watermark_timestamp_seconds", _epoch(cursor))
    out.detail = {
        "checked": len(rows),
        "nonconforming": len(bad),
        "examples": bad[:EXAMPLES],
        "watermark": cursor.isoformat() if cursor is not None else None,
        "page_full": len(rows) == p.new_uploads_page,
    }
    return out


def orphans(conn: Connection, settings: Settings, ctx: ProbeContext) -> ProbeOutput:
    """The next range of the chunks' heap: how many of its chunks carry a document id no
    document has.

    Chunk ids are not created in order, so the scan is no watermark of new chunks: it is a
    cycle over the whole table, a range of heap blocks per run (about probes.orphan_scan_page
    chunks, from the density the previous range showed), that restarts at block 0 once it has
    passed the table's last block. A TID range scan reads those blocks in physical order, so
    a run costs the same whatever the table's size (an id-ordered page would fetch one heap
    block per chunk, scattered over the whole table). A cycle sees each chunk that stays in
    place throughout it exactly once; a chunk inserted or updated meanwhile (a new row
    version) is seen or not, or twice, depending on where it lands. The full classification
    gives the exact count and the classes on its slower schedule.
    """
    page_size = settings.probes.orphan_scan_page
    mt = tables_mod.reflect(conn, settings)
    d, ch, m = mt.documents, mt.chunks, settings.mapping
    uuid_mode = tables_mod.uuid_keys(settings, mt)
    state = ctx.state.setdefault(
        "orphans",
        {"block": 0, "per_block": None, "rows": 0, "orphans": 0, "last": None, "cycles": 0},
    )
    name = conn.dialect.identifier_preparer.format_table(ch.table)
    blocks, reltuples, relpages = conn.execute(_HEAP_SIZE, {"name": name}).one()
    per_block = state["per_block"]
    if per_block is None:
        per_block = reltuples / relpages if relpages > 0 and reltuples > 0 else 8.0
    start = state["block"]
    end = start + max(1, math.ceil(page_size / max(per_block, 1.0)))
    chunk_id = ch.c(m.chunks.id)
    page_rows = (
        sa.select(chunk_id.label("id"), ch.c(m.chunks.document_id).label("ref"))
        .where(
            sa.text("ctid >= CAST(:lo AS tid) AND ctid < CAST(:hi AS tid)").bindparams(
                lo=f"({start},0)", hi=f"({end},0)"
            )
        )
        .subquery("page_rows")
    )
    # one primary key probe per chunk: a LIMIT keeps the planner from hashing all documents
    owner = (
        sa.select(sa.literal(1).label("hit"))
        .where(
            ruleids.key_expr(d.c(m.documents.id), uuid_mode)
            == ruleids.key_expr(page_rows.c.ref, uuid_mode)
        )
        .limit(1)
        .lateral("owner")
    )
    page_q = sa.select(page_rows.c.id, owner.c.hit.is_not(None).label("owned")).select_from(
        page_rows.outerjoin(owner, sa.true())
    )
    page = page_q.cte("page")
    first_orphans = (
        sa.select(sa.cast(page.c.id, sa.Text).label("id"))
        .where(~page.c.owned)
        .order_by(page.c.id)
        .limit(EXAMPLES)
        .subquery("first_orphans")
    )
    examples = sa.select(sa.func.array_agg(first_orphans.c.id)).scalar_subquery()
    rows, found, sample = conn.execute(
        sa.select(sa.func.count(), sa.func.count().filter(~page.c.owned), examples).select_from(
            page
        )
    ).one()
    state["rows"] += rows
    state["orphans"] += found
    if rows:
        state["per_block"] = rows / (end - start)
    state["block"] = end
    out = ProbeOutput()
    if end >= blocks:
        state["last"] = {"rows": state["rows"], "orphans": state["orphans"]}
        state["cycles"] += 1
        state["block"] = 0
        state["rows"] = state["orphans"] = 0
    if state["last"] is not None:
        out.add("chunks_orphaned_rolling", state["last"]["orphans"], cycle="last")
    out.add("chunks_orphaned_rolling", state["orphans"], cycle="current")
    if blocks > 0:
        out.add("chunks_rolling_scan_progress_ratio", min(1.0, state["block"] / blocks))
    out.add("chunks_rolling_scan_cycles_total", state["cycles"])
    out.detail = {
        "page_rows": rows,
        "page_blocks": [start, end],
        "page_orphans": found,
        "examples": list(sample or []),
        "cycle": {"rows": state["rows"], "orphans": state["orphans"]},
        "last_cycle": state["last"],
    }
    return out


# -- full -----------------------------------------------------------------------------------------


def id_versions(conn: Connection, settings: Settings, ctx: ProbeContext) -> ProbeOutput:
    """Documents by id version: v1..v8 (RFC 4122 variant), the nil id, or other."""
    mt = tables_mod.reflect(conn, settings)
    d, m = mt.documents, settings.mapping.documents
    text = sa.func.lower(sa.cast(d.c(m.id), sa.Text))
    nibble = sa.func.substr(text, 15, 1)
    version = sa.case(
        (text == NIL, "nil"),
        (
            sa.and_(
                text.op("~")(idrule.UUID_PATTERN),
                sa.func.substr(text, 20, 1).in_(["8", "9", "a", "b"]),
                nibble.between("1", "8"),
            ),
            sa.func.concat("v", nibble),
        ),
        else_="other",
    ).label("version")
    counts = {v: 0 for v in ID_VERSIONS}
    for label, n in conn.execute(sa.select(version, sa.func.count()).group_by(version)):
        counts[label] = int(n)
    out = ProbeOutput()
    for label, n in counts.items():
        out.add("documents_by_id_version", n, version=label)
    out.detail = {"documents": counts}
    return out


def unprocessed(conn: Connection, settings: Settings, ctx: ProbeContext) -> ProbeOutput:
    """Documents the pipeline has not processed (by status), stuck when past the grace period."""
    mt = tables_mod.reflect(conn, settings)
    d, m = mt.documents, settings.mapping.documents
    created = d.c(m.created_at)
    stuck = sa.func.coalesce(
        created < sa.func.now() - sa.literal(settings.assess.grace_period, sa.Interval),
        sa.false(),
    ).label("stuck")
    status = sa.func.coalesce(sa.cast(d.c(m.status), sa.Text), "unknown").label("status")
    rows = conn.execute(
        sa.select(
            status,
            stuck,
            sa.func.count(),
            sa.func.extract("epoch", sa.func.now() - sa.func.min(created)),
        )
        .where(~canary.processed(settings, d))
        .group_by(status, stuck)
        .order_by(status, stuck)
    ).all()
    out = ProbeOutput()
    oldest = 0.0
    by_status: dict[str, dict[str, int]] = {}
    for st, is_stuck, n, age in rows:
        out.add("documents_unprocessed", n, status=st, stuck="true" if is_stuck else "false")
        by_status.setdefault(st, {"stuck": 0, "in_grace": 0})[
            "stuck" if is_stuck else "in_grace"
        ] = n
        oldest = max(oldest, float(age or 0.0))
    out.add("documents_unprocessed_oldest_age_seconds", oldest)
    out.detail = {"by_status": by_status, "oldest_age_seconds": round(oldest, 1)}
    return out


def integrity(conn: Connection, settings: Settings, ctx: ProbeContext) -> ProbeOutput:
    """Rows that break the references retrieval relies on, per check and column."""
    _set_work_mem(conn, settings)
    mt = tables_mod.reflect(conn, settings)
    m = settings.mapping
    d, ch = mt.documents, mt.chunks
    uuid_mode = tables_mod.uuid_keys(settings, mt)

    def key(col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return ruleids.key_expr(col, uuid_mode)

    def count(stmt: sa.Select[Any]) -> int:
        return int(conn.execute(stmt).scalar_one())

    found: list[tuple[str, str, int]] = []
    doc_key = key(d.c(m.documents.id))
    for ref, t in mt.references:
        col = t.c(ref.column)
        n = count(
            sa.select(sa.func.count())
            .select_from(t.table)
            .where(col.is_not(None), ~sa.exists().where(doc_key == key(col)))
        )
        found.append(("document_missing", f"{ref.table}.{ref.column}", n))
    e, em = mt.embeddings, m.embeddings
    if e is not None and em is not None and em.chunk_id is not None:
        e_chunk = e.c(em.chunk_id)
        chunk_pk = ch.c(m.chunks.id)
        n = count(
            sa.select(sa.func.count())
            .select_from(e.table)
            .where(e_chunk.is_not(None), ~sa.exists().where(chunk_pk == e_chunk))
        )
        found.append(("chunk_missing", f"{em.table}.{em.chunk_id}", n))
        n = count(
            sa.select(sa.func.count())
            .select_from(e.table.join(ch.table, chunk_pk == e_chunk))
            .where(key(e.c(em.document_id)).is_distinct_from(key(ch.c(m.chunks.document_id))))
        )
        found.append(("document_mismatch", f"{em.table}.{em.document_id}", n))
    if m.chunks.user_id is not None:
        owner = tables_mod.same_owner(ch, m.chunks.user_id, d, m.documents.user_id)
        n = count(
            sa.select(sa.func.count())
            .select_from(ch.table.join(d.table, doc_key == key(ch.c(m.chunks.document_id))))
            .where(ch.c(m.chunks.user_id).is_not(None), ~owner)
        )
        found.append(("owner_mismatch", f"{m.chunks.table}.{m.chunks.user_id}", n))
    out = ProbeOutput()
    for check, reference, n in found:
        out.add("integrity_violations", n, check=check, reference=reference)
    out.detail = {"checks": [{"check": c, "reference": r, "rows": n} for c, r, n in found]}
    return out


def classification(conn: Connection, settings: Settings, ctx: ProbeContext) -> ProbeOutput:
    """The assessment's classification, reduced to counts (never per user)."""
    _set_work_mem(conn, settings)
    cl = assess.classify(conn, settings)
    docs = cl.docs
    c = docs.c
    count_if = assess.count_if
    by_class = {k: 0 for k in DOCUMENT_CLASSES}
    for cls, n in conn.execute(sa.select(c["class"], sa.func.count()).group_by(c["class"])):
        by_class[cls] = int(n)
    ccls = assess.chunk_classes(conn, docs, cl.chunk_groups)
    chunks = {k: 0 for k in CHUNK_CLASSES}
    for cls, n in conn.execute(
        sa.select(ccls.c["class"], sa.func.sum(ccls.c.n)).group_by(ccls.c["class"])
    ):
        chunks[cls] = int(n or 0)
    stuck_cond = sa.and_(
        c.never_processed,
        c.created_at < sa.func.now() - sa.literal(settings.assess.grace_period, sa.Interval),
    )
    has_embeddings = cl.embedding_groups is not None
    consistent = sa.and_(
        c.own_chunks > 0,
        c.own_embeddings > 0 if has_embeddings else sa.true(),
        sa.or_(
            c.rule == c.key,
            c.rule_taken,
            sa.and_(c.rule_chunks_raw == 0, c.rule_embeddings_raw == 0),
        ),
    )
    invisible, stuck, rekey, processed_n, consistent_n = conn.execute(
        sa.select(
            count_if(c.invisible),
            count_if(stuck_cond),
            count_if(c.rekey),
            count_if(c.processed),
            count_if(sa.and_(c.processed, consistent)),
        )
    ).one()
    affected = c["class"] != "deterministic"
    per_user = (
        sa.select(
            count_if(affected).label("any"),
            count_if(c.invisible).label("invisible"),
            count_if(c["class"] == "random_unprocessed").label("unprocessed"),
            count_if(c["class"] == "conflict").label("conflict"),
        )
        .group_by(c.user_id)
        .subquery("per_user")
    )
    pu = per_user.c
    buckets = []
    for label, lo, hi in assess.USER_BUCKETS:
        cond = pu["any"] >= lo if hi is None else pu["any"].between(lo, hi)
        buckets.append(count_if(cond).label(f"bucket_{label}"))
    users = conn.execute(
        sa.select(
            sa.func.count(),
            *[count_if(pu[impact] > 0) for impact in USER_IMPACTS],
            *buckets,
        ).select_from(per_user)
    ).one()
    out = ProbeOutput()
    for cls, n in by_class.items():
        out.add("documents_by_class", n, **{"class": cls})
    for cls, n in chunks.items():
        out.add("chunks_by_class", n, **{"class": cls})
    out.add("documents_invisible", invisible)
    out.add("documents_stuck", stuck)
    out.add("documents_to_rekey", rekey)
    out.add("users", users[0])
    for impact, n in zip(USER_IMPACTS, users[1 : 1 + len(USER_IMPACTS)], strict=True):
        out.add("users_affected", n, impact=impact)
    bucket_counts = users[1 + len(USER_IMPACTS) :]
    for (label, _, _), n in zip(assess.USER_BUCKETS, bucket_counts, strict=True):
        out.add("users_by_affected_documents", n, bucket=label)
    out.add("pipeline_consistency_ratio", consistent_n / processed_n if processed_n else 1.0)
    out.add("pipeline_inconsistent_documents", processed_n - consistent_n)
    out.detail = {
        "documents": by_class,
        "chunks": chunks,
        "invisible": invisible,
        "stuck": stuck,
        "to_rekey": rekey,
        "processed": processed_n,
        "pipeline_consistent": consistent_n,
        "users": {
            "total": users[0],
            **dict(zip(USER_IMPACTS, users[1 : 1 + len(USER_IMPACTS)], strict=True)),
        },
        "rule_id_path": cl.rule_path,
    }
    return out
