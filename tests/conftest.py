"""Real PostgreSQL for every test that touches data: the embedded server, and UUIDGUARD_TEST_DSN's.

Each test that needs a database gets a fresh one (CREATE DATABASE ... / DROP DATABASE), because
the code under test commits: a rollback-per-test fixture would hide exactly what must be tested.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from migrator import embedded
from migrator.settings import Settings, load_settings

SERVERS = ["embedded"] + (["dsn"] if os.environ.get("UUIDGUARD_TEST_DSN") else [])


@pytest.fixture(scope="session")
def embedded_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("uuidguard-state")
    server = embedded.ensure_running(state)
    yield server.uri
    embedded.stop(state)


@pytest.fixture(scope="session", params=SERVERS)
def pg_server(request: pytest.FixtureRequest) -> str:
    """The admin URL of one PostgreSQL server under test."""
    if request.param == "embedded":
        return str(request.getfixturevalue("embedded_uri"))
    return os.environ["UUIDGUARD_TEST_DSN"]


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def db_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the server under test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Settings pointing at the fresh database, untouched by the developer's own config."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("UUIDGUARD_") and key != "UUIDGUARD_TEST_DSN":
            monkeypatch.delenv(key)
    return load_settings(None, database={"dsn": db_url})
