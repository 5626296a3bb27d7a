"""RAG canaries (DESIGN §4): does retrieval reach a document for its owner? Three modes.

- `structural`: the join path retrieval uses. The document (by id) joined to its chunks
  (chunks.document_id = documents.id, chunk owner = document owner where chunks carry a user)
  and, where the embeddings table is mapped, to embeddings of those chunks under the same
  document id. Visible when at least one such row exists.
- `vector_self`: one stored embedding of one of the document's chunks (under its id, else
  under its rule id) is the query of the application's similarity search for the owner:
  embeddings joined to the owner's documents, ORDER BY distance, LIMIT top_k. Visible when the
  document comes back. pgvector's `<->` where the column is a vector, an L2 distance over
  `unnest` where it is a real[] (no pgvector on the server).
- `http`: the application's own search endpoint, asked for the start of one of the document's
  chunks on the owner's behalf; visible when the document's id is among the returned ids.

Every result is `ok`, `invisible` or `error`. An error (a broken canary: an unreachable
endpoint, a timeout, a document that does not exist) is never reported as `invisible`, so an
alert on lost documents does not fire for a broken canary. Each check costs index probes on
one document's rows; vector_self reads the owner's embeddings, as the application does.
Results carry document ids for the status API and logs of the caller; metric labels must not.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from migrator import idrule, journal, ruleids
from migrator import tables as tables_mod
from migrator.errors import UsageError
from migrator.settings import CANARY_MODES, Settings

Result = Literal["ok", "invisible", "error"]
RESULTS: tuple[Result, ...] = ("ok", "invisible", "error")
#: a random sample reads at most this many index entries past each random point
SAMPLE_SCAN = 50
#: pgvector types whose `<->` is the L2 distance; arrays get an L2 distance in SQL
_VECTOR_TYPES = ("vector", "halfvec")
_ARRAY_TYPES = ("_float4", "_float8", "_numeric")
_PLACEHOLDER = re.compile(r"\{(user_id|query|top_k)\}")


@dataclass(frozen=True)
class CanaryResult:
    """One document checked in one mode."""

    document_id: str
    mode: str
    result: Result
    reason: str = ""
    #: the id the check used: the document's current id (another one when the journal says
    #: the migration re-keyed the asked id)
    checked_id: str | None = None


@dataclass(frozen=True)
class Target:
    """A document to check, as the database holds it now."""

    asked: str
    id: str
    user_id: Any
    rule_id: str | None

    def candidates(self) -> list[str]:
        """The ids its chunks and embeddings may carry: its own, then its rule id."""
        return [self.id] + ([self.rule_id] if self.rule_id and self.rule_id != self.id else [])


def check(
    conn: Connection,
    settings: Settings,
    mode: str,
    docs: Sequence[str],
    *,
    client: httpx.Client | None = None,
    tables: tables_mod.MappedTables | None = None,
) -> list[CanaryResult]:
    """Check each document of `docs` (ids, duplicates dropped) in one mode; results in order.

    Run it inside a transaction (a probe's, or the caller's): each vector_self check runs in a
    savepoint, so one failing statement makes one `error` result, not a failed run.
    """
    if mode not in CANARY_MODES:
        raise UsageError(f"unknown canary mode {mode!r}", f"use one of {', '.join(CANARY_MODES)}")
    mt = tables or tables_mod.reflect(conn, settings)
    asked = list(dict.fromkeys(docs))
    targets, problems = resolve(conn, settings, mt, asked)
    found: dict[str, CanaryResult] = {
        a: CanaryResult(a, mode, "error", reason) for a, reason in problems.items()
    }
    if targets:
        if mode == "structural":
            checked = _structural(conn, settings, mt, targets)
        elif mode == "vector_self":
            checked = _vector_self(conn, settings, mt, targets)
        else:
            checked = _http(conn, settings, mt, targets, client)
        found.update({r.document_id: r for r in checked})
    return [found[a] for a in asked]


def accessibility(results: Iterable[CanaryResult]) -> float | None:
    """The share of checked documents retrieval reaches, errors left out; None when every
    check failed (a broken canary says nothing about the documents)."""
    counts = Counter(r.result for r in results)
    judged = counts["ok"] + counts["invisible"]
    return counts["ok"] / judged if judged else None


def sample_documents(
    conn: Connection,
    settings: Settings,
    n: int,
    rng: random.Random | None = None,
    tables: tables_mod.MappedTables | None = None,
) -> list[str]:
    """Up to `n` distinct random processed documents, by index probes only.

    Each of `n` random points in the id space picks the first processed document at or after
    it in the primary key's order, looking at most SAMPLE_SCAN index entries ahead, so the
    cost is independent of the table's size. Ids drawn from a uniform space (UUIDv4, UUIDv5)
    make that a uniform sample; a point past the last id wraps around to the first.
    """
    if n <= 0:
        return []
    rng = rng or random.Random()
    mt = tables or tables_mod.reflect(conn, settings)
    d, m = mt.documents, settings.mapping.documents
    doc_id = d.c(m.id)
    as_uuid = d.is_uuid(m.id)
    points = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]
    point_type: sa.types.TypeEngine[Any] = pg.UUID(as_uuid=False) if as_uuid else sa.Text()
    pts = (
        sa.func.unnest(sa.bindparam("points", points, type_=pg.ARRAY(point_type)))
        .table_valued("p")
        .render_derived(name="pts")
    )
    key = doc_id if as_uuid else sa.cast(doc_id, sa.Text)

    def ahead(start: sa.ColumnElement[Any] | None) -> sa.Select[str, bool]:
        q = sa.select(
            sa.cast(doc_id, sa.Text).label("id"), processed(settings, d).label("processed")
        )
        if start is not None:
            q = q.where(key >= start)
        return q.order_by(key).limit(SAMPLE_SCAN)

    near = ahead(pts.c.p).lateral("near")
    # the first processed document past each point (FILTER before the subscript); ids of
    # one type sort alike as text and as themselves
    first = sa.func.array_agg(near.c.id).aggregate_order_by(near.c.id).filter(near.c.processed)
    rows = conn.execute(
        sa.select(first[1], sa.func.count(near.c.id))
        .select_from(pts)
        .outerjoin(near, sa.true())
        .group_by(pts.c.p)
    ).all()
    found = [r[0] for r in rows if r[0] is not None]
    if any(seen == 0 for _, seen in rows):
        start = ahead(None).subquery("start")
        wrapped = conn.execute(
            sa.select(start.c.id).where(start.c.processed).order_by(start.c.id).limit(1)
        ).scalar_one_or_none()
        if wrapped is not None:
            found.append(wrapped)
    return list(dict.fromkeys(found))


def batch_documents(conn: Connection, settings: Settings, batch_id: int, n: int) -> list[str]:
    """Up to `n` documents a committed batch re-keyed, by their new ids, at random: the
    explicit list for the canary right after a batch (the journal's batch index; a batch is
    at most migrate.max_batch documents)."""
    schema = settings.journal_schema
    id_map = journal.metadata(schema).tables[f"{schema}.id_map"]
    rows = conn.execute(
        sa.select(sa.cast(id_map.c.new_id, sa.Text))
        .where(id_map.c.batch_id == batch_id, id_map.c.state == "done")
        .order_by(sa.func.random())
        .limit(n)
    ).scalars()
    return list(rows)


def processed(settings: Settings, d: tables_mod.MappedTable) -> sa.ColumnElement[bool]:
    """Whether a document's status says the pipeline processed it."""
    m = settings.mapping.documents
    if not m.processed_statuses:
        return sa.false()
    return sa.func.coalesce(d.c(m.status).in_(list(m.processed_statuses)), sa.false())


