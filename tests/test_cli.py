"""The `uuidguard` command as an operator runs it: real processes, real PostgreSQL."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from migrator.settings import Settings

EXE = str(Path(sys.executable).parent / "uuidguard")


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UUIDGUARD_")}
    proc = subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=cwd,
        timeout=300,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def dsn(settings: Settings) -> str:
    assert settings.database.dsn is not None
    return settings.database.dsn.get_secret_value()


@pytest.fixture
def seeded(settings: Settings, tmp_path: Path) -> tuple[str, dict]:
    url = dsn(settings)
    manifest = tmp_path / "manifest.json"
    proc = run(
        "seed",
        "--documents",
        "500",
        "--seed",
        "3",
        "--fk",
        "deferrable",
        "--manifest",
        str(manifest),
        "--dsn",
        url,
    )
    assert proc.returncode == 0, proc.stderr
    assert "documents: 500" in proc.stdout
    return url, json.loads(manifest.read_text())


def test_assess_json_has_the_stable_keys(seeded: tuple[str, dict]) -> None:
    """`assess --format json` carries every key the issue fixes, with the manifest's counts."""
    url, manifest = seeded
    proc = run("assess", "--format", "json", "--dsn", url)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["documents"]["by_class"] == manifest["documents"]["by_class"]
    assert r["chunks"]["by_class"] == manifest["chunks"]["by_class"]
    for key in ("total", "affected", "invisible_documents"):
        assert isinstance(r["users"][key], int)
    assert isinstance(r["storage"]["affected_bytes"], int) and r["storage"]["affected_bytes"] > 0
    assert isinstance(r["priority"]["documents"], int)
    assert r["conflicts"]["groups"] == manifest["conflicts"]["groups"]
    assert "per_user" not in r


def test_assess_out_writes_three_files(seeded: tuple[str, dict], tmp_path: Path) -> None:
    """`--out DIR` writes the Markdown, the JSON and the per-user CSV; stdout has the Markdown."""
    url, _ = seeded
    out = tmp_path / "report"
    extra = tmp_path / "users-extra.csv"
    proc = run("assess", "--out", str(out), "--users-csv", str(extra), "--dsn", url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# UUID damage assessment")
    assert sorted(p.name for p in out.iterdir()) == [
        "assessment.json",
        "assessment.md",
        "users.csv",
    ]
    assert "## Documents by class" in (out / "assessment.md").read_text()
    rows = list(csv.DictReader((out / "users.csv").open()))
    affected = json.loads((out / "assessment.json").read_text())["users"]["affected"]
    assert len(rows) == affected
    assert set(rows[0]) >= {"user_id", "documents", "affected", "invisible", "invisible_share"}
    assert extra.read_text() == (out / "users.csv").read_text()


def test_calibrate_passes_on_the_right_rule_and_fails_on_a_wrong_one(
    seeded: tuple[str, dict],
) -> None:
    """The seed's rule calibrates at 100%; another namespace reproduces nothing and exits 1."""
    url, manifest = seeded
    ok = run("calibrate", "--dsn", url)
    assert ok.returncode == 0, ok.stderr
    assert "(100.00%)" in ok.stdout
    wrong = run(
        "calibrate",
        "--format",
        "json",
        "--dsn",
        url,
        env={"UUIDGUARD_ID_RULE__NAMESPACE": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"},
    )
    assert wrong.returncode == 1
    r = json.loads(wrong.stdout)
    assert (
        r["reproduced"] == 0
        and r["candidates"] == manifest["documents"]["by_class"]["deterministic"]
    )
    assert r["mismatches"]


def test_config_show_masks_the_password() -> None:
    """`config show` prints the resolved settings without the DSN's password."""
    proc = run("config", "show", "--dsn", "postgresql://app:hunter2@db:5432/rag")
    assert proc.returncode == 0, proc.stderr
    assert "hunter2" not in proc.stdout
    assert "app:***@db:5432/rag" in proc.stdout
    assert "[mapping.documents]" in proc.stdout


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (
            ["assess", "--dsn", "postgresql://postgres@127.0.0.1:1/none"],
            {},
            "cannot connect to the database",
        ),
        (["assess", "--dsn", "not a url"], {}, "config database.dsn"),
        (["assess", "--config", "/nonexistent/uuidguard.toml"], {}, "does not exist"),
        (
            [
                "seed",
                "--random-mismatched",
                "0.9",
                "--random-consistent",
                "0.5",
                "--dsn",
                "postgresql://x@127.0.0.1:1/y",
            ],
            {},
            "add up to",
        ),
    ],
    ids=["unreachable", "bad-dsn", "missing-config", "shares-over-one"],
)
def test_bad_input_is_one_clear_line(args: list[str], env: dict[str, str], needle: str) -> None:
    """Bad input: one line naming the cause and the fix, a non-zero exit, no traceback."""
    proc = run(*args, env=env)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Fix:" in lines[0]


def test_missing_table_and_column_name_the_config_key(settings: Settings) -> None:
    """An empty database, then a renamed column: each error names the object and the key to fix."""
    url = dsn(settings)
    proc = run("assess", "--dsn", url)
    assert proc.returncode == 2
    assert "public.documents" in proc.stderr and "mapping.documents.table" in proc.stderr
    assert run("seed", "--documents", "20", "--dsn", url).returncode == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE document_chunks RENAME COLUMN document_id TO doc_id")
    proc = run("assess", "--dsn", url)
    assert proc.returncode == 2
    assert "public.document_chunks.document_id" in proc.stderr
    assert "mapping.chunks.document_id" in proc.stderr and "doc_id" in proc.stderr
    fixed = run("assess", "--dsn", url, env={"UUIDGUARD_MAPPING__CHUNKS__DOCUMENT_ID": "doc_id"})
    assert fixed.returncode == 0, fixed.stderr


