"""A tiny damaged dataset built by hand, in which every class of DESIGN §2.3 has a known count."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from migrator import seed
from migrator.idrule import IdRule

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
RULE = IdRule(uuid.NAMESPACE_URL, "{user_id}:{file_sha256}")


def v4(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


def sha(n: int) -> str:
    return f"{n:064x}"


def rule_id(user: str, n: int) -> str:
    return str(RULE.new_id(user, sha(n)))


@dataclass
class Handmade:
    docs: list[dict[str, object]] = field(default_factory=list)
    chunks: list[dict[str, object]] = field(default_factory=list)
    embeddings: list[dict[str, object]] = field(default_factory=list)

    def doc(
        self,
        name: str,
        doc_id: str,
        user: str,
        sha_n: int,
        status: str = "processed",
        age: timedelta = timedelta(days=200),
        chunks: int = 0,
        chunks_under: str | None = None,
        access_count: int = 0,
        last_accessed: timedelta | None = None,
    ) -> str:
        self.docs.append(
            {
                "id": doc_id,
                "user_id": user,
                "file_sha256": sha(sha_n),
                "filename": f"{name}.pdf",
                "size_bytes": 1000,
                "status": status,
                "created_at": NOW - age,
                "last_accessed_at": NOW - last_accessed if last_accessed else None,
                "access_count": access_count,
            }
        )
        for _ in range(chunks):
            self.chunk(chunks_under or doc_id, user)
        return doc_id

    def chunk(self, document_id: str, user: str) -> None:
        chunk_id = v4(10_000 + len(self.chunks))
        self.chunks.append(
            {
                "id": chunk_id,
                "document_id": document_id,
                "user_id": user,
                "chunk_index": 0,
                "content": "alpha beta",
                "metadata": {},
                "created_at": NOW,
            }
        )
        self.embeddings.append(
            {
                "id": v4(20_000 + len(self.embeddings)),
                "chunk_id": chunk_id,
                "document_id": document_id,
                "model": "m",
                "embedding": [1.0, 0.0, 0.0, 0.0],
                "created_at": NOW,
            }
        )


def build() -> Handmade:
    """The dataset. Counts it must produce are in EXPECTED below."""
    h = Handmade()
    d1 = h.doc("d1", rule_id("alice", 1), "alice", 1, chunks=2, access_count=50)
    h.doc("d2", rule_id("bob", 2), "bob", 2, status="failed", age=timedelta(days=3))
    h.doc("d3", rule_id("erin", 3), "erin", 3, chunks=1, age=timedelta(days=5))
    h.doc("c1", v4(1), "carol", 4, chunks=3, access_count=100)
    h.doc(
        "m1",
        v4(2),
        "alice",
        5,
        chunks=2,
        chunks_under=rule_id("alice", 5),
        last_accessed=timedelta(days=2),
    )
    h.doc("m2", v4(3), "bob", 6, chunks=1, chunks_under=rule_id("bob", 6))
    h.doc("u1", v4(4), "dave", 7, status="uploaded", age=timedelta(days=10))
    h.doc("u2", v4(5), "alice", 8, status="uploaded", age=timedelta(hours=1))
    # the same file uploaded three times by carol: the rule id is free, k3 is canonical
    # (processed, then the most chunks), and one chunk was already written under the rule id
    h.doc("k1", v4(6), "carol", 9, chunks=1, age=timedelta(days=100))
    h.doc("k2", v4(7), "carol", 9, status="uploaded", age=timedelta(days=200))
    h.doc("k3", v4(8), "carol", 9, chunks=2, age=timedelta(days=50))
    h.chunk(rule_id("carol", 9), "carol")
    # bob re-uploaded after the fix: t0 holds the rule id, t1 cannot take it
    h.doc("t0", rule_id("bob", 10), "bob", 10, chunks=1, age=timedelta(days=10))
    h.doc("t1", v4(9), "bob", 10, chunks=1)
    # ids of another kind: a v1 id with a chunk, and the nil id never processed
    h.doc("o1", str(uuid.UUID(int=12345, version=1)), "dave", 11, chunks=1)
    h.doc("o2", str(uuid.UUID(int=0)), "dave", 12, status="failed", age=timedelta(days=30))
    # chunks of a deleted document
    h.chunk(v4(99), "dave")
    h.chunk(v4(99), "dave")
    # an embedding whose chunk is gone
    h.embeddings.append(
        {
            "id": v4(30_000),
            "chunk_id": v4(31_000),
            "document_id": d1,
            "model": "m",
            "embedding": [0.0, 1.0, 0.0, 0.0],
            "created_at": NOW,
        }
    )
    return h


EXPECTED = {
    "documents": {
        "deterministic": 4,
        "random_consistent": 1,
        "random_mismatched": 2,
        "random_unprocessed": 2,
        "conflict": 4,
        "other": 2,
    },
    "chunks": {"attached": 12, "orphan_healable": 4, "orphan_unmatched": 2},
    "embeddings": {"total": 19, "document_missing": 6, "chunk_missing": 1},
    "users": {"total": 5, "affected": 4, "invisible_documents": 3},
    "to_rekey": 6,
    "invisible": 3,
    "stuck": 3,
    "priority": 4,  # u2 and u1 recent, m1 recently opened, c1 opened often
    "canonical": v4(8),
    "holder": rule_id("bob", 10),
}


def load(conn: Connection, h: Handmade, schema: str = "public") -> None:
    """Create the reference tables (no constraints) and insert the dataset."""
    md = seed.reference_metadata(schema, 4, use_vector=False)
    md.create_all(conn)
    t = md.tables
    for name, rows in (
        ("documents", h.docs),
        ("document_chunks", h.chunks),
        ("embeddings", h.embeddings),
    ):
        if rows:
            conn.execute(sa.insert(t[f"{schema}.{name}"]), rows)
    conn.commit()
