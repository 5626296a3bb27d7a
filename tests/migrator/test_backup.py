"""Backups on real PostgreSQL: pg_dump of the mapped tables, the test restore, the journal
record, and the restore that brings a damaged table back."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from migrator import backup, dataset, db, journal, preflight, runs, seed
from migrator.idrule import IdRule
from migrator.settings import Settings, load_settings

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
EXE = str(Path(sys.executable).parent / "uuidguard")


def _prepare(settings: Settings, fk: seed.FkMode = "strict", documents: int = 200) -> sa.Engine:
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    ds = dataset.generate(dataset.DatasetSpec(documents=documents, seed=7, as_of=AS_OF), rule)
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        seed.seed(conn, ds, "public", fk, replace=False)
        journal.init(conn, settings.journal_schema)
    return engine


def _fingerprint(engine: sa.Engine, settings: Settings) -> dict:
    with engine.connect() as conn:
        return runs.fingerprint(conn, settings)


def _backups(engine: sa.Engine, settings: Settings) -> list[dict]:
    t = journal.metadata(settings.journal_schema).tables[f"{settings.journal_schema}.backups"]
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(t).order_by(t.c.id)).mappings()]


def _constraints(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return sorted(
            (str(r[0]), str(r[1]))
            for r in conn.execute(
                sa.text(
                    "SELECT conrelid::regclass::text, conname FROM pg_constraint"
                    " WHERE connamespace = 'public'::regnamespace"
                    " UNION ALL SELECT tablename, indexname FROM pg_indexes"
                    " WHERE schemaname = 'public'"
                )
            )
        )


def _preflight_backup(engine: sa.Engine, settings: Settings) -> dict:
    report = preflight.run(engine, settings, "tester")
    [check] = [c for c in report["checks"] if c["name"] == "verified backup"]
    return check


def _scratch_databases(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                {"p": backup.SCRATCH_PREFIX + "%"},
            ).scalars()
        )


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UUIDGUARD_")}
    proc = subprocess.run(
        [EXE, *args], capture_output=True, text=True, env={**clean, **(env or {})}, timeout=300
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _error_lines(proc: subprocess.CompletedProcess[str]) -> int:
    """Error lines on stderr (progress lines aside); the error is the last line."""
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error:"), proc.stderr
    return sum(line.startswith("error:") for line in lines)


def _dsn(settings: Settings) -> str:
    assert settings.database.dsn is not None
    return settings.database.dsn.get_secret_value()


def test_backup_is_verified_recorded_and_holds_only_the_mapped_tables(
    settings: Settings, tmp_path: Path
) -> None:
    """A backup restores in a scratch database to the source's fingerprint, is recorded
    verified (preflight accepts it), and its dump holds the mapped tables, not the journal."""
    engine = _prepare(settings)
    scratch_before = _scratch_databases(engine)
    result = backup.create(engine, settings, tmp_path / "b.dump", "tester")
    assert result["verified"]
    assert result["fingerprint"] == result["restored_fingerprint"] == _fingerprint(engine, settings)
    assert Path(result["path"]) == tmp_path / "b.dump"
    assert result["bytes"] == (tmp_path / "b.dump").stat().st_size > 0
    [row] = _backups(engine, settings)
    assert row["verified"] and row["verified_at"] is not None and row["error"] is None
    assert row["fingerprint"] == row["restored_fingerprint"] == result["fingerprint"]
    assert row["created_by"] == "tester" and row["path"] == result["path"]
    assert sorted(row["tables"]) == sorted(
        f"public.{t}" for t in ("documents", "document_chunks", "embeddings", "document_shares")
    )
    assert _preflight_backup(engine, settings)["status"] == "pass"
    tools = backup.find_tools(settings, backup.server_major(engine))
    toc = backup.entries(tools, Path(result["path"]), settings)
    assert not [e for e in toc if settings.journal_schema in e]
    tables = {e.split()[-2] for e in toc if " TABLE DATA " in e}
    assert tables == {"documents", "document_chunks", "embeddings", "document_shares"}
    assert any(" INDEX " in e or " CONSTRAINT " in e for e in toc)
    assert _scratch_databases(engine) == scratch_before


@pytest.mark.parametrize("fk", ["none", "strict"])
def test_restore_after_damage_gives_back_the_fingerprint(
    settings: Settings, tmp_path: Path, fk: seed.FkMode
) -> None:
    """Damaged rows, a dropped index: restoring the latest verified backup brings the tables,
    their constraints and the recorded fingerprint back."""
    engine = _prepare(settings, fk)
    made = backup.create(engine, settings, tmp_path / "b.dump", "tester")
    shape = _constraints(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "DELETE FROM embeddings WHERE chunk_id IN"
                " (SELECT id FROM document_chunks WHERE chunk_index % 3 = 0)"
            )
        )
        conn.execute(sa.text("DELETE FROM document_chunks WHERE chunk_index % 3 = 0"))
        conn.execute(sa.text("UPDATE documents SET filename = 'damaged' WHERE access_count > 2"))
        conn.execute(sa.text("ALTER TABLE document_shares DROP CONSTRAINT document_shares_pkey"))
    assert _fingerprint(engine, settings) != made["fingerprint"]
    result = backup.restore(engine, settings, "tester")
    assert result["backup"] == made["backup"] and result["matches"] is True
    assert _fingerprint(engine, settings) == made["fingerprint"]
    assert _constraints(engine) == shape
    # the journal is untouched by the restore, and the restore is audited in it
    assert len(_backups(engine, settings)) == 1
    audit = journal.metadata(settings.journal_schema).tables[f"{settings.journal_schema}.audit"]
    with engine.connect() as conn:
        actions = list(conn.execute(sa.select(audit.c.action).order_by(audit.c.id)).scalars())
    assert actions[-2:] == ["backup", "restore"]


def test_the_fingerprint_is_the_dump_snapshot_s(settings: Settings, tmp_path: Path) -> None:
    """A write committed after the snapshot is in neither the fingerprint nor the dump: the
    test restore agrees with the recorded fingerprint on a live database."""
    engine = _prepare(settings, "none")

    def write() -> None:
        with engine.begin() as other:
            other.execute(sa.text("DELETE FROM document_shares"))

    result = backup.create(engine, settings, tmp_path / "b.dump", "tester", after_snapshot=write)
    assert result["verified"]
    assert result["fingerprint"]["public.document_shares"]["rows"] > 0
    assert _fingerprint(engine, settings)["public.document_shares"]["rows"] == 0


def test_restore_refuses_while_a_run_is_active(settings: Settings, tmp_path: Path) -> None:
    """An active run blocks the restore (nothing changes) unless forced."""
    engine = _prepare(settings, "none")
    made = backup.create(engine, settings, tmp_path / "b.dump", "tester")
    with engine.begin() as conn:
        run_id = runs.create(conn, settings, "A", AS_OF, "tester")
        conn.execute(sa.text("DELETE FROM document_shares"))
    damaged = _fingerprint(engine, settings)
    with pytest.raises(runs.RunError) as raised:
        backup.restore(engine, settings, "tester")
    assert raised.value.run_id == run_id
    assert _fingerprint(engine, settings) == damaged
    assert backup.restore(engine, settings, "tester", force=True)["matches"] is True
    assert _fingerprint(engine, settings) == made["fingerprint"]


def test_restore_into_another_database_leaves_the_source_alone(
    settings: Settings, tmp_path: Path
) -> None:
    """--into restores the backup into an empty database elsewhere, extensions included."""
    engine = _prepare(settings, "deferrable")
    made = backup.create(engine, settings, tmp_path / "b.dump", "tester")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM embeddings"))
    damaged = _fingerprint(engine, settings)
    with backup.scratch_database(engine, "-") as url:
        result = backup.restore(engine, settings, "tester", into=url)
        target = db.create_engine(settings, dsn=url)
        try:
            assert _fingerprint(target, settings) == made["fingerprint"]
        finally:
            target.dispose()
    assert result["matches"] is True
    assert _fingerprint(engine, settings) == damaged


def test_a_dump_that_restores_differently_is_recorded_unverified(
    settings: Settings, tmp_path: Path
) -> None:
    """When the test restore fails, the backup stays recorded unverified with the reason and
    preflight does not count it."""
    engine = _prepare(settings, "none")
    with engine.begin() as conn:
        # a column default calling a function that is not part of the dump: the restore fails
        conn.execute(
            sa.text(
                "CREATE FUNCTION public.ug_share_default() RETURNS text AS 'SELECT 1::text' LANGUAGE sql"
            )
        )
        conn.execute(
            sa.text(
                "ALTER TABLE document_shares ALTER COLUMN permission SET DEFAULT public.ug_share_default()"
            )
        )
    with pytest.raises(backup.BackupError) as raised:
        backup.create(engine, settings, tmp_path / "b.dump", "tester")
    assert "ug_share_default" in str(raised.value)
    [row] = _backups(engine, settings)
    assert row["verified"] is False and row["verified_at"] is None
    assert "ug_share_default" in row["error"]
    assert (tmp_path / "b.dump").is_file()
    assert _preflight_backup(engine, settings)["status"] == "fail"


def test_cli_backup_damage_restore(settings: Settings, tmp_path: Path) -> None:
    """The operator's path with the real executable: backup, damage, restore --yes."""
    engine = _prepare(settings, "cascade")
    url = _dsn(settings)
    made = _cli("backup", "--out", str(tmp_path / "cli.dump"), "--format", "json", "--dsn", url)
    assert made.returncode == 0, made.stderr
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM documents WHERE status <> 'processed'"))
    refused = _cli("restore", "--dsn", url)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    restored = _cli("restore", "--yes", "--dsn", url)
    assert restored.returncode == 0, restored.stderr
    assert "fingerprint matches" in restored.stdout
    [row] = _backups(engine, settings)
    assert _fingerprint(engine, settings) == row["fingerprint"]


