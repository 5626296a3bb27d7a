"""The daemon's probes on real PostgreSQL, each against a dataset whose answer is known."""

from __future__ import annotations

import itertools
import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from migrator import assess, dataset, db, journal, seed
from migrator import tables as tables_mod
from migrator.errors import MappingError
from migrator.idrule import IdRule
from migrator.settings import Settings, load_settings
from monitor import canary, probes
from monitor.probing import ProbeContext, ProbeOutput, ProbeSpec, run_probe
from tests.migrator import handmade

METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _with(settings: Settings, **sections: Any) -> Settings:
    assert settings.database.dsn is not None
    return load_settings(
        None, database={"dsn": settings.database.dsn.get_secret_value()}, **sections
    )


def _handmade(settings: Settings, relative_to_now: bool = False) -> sa.Engine:
    """The hand-built dataset; with `relative_to_now`, its ages count back from the
    database's clock instead of handmade.NOW."""
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        handmade.load(conn, handmade.build())
        if relative_to_now:
            conn.execute(
                sa.text("UPDATE documents SET created_at = now() - (:now - created_at)"),
                {"now": handmade.NOW},
            )
            conn.commit()
    return engine


def _seeded(settings: Settings, documents: int = 300) -> tuple[sa.Engine, dataset.Dataset]:
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    ds = dataset.generate(
        dataset.DatasetSpec(documents=documents, seed=11, as_of=datetime.now(UTC)), rule
    )
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        seed.seed(conn, ds, "public", "none", replace=False)
        journal.init(conn, settings.journal_schema)
    return engine, ds


def _spec(settings: Settings, name: str) -> ProbeSpec:
    return next(s for s in probes.probe_specs(settings) if s.name == name)


def _run(
    engine: sa.Engine, settings: Settings, name: str, ctx: ProbeContext | None = None
) -> ProbeOutput:
    out, _ = run_probe(engine, settings, _spec(settings, name), ctx or ProbeContext())
    return out


def _values(out: ProbeOutput, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {s.labels: s.value for s in out.samples if s.metric == metric}


def _value(out: ProbeOutput, metric: str, **labels: str) -> float:
    return _values(out, metric)[tuple(sorted(labels.items()))]


def test_classification_counts_equal_the_assessment(settings: Settings) -> None:
    """The full sweep's id classes, orphan chunks, invisible and stuck documents and user
    counts are exactly the assessment's."""
    engine = _handmade(settings)
    out = _run(engine, settings, "classification")
    report = assess.run(engine, settings, now=datetime.now(UTC))
    for cls, n in report["documents"]["by_class"].items():
        assert _value(out, "documents_by_class", **{"class": cls}) == n
    assert report["documents"]["by_class"] == handmade.EXPECTED["documents"]
    for cls, n in handmade.EXPECTED["chunks"].items():
        assert _value(out, "chunks_by_class", **{"class": cls}) == n
    assert _value(out, "documents_invisible") == handmade.EXPECTED["invisible"]
    assert _value(out, "documents_to_rekey") == handmade.EXPECTED["to_rekey"]
    assert _value(out, "documents_stuck") == report["failure_patterns"]["stuck"]["documents"]
    users = report["users"]
    assert _value(out, "users") == users["total"]
    assert _value(out, "users_affected", impact="any") == users["affected"]
    assert _value(out, "users_affected", impact="invisible") == users["invisible_documents"]
    for bucket, n in users["by_affected_documents"].items():
        assert _value(out, "users_by_affected_documents", bucket=bucket) == n
    # processed: d1 d3 c1 m1 m2 k1 k3 t0 t1 o1; m1 and m2 have their chunks under the rule id,
    # k1 and k3 share a free rule id that one stray chunk already carries
    assert _value(out, "pipeline_inconsistent_documents") == 4
    assert _value(out, "pipeline_consistency_ratio") == pytest.approx(0.6)


@pytest.mark.slow
def test_classification_on_a_seeded_dataset(settings: Settings) -> None:
    """On the generated dataset the sweep finds the manifest's classes."""
    engine, ds = _seeded(settings, documents=400)
    out = _run(engine, settings, "classification")
    for cls, n in ds.manifest["documents"]["by_class"].items():
        assert _value(out, "documents_by_class", **{"class": cls}) == n
    for cls, n in ds.manifest["chunks"]["by_class"].items():
        assert _value(out, "chunks_by_class", **{"class": cls}) == n
    processed = sum(1 for d in ds.documents if d[5] == "processed")
    consistent = processed - _value(out, "pipeline_inconsistent_documents")
    assert _value(out, "pipeline_consistency_ratio") == pytest.approx(consistent / processed)


def test_id_versions(settings: Settings) -> None:
    """Documents are counted by the version nibble of their id; the nil id apart."""
    engine = _handmade(settings)
    out = _run(engine, settings, "id_versions")
    counts = {dict(k)["version"]: v for k, v in _values(out, "documents_by_id_version").items()}
    assert counts == {v: 0 for v in probes.ID_VERSIONS} | {"v5": 4, "v4": 9, "v1": 1, "nil": 1}


def test_unprocessed_documents_by_status_and_grace(settings: Settings) -> None:
    """Documents not processed, by status; past the grace period they are stuck."""
    engine = _handmade(settings, relative_to_now=True)
    out = _run(engine, settings, "unprocessed")
    got = {
        (dict(k)["status"], dict(k)["stuck"]): v
        for k, v in _values(out, "documents_unprocessed").items()
    }
    # d2 failed 3 days ago, o2 30 days; u1 uploaded 10 days ago, k2 200 days, u2 one hour
    assert got == {("failed", "true"): 2, ("uploaded", "true"): 2, ("uploaded", "false"): 1}
    oldest = _value(out, "documents_unprocessed_oldest_age_seconds")
    assert timedelta(days=199) < timedelta(seconds=oldest) < timedelta(days=201)


def _insert_documents(engine: sa.Engine, rows: list[tuple[str, str, str, timedelta]]) -> None:
    """(id, user, sha256, age) rows, created that long before the database's clock."""
    with engine.begin() as conn:
        for doc_id, user, sha, age in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO documents (id, user_id, file_sha256, status, created_at)"
                    " VALUES (:id, :user, :sha, 'uploaded', now() - :age)"
                ),
                {"id": doc_id, "user": user, "sha": sha, "age": age},
            )


