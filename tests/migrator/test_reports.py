"""Reports for people on real PostgreSQL, over a seeded dataset taken through a real run:
communication drafts and recipients.csv, the completion report (Markdown, HTML, JSON), and
the bad inputs of `uuidguard report` and `uuidguard uat`."""

from __future__ import annotations

import csv
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from migrator import assess, dataset, db, journal, runner, runs, seed
from migrator.idrule import IdRule
from migrator.pace import Pace
from migrator.reports import communication, html
from migrator.settings import Settings, load_settings
from tests.conftest import with_database
from tests.test_cli import run

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass
class Migrated:
    """A database seeded, assessed and migrated to completion by one run of option A."""

    server: str
    name: str
    url: str
    run_id: int
    #: per user, from the classification before the run: class -> documents the run re-keys
    planned: dict[str, dict[str, int]]
    before: dict[str, Any]

    def clone(self) -> str:
        """A copy of the migrated database (tests that break things work on one)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.name}"')
        return name


def _settings(url: str) -> Settings:
    return load_settings(None, database={"dsn": url})


@pytest.fixture(scope="module")
def migrated(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Migrated]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(pg_server, name)
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("UUIDGUARD_") and key != "UUIDGUARD_TEST_DSN":
                mp.delenv(key)
        mp.chdir(tmp_path_factory.mktemp("reports"))
        s = _settings(url)
        rule = IdRule(s.id_rule.namespace, s.id_rule.template)
        spec = dataset.DatasetSpec(documents=400, seed=9, as_of=AS_OF, conflict=0.04)
        engine = db.create_engine(s)
        with engine.connect() as conn:
            seed.seed(conn, dataset.generate(spec, rule), "public", "none", replace=False)
            journal.init(conn, s.journal_schema)
        before = assess.run(engine, s, now=AS_OF)
        planned: dict[str, dict[str, int]] = {}
        with engine.connect() as conn, conn.begin():
            cl = assess.classify(conn, s)
            c = cl.docs.c
            for user, cls, n in conn.execute(
                sa.select(c.user_id, c["class"], sa.func.count())
                .where(c.rekey)
                .group_by(c.user_id, c["class"])
            ):
                planned.setdefault(user, {})[cls] = n
        with engine.connect() as conn, conn.begin():
            run_id = runs.create(conn, s, "A", AS_OF, "test")
        assert (
            runner.run_batches(engine, s, run_id, "w1", Pace(size=30, max_size=30)) == "completed"
        )
        engine.dispose()
        yield Migrated(pg_server, name, url, run_id, planned, before)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def clone(migrated: Migrated) -> Iterator[str]:
    name = migrated.clone()
    yield with_database(migrated.server, name)
    with psycopg.connect(migrated.server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _journal(url: str, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())
    finally:
        engine.dispose()


def _completion(url: str, *args: str) -> dict[str, Any]:
    proc = run("report", "completion", "--format", "json", *args, "--dsn", url)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_communication_drafts_and_recipients_match_the_assessment(
    migrated: Migrated, tmp_path: Path
) -> None:
    """recipients.csv and the drafts' numbers are the assessment's, per user and in total."""
    out = tmp_path / "drafts"
    proc = run(
        "report", "communication", str(migrated.run_id), "--out", str(out), "--dsn", migrated.url
    )
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {
        "notice.md",
        "restored.md",
        "action_needed.md",
        "internal.md",
        "recipients.csv",
    }
    rows = list(csv.DictReader((out / "recipients.csv").open()))
    by_segment: dict[str, dict[str, dict[str, str]]] = {}
    for r in rows:
        by_segment.setdefault(r["segment"], {})[r["user_id"]] = r
    # before the run: invisible (mismatched) and at-risk (consistent) documents per user
    expected_notice = {
        u: (c.get("random_mismatched", 0), c.get("random_consistent", 0))
        for u, c in migrated.planned.items()
        if c.get("random_mismatched") or c.get("random_consistent")
    }
    got_notice = {
        u: (int(r["invisible"]), int(r["at_risk"])) for u, r in by_segment["notice"].items()
    }
    assert got_notice == expected_notice
    # after it: every mismatched document of theirs is found again
    expected_restored = {
        u: c["random_mismatched"] for u, c in migrated.planned.items() if c.get("random_mismatched")
    }
    assert {u: int(r["restored"]) for u, r in by_segment["restored"].items()} == expected_restored
    # what is left now: stuck uploads and duplicates, per user, from an assessment taken now
    s = _settings(migrated.url)
    engine = db.create_engine(s)
    now = datetime.now(UTC)
    with engine.connect() as conn, conn.begin():
        cl = assess.classify(conn, s)
        c = cl.docs.c
        stuck = sa.and_(c.never_processed, c.created_at < now - s.assess.grace_period)
        left = {
            u: (int(st), int(dup))
            for u, st, dup in conn.execute(
                sa.select(
                    c.user_id,
                    assess.count_if(stuck),
                    assess.count_if(c["class"] == "conflict"),
                )
                .where(sa.or_(stuck, c["class"] == "conflict"))
                .group_by(c.user_id)
            )
        }
    after = assess.run(engine, s, now=now)
    engine.dispose()
    assert left, "the dataset has stuck uploads and duplicates"
    assert {
        u: (int(r["stuck"]), int(r["duplicates"])) for u, r in by_segment["action"].items()
    } == left
    assert sum(st for st, _ in left.values()) == after["failure_patterns"]["stuck"]["documents"]
    assert sum(d for _, d in left.values()) == after["documents"]["by_class"]["conflict"]
    assert all(r["filenames"] for r in rows)
    # the drafts carry the same totals
    notice = (out / "notice.md").read_text()
    restored = (out / "restored.md").read_text()
    internal = (out / "internal.md").read_text()
    mismatched = sum(v[0] for v in expected_notice.values())
    assert mismatched == migrated.before["documents"]["by_class"]["random_mismatched"]
    assert (
        f"{mismatched:,} documents invisible to search, of {len(expected_notice):,} users" in notice
    )
    assert (
        f"{mismatched:,} documents of {len(expected_restored):,} users are findable again"
        in restored
    )
    assert (
        f"| found again after the run | {mismatched:,} | {len(expected_restored):,} |" in internal
    )
    first = sorted(expected_restored)[0]
    assert f"| {first} | {expected_restored[first]:,} |" in restored


def test_completion_json_equals_the_journal(migrated: Migrated) -> None:
    """Every number of the completion report is the journal's; invisible documents go to zero."""
    report = _completion(migrated.url, str(migrated.run_id))
    rid = migrated.run_id
    url = migrated.url
    classes: dict[str, dict[str, int]] = {}
    for cls, state, n in _journal(
        url,
        "SELECT class, state, count(*) FROM uuidguard.id_map WHERE run_id = :r GROUP BY 1, 2",
        r=rid,
    ):
        classes.setdefault(cls, {"planned": 0})
        classes[cls]["planned"] += n
        classes[cls][state] = n
    for cls, v in classes.items():
        assert {k: report["classes"][cls][k] for k in v} == v
    assert set(report["classes"]) == set(classes)
    committed, docs, busy, rolled = _journal(
        url,
        "SELECT count(*) FILTER (WHERE state = 'committed'), sum(documents) FILTER (WHERE state = 'committed'),"
        " sum(seconds) FILTER (WHERE state = 'committed'), count(*) FILTER (WHERE state = 'rolled_back')"
        " FROM uuidguard.batches WHERE run_id = :r",
        r=rid,
    )[0]
    b = report["batches"]
    assert (b["committed"], b["documents"], b["rolled_back"]) == (committed, docs, rolled)
    assert b["busy_seconds"] == pytest.approx(busy, abs=1e-5)
    assert sum(h["batches"] for h in b["duration_histogram"]) == committed
    assert sum(t["documents"] for t in b["throughput"]) == docs
    events = _journal(
        url, "SELECT action FROM uuidguard.audit WHERE run_id = :r ORDER BY at, id", r=rid
    )
    assert [e["action"] for e in report["timeline"]["events"]] == [e[0] for e in events]
    alerts = _journal(url, "SELECT count(*) FROM uuidguard.alert_events WHERE run_id = :r", r=rid)[
        0
    ][0]
    assert len(report["timeline"]["alerts"]) == alerts
    (before,) = _journal(
        url,
        "SELECT figures FROM uuidguard.measurements WHERE run_id = :r AND phase = 'before'",
        r=rid,
    )[0]
    after = _journal(
        url,
        "SELECT id, figures FROM uuidguard.measurements WHERE run_id = :r AND phase = 'after'"
        " ORDER BY id DESC LIMIT 1",
        r=rid,
    )[0]
    assert report["after"]["id"] == after[0]
    for key in ("documents", "chunks", "users_with_invisible_documents", "canary", "latency"):
        assert report["before"][key] == before[key]
        assert report["after"][key] == after[1][key]
    # the baseline is what the assessment saw before the run
    assert before["documents"]["by_class"] == migrated.before["documents"]["by_class"]
    assert before["documents"]["invisible"] == migrated.before["documents"]["invisible"] > 0
    assert before["chunks"]["by_class"] == migrated.before["chunks"]["by_class"]
    assert (
        before["users_with_invisible_documents"] == migrated.before["users"]["invisible_documents"]
    )
    assert before["canary"]["accessibility"] < 1 and before["canary"]["checked"] == 20
    # and after it nothing is invisible any more
    a = report["after"]
    assert a["documents"]["invisible"] == 0 and a["users_with_invisible_documents"] == 0
    assert a["chunks"]["by_class"]["orphan_healable"] == 0
    assert a["canary"]["accessibility"] == 1.0
    assert a["latency"]["p50_seconds"] > 0 and a["latency"]["samples"] == 60
    assert report["remains"]["conflicts"]["count"] == a["documents"]["by_class"]["conflict"] > 0
    assert report["remains"]["other_ids"]["count"] == a["documents"]["by_class"]["other"]
    assert (
        report["remains"]["unmatched_orphan_chunks"]["count"]
        == a["chunks"]["by_class"]["orphan_unmatched"]
    )
    status = {i["item"]: i["status"] for i in report["checklist"]}
    assert len(status) == 11
    assert status["Confirm UUID consistency checks pass system-wide"] == "pass"
    assert (
        status["Verify RAG queries return results for previously inaccessible documents"] == "pass"
    )
    assert status["Test document sharing and collaboration features"] == "pass"
    assert status["Monitor system stability over 24-48 hours post-migration"] == "pending"
    assert report["uat"]["ok"]


