"""User acceptance of a run (seed B.3.2) on the real retrieval paths: owners find their re-keyed
documents through every configured canary mode, every share of a re-keyed document still
resolves and its grantee reaches the chunks, no chunk or embedding was lost, and new uploads
follow the id rule. It lives in monitor because the canary modes do.
"""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from migrator import idrule, journal, runs
from migrator import tables as tables_mod
from migrator.reports.format import num, table
from migrator.settings import Settings
from monitor import canary

#: newest uploads since the run was created that must carry their rule id
UPLOADS = 50
FAILURES_SHOWN = 20


def _check(
    group: str, name: str, checked: int, failures: list[str], detail: str = ""
) -> dict[str, Any]:
    return {
        "group": group,
        "check": name,
        "checked": checked,
        "failures": failures,
        "ok": not failures,
        "detail": detail,
    }


def run(
    conn: Connection,
    settings: Settings,
    run_id: int | None,
    sample: int,
    client: httpx.Client | None = None,
) -> dict[str, Any]:
    """Every check with the ids that fail it; `ok` only when none fails. Raises RunError when
    the run re-keyed nothing (never started, or rolled back)."""
    r = runs.resolve(conn, settings, run_id)
    rid = int(r["id"])
    id_map = journal.table(settings.journal_schema, "id_map")
    done = id_map.c.run_id == rid, id_map.c.state == "done"
    rekeyed = conn.execute(sa.select(sa.func.count()).where(*done)).scalar_one()
    if not rekeyed:
        raise runs.RunError(
            rid,
            f"is {r['state']} with no document re-keyed, so there is nothing to accept",
            f"run it first (`uuidguard migrate run {rid}`), or name another run",
        )
    mt = tables_mod.reflect(conn, settings)
    # a sample per class of the documents that own chunks (only those can be retrieved)
    ranked = (
        sa.select(
            sa.cast(id_map.c.new_id, sa.Text).label("id"),
            sa.func.row_number()
            .over(
                partition_by=id_map.c["class"],
                order_by=sa.func.md5(sa.cast(id_map.c.new_id, sa.Text)),
            )
            .label("rank"),
        )
        .where(*done, id_map.c.chunks > 0)
        .subquery("ranked")
    )
    ids = list(
        conn.execute(
            sa.select(ranked.c.id).where(ranked.c.rank <= sample).order_by(ranked.c.id)
        ).scalars()
    )
    checks: list[dict[str, Any]] = []
    for mode in settings.probes.canary.modes:
        results = canary.check(conn, settings, mode, ids, client=client, tables=mt)
        bad = [f"{x.document_id} ({x.result}: {x.reason})" for x in results if x.result != "ok"]
        checks.append(_check("canary", f"owners find their documents ({mode})", len(ids), bad))
    checks.append(_counts(conn, settings, mt, rid, int(rekeyed)))
    checks += _shares(conn, settings, mt, rid)
    checks.append(_uploads(conn, settings, mt, r))
    failing = sorted({f.split(" ")[0] for c in checks for f in c["failures"]})
    return {
        "run": rid,
        "state": r["state"],
        "rekeyed": int(rekeyed),
        "per_class": sample,
        "sampled": len(ids),
        "modes": list(settings.probes.canary.modes),
        "ok": all(c["ok"] for c in checks),
        "checks": checks,
        "failing": failing,
    }


def _counts(
    conn: Connection, settings: Settings, mt: tables_mod.MappedTables, rid: int, rekeyed: int
) -> dict[str, Any]:
    """Every re-keyed document exists under its new id with the chunks and embeddings it had."""
    id_map = journal.table(settings.journal_schema, "id_map")
    m = settings.mapping
    d, ch = mt.documents, mt.chunks
    chunks = (
        sa.select(sa.func.count())
        .where(ch.c(m.chunks.document_id) == id_map.c.new_id)
        .scalar_subquery()
    )
    embeds: Any = sa.literal(0)
    expected_e: Any = sa.literal(0)
    if mt.embeddings is not None and m.embeddings is not None:
        e = mt.embeddings
        embeds = (
            sa.select(sa.func.count())
            .where(e.c(m.embeddings.document_id) == id_map.c.new_id)
            .scalar_subquery()
        )
        expected_e = sa.func.coalesce(id_map.c.embeddings, 0)
    exists = sa.exists().where(d.c(m.documents.id) == id_map.c.new_id)
    q = (
        sa.select(
            sa.cast(id_map.c.new_id, sa.Text),
            exists,
            chunks,
            id_map.c.chunks,
            embeds,
            expected_e,
        )
        .where(id_map.c.run_id == rid, id_map.c.state == "done")
        .subquery("c")
    )
    rows = conn.execute(
        sa.select(q).where(
            sa.or_(
                ~q.c[1],
                q.c[2] != sa.func.coalesce(q.c[3], q.c[2]),
                q.c[4] != q.c[5],
            )
        )
    ).all()
    bad = [
        f"{doc} (document {'present' if present else 'missing'}, chunks {c}/{ec}, embeddings {e}/{ee})"
        for doc, present, c, ec, e, ee in rows
    ]
    return _check(
        "counts",
        "chunk and embedding counts per re-keyed document unchanged",
        rekeyed,
        bad,
        "now/expected per document",
    )


