"""The seeded reference dataset on real PostgreSQL: the manifest and the assessment agree."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from migrator import assess, dataset, db, ruleids, seed, tables
from migrator.errors import UsageError
from migrator.idrule import IdRule
from migrator.settings import Settings

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def _seed(settings: Settings, documents: int, fk: seed.FkMode, replace: bool = False) -> dict:
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    ds = dataset.generate(dataset.DatasetSpec(documents=documents, seed=11, as_of=AS_OF), rule)
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        return seed.seed(conn, ds, "public", fk, replace).manifest


def test_ten_thousand_documents_manifest_equals_assessment(settings: Settings) -> None:
    """At 10,000 documents every document and chunk class matches the seed's manifest."""
    manifest = _seed(settings, 10_000, "strict")
    report = assess.run(db.create_engine(settings), settings, now=AS_OF)
    assert report["documents"]["by_class"] == manifest["documents"]["by_class"]
    assert report["chunks"]["by_class"] == manifest["chunks"]["by_class"]
    assert report["embeddings"]["total"] == manifest["embeddings"]["total"]
    assert report["embeddings"]["chunk_missing"] == manifest["embeddings"]["chunk_missing"]
    assert report["embeddings"]["document_missing"] == manifest["embeddings"]["document_missing"]
    assert report["users"]["total"] == manifest["users"]["total"]
    assert report["conflicts"]["groups"] == manifest["conflicts"]["groups"]
    assert report["conflicts"]["by_kind"] == manifest["conflicts"]["by_kind"]


@pytest.mark.parametrize("fk", seed.FK_MODES)
def test_foreign_key_variants(settings: Settings, fk: seed.FkMode) -> None:
    """Each --fk variant creates its constraints (NOT VALID where orphans exist) and still assesses."""
    manifest = _seed(settings, 400, fk)
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT conrelid::regclass::text, confupdtype, condeferrable, convalidated"
                " FROM pg_constraint WHERE contype = 'f' AND confrelid = 'documents'::regclass"
            )
        ).all()
        orphans = conn.execute(
            sa.text(
                "SELECT count(*) FROM document_chunks c"
                " WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document_id)"
            )
        ).scalar_one()
    assert (
        orphans
        == manifest["chunks"]["by_class"]["orphan_healable"]
        + manifest["chunks"]["by_class"]["orphan_unmatched"]
    )
    if fk == "none":
        assert rows == []
        return
    assert {r[0] for r in rows} == {"document_chunks", "embeddings", "document_shares"}
    for table, on_update, deferrable, validated in rows:
        assert on_update == ("c" if fk == "cascade" else "a")
        assert deferrable == (fk == "deferrable")
        assert validated == (table == "document_shares")
    report = assess.run(engine, settings, now=AS_OF)
    assert report["documents"]["by_class"] == manifest["documents"]["by_class"]


def test_seed_refuses_to_overwrite_without_replace(settings: Settings) -> None:
    """Seeding over existing tables needs --replace; with it the data is rebuilt."""
    first = _seed(settings, 50, "none")
    with pytest.raises(UsageError):
        _seed(settings, 50, "none")
    again = _seed(settings, 50, "none", replace=True)
    assert again["documents"] == first["documents"]


def test_vectors_find_their_own_chunk(settings: Settings) -> None:
    """The stored embedding, used as a query, brings back its own chunk first (pgvector or not)."""
    manifest = _seed(settings, 60, "none")
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        sample = conn.execute(
            sa.text("SELECT chunk_id, embedding::text FROM embeddings ORDER BY id LIMIT 5")
        ).all()
        for chunk_id, vec in sample:
            if manifest["vector_type"] == "vector":
                best = conn.execute(
                    sa.text(
                        "SELECT chunk_id FROM embeddings ORDER BY embedding <=> CAST(:v AS vector) LIMIT 1"
                    ),
                    {"v": vec},
                ).scalar_one()
            else:
                best = conn.execute(
                    sa.text(
                        "SELECT e.chunk_id FROM embeddings e ORDER BY ("
                        " SELECT sum(a * b) FROM unnest(e.embedding, CAST(:v AS real[])) AS x(a, b)"
                        ") DESC LIMIT 1"
                    ),
                    {"v": vec},
                ).scalar_one()
            assert best == chunk_id


def test_rule_ids_sql_path_agrees_with_python(settings: Settings) -> None:
    """Where uuid-ossp is installable, uuid_generate_v5 in SQL gives the ids Python computes."""
    _seed(settings, 300, "none")
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        available = conn.execute(
            sa.text("SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'")
        ).scalar_one()
        if available:
            conn.execute(sa.text('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"'))
            conn.commit()
    rule = IdRule(uuid.NAMESPACE_URL, "{user_id}:{file_sha256}")
    results = {}
    for use_ext in (True, False):
        with engine.connect() as conn, conn.begin():
            mt = tables.reflect(conn, settings)
            handle, path = ruleids.materialize(
                conn, mt, rule, "user_id", "file_sha256", "id", True, use_extension=use_ext
            )
            results[use_ext] = (
                path,
                dict(conn.execute(sa.select(handle.c.doc_key, handle.c.rule_id)).all()),
            )
            expected = {
                str(row.id): str(rule.new_id(row.user_id, row.file_sha256))
                for row in conn.execute(sa.text("SELECT id, user_id, file_sha256 FROM documents"))
            }
    assert results[False][0] == "python (COPY)"
    assert {str(k): str(v) for k, v in results[False][1].items()} == expected
    if available:
        assert results[True][0] == "sql (uuid-ossp)"
        assert results[True][1] == results[False][1]
    else:
        assert results[True][0] == "python (COPY)"