def test_cli_bad_input_gives_one_line_errors(settings: Settings, tmp_path: Path) -> None:
    """Unwritable --out, a pg_bin without pg_dump, a missing journal: one line naming cause and
    fix, exit 2, no file and no journal record left behind."""
    engine = _prepare(settings, "none")
    url = _dsn(settings)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    unwritable = _cli("backup", "--out", str(blocker / "b.dump"), "--dsn", url)
    assert unwritable.returncode == 2
    assert "cannot write the backup" in unwritable.stderr and "Fix:" in unwritable.stderr
    assert (
        _error_lines(unwritable) == 1 and "not-a-directory is not a directory" in unwritable.stderr
    )
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    no_tools = _cli(
        "backup",
        "--out",
        str(tmp_path / "b.dump"),
        "--dsn",
        url,
        env={"UUIDGUARD_BACKUP__PG_BIN": str(empty)},
    )
    assert no_tools.returncode == 2
    assert "backup.pg_bin" in no_tools.stderr and "Fix:" in no_tools.stderr
    assert _error_lines(no_tools) == 1
    assert not (tmp_path / "b.dump").exists()
    assert _backups(engine, settings) == []
    none_yet = _cli("restore", "--yes", "--dsn", url)
    assert none_yet.returncode == 2 and "no verified backup" in none_yet.stderr