def test_seed_twice_needs_replace(seeded: tuple[str, dict]) -> None:
    """Seeding over existing data is refused with the flag to pass; nothing is dropped."""
    url, _ = seeded
    proc = run("seed", "--documents", "10", "--dsn", url)
    assert proc.returncode == 2 and "--replace" in proc.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone() == (500,)


def test_demo_on_the_embedded_server_then_stop(tmp_path: Path) -> None:
    """`demo` starts the embedded server, seeds, assesses, plans and starts a run; later
    commands reuse it; `db stop` ends it. (The daemon part: test_demo_serves_a_run_to_the_end.)"""
    env = {"UUIDGUARD_DATABASE__STATE_DIR": str(tmp_path / "state")}
    try:
        proc = run("demo", "--documents", "300", "--no-serve", env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "documents: 300" in proc.stdout
        assert "carry a random id" in proc.stdout and "plan: option" in proc.stdout
        assert "documents to re-key" in proc.stdout
        status = run("db", "status", env=env, cwd=tmp_path)
        assert status.returncode == 0 and "running" in status.stdout
        again = run("assess", "--format", "json", env=env, cwd=tmp_path)
        assert json.loads(again.stdout)["documents"]["total"] == 300
        reuse = run("demo", "--no-serve", env=env, cwd=tmp_path)
        assert "reusing the seeded demo data" in reuse.stderr
    finally:
        stop = run("db", "stop", env=env, cwd=tmp_path)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert run("db", "status", env=env, cwd=tmp_path).returncode == 1


def test_migrate_from_the_command_line(seeded: tuple[str, dict]) -> None:
    """init, create, run a few batches, pause, resume, finish, roll back: each a clear step."""
    url, manifest = seeded
    assert "uuidguard init" in run("migrate", "create", "--dsn", url).stderr
    assert "created" in run("init", "--dsn", url).stdout
    created = run("migrate", "create", "--format", "json", "--dsn", url)
    assert created.returncode == 0, created.stderr
    run_id = json.loads(created.stdout)["run"]
    assert run("migrate", "create", "--dsn", url).returncode == 2  # one active run at a time
    first = run("migrate", "run", "--max-batches", "2", "--batch-size", "20", "--dsn", url)
    assert first.returncode == 0, first.stderr
    status = json.loads(run("migrate", "status", "--format", "json", "--dsn", url).stdout)
    assert status["run"] == run_id and status["state"] == "running"
    assert 0 < status["documents"]["done"] < status["documents"]["total"]
    assert run("migrate", "pause", "--dsn", url).returncode == 0
    paused = run("migrate", "run", "--dsn", url)
    assert paused.returncode == 2 and "resume" in paused.stderr
    assert run("migrate", "resume", str(run_id), "--dsn", url).returncode == 0
    assert "is completed" in run("migrate", "run", "--dsn", url).stdout
    assert run("migrate", "rollback", "--all", "--dsn", url).returncode == 2  # completed: --force
    back = run("migrate", "rollback", "--all", "--force", "--dsn", url)
    assert back.returncode == 0, back.stderr
    after = json.loads(run("assess", "--format", "json", "--dsn", url).stdout)
    assert after["documents"]["by_class"] == manifest["documents"]["by_class"]
    assert after["chunks"]["by_class"] == manifest["chunks"]["by_class"]
    assert run("migrate", "status", "999", "--dsn", url).returncode == 2


def test_demo_serves_a_run_to_the_end(tmp_path: Path) -> None:
    """`uuidguard demo` as `make demo` runs it: the daemon serves, heals the run, writes the
    HTML completion report and says where, exits 0 on SIGTERM."""
    import signal
    import time

    import httpx

    from tests.stack import free_port, wait_until

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("UUIDGUARD_")},
        "UUIDGUARD_DATABASE__STATE_DIR": str(tmp_path / "state"),
    }
    proc = subprocess.Popen(
        [EXE, "demo", "--documents", "400", "--port", str(port), "--run-seconds", "4"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def status() -> dict:
        try:
            return httpx.get(f"{base}/api/v1/status", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return {}

    try:
        wait_until("the demo's daemon", lambda: bool(status()), 120)
        wait_until(
            "the demo's run to complete",
            lambda: (status().get("migration") or {}).get("state") == "completed",
            120,
        )
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert 'uuidguard_migration_state{state="completed"} 1.0' in metrics
        reports = tmp_path / "state" / "reports"
        wait_until(
            "the demo's completion report",
            lambda: any(reports.glob("run-*-completion.html")),
            60,
        )
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Bearer" in out and "/metrics" in out and "uuidguard stopped" in err
        (report,) = reports.glob("run-*-completion.html")
        assert f"completion report written to {report.resolve()}" in out
        page = report.read_text()
        assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 4
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        run(
            "db",
            "stop",
            env={"UUIDGUARD_DATABASE__STATE_DIR": str(tmp_path / "state")},
            cwd=tmp_path,
        )
