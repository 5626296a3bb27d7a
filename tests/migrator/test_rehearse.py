"""Rehearsals on real PostgreSQL: the whole run and its rollback on a copy, the source untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from migrator import assess, dataset, db, journal, rehearse, runs, seed
from migrator.idrule import IdRule
from migrator.settings import Settings
from tests.conftest import with_database

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
EXE = str(Path(sys.executable).parent / "uuidguard")


def _seed(settings: Settings, dsn: str | None = None, fk: seed.FkMode = "strict") -> sa.Engine:
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    ds = dataset.generate(dataset.DatasetSpec(documents=300, seed=11, as_of=AS_OF), rule)
    engine = db.create_engine(settings, dsn=dsn)
    with engine.connect() as conn:
        seed.seed(conn, ds, "public", fk, replace=False)
    return engine


def _fingerprint(engine: sa.Engine, settings: Settings) -> dict:
    with engine.connect() as conn:
        return runs.fingerprint(conn, settings)


def _runs(engine: sa.Engine, settings: Settings) -> list[dict]:
    t = journal.metadata(settings.journal_schema).tables[f"{settings.journal_schema}.runs"]
    with engine.connect() as conn:
        if journal.current(conn, settings.journal_schema) is None:
            return []
        return [dict(r) for r in conn.execute(sa.select(t)).mappings()]


def _databases(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())


@pytest.fixture
def staging_url(pg_server: str) -> Iterator[str]:
    """A second fresh database on the server under test, to play the staging copy."""
    name = f"t_staging_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("option", ["A", "B"])
def test_rehearsal_on_a_scratch_copy_leaves_the_source_untouched(
    settings: Settings, option: runs.Option
) -> None:
    """Copy, run to the end, verify, roll back, verify: every check passes, the timings and
    the projection are there, and the source has the same fingerprint and no journal."""
    engine = _seed(settings)
    with engine.connect() as conn:
        journal.init(conn, settings.journal_schema)  # so that a run could appear here
    before = _fingerprint(engine, settings)
    databases = _databases(engine)
    report = rehearse.rehearse(engine, settings, option, "tester", now=AS_OF)
    assert report["ok"], report["checks"]
    assert {c["check"] for c in report["checks"]} >= {
        "the copy equals the source",
        "the run completed",
        "verification after the run",
        "verification after the rollback",
        "the mapped tables exactly as before the run",
    }
    assert report["target"]["kind"] == "scratch"
    expected = assess.run(engine, settings, now=AS_OF)
    if option == "A":
        assert report["documents"] == expected["documents"]["to_rekey"]
    else:
        assert 0 < report["documents"] < expected["documents"]["to_rekey"]
    assert report["rekeyed"] == report["documents"] == report["production"]["documents"]
    assert list(report["phases"]) == list(rehearse.PHASES)
    assert report["documents_per_second"] > 0
    assert report["production"]["projected_seconds"] == pytest.approx(
        report["production"]["documents"] / report["documents_per_second"]
    )
    assert report["batches"]["committed"] >= 1
    assert _fingerprint(engine, settings) == before
    assert _runs(engine, settings) == []
    scratch = report["target"]["database"].rsplit("/", 1)[-1]
    assert scratch.startswith("uuidguard_scratch_") and scratch not in databases
    assert scratch not in _databases(engine)  # dropped again


def test_rehearsal_on_a_staging_database(settings: Settings, staging_url: str) -> None:
    """With a staging DSN the run happens there (its journal keeps the rolled-back run); the
    projection counts the source's documents; the source stays as it was."""
    engine = _seed(settings, fk="none")
    staging = _seed(settings, dsn=staging_url, fk="deferrable")
    with engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM documents WHERE ctid IN (SELECT ctid FROM documents LIMIT 50)")
        )
    before = _fingerprint(engine, settings)
    staged = _fingerprint(staging, settings)
    report = rehearse.rehearse(engine, settings, "A", "tester", now=AS_OF, staging_dsn=staging_url)
    assert report["ok"], report["checks"]
    assert report["target"] == {"kind": "staging", "database": db.describe(staging_url)}
    assert "copy" not in report["phases"]
    assert (
        report["production"]["documents"]
        == assess.run(engine, settings, now=AS_OF)["documents"]["to_rekey"]
    )
    assert report["production"]["documents"] < report["documents"]
    [run] = _runs(staging, settings)
    assert run["state"] == "rolled_back" and run["id"] == report["run"]
    assert _fingerprint(staging, settings) == staged
    assert _fingerprint(engine, settings) == before
    assert _runs(engine, settings) == []
    staging.dispose()


def test_staging_must_not_be_the_source_and_must_hold_the_tables(
    settings: Settings, staging_url: str
) -> None:
    """The database under migration is refused as staging; an empty one names the table."""
    engine = _seed(settings)
    with pytest.raises(rehearse.RehearsalError) as same:
        rehearse.rehearse(engine, settings, "A", "t", staging_dsn=_dsn(settings))
    assert "the database under migration itself" in str(same.value)
    with pytest.raises(rehearse.RehearsalError) as empty:
        rehearse.rehearse(engine, settings, "A", "t", staging_dsn=staging_url)
    assert "public.documents" in empty.value.problem
    assert _runs(engine, settings) == []


def _dsn(settings: Settings) -> str:
    assert settings.database.dsn is not None
    return settings.database.dsn.get_secret_value()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UUIDGUARD_")}
    proc = subprocess.run(
        [EXE, *args], capture_output=True, text=True, env={**clean, **(env or {})}, timeout=300
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_cli_rehearse_json_and_bad_input(settings: Settings, tmp_path: Path) -> None:
    """`rehearse --format json` reports a passing rehearsal; an unreachable staging DSN and a
    pg_bin without programs are one-line errors with exit 2; the source never changes."""
    engine = _seed(settings, fk="cascade")
    before = _fingerprint(engine, settings)
    url = _dsn(settings)
    ok = _cli("rehearse", "--format", "json", "--dsn", url)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["production"]["projected_seconds"] is not None
    refused = _cli(
        "rehearse",
        "--staging-dsn",
        "postgresql://uuidguard:s3cret@127.0.0.1:1/staging",
        "--dsn",
        url,
    )
    assert refused.returncode == 2
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith("error: cannot connect to the staging database at 127.0.0.1:1/staging")
    assert "--staging-dsn" in error and "Fix:" in error
    assert "s3cret" not in refused.stderr
    empty = tmp_path / "bin"
    empty.mkdir()
    no_tools = _cli("rehearse", "--dsn", url, env={"UUIDGUARD_BACKUP__PG_BIN": str(empty)})
    assert no_tools.returncode == 2
    assert "backup.pg_bin" in no_tools.stderr.strip().splitlines()[-1]
    assert _fingerprint(engine, settings) == before
    assert _runs(engine, settings) == []