def test_new_upload_conformance_counts_each_new_document_once(settings: Settings) -> None:
    """New uploads whose id is not the rule's are counted once each: a late commit behind the
    watermark is caught, a row older than the window and a row already counted are not."""
    s = _with(settings, probes={"new_uploads_page": 3})
    engine = _handmade(s, relative_to_now=True)
    rule = handmade.RULE
    ctx = ProbeContext()

    def totals() -> tuple[float, float]:
        out = _run(engine, s, "new_uploads", ctx)
        return (
            _value(out, "new_uploads_total", result="conforming"),
            _value(out, "new_uploads_total", result="nonconforming"),
        )

    # within the last 24 hours: only u2 (a random id, an hour old)
    assert totals() == (0, 1)
    _insert_documents(
        engine,
        [
            (str(rule.new_id("zoe", handmade.sha(50))), "zoe", handmade.sha(50), timedelta(0)),
            (str(rule.new_id("zoe", handmade.sha(51))), "zoe", handmade.sha(51), timedelta(0)),
            (handmade.v4(500), "zoe", handmade.sha(52), timedelta(0)),
            (str(rule.new_id("yan", handmade.sha(53))), "yan", handmade.sha(53), timedelta(0)),
            (handmade.v4(501), "yan", handmade.sha(54), timedelta(days=2)),  # outside the window
        ],
    )
    # a page of three, then the fourth
    first = totals()
    assert sum(first) == 1 + 3
    assert totals() == (3, 2)
    assert totals() == (3, 2)  # nothing new: nothing counted again
    # a transaction that committed late: created a minute before the newest row seen
    _insert_documents(engine, [(handmade.v4(502), "zoe", handmade.sha(55), timedelta(minutes=1))])
    assert totals() == (3, 3)
    assert totals() == (3, 3)


def _orphan_ids(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT c.id::text FROM document_chunks c"
                    " WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document_id)"
                )
            )
        }


def test_orphan_scan_cycles_through_every_chunk(settings: Settings) -> None:
    """The rolling scan reads a range of heap blocks per run and, after a whole cycle, reports
    exactly the orphan chunks (the assessment's healable and unmatched ones); then it starts
    over. The handmade dataset's 18 chunks fit in one block: every run is a whole cycle."""
    s = _with(settings, probes={"orphan_scan_page": 5})
    engine = _handmade(s)
    ctx = ProbeContext()
    orphan_ids = _orphan_ids(engine)
    expected = (
        handmade.EXPECTED["chunks"]["orphan_healable"]
        + handmade.EXPECTED["chunks"]["orphan_unmatched"]
    )
    assert len(orphan_ids) == expected
    out = _run(engine, s, "orphans", ctx)
    assert out.detail["page_rows"] == 18 and set(out.detail["examples"]) == orphan_ids
    assert _value(out, "chunks_rolling_scan_cycles_total") == 1
    assert _value(out, "chunks_orphaned_rolling", cycle="last") == expected
    again = _run(engine, s, "orphans", ctx)
    assert _value(again, "chunks_rolling_scan_cycles_total") == 2
    assert _value(again, "chunks_orphaned_rolling", cycle="last") == expected