def test_completion_html_is_self_contained_with_every_chart(
    migrated: Migrated, tmp_path: Path
) -> None:
    """One page: every chart as inline SVG, no external reference; Markdown has the sections."""
    page = tmp_path / "report.html"
    proc = run(
        "report", "completion", "--format", "html", "--out", str(page), "--dsn", migrated.url
    )
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    charts = re.findall(r'<svg class="chart" data-chart="([^"]+)"', text)
    assert charts == list(html.CHARTS)
    assert text.count("<rect") > 10 and "<polyline" in text
    assert not re.search(r"https?://", text)
    assert not re.search(r"\b(src|href)\s*=", text)
    assert all(u.startswith("data:") for u in re.findall(r"url\(\s*['\"]?([^)'\"]*)", text))
    assert "@import" not in text and "<link" not in text and "<script" not in text
    md = run("report", "completion", "--dsn", migrated.url)
    assert md.returncode == 0, md.stderr
    for heading in (
        "## Planned against done",
        "## Before and after",
        "### Batch duration distribution",
        "### Throughput over time",
        "## Timeline",
        "## What remains for humans",
        "## Post-migration validation checklist (B.3.2)",
    ):
        assert heading in md.stdout


def test_rolled_back_run_reports_itself_with_before_figures_restored(clone: str) -> None:
    """A run rolled back whole: its state, the trigger, and the after figures equal the before."""
    s = _settings(clone)
    engine = db.create_engine(s)
    rid = int(_journal(clone, "SELECT max(id) FROM uuidguard.runs")[0][0])
    runner.rollback(
        engine, s, rid, everything=True, force=True, actor="qa", reason="uat found a problem"
    )
    engine.dispose()
    report = _completion(clone, "--no-uat")
    assert report["run"]["state"] == "rolled_back"
    assert [r["trigger"] for r in report["timeline"]["rollbacks"]] == ["uat found a problem"]
    b, a = report["before"], report["after"]
    for key in ("documents", "chunks", "users_with_invisible_documents"):
        assert a[key] == b[key]
    assert a["canary"]["accessibility"] == b["canary"]["accessibility"] < 1
    assert a["documents"]["invisible"] > 0
    assert all(
        v["done"] == 0 and v["rolled_back"] == v["planned"] for v in report["classes"].values()
    )
    status = {i["item"]: i["status"] for i in report["checklist"]}
    assert status["Test end-to-end pipeline with migrated data"] == "fail"
    assert status["Confirm UUID consistency checks pass system-wide"] == "pass"


