"""RAG canaries on real PostgreSQL: each mode sees a document vanish and come back re-keyed."""

from __future__ import annotations

import contextlib
import json
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from migrator import assess, dataset, db, journal, runner, runs, seed
from migrator import tables as tables_mod
from migrator.errors import UsageError
from migrator.idrule import IdRule
from migrator.pace import Pace
from migrator.settings import Settings, load_settings
from monitor import canary, probes
from monitor.probing import ProbeContext, run_probe

TOKEN = "s3cret-search-token"


def _with(settings: Settings, **sections: Any) -> Settings:
    assert settings.database.dsn is not None
    return load_settings(
        None, database={"dsn": settings.database.dsn.get_secret_value()}, **sections
    )


def _prepare(settings: Settings, documents: int = 200) -> sa.Engine:
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    ds = dataset.generate(
        dataset.DatasetSpec(documents=documents, seed=3, as_of=datetime.now(UTC)), rule
    )
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        seed.seed(conn, ds, "public", "none", replace=False)
        journal.init(conn, settings.journal_schema)
    return engine


class _Search(BaseHTTPRequestHandler):
    """The application's search endpoint, stood in for: the owner's documents whose chunks
    (reached through the structural join) contain the query text."""

    dsn = ""
    token: str | None = None
    fail = False

    def do_POST(self) -> None:
        if self.fail:
            self._answer(500, {"error": "boom"})
            return
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            self._answer(401, {"error": "unauthorized"})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT DISTINCT d.id::text FROM documents d"
                " JOIN document_chunks c ON c.document_id = d.id AND c.user_id = d.user_id"
                " WHERE d.user_id = %s AND strpos(c.content, %s) > 0 LIMIT %s",
                (body["user_id"], body["query"], body["top_k"]),
            ).fetchall()
        self._answer(200, {"results": [{"document_id": r[0], "score": 1.0} for r in rows]})

    def _answer(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def search_service(dsn: str, token: str | None = None, fail: bool = False) -> Iterator[str]:
    handler = type("Search", (_Search,), {"dsn": dsn, "token": token, "fail": fail})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/search"
    finally:
        server.shutdown()
        server.server_close()


def _check(
    engine: sa.Engine, settings: Settings, docs: list[str], modes: tuple[str, ...]
) -> dict[str, list[canary.CanaryResult]]:
    with engine.connect() as conn, conn.begin():
        return {mode: canary.check(conn, settings, mode, docs) for mode in modes}


def _rule_id(engine: sa.Engine, settings: Settings, doc: str) -> str:
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    with engine.connect() as conn:
        user, sha = conn.execute(
            sa.text("SELECT user_id, file_sha256 FROM documents WHERE id = :d"), {"d": doc}
        ).one()
    return rule.new_id_text(user, sha)


def test_each_mode_sees_a_document_vanish_and_return_after_rekeying(settings: Settings) -> None:
    """A reachable document is ok in every mode; once its chunks and embeddings carry its rule
    id it is invisible in every mode; after the migration re-keys it, its old id (followed
    through the journal) is ok again, as is a document that was mismatched all along."""
    engine = _prepare(settings)
    report = assess.run(engine, settings, now=datetime.now(UTC))
    victim = report["samples"]["documents"]["random_consistent"][0]
    mismatched = report["samples"]["documents"]["random_mismatched"][0]
    victim_rule = _rule_id(engine, settings, victim)
    assert settings.database.dsn is not None
    dsn = settings.database.dsn.get_secret_value()
    with search_service(dsn, token=TOKEN) as url:
        s = _with(
            settings,
            probes={
                "canary": {
                    "modes": list(canary.CANARY_MODES),
                    "http_url": url,
                    "http_token": TOKEN,
                }
            },
        )
        before = _check(engine, s, [victim, mismatched], canary.CANARY_MODES)
        for mode, results in before.items():
            assert [r.result for r in results] == ["ok", "invisible"], (mode, results)
        with engine.begin() as conn:
            for table in ("document_chunks", "embeddings"):
                conn.execute(
                    sa.text(f"UPDATE {table} SET document_id = :rule WHERE document_id = :doc"),
                    {"rule": victim_rule, "doc": victim},
                )
        vanished = _check(engine, s, [victim], canary.CANARY_MODES)
        for mode, results in vanished.items():
            assert [r.result for r in results] == ["invisible"], (mode, results)
            assert results[0].checked_id == victim
        with engine.connect() as conn, conn.begin():
            run_id = runs.create(conn, s, "A", datetime.now(UTC), "test")
        assert runner.run_batches(engine, s, run_id, "w1", pace=Pace(size=50)) == "completed"
        after = _check(engine, s, [victim, mismatched], canary.CANARY_MODES)
    for mode, results in after.items():
        assert [r.result for r in results] == ["ok", "ok"], (mode, results)
        assert results[0].document_id == victim and results[0].checked_id == victim_rule
    # the canary after a batch: a few of the documents it re-keyed, by their new ids
    with engine.connect() as conn, conn.begin():
        batch, done = conn.execute(
            sa.text(
                "SELECT batch_id, count(*) FROM uuidguard.id_map WHERE state = 'done'"
                " GROUP BY batch_id ORDER BY batch_id LIMIT 1"
            )
        ).one()
        new_ids = set(
            conn.execute(
                sa.text("SELECT new_id::text FROM uuidguard.id_map WHERE batch_id = :b"),
                {"b": batch},
            ).scalars()
        )
        picked = canary.batch_documents(conn, s, batch, 5)
        checked = canary.check(conn, s, "structural", picked)
    assert len(picked) == min(5, done) and set(picked) <= new_ids
    assert all(r.result != "error" and r.checked_id == r.document_id for r in checked)


def test_a_broken_canary_is_an_error_never_invisible(settings: Settings) -> None:
    """An endpoint that fails, refuses the token, is down or answers in another shape, an id
    that is no document, and an unmapped vector column all give `error`, kept apart."""
    engine = _prepare(settings, documents=60)
    report = assess.run(engine, settings, now=datetime.now(UTC))
    doc = report["samples"]["documents"]["deterministic"][0]
    assert settings.database.dsn is not None
    dsn = settings.database.dsn.get_secret_value()

    def http(url: str, **extra: Any) -> canary.CanaryResult:
        s = _with(settings, probes={"canary": {"modes": ["http"], "http_url": url, **extra}})
        return _check(engine, s, [doc], ("http",))["http"][0]

    with search_service(dsn, fail=True) as url:
        failed = http(url)
    assert (failed.result, failed.reason) == ("error", "the search endpoint answered 500")
    with search_service(dsn, token=TOKEN) as url:
        assert http(url).reason == "the search endpoint answered 401"
        assert http(url, http_token=TOKEN).result == "ok"
        shape = http(url, http_token=TOKEN, http_ids_path="hits.id")
        assert shape.result == "error" and "'hits'" in shape.reason
    down = http(url, http_token=TOKEN)  # the service is gone now
    assert down.result == "error" and down.reason.startswith("the search endpoint failed")

    unmapped = _with(settings, mapping={"embeddings": {"vector": ""}})
    results = _check(engine, unmapped, [doc], ("vector_self",))["vector_self"]
    assert results[0].result == "error" and "mapping.embeddings.vector" in results[0].reason
    assert canary.accessibility(results) is None

    missing = _check(
        engine, settings, ["not-an-id", "6f1c5f3e-0000-4000-8000-000000000000"], ("structural",)
    )
    assert [r.result for r in missing["structural"]] == ["error", "error"]
    with engine.connect() as conn, conn.begin(), pytest.raises(UsageError):
        canary.check(conn, settings, "telepathy", [doc])


def test_the_search_is_the_owners(settings: Settings) -> None:
    """Chunks relabelled to another user are out of the owner's structural reach; another
    user's identical vectors do not crowd the owner's document out of its own search."""
    engine = _prepare(settings)
    report = assess.run(engine, settings, now=datetime.now(UTC))
    doc, other = report["samples"]["documents"]["deterministic"][:2]
    s = _with(settings, probes={"canary": {"top_k": 1}})
    with engine.begin() as conn:
        owner = conn.execute(
            sa.text("SELECT user_id FROM documents WHERE id = :d"), {"d": doc}
        ).scalar_one()
        other_owner = conn.execute(
            sa.text("SELECT user_id FROM documents WHERE id = :d"), {"d": other}
        ).scalar_one()
        assert owner != other_owner
        # every embedding of the other user's document now equals one of doc's
        conn.execute(
            sa.text(
                "UPDATE embeddings SET embedding ="
                " (SELECT embedding FROM embeddings WHERE document_id = :d ORDER BY id LIMIT 1)"
                " WHERE document_id = :o"
            ),
            {"d": doc, "o": other},
        )
    assert [r.result for r in _check(engine, s, [doc], ("vector_self",))["vector_self"]] == ["ok"]
    with engine.connect() as conn:
        mt = tables_mod.reflect(conn, settings)
        query = conn.execute(
            sa.text("SELECT id FROM embeddings WHERE document_id = :d ORDER BY id LIMIT 1"),
            {"d": doc},
        ).scalar_one()
        found = set(
            conn.execute(
                canary.similarity_stmt(settings, mt, mt.vector_type, query, owner)
            ).scalars()
        )
        owned = set(
            conn.execute(
                sa.text("SELECT id::text FROM documents WHERE user_id = :u"), {"u": owner}
            ).scalars()
        )
    assert doc in found and found <= owned
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE document_chunks SET user_id = 'mallory' WHERE document_id = :d"),
            {"d": doc},
        )
    moved = _check(engine, s, [doc], ("structural", "vector_self"))
    assert moved["structural"][0].result == "invisible"
    # the similarity search joins embeddings to the owner's documents: chunk owners play no part
    assert moved["vector_self"][0].result == "ok"