def test_orphan_scan_pages_a_large_table_by_heap_blocks(settings: Settings) -> None:
    """Over a table of many blocks, each run reads about probes.orphan_scan_page chunks, the
    ranges follow each other without gap or overlap, and a cycle counts every chunk once."""
    s = _with(settings, probes={"orphan_scan_page": 200})
    engine = _handmade(s)
    with engine.begin() as conn:
        # 3,000 padded chunks (a few hundred blocks), one in ten pointing at no document
        conn.execute(
            sa.text(
                "INSERT INTO document_chunks (id, document_id, user_id, chunk_index, content)"
                " SELECT gen_random_uuid(),"
                " CASE WHEN g % 10 = 0 THEN gen_random_uuid()"
                " ELSE (SELECT id FROM documents ORDER BY id LIMIT 1) END,"
                " 'pad', g, repeat('x', 600) FROM generate_series(1, 3000) g"
            )
        )
        total = conn.execute(sa.text("SELECT count(*) FROM document_chunks")).scalar_one()
        blocks = conn.execute(
            sa.text(
                "SELECT pg_relation_size('document_chunks') / current_setting('block_size')::int"
            )
        ).scalar_one()
    assert blocks > 100
    expected = len(_orphan_ids(engine))
    ctx = ProbeContext()
    ranges, rows = [], []
    while True:
        out = _run(engine, s, "orphans", ctx)
        ranges.append(out.detail["page_blocks"])
        rows.append(out.detail["page_rows"])
        if _value(out, "chunks_rolling_scan_cycles_total") == 1:
            break
        assert 0 < _value(out, "chunks_rolling_scan_progress_ratio") < 1
        assert len(ranges) < 200
    assert ranges[0][0] == 0 and ranges[-1][1] >= blocks
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert sum(rows) == total
    assert _value(out, "chunks_orphaned_rolling", cycle="last") == expected
    # after the first range has shown the density, each run reads about a page
    assert all(100 <= r <= 400 for r in rows[1:-1]), rows


def test_pipeline_consistency_of_sampled_documents(settings: Settings) -> None:
    """Documents whose chunks or embeddings sit under another id are inconsistent; the
    sampled probe reports the share of its sample that is consistent."""
    engine = _handmade(settings)
    with engine.connect() as conn, conn.begin():
        mt = tables_mod.reflect(conn, settings)
        processed = [
            r[0]
            for r in conn.execute(
                sa.text("SELECT id::text FROM documents WHERE status = 'processed'")
            )
        ]
        targets, _ = canary.resolve(conn, settings, mt, processed)
        assert sorted(t.id for t in targets) == sorted(processed)
        result = probes.consistency(conn, settings, mt, targets)
    m1, m2, k1, k3 = handmade.v4(2), handmade.v4(3), handmade.v4(6), handmade.v4(8)
    assert {k for k, ok in result.items() if not ok} == {m1, m2, k1, k3}
    assert len(result) == 10
    out = _run(engine, settings, "pipeline", ProbeContext({"rng": random.Random(7)}))
    good = _value(out, "pipeline_sampled_documents", result="consistent")
    bad = _value(out, "pipeline_sampled_documents", result="inconsistent")
    assert good + bad == out.detail["sampled"] > 0
    assert _value(out, "pipeline_consistency_sampled_ratio") == pytest.approx(good / (good + bad))
    assert set(out.detail["examples"]) <= {m1, m2, k1, k3}