def _shares(
    conn: Connection, settings: Settings, mt: tables_mod.MappedTables, rid: int
) -> list[dict[str, Any]]:
    """Each share the run rewrote (journaled keys, as they are after the rewrite) still exists,
    points at a document, and the grantee's path (share → document → owner's chunks) reaches
    the chunks of a document that has any."""
    rewrites, batches, id_map = (
        journal.table(settings.journal_schema, n) for n in ("rewrites", "batches", "id_map")
    )
    m = settings.mapping
    d, ch = mt.documents, mt.chunks
    out = []
    for i, (ref, t) in enumerate(mt.references):
        if not ref.grantee_column:
            continue
        keys = (
            sa.func.jsonb_array_elements(rewrites.c["keys"])
            .table_valued(sa.column("value", pg.JSONB))
            .render_derived(name="k")
        )
        journaled = (
            sa.select(rewrites.c.old_id, keys.c.value.label("key"))
            .select_from(
                rewrites.join(batches, batches.c.id == rewrites.c.batch_id).join(keys, sa.true())
            )
            .where(batches.c.run_id == rid, batches.c.state == "committed", rewrites.c.ref == i)
            .subquery("j")
        )
        match = []
        for pos, col in enumerate(ref.primary_key):
            column = t.c(col)
            text = journaled.c.key[pos].astext
            if isinstance(column.type, sa.types.NullType):
                match.append(sa.cast(column, sa.Text) == text)
            else:
                match.append(column == sa.cast(text, column.type))
        owner_chunks = sa.exists().where(
            ch.c(m.chunks.document_id) == d.c(m.documents.id),
            *(
                [
                    sa.cast(ch.c(m.chunks.user_id), sa.Text)
                    == sa.cast(d.c(m.documents.user_id), sa.Text)
                ]
                if m.chunks.user_id is not None
                else []
            ),
        )
        reach = (
            sa.select(sa.literal(1))
            .select_from(t.table.join(d.table, d.c(m.documents.id) == t.c(ref.column)))
            .where(*match, sa.or_(sa.func.coalesce(id_map.c.chunks, 0) == 0, owner_chunks))
        )
        resolves = sa.exists(sa.select(sa.literal(1)).select_from(t.table).where(*match))
        rows = conn.execute(
            sa.select(
                sa.cast(id_map.c.new_id, sa.Text),
                journaled.c.key[ref.primary_key.index(ref.grantee_column)].astext
                if ref.grantee_column in ref.primary_key
                else sa.literal("?"),
                resolves,
                sa.exists(reach),
            ).select_from(
                journaled.join(
                    id_map, sa.and_(id_map.c.run_id == rid, id_map.c.old_id == journaled.c.old_id)
                )
            )
        ).all()
        unresolved = sorted(f"{doc} (shared with {who})" for doc, who, ok, _ in rows if not ok)
        unreached = sorted(f"{doc} (shared with {who})" for doc, who, ok, r in rows if ok and not r)
        label = f"{ref.table}.{ref.column}"
        out.append(
            _check(
                "shares",
                f"every share of a re-keyed document resolves ({label})",
                len(rows),
                unresolved,
            )
        )
        out.append(
            _check(
                "shares",
                f"the grantee's path reaches the document's chunks ({label})",
                len(rows),
                unreached,
            )
        )
    return out


def _uploads(
    conn: Connection, settings: Settings, mt: tables_mod.MappedTables, r: dict[str, Any]
) -> dict[str, Any]:
    """The newest uploads since the run was created carry the id the rule gives them."""
    m = settings.mapping.documents
    d = mt.documents
    rows = conn.execute(
        sa.select(sa.cast(d.c(m.id), sa.Text), d.c(m.user_id), d.c(m.file_sha256))
        .where(d.c(m.created_at) >= r["created_at"])
        .order_by(d.c(m.created_at).desc())
        .limit(UPLOADS)
    ).all()
    rule = idrule.IdRule(settings.id_rule.namespace, settings.id_rule.template)
    bad = [
        f"{doc} (expected {'–' if user is None or sha is None else rule.new_id_text(user, sha)})"
        for doc, user, sha in rows
        if user is None or sha is None or doc.lower() != rule.new_id_text(user, sha)
    ]
    return _check(
        "uploads",
        "the latest uploads conform to the id rule",
        len(rows),
        bad,
        f"uploads since the run was created ({r['created_at'].isoformat()}), newest {UPLOADS}"
        if rows
        else "no upload since the run was created",
    )


def to_markdown(result: dict[str, Any]) -> str:
    verdict = "PASSED" if result["ok"] else "FAILED"
    lines = [
        f"# User acceptance — run {result['run']} ({result['state']}): {verdict}",
        "",
        f"{num(result['rekeyed'])} documents re-keyed; {num(result['sampled'])} sampled (up to"
        f" {num(result['per_class'])} per class, among those with chunks) for the canary modes"
        f" {', '.join(result['modes'])}.",
        "",
        table(
            ["check", "checked", "failing", "result"],
            [
                [
                    c["check"],
                    num(c["checked"]),
                    num(len(c["failures"])),
                    "ok" if c["ok"] else "FAIL",
                ]
                for c in result["checks"]
            ],
            "lrrl",
        ),
        "",
    ]
    for c in result["checks"]:
        if c["failures"]:
            lines += [f"## {c['check']}", ""]
            lines += [f"- {f}" for f in c["failures"][:FAILURES_SHOWN]]
            if len(c["failures"]) > FAILURES_SHOWN:
                lines.append(f"- … and {len(c['failures']) - FAILURES_SHOWN} more")
            lines.append("")
    if result["failing"]:
        lines += ["Failing documents: " + ", ".join(result["failing"]), ""]
    return "\n".join(lines)