def test_sample_is_distinct_processed_documents(settings: Settings) -> None:
    """A random sample draws distinct documents the pipeline processed, by index probes."""
    engine = _prepare(settings, documents=300)
    with engine.connect() as conn, conn.begin():
        got = canary.sample_documents(conn, settings, 40, random.Random(5))
        statuses = (
            conn.execute(
                sa.text("SELECT DISTINCT status FROM documents WHERE id::text = ANY(:ids)"),
                {"ids": got},
            )
            .scalars()
            .all()
        )
        again = canary.sample_documents(conn, settings, 40, random.Random(5))
        other = canary.sample_documents(conn, settings, 40, random.Random(6))
    assert 20 <= len(got) <= 40 and len(set(got)) == len(got)
    assert statuses == ["processed"]
    assert again == got and other != got


def test_canary_probe_counts_by_mode_result_and_source(settings: Settings) -> None:
    """The probe checks pinned and sampled documents in each mode; an invisible pinned
    document shows in its counts and ratio, and the check counter keeps growing."""
    engine = _prepare(settings)
    report = assess.run(engine, settings, now=datetime.now(UTC))
    pinned = [
        report["samples"]["documents"]["random_mismatched"][0],
        report["samples"]["documents"]["deterministic"][0],
    ]
    s = _with(settings, probes={"canary": {"pinned": pinned, "sample": 10}})
    spec = next(p for p in probes.probe_specs(s) if p.name == "canary")
    ctx = ProbeContext({"rng": random.Random(2)})
    out, _ = run_probe(engine, s, spec, ctx)
    values = {(x.metric, x.labels): x.value for x in out.samples}

    def get(metric: str, **labels: str) -> float:
        return values[(metric, tuple(sorted(labels.items())))]

    for mode in ("structural", "vector_self"):
        assert get("canary_documents", mode=mode, result="invisible", source="pinned") == 1
        assert get("canary_documents", mode=mode, result="ok", source="pinned") == 1
        assert get("canary_documents", mode=mode, result="error", source="pinned") == 0
        sampled = sum(
            get("canary_documents", mode=mode, result=r, source="sample") for r in canary.RESULTS
        )
        assert sampled == out.detail["documents"]["sample"] > 0
        ok = sum(
            get("canary_documents", mode=mode, result="ok", source=src)
            for src in ("pinned", "sample")
        )
        judged = ok + sum(
            get("canary_documents", mode=mode, result="invisible", source=src)
            for src in ("pinned", "sample")
        )
        assert get("rag_accessibility_ratio", mode=mode) == pytest.approx(ok / judged)
        assert pinned[0] in out.detail[mode]["invisible"]
    again, _ = run_probe(engine, s, spec, ctx)
    total = {x.labels: x.value for x in again.samples if x.metric == "canary_checks_total"}
    assert total[(("mode", "structural"), ("result", "invisible"), ("source", "pinned"))] == 2


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param(
            {"user_id": "{user_id}", "query": "{query}", "top_k": 10},
            {"user_id": "u1", "query": 'say "{user_id}"', "top_k": 10},
            id="values-never-rescanned",
        ),
        pytest.param(
            {"q": {"text": "find: {query}", "k": "{top_k}"}, "tags": ["{user_id}"]},
            {"q": {"text": 'find: say "{user_id}"', "k": 5}, "tags": ["u1"]},
            id="nested-and-typed",
        ),
    ],
)
def test_request_template(template: object, expected: object) -> None:
    """Placeholders are filled inside strings, a lone one keeps the value's type, and text
    from the query is never read as a placeholder (nor breaks the JSON)."""
    values = {"user_id": "u1", "query": 'say "{user_id}"', "top_k": 5}
    assert canary.fill(template, values) == expected


def test_ids_at_a_dotted_path() -> None:
    """Ids are read through lists on the way; a path that does not fit is an error."""
    data = {"results": [{"document_id": "A"}, {"document_id": "b"}], "total": 2}
    assert canary.ids_at(data, "results.document_id") == {"a", "b"}
    assert canary.ids_at({"results": []}, "results.document_id") == set()
    assert canary.ids_at({"data": {"ids": ["X", ["Y"]]}}, "data.ids") == {"x", "y"}
    with pytest.raises(ValueError, match="'hits'"):
        canary.ids_at(data, "hits.document_id")