def resolve(
    conn: Connection,
    settings: Settings,
    mt: tables_mod.MappedTables,
    asked: Sequence[str],
) -> tuple[list[Target], dict[str, str]]:
    """The documents behind the asked ids, with their owner and rule id; an id the migration
    re-keyed is followed through the journal to the document's new id. Returns the targets
    and, for ids that cannot be checked, the reason."""
    d, m = mt.documents, settings.mapping.documents
    as_uuid = d.is_uuid(m.id)
    problems: dict[str, str] = {}
    wanted: dict[str, str] = {}  # normalised id -> asked
    for a in asked:
        text = a.strip().lower()
        if as_uuid:
            try:
                text = str(uuid.UUID(text))
            except ValueError:
                problems[a] = "not a UUID"
                continue
        wanted[text] = a
    rule = idrule.IdRule(settings.id_rule.namespace, settings.id_rule.template)
    targets: list[Target] = []

    def fetch(ids: dict[str, str]) -> set[str]:
        if not ids:
            return set()
        col = d.c(m.id)
        match = (
            col.in_(list(ids)) if as_uuid else sa.func.lower(sa.cast(col, sa.Text)).in_(list(ids))
        )
        rows = conn.execute(
            sa.select(sa.cast(col, sa.Text), d.c(m.user_id), d.c(m.file_sha256)).where(match)
        ).all()
        seen = set()
        for doc_id, user, sha in rows:
            asked_as = ids[doc_id.lower()]
            rid = None if user is None or sha is None else rule.new_id_text(user, sha)
            targets.append(Target(asked_as, doc_id, user, rid))
            seen.add(doc_id.lower())
        return seen

    present = fetch(wanted)
    missing = {k: v for k, v in wanted.items() if k not in present}
    if missing and as_uuid:
        moved = _rekeyed(conn, settings, list(missing))
        fetch({new: missing[old] for old, new in moved.items()})
    got = {t.asked for t in targets}
    for a in missing.values():
        if a not in got:
            problems[a] = "no such document (nor one the migration re-keyed from this id)"
    return targets, problems


