"""The damage assessment (DESIGN §2.3): set-based SQL over one consistent snapshot.

Python only computes rule ids (see ruleids.py); every join, count and ranking runs in PostgreSQL
on temporary tables that are dropped with the transaction. Nothing is written to mapped tables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Engine

from migrator import db, idrule, ruleids
from migrator import tables as tables_mod
from migrator.dataset import CHUNK_CLASSES, DOCUMENT_CLASSES
from migrator.settings import Settings
from migrator.sqlutil import temp_table_as

USER_BUCKETS = (("1", 1, 1), ("2-5", 2, 5), ("6-20", 6, 20), ("21+", 21, None))
SHARE_BUCKETS = (
    ("0%", 0.0, 0.0),
    ("0-10%", 0.0, 0.1),
    ("10-25%", 0.1, 0.25),
    ("25-50%", 0.25, 0.5),
    ("50-100%", 0.5, 1.0),
)
CONFLICT_DETAIL_LIMIT = 1000


def run(engine: Engine, settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """Assess the database behind `engine`; returns the report as plain data."""
    with db.connect(engine) as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with db.translate_errors("assessment"), conn.begin():
            db.set_local_timeouts(conn, settings.database.statement_timeout)
            conn.execute(sa.select(sa.func.set_config("work_mem", settings.assess.work_mem, True)))
            return assess(conn, settings, now or datetime.now(UTC))


@dataclass(frozen=True)
class Classified:
    """The temporary tables of one classification, valid until its transaction ends."""

    tables: tables_mod.MappedTables
    docs: sa.TableClause
    chunk_groups: sa.FromClause
    embedding_groups: sa.FromClause | None
    uuid_mode: bool
    rule_path: str
    embeddings_chunk_missing: int

    def key(self, col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return ruleids.key_expr(col, self.uuid_mode)


def classify(conn: Connection, settings: Settings) -> Classified:
    """Classify every document and chunk (DESIGN §2.3) into temporary tables; the shared core
    of the assessment and of planning a migration run."""
    mt = tables_mod.reflect(conn, settings)
    m = settings.mapping.documents
    rule = idrule.IdRule(settings.id_rule.namespace, settings.id_rule.template)
    d = mt.documents
    ref_cols = [t.types.get(ref.column) for ref, t in mt.references]
    uuid_mode = d.is_uuid(m.id) and all(t == "uuid" for t in ref_cols)

    def key(col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return ruleids.key_expr(col, uuid_mode)

    rule_t, rule_path = ruleids.materialize(
        conn, mt, rule, m.user_id, m.file_sha256, m.id, uuid_mode, settings.id_rule.sql_fast_path
    )

    # chunks and embeddings grouped by the document id they carry: one pass over each table
    ch = mt.chunks
    chunk_ref = key(ch.c(settings.mapping.chunks.document_id))
    cg = _with_bytes(
        conn,
        temp_table_as(
            conn,
            "ug_chunk_groups",
            sa.select(chunk_ref.label("ref"), sa.func.count().label("n")).group_by(chunk_ref),
        ),
        ch.table,
    )
    eg = None
    emb_chunk_missing = 0
    if mt.embeddings is not None and settings.mapping.embeddings is not None:
        em, emap = mt.embeddings, settings.mapping.embeddings
        emb_ref = key(em.c(emap.document_id))
        eg = _with_bytes(
            conn,
            temp_table_as(
                conn,
                "ug_embedding_groups",
                sa.select(emb_ref.label("ref"), sa.func.count().label("n")).group_by(emb_ref),
            ),
            em.table,
        )
        if emap.chunk_id is not None:
            chunk_exists = sa.exists().where(
                ch.c(settings.mapping.chunks.id) == em.c(emap.chunk_id)
            )
            emb_chunk_missing = conn.execute(
                sa.select(sa.func.count())
                .select_from(em.table)
                .where(em.c(emap.chunk_id).is_not(None), ~chunk_exists)
            ).scalar_one()

    docs = _documents_table(conn, settings, mt, rule_t, cg, eg, uuid_mode, key)
    return Classified(mt, docs, cg, eg, uuid_mode, rule_path, emb_chunk_missing)


def assess(conn: Connection, settings: Settings, now: datetime) -> dict[str, Any]:
    started = time.monotonic()
    cl = classify(conn, settings)
    mt, docs, cg, eg, key = cl.tables, cl.docs, cl.chunk_groups, cl.embedding_groups, cl.key
    rule = idrule.IdRule(settings.id_rule.namespace, settings.id_rule.template)
    uuid_mode, rule_path, emb_chunk_missing = (
        cl.uuid_mode,
        cl.rule_path,
        cl.embeddings_chunk_missing,
    )
    report = _report(conn, settings, docs, cg, eg, now)
    report["embeddings"]["chunk_missing"] = emb_chunk_missing
    report["meta"] = {
        "generated_at": now.isoformat(),
        "seconds": round(time.monotonic() - started, 3),
        "rule_id_path": rule_path,
        "key_mode": "uuid" if uuid_mode else "text",
        "id_rule": {"namespace": str(rule.namespace), "template": rule.template},
        "grace_period_hours": settings.assess.grace_period.total_seconds() / 3600,
        "priority_window_days": settings.assess.priority_window.total_seconds() / 86400,
        "server_version": db.server_version(conn),
    }
    report["samples"]["chunks"] = _chunk_samples(conn, settings, mt, key)
    return report


def _with_bytes(conn: Connection, groups: sa.TableClause, table: sa.Table) -> sa.Subquery:
    """Grouped rows with their share of the table's on-disk size (heap, TOAST and indexes).

    Apportioning the measured relation size by row count costs nothing per row; summing
    pg_column_size(row) would build every row as a composite value and doubled the time.
    """
    name = conn.dialect.identifier_preparer.format_table(table)
    size = conn.execute(
        sa.select(sa.func.pg_total_relation_size(sa.cast(sa.literal(name), pg.REGCLASS)))
    ).scalar_one()
    rows = conn.execute(sa.select(sa.func.sum(groups.c.n))).scalar_one() or 0
    per_row = float(size) / float(rows) if rows else 0.0
    bytes_ = sa.cast(sa.func.round(groups.c.n * sa.literal(per_row, sa.Float)), sa.BigInteger)
    return sa.select(groups.c.ref, groups.c.n, bytes_.label("bytes")).subquery(f"{groups.name}_b")


def _documents_table(
    conn: Connection,
    settings: Settings,
    mt: tables_mod.MappedTables,
    rule_t: sa.TableClause,
    cg: sa.FromClause,
    eg: sa.FromClause | None,
    uuid_mode: bool,
    key: Any,
) -> sa.TableClause:
    """ug_docs: one row per document with its rule id, chunk counts, class and action."""
    m = settings.mapping.documents
    d = mt.documents
    dkey = key(d.c(m.id))
    own = cg.alias("own")
    own_e = eg.alias("own_e") if eg is not None else None
    processed = sa.func.coalesce(
        d.c(m.status).in_(list(m.processed_statuses)) if m.processed_statuses else sa.false(),
        sa.false(),
    )

    def opt(name: str | None, default: Any, type_: Any) -> sa.ColumnElement[Any]:
        return d.c(name) if name is not None else sa.cast(sa.literal(default), type_)

    holder = rule_t.alias("holder")
    rc = cg.alias("rc")
    rc_e = eg.alias("rc_e") if eg is not None else None
    rule = rule_t.c.rule_id
    moves = rule != dkey  # the rule id differs from the current one
    id_text = sa.cast(d.c(m.id), sa.Text)
    if uuid_mode:
        # a uuid column's text form is fixed: the version and variant nibbles say it all
        is_v4: sa.ColumnElement[bool] = sa.and_(
            sa.func.substr(id_text, 15, 1) == "4",
            sa.func.substr(id_text, 20, 1).in_(["8", "9", "a", "b"]),
        )
    else:
        is_v4 = sa.func.lower(id_text).op("~")(idrule.UUID_V4_PATTERN)

    def count_of(group: sa.FromClause | None, column: str) -> sa.ColumnElement[Any]:
        return sa.func.coalesce(group.c[column], 0) if group is not None else sa.literal(0)

    # one statement, no intermediate tables: every lookup is a hash join on a unique key
    joined = (
        sa.select(
            dkey.label("key"),
            sa.cast(d.c(m.id), sa.Text).label("id_text"),
            rule.label("rule"),
            is_v4.label("is_v4"),
            sa.and_(is_v4, rule.is_not(None), moves).label("random_v4"),
            sa.cast(d.c(m.user_id), sa.Text).label("user_id"),
            d.c(m.created_at).label("created_at"),
            sa.cast(d.c(m.status), sa.Text).label("status"),
            processed.label("processed"),
            sa.func.coalesce(opt(m.size_bytes, 0, sa.BigInteger), 0).label("size_bytes"),
            sa.func.coalesce(opt(m.access_count, 0, sa.BigInteger), 0).label("access_count"),
            opt(m.last_accessed_at, None, sa.DateTime(timezone=True)).label("last_accessed_at"),
            count_of(own, "n").label("own_chunks"),
            count_of(own, "bytes").label("own_chunk_bytes"),
            count_of(own_e, "n").label("own_embeddings"),
            count_of(own_e, "bytes").label("own_embedding_bytes"),
            # ids are unique, so this finds at most the one other document holding the rule id
            holder.c.doc_key.is_not(None).label("rule_taken"),
            count_of(rc, "n").label("rule_chunks_raw"),
            count_of(rc, "bytes").label("rule_chunk_bytes_raw"),
            count_of(rc_e, "n").label("rule_embeddings_raw"),
            count_of(rc_e, "bytes").label("rule_embedding_bytes_raw"),
        )
        .select_from(d.table)
        .join(rule_t, rule_t.c.doc_key == dkey)
        .outerjoin(own, own.c.ref == dkey)
        .outerjoin(holder, sa.and_(holder.c.doc_key == rule, moves))
        .outerjoin(rc, sa.and_(rc.c.ref == rule, moves))
    )
    if own_e is not None and rc_e is not None:
        joined = joined.outerjoin(own_e, own_e.c.ref == dkey).outerjoin(
            rc_e, sa.and_(rc_e.c.ref == rule, moves)
        )
    b = joined.subquery("b")
    # v4 documents competing for one rule id, ranked in the canonical order of DESIGN §2.3;
    # partitioning by random_v4 too keeps other documents out of their group
    partition = (b.c.rule, b.c.random_v4)
    ranked = sa.select(
        b,
        sa.func.count().over(partition_by=partition).label("group_size"),
        sa.func.row_number()
        .over(
            partition_by=partition,
            order_by=(
                b.c.processed.desc(),
                b.c.own_chunks.desc(),
                b.c.created_at.asc(),
                b.c.key.asc(),
            ),
        )
        .label("group_rank"),
    ).subquery("ranked")
    t = ranked.c
    cls = sa.case(
        (t.rule == t.key, "deterministic"),
        (sa.or_(~t.is_v4, t.rule.is_(None), t.is_v4.is_(None)), "other"),
        (sa.or_(t.rule_taken, t.group_size > 1), "conflict"),
        (t.own_chunks > 0, "random_consistent"),
        (t.rule_chunks_raw > 0, "random_mismatched"),
        else_="random_unprocessed",
    )
    # re-keying heals: every plain random document, and the canonical member of a free group
    rekey = sa.and_(
        t.is_v4,
        t.rule.is_not(None),
        t.rule != t.key,
        ~t.rule_taken,
        sa.or_(t.group_size == 1, t.group_rank == 1),
    )
    heal = sa.case((rekey, 1), else_=0)
    invisible = sa.and_(t.own_chunks == 0, t.rule_chunks_raw > 0, ~t.rule_taken, t.rule != t.key)
    never_processed = sa.and_(
        t.own_chunks == 0, sa.or_(t.rule_chunks_raw == 0, t.rule_taken, t.rule == t.key)
    )
    final = sa.select(
        *ranked.c,
        cls.label("class"),
        rekey.label("rekey"),
        invisible.label("invisible"),
        never_processed.label("never_processed"),
        (
            t.size_bytes
            + t.own_chunk_bytes
            + t.own_embedding_bytes
            + heal * (t.rule_chunk_bytes_raw + t.rule_embedding_bytes_raw)
        ).label("bytes"),
    )
    return temp_table_as(conn, "ug_docs", final)


def _report(
    conn: Connection,
    settings: Settings,
    docs: sa.TableClause,
    cg: sa.FromClause,
    eg: sa.FromClause | None,
    now: datetime,
) -> dict[str, Any]:
    a = settings.assess
    c = docs.c
    affected = c["class"] != "deterministic"

    by_class = {cls: 0 for cls in DOCUMENT_CLASSES}
    bytes_by_class = {cls: 0 for cls in DOCUMENT_CLASSES}
    rekey_by_class = {cls: 0 for cls in DOCUMENT_CLASSES}
    for cls, n, nbytes, rekey in conn.execute(
        sa.select(c["class"], sa.func.count(), sa.func.sum(c.bytes), count_if(c.rekey)).group_by(
            c["class"]
        )
    ):
        by_class[cls], bytes_by_class[cls], rekey_by_class[cls] = n, int(nbytes or 0), rekey
    total_docs = sum(by_class.values())

    # chunks by class, from the grouped chunk ids: attached, healable (a rule id some random
    # document will take), or unmatched. Joins, not IN (subquery): PostgreSQL hashes a join
    # whatever its size, but falls back to a per-row scan for a subplan past work_mem.
    ccls = chunk_classes(conn, docs, cg)
    chunks_by_class = {cls: 0 for cls in CHUNK_CLASSES}
    chunk_bytes = {cls: 0 for cls in CHUNK_CLASSES}
    for cls, n, nbytes in conn.execute(
        sa.select(ccls.c["class"], sa.func.sum(ccls.c.n), sa.func.sum(ccls.c.bytes)).group_by(
            ccls.c["class"]
        )
    ):
        chunks_by_class[cls], chunk_bytes[cls] = int(n), int(nbytes or 0)

    embeddings: dict[str, Any] = {"total": 0, "document_missing": 0, "chunk_missing": 0}
    if eg is not None:
        owner = docs.alias("owner")
        total, missing = conn.execute(
            sa.select(sa.func.sum(eg.c.n), sa.func.sum(eg.c.n).filter(owner.c.key.is_(None)))
            .select_from(eg)
            .outerjoin(owner, owner.c.key == eg.c.ref)
        ).one()
        embeddings.update(total=int(total or 0), document_missing=int(missing or 0))

    # users: totals, distribution of affected documents, and the heaviest-hit
    per_user_select = sa.select(
        c.user_id,
        sa.func.count().label("documents"),
        count_if(affected).label("affected"),
        count_if(c.invisible).label("invisible"),
        count_if(c["class"] == "random_unprocessed").label("unprocessed"),
        count_if(c["class"] == "conflict").label("conflict"),
        sa.func.sum(c.own_chunks).label("chunks"),
        sa.func.sum(sa.case((c.invisible, c.rule_chunks_raw), else_=0)).label("invisible_chunks"),
        sa.func.sum(sa.case((affected, c.bytes), else_=0)).label("affected_bytes"),
    ).group_by(c.user_id)
    per_user = temp_table_as(conn, "ug_users", per_user_select)
    pu = per_user.c
    users_total, users_affected, users_invisible = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.count().filter(pu.affected > 0),
            sa.func.count().filter(pu.invisible > 0),
        )
    ).one()
    buckets = {}
    for label, lo, hi in USER_BUCKETS:
        cond = pu.affected >= lo if hi is None else pu.affected.between(lo, hi)
        buckets[label] = conn.execute(sa.select(sa.func.count()).where(cond)).scalar_one()
    share = sa.cast(pu.invisible, sa.Float) / sa.func.greatest(pu.documents, 1)
    share_buckets = {}
    for label, low, high in SHARE_BUCKETS:
        cond = share == 0 if high == 0 else sa.and_(share > low, share <= high)
        share_buckets[label] = conn.execute(sa.select(sa.func.count()).where(cond)).scalar_one()
    top = [
        {
            "user_id": r.user_id,
            "documents": r.documents,
            "affected": r.affected,
            "invisible": r.invisible,
            "unprocessed": r.unprocessed,
            "conflict": r.conflict,
            "invisible_share": round(r.invisible / max(r.documents, 1), 4),
        }
        for r in conn.execute(
            sa.select(per_user)
            .where(pu.affected > 0)
            .order_by(pu.affected.desc(), pu.invisible.desc(), pu.user_id)
            .limit(a.top_users)
        )
    ]
    per_user_rows = [
        dict(r._mapping)
        for r in conn.execute(sa.select(per_user).where(pu.affected > 0).order_by(pu.user_id))
    ]

    # documents by upload month and by status
    month = sa.func.to_char(sa.func.date_trunc("month", c.created_at), "YYYY-MM")
    by_month: dict[str, dict[str, int]] = {}
    for mon, cls, n in conn.execute(
        sa.select(month, c["class"], sa.func.count()).group_by(month, c["class"]).order_by(month)
    ):
        by_month.setdefault(mon or "unknown", {k: 0 for k in DOCUMENT_CLASSES})[cls] = n
    by_status: dict[str, dict[str, int]] = {}
    for status, cls, n in conn.execute(
        sa.select(c.status, c["class"], sa.func.count())
        .group_by(c.status, c["class"])
        .order_by(c.status)
    ):
        by_status.setdefault(status or "unknown", {k: 0 for k in DOCUMENT_CLASSES})[cls] = n

    # failure patterns
    stuck_cond = sa.and_(c.never_processed, c.created_at < now - a.grace_period)
    stuck_by_status = {
        status or "unknown": n
        for status, n in conn.execute(
            sa.select(c.status, sa.func.count())
            .where(stuck_cond)
            .group_by(c.status)
            .order_by(c.status)
        )
    }
    stuck_by_class = {
        cls: n
        for cls, n in conn.execute(
            sa.select(c["class"], sa.func.count())
            .where(stuck_cond)
            .group_by(c["class"])
            .order_by(c["class"])
        )
    }
    oldest_stuck = conn.execute(sa.select(sa.func.min(c.created_at)).where(stuck_cond)).scalar_one()
    invisible_docs = conn.execute(sa.select(sa.func.count()).where(c.invisible)).scalar_one()
    total_chunks = sum(chunks_by_class.values())
    invisible_chunks = chunks_by_class["orphan_healable"] + chunks_by_class["orphan_unmatched"]

    # priority: documents a re-key would fix that people use now
    recent, frequent, threshold, since = priority_conditions(conn, docs, settings, now)
    prio = conn.execute(
        sa.select(
            count_if(sa.and_(c.rekey, sa.or_(recent, frequent))),
            count_if(sa.and_(c.rekey, recent)),
            count_if(sa.and_(c.rekey, frequent)),
            count_if(sa.and_(c.rekey, c.invisible, sa.or_(recent, frequent))),
        )
    ).one()
    priority_by_class = {
        cls: n
        for cls, n in conn.execute(
            sa.select(c["class"], sa.func.count())
            .where(c.rekey, sa.or_(recent, frequent))
            .group_by(c["class"])
            .order_by(c["class"])
        )
    }

    conflicts = _conflicts(conn, docs)
    samples = {
        cls: [
            r[0]
            for r in conn.execute(
                sa.select(c.id_text)
                .where(c["class"] == cls)
                .order_by(c.id_text)
                .limit(a.samples_per_class)
            )
        ]
        for cls in DOCUMENT_CLASSES
    }
    stuck_samples = [
        r[0]
        for r in conn.execute(
            sa.select(c.id_text)
            .where(stuck_cond)
            .order_by(c.created_at, c.id_text)
            .limit(a.samples_per_class)
        )
    ]
    affected_bytes = sum(v for k, v in bytes_by_class.items() if k != "deterministic")
    return {
        "documents": {
            "total": total_docs,
            "by_class": by_class,
            "bytes_by_class": bytes_by_class,
            "to_rekey_by_class": rekey_by_class,
            "to_rekey": sum(rekey_by_class.values()),
            "invisible": invisible_docs,
            "by_month": by_month,
            "by_status": by_status,
        },
        "chunks": {
            "total": total_chunks,
            "by_class": chunks_by_class,
            "bytes_by_class": chunk_bytes,
        },
        "embeddings": embeddings,
        "users": {
            "total": users_total,
            "affected": users_affected,
            "invisible_documents": users_invisible,
            "by_affected_documents": buckets,
            "by_invisible_share": share_buckets,
            "top": top,
        },
        "storage": {
            "affected_bytes": affected_bytes,
            "bytes_by_class": bytes_by_class,
            "orphan_unmatched_chunk_bytes": chunk_bytes["orphan_unmatched"],
        },
        "failure_patterns": {
            "stuck": {
                "documents": sum(stuck_by_status.values()),
                "by_status": stuck_by_status,
                "by_class": stuck_by_class,
                "oldest_created_at": oldest_stuck.isoformat() if oldest_stuck else None,
                "samples": stuck_samples,
            },
            "pipeline_mismatch": {
                "documents": by_class["random_mismatched"],
                "orphan_healable_chunks": chunks_by_class["orphan_healable"],
            },
            "retrieval": {
                "documents_invisible": invisible_docs,
                "documents_invisible_share": round(invisible_docs / max(total_docs, 1), 4),
                "chunks_invisible": invisible_chunks,
                "chunks_invisible_share": round(invisible_chunks / max(total_chunks, 1), 4),
                "users_with_invisible_documents": users_invisible,
            },
        },
        "priority": {
            "documents": prio[0],
            "recent": prio[1],
            "frequent": prio[2],
            "invisible": prio[3],
            "by_class": priority_by_class,
            "access_count_threshold": threshold,
            "window_start": since.isoformat(),
        },
        "conflicts": conflicts,
        "samples": {"documents": samples},
        "per_user": per_user_rows,
    }


def priority_conditions(
    conn: Connection, docs: sa.TableClause, settings: Settings, now: datetime
) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool], int, datetime]:
    """(recent, frequent, access threshold, window start): what makes a document high-priority."""
    a = settings.assess
    c = docs.c
    quantile = conn.execute(
        sa.select(sa.func.percentile_disc(a.frequent_quantile).within_group(c.access_count))
    ).scalar_one()
    threshold = max(int(quantile or 0), 1)
    since = now - a.priority_window
    recent = sa.or_(c.created_at >= since, c.last_accessed_at >= since)
    return recent, c.access_count >= threshold, threshold, since


def count_if(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.count().filter(cond)


def _conflicts(conn: Connection, docs: sa.TableClause) -> dict[str, Any]:
    c = docs.c
    holder = docs.alias("holder")
    conflicted = sa.select(docs).where(c["class"] == "conflict").subquery("conflicted")
    k = conflicted.c
    rows = conn.execute(
        sa.select(
            k.rule,
            k.user_id,
            k.rule_taken,
            k.id_text,
            k.status,
            k.own_chunks,
            k.created_at,
            k.rekey,
            holder.c.id_text.label("holder"),
        )
        .select_from(conflicted)
        .outerjoin(holder, holder.c.key == k.rule)
        .order_by(k.user_id, k.rule, k.group_rank, k.created_at, k.key)
    ).all()
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = groups.setdefault(
            str(r.rule),
            {
                "rule_id": str(r.rule),
                "user_id": r.user_id,
                "kind": "rule_id_taken" if r.rule_taken else "duplicate_upload",
                "holder": r.holder,
                "canonical": None,
                "members": [],
            },
        )
        if r.rekey:
            g["canonical"] = r.id_text
        g["members"].append(
            {
                "id": r.id_text,
                "status": r.status,
                "chunks": r.own_chunks,
                "created_at": r.created_at.isoformat() if r.created_at else None,
                "action": "rekey" if r.rekey else "keep",
            }
        )
    detail = list(groups.values())
    kinds: dict[str, int] = {}
    for g in detail:
        kinds[g["kind"]] = kinds.get(g["kind"], 0) + 1
    return {
        "groups": len(detail),
        "documents": len(rows),
        "by_kind": dict(sorted(kinds.items())),
        "canonical": sum(1 for g in detail if g["canonical"]),
        "detail": detail[:CONFLICT_DETAIL_LIMIT],
        "detail_truncated": len(detail) > CONFLICT_DETAIL_LIMIT,
    }


def chunk_classes(conn: Connection, docs: sa.TableClause, cg: sa.FromClause) -> sa.TableClause:
    """ug_chunk_classes: each distinct chunk document id with its chunk class and totals."""
    owner = docs.alias("owner")
    healer = sa.select(docs.c.rule).where(docs.c.rekey).distinct().subquery("healer")
    cls = sa.case(
        (owner.c.key.is_not(None), "attached"),
        (healer.c.rule.is_not(None), "orphan_healable"),
        else_="orphan_unmatched",
    )
    return temp_table_as(
        conn,
        "ug_chunk_classes",
        sa.select(cg.c.ref, cg.c.n, cg.c.bytes, cls.label("class"))
        .select_from(cg)
        .outerjoin(owner, owner.c.key == cg.c.ref)
        .outerjoin(healer, healer.c.rule == cg.c.ref),
    )


def _chunk_samples(
    conn: Connection,
    settings: Settings,
    mt: tables_mod.MappedTables,
    key: Any,
) -> dict[str, list[str]]:
    """A few chunk ids per chunk class, for follow-up by hand."""
    n = settings.assess.samples_per_class
    ch = mt.chunks
    cm = settings.mapping.chunks
    ref = key(ch.c(cm.document_id))
    classes = sa.table("ug_chunk_classes", sa.column("ref"), sa.column("class"))
    out: dict[str, list[str]] = {}
    for cls in CHUNK_CLASSES:
        # at most n document ids of the class from the grouped table (a tiny IN list), then
        # their chunks through the document id index
        refs = (
            sa.select(classes.c.ref)
            .where(classes.c["class"] == cls, classes.c.ref.is_not(None))
            .order_by(classes.c.ref)
            .limit(n)
        )
        out[cls] = [
            str(r[0])
            for r in conn.execute(
                sa.select(sa.cast(ch.c(cm.id), sa.Text))
                .where(ref.in_(refs))
                .order_by(ch.c(cm.id))
                .limit(n)
            )
        ]
    return out