def test_integrity_violations(settings: Settings) -> None:
    """Missing documents and chunks are counted per column; a share of a deleted document, an
    embedding of another document than its chunk's and a chunk of another owner show up."""
    engine = _handmade(settings)
    out = _run(engine, settings, "integrity")
    exp = handmade.EXPECTED
    orphans = exp["chunks"]["orphan_healable"] + exp["chunks"]["orphan_unmatched"]

    def v(o: ProbeOutput, check: str, reference: str) -> float:
        return _value(o, "integrity_violations", check=check, reference=reference)

    assert v(out, "document_missing", "document_chunks.document_id") == orphans
    assert (
        v(out, "document_missing", "embeddings.document_id")
        == exp["embeddings"]["document_missing"]
    )
    assert v(out, "chunk_missing", "embeddings.chunk_id") == exp["embeddings"]["chunk_missing"]
    assert v(out, "document_missing", "document_shares.document_id") == 0
    assert v(out, "document_mismatch", "embeddings.document_id") == 0
    assert v(out, "owner_mismatch", "document_chunks.user_id") == 0
    d1 = handmade.rule_id("alice", 1)
    c1 = handmade.v4(1)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO document_shares VALUES (:d, 'bob', 'read', now())"),
            {"d": handmade.v4(77)},
        )
        conn.execute(
            sa.text(
                "UPDATE embeddings SET document_id = :c1 WHERE id ="
                " (SELECT id FROM embeddings WHERE document_id = :d1 AND chunk_id IN"
                "  (SELECT id FROM document_chunks) ORDER BY id LIMIT 1)"
            ),
            {"c1": c1, "d1": d1},
        )
        conn.execute(
            sa.text(
                "UPDATE document_chunks SET user_id = 'mallory' WHERE id ="
                " (SELECT id FROM document_chunks WHERE document_id = :c1 ORDER BY id LIMIT 1)"
            ),
            {"c1": c1},
        )
    after = _run(engine, settings, "integrity")
    assert v(after, "document_missing", "document_shares.document_id") == 1
    assert v(after, "document_mismatch", "embeddings.document_id") == 1
    assert v(after, "owner_mismatch", "document_chunks.user_id") == 1


def test_latency_probe_reports_a_duration(settings: Settings) -> None:
    """The latency probe runs its canary query and reports how long it took."""
    engine = _handmade(settings)
    out = _run(engine, settings, "latency")
    assert _value(out, "database_latency_seconds") >= 0


@pytest.mark.slow
def test_every_probe_names_its_metrics_and_labels_no_ids(settings: Settings) -> None:
    """On a seeded database every probe runs read-only (but the classification), emits only
    the metrics its spec lists, with valid names and no user or document id in a label."""
    engine, _ = _seeded(settings)
    with engine.connect() as conn:
        ids = {r[0] for r in conn.execute(sa.text("SELECT id::text FROM documents"))}
        ids |= {r[0] for r in conn.execute(sa.text("SELECT DISTINCT user_id FROM documents"))}
        ids |= {
            r[0] for r in conn.execute(sa.text("SELECT document_id::text FROM document_chunks"))
        }
    specs = probes.probe_specs(settings)
    assert len({s.name for s in specs}) == len(specs)
    assert [s.name for s in specs if not s.read_only] == ["classification"]
    for spec in specs:
        assert spec.budget in ("full", "incremental", "sampled") and spec.description
        out, _ = run_probe(engine, settings, spec, ProbeContext())
        assert out.samples, spec.name
        for sample in out.samples:
            assert sample.metric in spec.metrics, (spec.name, sample.metric)
            assert METRIC_NAME.match(sample.metric) and not sample.metric.startswith("uuidguard")
            for _, value in sample.labels:
                assert value not in ids, (spec.name, sample.metric)
        emitted = {s.metric for s in out.samples}
        # a counter is named _total; everything else a spec lists is emitted on a populated db
        optional = {"chunks_rolling_scan_progress_ratio", "new_uploads_watermark_timestamp_seconds"}
        assert set(spec.metrics) - emitted <= optional | {"chunks_orphaned_rolling"}


def test_probes_reject_a_wrong_mapping_with_the_key_to_fix(settings: Settings) -> None:
    """A probe over a table that does not exist fails with the config key to change."""
    engine = _handmade(settings)
    wrong = _with(settings, mapping={"documents": {"table": "uploads"}})
    with pytest.raises(MappingError) as info:
        run_probe(engine, wrong, _spec(wrong, "id_versions"), ProbeContext())
    assert info.value.key == "mapping.documents.table"


def test_sample_wraps_around_past_the_last_id(settings: Settings) -> None:
    """Handmade ids crowd the bottom of the id space, so most random points fall past the
    last id: they wrap to the first processed document, and the sample holds processed ones."""
    engine = _handmade(settings)
    with engine.connect() as conn, conn.begin():
        got = canary.sample_documents(conn, settings, 5, random.Random(1))
        statuses = {
            r[0]
            for r in conn.execute(
                sa.text("SELECT status FROM documents WHERE id::text = ANY(:ids)"), {"ids": got}
            )
        }
    assert got and statuses == {"processed"}
    assert len(got) == len(set(got)) and all(uuid.UUID(g) for g in got)