def _rekeyed(conn: Connection, settings: Settings, old_ids: list[str]) -> dict[str, str]:
    """old id -> new id for documents the journal says were re-keyed (latest run first)."""
    schema = settings.journal_schema
    present = conn.execute(
        sa.select(sa.func.to_regclass(f"{_quoted(conn, schema)}.id_map"))
    ).scalar_one()
    if present is None:
        return {}
    md = journal.metadata(schema)
    runs_t, id_map = md.tables[f"{schema}.runs"], md.tables[f"{schema}.id_map"]
    out: dict[str, str] = {}
    # runs are few: one primary key probe (run_id, old_id) per run and id
    for old, new in conn.execute(
        sa.select(id_map.c.old_id, id_map.c.new_id)
        .select_from(runs_t.join(id_map, id_map.c.run_id == runs_t.c.id))
        .where(id_map.c.old_id.in_(old_ids), id_map.c.state == "done")
        .order_by(runs_t.c.id.desc())
    ):
        out.setdefault(str(old), str(new))
    return out


def _quoted(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _structural(
    conn: Connection, settings: Settings, mt: tables_mod.MappedTables, targets: list[Target]
) -> list[CanaryResult]:
    m = settings.mapping
    d, ch = mt.documents, mt.chunks
    uuid_mode = tables_mod.uuid_keys(settings, mt)

    def key(col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return ruleids.key_expr(col, uuid_mode)

    doc_key = key(d.c(m.documents.id))
    chunk_conds = [key(ch.c(m.chunks.document_id)) == doc_key]
    if m.chunks.user_id is not None:
        chunk_conds.append(tables_mod.same_owner(ch, m.chunks.user_id, d, m.documents.user_id))
    reach: sa.ColumnElement[bool]
    e, em = mt.embeddings, m.embeddings
    if e is not None and em is not None and em.chunk_id is not None:
        reach = sa.exists(
            sa.select(sa.literal(1))
            .select_from(ch.table.join(e.table, e.c(em.chunk_id) == ch.c(m.chunks.id)))
            .where(*chunk_conds, key(e.c(em.document_id)) == doc_key)
        )
    else:
        reach = sa.exists(sa.select(sa.literal(1)).select_from(ch.table).where(*chunk_conds))
        if e is not None and em is not None:
            reach = sa.and_(reach, sa.exists().where(key(e.c(em.document_id)) == doc_key))
    by_id = {t.id: t for t in targets}
    rows = conn.execute(
        sa.select(sa.cast(d.c(m.documents.id), sa.Text), reach).where(
            d.c(m.documents.id).in_(list(by_id))
        )
    ).all()
    reached = {doc_id: bool(ok) for doc_id, ok in rows}
    out = []
    for t in targets:
        if reached.get(t.id):
            out.append(CanaryResult(t.asked, "structural", "ok", "", t.id))
        else:
            reason = (
                "no chunk with an embedding reaches it through its owner's documents"
                if e is not None
                else "no chunk reaches it through its owner's documents"
            )
            out.append(CanaryResult(t.asked, "structural", "invisible", reason, t.id))
    return out


def _vector_self(
    conn: Connection, settings: Settings, mt: tables_mod.MappedTables, targets: list[Target]
) -> list[CanaryResult]:
    m = settings.mapping
    e, em = mt.embeddings, m.embeddings
    if e is None or em is None or em.vector is None:
        return _all_error(
            targets,
            "vector_self",
            "no embeddings vector column is mapped (mapping.embeddings.vector)",
        )
    vtype = mt.vector_type
    if vtype not in _VECTOR_TYPES + _ARRAY_TYPES:
        return _all_error(
            targets,
            "vector_self",
            f"the embeddings column {em.vector} is of type {vtype}, neither a pgvector type "
            "nor an array of numbers",
        )
    uuid_mode = tables_mod.uuid_keys(settings, mt)

    def key(col: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return ruleids.key_expr(col, uuid_mode)

    e_doc, vec = e.c(em.document_id), e.c(em.vector)
    out = []
    for t in targets:
        try:
            with conn.begin_nested():
                mine = sa.case((key(e_doc) == key(_bind(e, em.document_id, t.id)), 0), else_=1)
                query_id = conn.execute(
                    sa.select(e.c(em.id))
                    .where(
                        e_doc.in_(t.candidates()),
                        vec.is_not(None),
                    )
                    .order_by(mine)
                    .limit(1)
                ).scalar_one_or_none()
                if query_id is None:
                    out.append(
                        CanaryResult(
                            t.asked,
                            "vector_self",
                            "invisible",
                            "no embedding under its id or its rule id to query with",
                            t.id,
                        )
                    )
                    continue
                returned = conn.execute(
                    similarity_stmt(settings, mt, vtype, query_id, t.user_id)
                ).scalars()
                hit = any(str(r).lower() == t.id.lower() for r in returned)
        except sa_exc.DBAPIError as exc:
            out.append(CanaryResult(t.asked, "vector_self", "error", _db_reason(exc), t.id))
            continue
        if hit:
            out.append(CanaryResult(t.asked, "vector_self", "ok", "", t.id))
        else:
            out.append(
                CanaryResult(
                    t.asked,
                    "vector_self",
                    "invisible",
                    f"not among the owner's {settings.probes.canary.top_k} nearest chunks",
                    t.id,
                )
            )
    return out


def similarity_stmt(
    settings: Settings,
    mt: tables_mod.MappedTables,
    vtype: str | None,
    query_embedding_id: Any,
    user_id: Any,
) -> sa.Select[Any]:
    """The application's similarity search for one user, with a stored embedding as the
    query: embeddings joined to the user's documents, nearest first, top_k of them."""
    m = settings.mapping
    e, em, d = mt.embeddings, m.embeddings, mt.documents
    assert e is not None and em is not None and em.vector is not None
    uuid_mode = tables_mod.uuid_keys(settings, mt)
    q_t = e.table.alias("canary_query")
    q = (
        sa.select(q_t.c[em.vector].label("v"))
        .where(q_t.c[em.id] == sa.bindparam("query_id", query_embedding_id, type_=e.c(em.id).type))
        .cte("canary_q")
    )
    # the owner's documents, then each one's embeddings through the document id index; the
    # OFFSET 0 fence keeps the planner from hashing the whole embeddings table instead
    owned = (
        sa.select(ruleids.key_expr(d.c(m.documents.id), uuid_mode).label("key"))
        .where(d.c(m.documents.user_id) == _bind(d, m.documents.user_id, user_id))
        .subquery("owned")
    )
    cand = (
        sa.select(e.c(em.document_id).label("document_id"), e.c(em.vector).label("v"))
        .where(ruleids.key_expr(e.c(em.document_id), uuid_mode) == owned.c.key)
        .offset(0)
        .lateral("cand")
    )
    distance: sa.ColumnElement[Any]
    if vtype in _VECTOR_TYPES:
        distance = cand.c.v.op("<->")(q.c.v)
    else:
        ab = sa.func.unnest(cand.c.v, q.c.v).table_valued("a", "b").render_derived(name="ab")
        diff = ab.c.a - ab.c.b
        distance = sa.select(sa.func.sum(diff * diff)).scalar_subquery()
    return (
        sa.select(sa.cast(cand.c.document_id, sa.Text))
        .select_from(owned.join(cand, sa.true()).join(q, sa.true()))
        .order_by(distance)
        .limit(settings.probes.canary.top_k)
    )


def _http(
    conn: Connection,
    settings: Settings,
    mt: tables_mod.MappedTables,
    targets: list[Target],
    client: httpx.Client | None,
) -> list[CanaryResult]:
    cs = settings.probes.canary
    cm = settings.mapping.chunks
    if not cs.http_url:
        return _all_error(targets, "http", "probes.canary.http_url is not set")
    if cm.content is None:
        return _all_error(
            targets, "http", "the chunks' text column is not mapped (mapping.chunks.content)"
        )
    ch = mt.chunks
    template = json.loads(cs.http_body)
    headers = {"Accept": "application/json"}
    if cs.http_token is not None:
        headers["Authorization"] = f"Bearer {cs.http_token.get_secret_value()}"
    uuid_mode = tables_mod.uuid_keys(settings, mt)
    own = client or httpx.Client(timeout=cs.http_timeout.total_seconds())
    out = []
    try:
        for t in targets:
            mine = sa.case(
                (
                    ruleids.key_expr(ch.c(cm.document_id), uuid_mode)
                    == ruleids.key_expr(_bind(ch, cm.document_id, t.id), uuid_mode),
                    0,
                ),
                else_=1,
            )
            query = conn.execute(
                sa.select(sa.func.substr(sa.cast(ch.c(cm.content), sa.Text), 1, cs.query_chars))
                .where(
                    ch.c(cm.document_id).in_(t.candidates()),
                    ch.c(cm.content).is_not(None),
                )
                .order_by(mine)
                .limit(1)
            ).scalar_one_or_none()
            if not query:
                out.append(
                    CanaryResult(t.asked, "http", "invisible", "no chunk text to search for", t.id)
                )
                continue
            body = fill(template, {"user_id": str(t.user_id), "query": query, "top_k": cs.top_k})
            try:
                response = own.post(
                    cs.http_url,
                    json=body,
                    headers=headers,
                    timeout=cs.http_timeout.total_seconds(),
                )
                response.raise_for_status()
                ids = ids_at(response.json(), cs.http_ids_path)
            except httpx.HTTPStatusError as exc:
                out.append(
                    CanaryResult(
                        t.asked,
                        "http",
                        "error",
                        f"the search endpoint answered {exc.response.status_code}",
                        t.id,
                    )
                )
                continue
            except httpx.HTTPError as exc:
                out.append(
                    CanaryResult(
                        t.asked,
                        "http",
                        "error",
                        f"the search endpoint failed: {type(exc).__name__}",
                        t.id,
                    )
                )
                continue
            except ValueError as exc:
                out.append(CanaryResult(t.asked, "http", "error", str(exc), t.id))
                continue
            if t.id.lower() in ids:
                out.append(CanaryResult(t.asked, "http", "ok", "", t.id))
            else:
                out.append(
                    CanaryResult(
                        t.asked,
                        "http",
                        "invisible",
                        "the search endpoint did not return it to its owner",
                        t.id,
                    )
                )
    finally:
        if client is None:
            own.close()
    return out


def fill(template: Any, values: dict[str, Any]) -> Any:
    """The JSON template with {user_id}, {query} and {top_k} replaced inside its strings; a
    string that is exactly one placeholder takes the value's own type (top_k stays a number).
    Values are never re-scanned, so a query holding "{user_id}" stays as it is."""
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, values) for v in template]
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:
            return values[whole[1]]
        return _PLACEHOLDER.sub(lambda match: str(values[match[1]]), template)
    return template


def ids_at(data: Any, path: str) -> set[str]:
    """The values at a dotted path, lists on the way searched element by element, as
    lower-case text. Raises ValueError when an object on the way lacks the key."""
    nodes = [data]
    for part in path.split("."):
        nxt = []
        for node in _flatten(nodes):
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"the search response has no {part!r} where http_ids_path says")
            nxt.append(node[part])
        nodes = nxt
    return {str(v).lower() for v in _flatten(nodes) if v is not None}


def _flatten(nodes: list[Any]) -> list[Any]:
    out: list[Any] = []
    for node in nodes:
        if isinstance(node, list):
            out.extend(_flatten(node))
        else:
            out.append(node)
    return out


def _bind(t: tables_mod.MappedTable, column: str, value: Any) -> sa.BindParameter[Any]:
    return sa.bindparam(None, value, type_=t.c(column).type)


def _db_reason(exc: sa_exc.DBAPIError) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"the query failed: {lines[0] if lines else type(orig).__name__}"


def _all_error(targets: list[Target], mode: str, reason: str) -> list[CanaryResult]:
    return [CanaryResult(t.asked, mode, "error", reason, t.id) for t in targets]
