"""`uuidguard uat` on real PostgreSQL after a real run: it passes, then fails naming the
document when a share or a chunk reference is broken behind the tool's back."""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa

from migrator.idrule import IdRule
from tests.migrator.test_reports import _journal, _settings, clone, migrated
from tests.test_cli import run

__all__ = ["clone", "migrated"]  # the fixtures, shared with the reports' tests


def _uat(url: str, *args: str) -> tuple[int, dict, str]:
    proc = run("uat", "--format", "json", "--sample", "3", *args, "--dsn", url)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def _exec(url: str, sql: str, **params: object) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)
    engine.dispose()


def test_uat_passes_then_names_a_broken_share_and_a_broken_chunk(clone: str) -> None:
    """Owners, grantees, counts and new uploads pass; a moved share or chunk fails by id."""
    s = _settings(clone)
    rule = IdRule(s.id_rule.namespace, s.id_rule.template)
    new_id = rule.new_id_text("u-new", "ab" * 32)
    _exec(
        clone,
        "INSERT INTO documents (id, user_id, file_sha256, filename, size_bytes, status, created_at,"
        " access_count) VALUES (:id, 'u-new', :sha, 'new.pdf', 1, 'uploaded', now(), 0)",
        id=new_id,
        sha="ab" * 32,
    )
    code, result, _ = _uat(clone)
    assert code == 0 and result["ok"], result
    groups = {c["group"]: c for c in result["checks"]}
    assert set(groups) == {"canary", "counts", "shares", "uploads"}
    assert {c["check"] for c in result["checks"] if c["group"] == "canary"} == {
        f"owners find their documents ({m})" for m in s.probes.canary.modes
    }
    assert all(c["checked"] > 0 for c in result["checks"]), result["checks"]
    assert result["sampled"] >= 6  # a few per class

    # a share of a re-keyed document moved to a random document id
    (doc, grantee) = _journal(
        clone,
        "SELECT s.document_id::text, s.shared_with FROM document_shares s"
        " JOIN uuidguard.id_map m ON m.new_id = s.document_id AND m.state = 'done'"
        " ORDER BY 1, 2 LIMIT 1",
    )[0]
    _exec(
        clone,
        "UPDATE document_shares SET document_id = :x WHERE document_id = :d AND shared_with = :g",
        x=str(uuid.uuid4()),
        d=doc,
        g=grantee,
    )
    code, result, stderr = _uat(clone)
    assert code == 1 and not result["ok"]
    assert result["failing"] == [doc]
    bad = [c for c in result["checks"] if not c["ok"]]
    assert [c["group"] for c in bad] == ["shares"]
    assert bad[0]["failures"] == [f"{doc} (shared with {grantee})"]
    assert doc in stderr
    md = run("uat", "--dsn", clone)
    assert md.returncode == 1 and doc in md.stdout and "FAILED" in md.stdout
    _exec(
        clone,
        "UPDATE document_shares SET document_id = :d WHERE shared_with = :g AND document_id <> :d"
        " AND NOT EXISTS (SELECT 1 FROM documents WHERE id = document_shares.document_id)",
        d=doc,
        g=grantee,
    )
    assert _uat(clone)[0] == 0

    # one chunk of a re-keyed document pointed elsewhere
    (chunk, owner) = _journal(
        clone,
        "SELECT c.id::text, c.document_id::text FROM document_chunks c"
        " JOIN uuidguard.id_map m ON m.new_id = c.document_id AND m.state = 'done'"
        " ORDER BY 1 LIMIT 1",
    )[0]
    _exec(
        clone,
        "UPDATE document_chunks SET document_id = :x WHERE id = :c",
        x=str(uuid.uuid4()),
        c=chunk,
    )
    code, result, stderr = _uat(clone)
    assert code == 1
    assert result["failing"] == [owner]
    counts = next(c for c in result["checks"] if c["group"] == "counts")
    assert len(counts["failures"]) == 1 and counts["failures"][0].startswith(f"{owner} (")
    assert owner in stderr


def test_uat_names_nonconforming_uploads(clone: str) -> None:
    """An upload after the run with a random id fails the id-rule check, by id."""
    odd = str(uuid.uuid4())
    _exec(
        clone,
        "INSERT INTO documents (id, user_id, file_sha256, filename, size_bytes, status, created_at,"
        " access_count) VALUES (:id, 'u-odd', :sha, 'odd.pdf', 1, 'uploaded', now(), 0)",
        id=odd,
        sha="cd" * 32,
    )
    code, result, _ = _uat(clone)
    assert code == 1 and result["failing"] == [odd]
    uploads = next(c for c in result["checks"] if c["group"] == "uploads")
    assert uploads["checked"] == 1 and uploads["failures"][0].startswith(odd)
