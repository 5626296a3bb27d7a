"""The assessment on real PostgreSQL: exact counts on a hand-built dataset with every class."""

from __future__ import annotations

import sqlalchemy as sa

from migrator import assess, db
from migrator.settings import Settings
from tests.migrator import handmade
from tests.migrator.handmade import EXPECTED


def _assess(settings: Settings) -> dict:
    engine = db.create_engine(settings)
    return assess.run(engine, settings, now=handmade.NOW)


def _load(settings: Settings, h: handmade.Handmade | None = None) -> sa.Engine:
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        handmade.load(conn, h or handmade.build())
    return engine


def test_every_class_counted_exactly(settings: Settings) -> None:
    """Each document and chunk class of §2.3 is counted exactly as constructed."""
    _load(settings)
    r = _assess(settings)
    assert r["documents"]["by_class"] == EXPECTED["documents"]
    assert r["chunks"]["by_class"] == EXPECTED["chunks"]
    assert r["embeddings"] == EXPECTED["embeddings"]
    assert r["documents"]["total"] == sum(EXPECTED["documents"].values())
    assert {k: r["users"][k] for k in ("total", "affected", "invisible_documents")} == EXPECTED[
        "users"
    ]
    assert r["documents"]["to_rekey"] == EXPECTED["to_rekey"]
    assert r["documents"]["invisible"] == EXPECTED["invisible"]
    assert r["failure_patterns"]["stuck"]["documents"] == EXPECTED["stuck"]
    assert r["priority"]["documents"] == EXPECTED["priority"]
    assert r["priority"]["access_count_threshold"] == 50


def test_conflict_groups_name_canonical_member(settings: Settings) -> None:
    """A free rule id goes to the canonical member; a taken one to nobody; nothing is merged."""
    _load(settings)
    conf = _assess(settings)["conflicts"]
    assert conf["groups"] == 2
    assert conf["documents"] == 4
    assert conf["by_kind"] == {"duplicate_upload": 1, "rule_id_taken": 1}
    dup = next(g for g in conf["detail"] if g["kind"] == "duplicate_upload")
    taken = next(g for g in conf["detail"] if g["kind"] == "rule_id_taken")
    assert dup["canonical"] == EXPECTED["canonical"]
    assert [m["action"] for m in dup["members"]].count("rekey") == 1
    assert taken["canonical"] is None
    assert taken["holder"] == EXPECTED["holder"]
    assert all(m["action"] == "keep" for m in taken["members"])


def test_canonical_order_falls_back_to_age_then_id(settings: Settings) -> None:
    """Between equal members (same status and chunks), the oldest wins, then the smallest id."""
    h = handmade.Handmade()
    old = timedelta_days(300)
    h.doc("a", handmade.v4(501), "zoe", 77, chunks=1, age=timedelta_days(100))
    h.doc("b", handmade.v4(502), "zoe", 77, chunks=1, age=old)
    h.doc("c", handmade.v4(503), "zoe", 77, chunks=1, age=old)
    _load(settings, h)
    conf = _assess(settings)["conflicts"]
    assert conf["detail"][0]["canonical"] == handmade.v4(502)


def timedelta_days(n: int):
    from datetime import timedelta

    return timedelta(days=n)


def test_user_buckets_and_samples(settings: Settings) -> None:
    """Users fall in the affected-documents buckets; samples are real ids of their class."""
    _load(settings)
    r = _assess(settings)
    # alice 2 affected (m1, u2), bob 2 (m2, t1), carol 4, dave 3
    assert r["users"]["by_affected_documents"] == {"1": 0, "2-5": 4, "6-20": 0, "21+": 0}
    assert r["samples"]["documents"]["conflict"] == sorted(
        [handmade.v4(6), handmade.v4(7), handmade.v4(8), handmade.v4(9)]
    )
    assert r["samples"]["documents"]["other"] == sorted(
        [str(handmade.uuid.UUID(int=0)), str(handmade.uuid.UUID(int=12345, version=1))]
    )
    assert len(r["samples"]["chunks"]["orphan_unmatched"]) == 2
    assert r["per_user"] and {u["user_id"] for u in r["per_user"]} == {
        "alice",
        "bob",
        "carol",
        "dave",
    }


def test_text_id_column_with_malformed_ids(settings: Settings) -> None:
    """A text id column holding upper-case and non-UUID ids is classified, not a traceback."""
    engine = _load(settings)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE documents ALTER COLUMN id TYPE text"))
        # the same v4 id written in upper case still owns its chunks
        conn.execute(
            sa.text("UPDATE documents SET id = upper(id) WHERE id = :id"), {"id": handmade.v4(1)}
        )
        conn.execute(
            sa.text(
                "INSERT INTO documents (id, user_id, file_sha256, status, created_at, access_count)"
                " VALUES ('legacy-42', 'erin', repeat('f', 64), 'processed', now(), 0)"
            )
        )
    r = _assess(settings)
    expected = dict(EXPECTED["documents"], other=EXPECTED["documents"]["other"] + 1)
    assert r["documents"]["by_class"] == expected
    assert r["chunks"]["by_class"] == EXPECTED["chunks"]
    assert r["meta"]["key_mode"] == "text"
    assert "legacy-42" in r["samples"]["documents"]["other"]


def test_empty_database_gives_a_zero_report(settings: Settings) -> None:
    """Empty tables are a correct report of nothing, not an error."""
    _load(settings, handmade.Handmade())
    r = _assess(settings)
    assert r["documents"]["total"] == 0
    assert set(r["documents"]["by_class"].values()) == {0}
    assert set(r["chunks"]["by_class"].values()) == {0}
    assert r["users"]["total"] == 0
    assert r["conflicts"]["groups"] == 0


def test_assessment_writes_nothing(settings: Settings) -> None:
    """Assessment leaves no table behind: temporary tables go with the transaction."""
    engine = _load(settings)
    _assess(settings)
    with engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names())
    assert names == {"documents", "document_chunks", "embeddings", "document_shares"}
