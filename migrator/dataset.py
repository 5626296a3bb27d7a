"""A realistic damaged RAG dataset, generated deterministically from a seed, with its manifest.

No I/O: `seed.py` loads what this produces. Every document is given its class of DESIGN §2.3 by
construction, so the manifest states exactly what an assessment must find.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from migrator import textvec
from migrator.idrule import IdRule

DOCUMENT_CLASSES = (
    "deterministic",
    "random_consistent",
    "random_mismatched",
    "random_unprocessed",
    "conflict",
    "other",
)
CHUNK_CLASSES = ("attached", "orphan_healable", "orphan_unmatched")

_SYLLABLES = [
    "ka",
    "ri",
    "to",
    "mu",
    "se",
    "la",
    "no",
    "vi",
    "de",
    "po",
    "an",
    "el",
    "is",
    "or",
    "un",
    "ta",
    "be",
    "ci",
    "fo",
    "gu",
    "ha",
    "ji",
    "ko",
    "lu",
    "ma",
    "ne",
    "pi",
    "qu",
    "ra",
    "si",
    "tu",
    "va",
    "we",
    "xo",
    "yu",
    "zo",
    "bra",
    "cle",
    "dri",
    "fla",
    "gro",
    "pla",
    "sti",
    "tre",
]
_EXTS = ("pdf", "docx", "md", "txt", "html", "pptx")


def _vocabulary(size: int = 4000) -> list[str]:
    rng = random.Random(20260101)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


VOCABULARY = _vocabulary()


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate. Fractions are shares of all documents."""

    documents: int = 10_000
    users: int | None = None
    chunks_per_document: float = 10.0
    seed: int = 42
    as_of: datetime = field(default_factory=lambda: datetime(2026, 1, 1))
    dim: int = textvec.DEFAULT_DIM
    random_consistent: float = 0.12
    random_mismatched: float = 0.15
    random_unprocessed: float = 0.05
    conflict: float = 0.01
    other: float = 0.005
    #: documents deleted after processing, whose chunks no document will ever own
    unmatched_orphans: float = 0.005
    #: embeddings whose chunk no longer exists, per chunk
    dangling_embeddings: float = 0.001
    #: documents shared with other users
    shared: float = 0.08

    @property
    def user_count(self) -> int:
        return self.users if self.users is not None else max(1, self.documents // 20)


Document = tuple[str, str, str, str, int, str, datetime, datetime | None, int]
Chunk = tuple[str, str, str, int, str, str, datetime]
Embedding = tuple[str, str | None, str, str, list[float], datetime]
Share = tuple[str, str, str, datetime]


@dataclass
class _ChunkGroup:
    document_id: str
    user_id: str
    count: int
    created_at: datetime
    filename: str
    chunk_class: str


@dataclass
class Dataset:
    spec: DatasetSpec
    documents: list[Document]
    shares: list[Share]
    groups: list[_ChunkGroup]
    dangling: list[tuple[str, str]]  # (document id, user id) of embeddings with no chunk
    manifest: dict[str, Any]

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk, generated on the fly (a million chunks never sit in memory)."""
        for chunk, _words, _emb_id in self._walk():
            yield chunk

    def embeddings(self) -> Iterator[Embedding]:
        """One embedding per chunk, in the same order; the same walk, so the same ids."""
        dim = self.spec.dim
        for chunk, words, emb_id in self._walk():
            vec = textvec.embed_tokens(words, dim)
            yield (emb_id, chunk[0], chunk[1], "hashed-bow-v1", vec, chunk[6])

    def _walk(self) -> Iterator[tuple[Chunk, list[str], str]]:
        rng = random.Random(self.spec.seed * 7919 + 1)
        vocab = VOCABULARY
        for g in self.groups:
            topic = [vocab[rng.randrange(len(vocab))] for _ in range(6)]
            for index in range(g.count):
                words = rng.choices(topic, k=4) + [
                    vocab[rng.randrange(len(vocab))] for _ in range(rng.randint(12, 22))
                ]
                rng.shuffle(words)
                chunk_id = _uuid4(rng)
                meta = f'{{"page": {index // 3 + 1}, "source": "{g.filename}"}}'
                chunk: Chunk = (
                    chunk_id,
                    g.document_id,
                    g.user_id,
                    index,
                    " ".join(words),
                    meta,
                    g.created_at,
                )
                yield chunk, words, _uuid4(rng)

    def dangling_embeddings(self) -> Iterator[Embedding]:
        rng = random.Random(self.spec.seed * 104729 + 3)
        for document_id, _user in self.dangling:
            words = [VOCABULARY[rng.randrange(len(VOCABULARY))] for _ in range(16)]
            yield (
                _uuid4(rng),
                _uuid4(rng),  # the chunk it was made from is gone
                document_id,
                "hashed-bow-v1",
                textvec.embed_tokens(words, self.spec.dim),
                self.spec.as_of - timedelta(days=rng.uniform(1, 300)),
            )


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _other_id(rng: random.Random, n: int) -> str:
    """Ids that are neither v4 nor the rule's: v1 time-based ids, and one nil id."""
    if n == 0:
        return str(uuid.UUID(int=0))
    return str(uuid.UUID(int=rng.getrandbits(128), version=1))


class _Builder:
    def __init__(self, spec: DatasetSpec, rule: IdRule) -> None:
        self.spec = spec
        self.rule = rule
        self.rng = random.Random(spec.seed)
        self.users = [f"user-{i:05d}" for i in range(spec.user_count)]
        # a long tail: a few heavy users, many with a handful of documents
        weights = [1 / (i + 1) ** 0.9 for i in range(len(self.users))]
        self.cum = list(_accumulate(weights))
        self.documents: list[Document] = []
        self.groups: list[_ChunkGroup] = []
        self.classes: Counter[str] = Counter()
        self.chunk_classes: Counter[str] = Counter()
        self.conflict_kinds: Counter[str] = Counter()
        self.processed_ids: list[tuple[str, str]] = []
        mu = math.log(max(spec.chunks_per_document, 1.0)) - 0.32
        self.mu = mu

    def user(self) -> str:
        return self.rng.choices(self.users, cum_weights=self.cum)[0]

    def sha(self) -> str:
        return f"{self.rng.getrandbits(256):064x}"

    def chunk_count(self) -> int:
        return max(1, min(400, round(self.rng.lognormvariate(self.mu, 0.8))))

    def when(self, min_days: float, max_days: float) -> datetime:
        return self.spec.as_of - timedelta(seconds=self.rng.uniform(min_days, max_days) * 86400)

    def add(
        self,
        cls: str,
        doc_id: str,
        user: str,
        sha: str,
        status: str,
        created: datetime,
        chunks_under: str | None,
    ) -> None:
        rng = self.rng
        filename = f"{'-'.join(rng.sample(VOCABULARY, 2))}.{rng.choice(_EXTS)}"
        size = int(rng.lognormvariate(12, 1.2)) + 200
        access = int(rng.paretovariate(1.2)) - 1 if status == "processed" else 0
        if status == "processed" and rng.random() < 0.75:
            span = max((self.spec.as_of - created).total_seconds(), 1.0)
            last = self.spec.as_of - timedelta(seconds=span * rng.random() ** 2)
        else:
            last = None
        self.documents.append((doc_id, user, sha, filename, size, status, created, last, access))
        self.classes[cls] += 1
        if chunks_under is not None:
            n = self.chunk_count()
            chunk_class = "attached" if chunks_under == doc_id else "orphan_healable"
            self.groups.append(_ChunkGroup(chunks_under, user, n, created, filename, chunk_class))
            self.chunk_classes[chunk_class] += n
            if chunk_class == "attached":
                self.processed_ids.append((doc_id, user))


def _accumulate(values: list[float]) -> Iterator[float]:
    total = 0.0
    for v in values:
        total += v
        yield total


def generate(spec: DatasetSpec, rule: IdRule) -> Dataset:
    """Build the dataset described by `spec` under the application's id rule."""
    b = _Builder(spec, rule)
    rng = b.rng
    n = spec.documents
    n_cons = round(n * spec.random_consistent)
    n_mis = round(n * spec.random_mismatched)
    n_unproc = round(n * spec.random_unprocessed)
    n_conflict = round(n * spec.conflict)
    n_other = round(n * spec.other)

    # random ids come from the old upload code, months back; a few recent ones are new
    # uploads that still got a random id ("UUID generation failures in production")
    def old_or_new() -> datetime:
        return b.when(0.05, 1.5) if rng.random() < 0.01 else b.when(150, 540)

    for _ in range(n_cons):
        doc_id, user = _uuid4(rng), b.user()
        b.add("random_consistent", doc_id, user, b.sha(), "processed", old_or_new(), doc_id)
    for _ in range(n_mis):
        doc_id, user, sha = _uuid4(rng), b.user(), b.sha()
        rule_id = str(rule.new_id(user, sha))
        b.add("random_mismatched", doc_id, user, sha, "processed", old_or_new(), rule_id)
    for i in range(n_unproc):
        status = ("uploaded", "processing", "failed")[i % 3]
        # one in five is recent: still inside the grace period, not (yet) stuck
        created = b.when(0.01, 0.5) if i % 5 == 0 else b.when(150, 540)
        b.add("random_unprocessed", _uuid4(rng), b.user(), b.sha(), status, created, None)
    conflict_docs = 0
    kind_toggle = 0
    while conflict_docs < n_conflict:
        user, sha = b.user(), b.sha()
        rule_id = str(rule.new_id(user, sha))
        if kind_toggle % 2 == 0:
            # the same file uploaded two or three times: the rule id is free
            members = rng.choice((2, 2, 3))
            for m in range(members):
                processed = m == 0 or rng.random() < 0.5
                under = (rule_id if rng.random() < 0.5 else None) if processed else None
                if processed and under is None:
                    under = "self"
                doc_id = _uuid4(rng)
                b.add(
                    "conflict",
                    doc_id,
                    user,
                    sha,
                    "processed" if processed else "uploaded",
                    b.when(150, 540),
                    doc_id if under == "self" else under,
                )
            b.conflict_kinds["duplicate_upload"] += 1
        else:
            # re-uploaded after the fix: a deterministic document already holds the rule id
            members = rng.choice((1, 1, 2))
            b.add("deterministic", rule_id, user, sha, "processed", b.when(1, 140), rule_id)
            for _ in range(members):
                doc_id = _uuid4(rng)
                processed = rng.random() < 0.7
                status = "processed" if processed else "failed"
                b.add(
                    "conflict",
                    doc_id,
                    user,
                    sha,
                    status,
                    b.when(150, 540),
                    doc_id if processed else None,
                )
            b.conflict_kinds["rule_id_taken"] += 1
        conflict_docs += members
        kind_toggle += 1
    for i in range(n_other):
        doc_id = _other_id(rng, i)
        b.add("other", doc_id, b.user(), b.sha(), "processed", b.when(100, 540), doc_id)
    n_det = max(0, n - len(b.documents))
    for i in range(n_det):
        user, sha = b.user(), b.sha()
        doc_id = str(rule.new_id(user, sha))
        r = i % 100
        if r < 2:  # just uploaded, the pipeline will get to it
            b.add(
                "deterministic",
                doc_id,
                user,
                sha,
                ("uploaded", "processing")[r],
                b.when(0.01, 0.5),
                None,
            )
        elif r == 2:  # failed in processing days ago: stuck
            b.add("deterministic", doc_id, user, sha, "failed", b.when(2, 140), None)
        else:
            b.add("deterministic", doc_id, user, sha, "processed", b.when(0.6, 140), doc_id)

    # chunks of documents deleted since: nothing will ever own them
    n_orphans = round(n * spec.unmatched_orphans)
    for _ in range(n_orphans):
        count = b.chunk_count()
        b.groups.append(
            _ChunkGroup(
                _uuid4(rng), b.user(), count, b.when(100, 540), "deleted.pdf", "orphan_unmatched"
            )
        )
        b.chunk_classes["orphan_unmatched"] += count

    shares: list[Share] = []
    for doc_id, owner, *_rest in b.documents:
        if rng.random() < spec.shared and len(b.users) > 1:
            grantees = {b.user() for _ in range(rng.choice((1, 1, 2)))} - {owner}
            for grantee in sorted(grantees):
                perm = "read" if rng.random() < 0.8 else "write"
                shares.append(
                    (doc_id, grantee, perm, spec.as_of - timedelta(days=rng.uniform(0, 90)))
                )

    total_chunks = sum(g.count for g in b.groups)
    n_dangling = round(total_chunks * spec.dangling_embeddings) if b.processed_ids else 0
    dangling = [b.processed_ids[rng.randrange(len(b.processed_ids))] for _ in range(n_dangling)]
    orphan_chunks = b.chunk_classes["orphan_healable"] + b.chunk_classes["orphan_unmatched"]
    manifest: dict[str, Any] = {
        "seed": spec.seed,
        "as_of": spec.as_of.isoformat(),
        "documents": {
            "total": len(b.documents),
            "by_class": {c: b.classes[c] for c in DOCUMENT_CLASSES},
        },
        "chunks": {
            "total": total_chunks,
            "by_class": {c: b.chunk_classes[c] for c in CHUNK_CLASSES},
        },
        "embeddings": {
            "total": total_chunks + n_dangling,
            "chunk_missing": n_dangling,
            "document_missing": orphan_chunks,
        },
        "shares": len(shares),
        "users": {"total": len({d[1] for d in b.documents})},
        "conflicts": {
            "groups": sum(b.conflict_kinds.values()),
            "by_kind": dict(sorted(b.conflict_kinds.items())),
        },
    }
    return Dataset(spec, b.documents, shares, b.groups, dangling, manifest)
