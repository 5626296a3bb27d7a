"""Two worker processes on one run while the application keeps writing: nothing lost, nothing
applied twice, the application's writes all land."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg

from migrator import db, verify
from migrator.settings import Settings

EXE = str(Path(sys.executable).parent / "uuidguard")


def _ok(url: str, *args: str, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("UUIDGUARD_")}
    proc = subprocess.run(
        [EXE, *args, "--dsn", url],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class App(threading.Thread):
    """The RAG platform at work: opens documents (found by owner and content, as the app
    does, whatever their id) and uploads new ones with their chunks."""

    def __init__(self, url: str, targets: list[tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        self.url, self.targets = url, targets
        self.stop = threading.Event()
        self.increments = 0
        self.uploads = 0
        self.errors: list[str] = []

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            i = 0
            while not self.stop.is_set():
                user, sha = self.targets[i % len(self.targets)]
                i += 1
                try:
                    cur = conn.execute(
                        "UPDATE documents SET access_count = access_count + 1, last_accessed_at = now()"
                        " WHERE user_id = %s AND file_sha256 = %s",
                        (user, sha),
                    )
                    self.increments += cur.rowcount
                    if i % 10 == 0:
                        doc = str(uuid.uuid5(uuid.NAMESPACE_URL, f"app-user:{i:064x}"))
                        with conn.transaction():
                            conn.execute(
                                "INSERT INTO documents (id, user_id, file_sha256, status, created_at, access_count)"
                                " VALUES (%s, 'app-user', %s, 'processed', now(), 0)",
                                (doc, f"{i:064x}"),
                            )
                            for n in range(2):
                                conn.execute(
                                    "INSERT INTO document_chunks (id, document_id, user_id, chunk_index, content)"
                                    " VALUES (%s, %s, 'app-user', %s, 'fresh upload')",
                                    (str(uuid.uuid4()), doc, n),
                                )
                        self.uploads += 1
                except psycopg.Error as exc:  # the app must never see an error from us
                    self.errors.append(str(exc))


def test_two_workers_with_the_application_writing(settings: Settings) -> None:
    """Everything re-keyed once; every application write present; errors: none."""
    assert settings.database.dsn is not None
    url = settings.database.dsn.get_secret_value()
    _ok(url, "seed", "--documents", "3000", "--seed", "4", "--fk", "deferrable")
    _ok(url, "init")
    _ok(url, "migrate", "create")
    with psycopg.connect(url) as conn:
        targets = conn.execute(
            "SELECT d.user_id, d.file_sha256 FROM documents d JOIN uuidguard.id_map m ON m.old_id = d.id"
            " WHERE m.class <> 'conflict' ORDER BY m.old_id LIMIT 300"
        ).fetchall()
        access_before = conn.execute("SELECT sum(access_count) FROM documents").fetchone()[0]
        planned = conn.execute("SELECT count(*) FROM uuidguard.id_map").fetchone()[0]
    app = App(url, [(u, s) for u, s in targets])
    app.start()
    try:
        # small batches: the run must outlast the second process's start (a spawned interpreter)
        _ok(
            url,
            "migrate",
            "run",
            "--workers",
            "2",
            env={"UUIDGUARD_MIGRATE__MAX_BATCH": "3", "UUIDGUARD_MIGRATE__START_BATCH": "3"},
        )
    finally:
        app.stop.set()
        app.join(timeout=30)
    assert app.errors == []
    assert app.increments > 0 and app.uploads > 0
    with psycopg.connect(url) as conn:
        access_after = conn.execute("SELECT sum(access_count) FROM documents").fetchone()[0]
        uploads = conn.execute(
            "SELECT count(*) FROM documents WHERE user_id = 'app-user'"
        ).fetchone()[0]
        states = dict(
            conn.execute("SELECT state, count(*) FROM uuidguard.id_map GROUP BY 1").fetchall()
        )
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT ref, k.value FROM uuidguard.rewrites, jsonb_array_elements(keys) k GROUP BY 1, 2 HAVING count(*) > 1) x"
        ).fetchone()[0]
        workers = conn.execute("SELECT count(DISTINCT worker) FROM uuidguard.batches").fetchone()[0]
    assert access_after == access_before + app.increments
    assert uploads == app.uploads
    assert states == {"done": planned}
    assert twice == 0
    assert workers == 2
    report = verify.run(db.create_engine(settings), settings, None)
    failing = {c["check"] for c in report["checks"] if not c["ok"]}
    # the application changed documents and added rows meanwhile: only those checks may differ
    assert failing <= {
        "public.documents rows and content unchanged",
        "public.document_chunks rows and content unchanged",
    }
    assert "structural RAG canary: re-keyed documents reach their chunks" not in failing