def test_bad_input_gives_one_line_errors(clone: str, tmp_path: Path) -> None:
    """Unknown run, a run never started, an unwritable --out, broken templates: one line each."""

    def fails(*args: str) -> str:
        proc = run(*args, "--dsn", clone)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        return lines[0]

    assert "run 999: no such run" in fails("report", "completion", "999")
    assert "run 999: no such run" in fails("report", "communication", "999", "--out", str(tmp_path))
    assert "run 999: no such run" in fails("uat", "999")
    # a run created but never started
    s = _settings(clone)
    engine = db.create_engine(s)
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text("UPDATE uuidguard.runs SET state = 'rolled_back'"))
        fresh = runs.create(conn, s, "A", AS_OF, "test")
    engine.dispose()
    assert f"run {fresh}: never started" in fails("report", "completion", str(fresh))
    assert f"run {fresh}: is planned with no document re-keyed" in fails("uat", str(fresh))
    # an output directory that cannot be written
    blocker = tmp_path / "file"
    blocker.write_text("")
    msg = fails("report", "communication", "--out", str(blocker / "drafts"))
    assert f"cannot write the drafts into {blocker / 'drafts'}" in msg
    msg = fails(
        "report", "completion", "--format", "html", "--out", str(tmp_path / "no" / "r.html")
    )
    assert "does not exist" in msg
    # broken templates: an unknown field, a syntax error
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "notice.md.j2").write_text("Hello {{ run.id }} {{ recipient_name }}\n")
    msg = fails("report", "communication", "--out", str(tmp_path / "o"), "--templates", str(tpl))
    assert "template notice.md.j2 refers to unknown field 'recipient_name'" in msg
    (tpl / "notice.md.j2").write_text("Hello {{ run.nosuch }}\n")
    msg = fails("report", "communication", "--out", str(tmp_path / "o"), "--templates", str(tpl))
    assert "unknown field 'nosuch'" in msg
    (tpl / "notice.md.j2").write_text("{% if run.id %}unclosed\n")
    msg = fails("report", "communication", "--out", str(tmp_path / "o"), "--templates", str(tpl))
    assert "notice.md.j2 line" in msg and "syntax error" in msg
    assert not (tmp_path / "o").exists()
    # an override that works replaces the shipped draft of that name only
    (tpl / "notice.md.j2").write_text("Run {{ run.id }}: {{ totals.invisible }} invisible\n")
    proc = run(
        "report",
        "communication",
        "--out",
        str(tmp_path / "o"),
        "--templates",
        str(tpl),
        "--dsn",
        clone,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "notice.md").read_text().startswith(f"Run {fresh}: 0 invisible")
    assert (tmp_path / "o" / "internal.md").read_text().startswith("# Draft 4")


def test_shipped_templates_use_only_known_fields(migrated: Migrated) -> None:
    """Every shipped draft renders under StrictUndefined from a real context."""
    s = _settings(migrated.url)
    engine = db.create_engine(s)
    with engine.connect() as conn, conn.begin():
        context = communication.build(conn, s, migrated.run_id, datetime.now(UTC))
    engine.dispose()
    drafts = communication.render(context)
    assert set(drafts) == set(communication.DRAFTS)
    assert all("«" in drafts[k] for k in ("notice", "restored", "action_needed"))