def test_a_schema_with_awkward_names_is_dumped_exactly(settings: Settings, tmp_path: Path) -> None:
    """Mapped tables in a schema whose name needs quoting (and holds pattern characters) are
    dumped, test-restored into a database lacking the schema, and restored; a table in
    another schema with the same name stays out of the dump."""
    schema = 'Rag "data"*'
    custom = load_settings(
        None, database=settings.database.model_dump(), mapping={"schema": schema}
    )
    rule = IdRule(custom.id_rule.namespace, custom.id_rule.template)
    ds = dataset.generate(dataset.DatasetSpec(documents=60, seed=3, as_of=AS_OF), rule)
    engine = db.create_engine(custom)
    with engine.connect() as conn:
        seed.seed(conn, ds, schema, "none", replace=False)
        journal.init(conn, custom.journal_schema)
        conn.execute(sa.text("CREATE TABLE public.documents (decoy int)"))
        conn.commit()
    made = backup.create(engine, custom, tmp_path / "b.dump", "tester")
    assert made["verified"]
    assert sorted(made["tables"])[0] == f"{schema}.document_chunks"
    tools = backup.find_tools(custom, backup.server_major(engine))
    toc = backup.entries(tools, tmp_path / "b.dump", custom)
    assert not [e for e in toc if " public " in e]
    q = '"Rag ""data""*"'
    with engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {q}.document_shares"))
    assert backup.restore(engine, custom, "tester")["matches"] is True
    assert _fingerprint(engine, custom) == made["fingerprint"]
