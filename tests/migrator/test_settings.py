"""Settings: file, environment and flags in that order of precedence; errors name the key."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from migrator.errors import ConfigError
from migrator.settings import load_settings, masked


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("UUIDGUARD_"):
            monkeypatch.delenv(key)


def test_defaults_are_the_reference_schema_and_rule() -> None:
    """Without any configuration: reference names, NAMESPACE_URL, embedded database."""
    s = load_settings()
    assert s.mapping.documents.table == "documents"
    assert s.id_rule.namespace == uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")
    assert s.id_rule.template == "{user_id}:{file_sha256}"
    assert s.database.dsn is None
    assert [r.table for r in s.reference_columns()] == [
        "document_chunks",
        "embeddings",
        "document_shares",
    ]


def test_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TOML file is overridden by UUIDGUARD_* variables, which flags override in turn."""
    cfg = tmp_path / "u.toml"
    cfg.write_text(
        '[database]\ndsn = "postgresql://file@h/db"\n'
        '[mapping.documents]\ntable = "docs"\nid = "doc_id"\n'
        '[assess]\ngrace_period = "36h"\n'
    )
    s = load_settings(cfg)
    assert s.mapping.documents.table == "docs"
    assert s.assess.grace_period == timedelta(hours=36)
    monkeypatch.setenv("UUIDGUARD_MAPPING__DOCUMENTS__TABLE", "uploads")
    monkeypatch.setenv("UUIDGUARD_DATABASE__DSN", "postgresql://env@h/db")
    s = load_settings(cfg)
    assert s.mapping.documents.table == "uploads"
    assert s.mapping.documents.id == "doc_id"  # untouched keys keep the file's value
    assert s.database.dsn is not None and "env@" in s.database.dsn.get_secret_value()
    s = load_settings(cfg, database={"dsn": "postgresql://flag@h/db"})
    assert s.database.dsn is not None and "flag@" in s.database.dsn.get_secret_value()
    assert s.database.state_dir == Path(".uuidguard")


def test_config_file_from_environment_and_default_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$UUIDGUARD_CONFIG names the file; otherwise ./uuidguard.toml is read when present."""
    (tmp_path / "uuidguard.toml").write_text('[mapping]\nschema = "rag"\n')
    assert load_settings().mapping.schema_ == "rag"
    other = tmp_path / "other.toml"
    other.write_text('[mapping]\nschema = "app"\n')
    monkeypatch.setenv("UUIDGUARD_CONFIG", str(other))
    assert load_settings().mapping.schema_ == "app"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[mapping.documents]\ntabel = "x"\n', "mapping.documents.tabel"),
        ('[id_rule]\ntemplate = "{user}:{file_sha256}"\n', "id_rule.template"),
        ('[id_rule]\nnamespace = "not-a-uuid"\n', "id_rule.namespace"),
        ('[database]\ndsn = "mysql://x@y/z"\n', "database.dsn"),
        ('[assess]\ngrace_period = "soon"\n', "assess.grace_period"),
        ('[mapping.documents]\ntable = ""\n', "mapping.documents.table"),
        ('[[mapping.references]]\ntable = "s"\n', "mapping.references.0.column"),
    ],
    ids=[
        "unknown-key",
        "unknown-template-field",
        "bad-namespace",
        "not-postgres",
        "bad-duration",
        "empty-name",
        "reference-without-column",
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    """Each wrong value fails with one line naming its dotted key and a fix."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert info.value.key == key
    assert "Fix:" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file_and_bad_toml(tmp_path: Path) -> None:
    """A missing file or broken TOML is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[mapping\n")
    with pytest.raises(ConfigError):
        load_settings(broken)


def test_optional_columns_can_be_switched_off(tmp_path: Path) -> None:
    """An empty string turns off a column the platform does not have."""
    cfg = tmp_path / "u.toml"
    cfg.write_text('[mapping.documents]\nsize_bytes = ""\naccess_count = ""\n')
    s = load_settings(cfg)
    assert s.mapping.documents.size_bytes is None
    assert s.mapping.documents.access_count is None


def test_secrets_are_masked_for_display() -> None:
    """The DSN's password never appears in what `config show` prints."""
    s = load_settings(None, database={"dsn": "postgresql://app:s3cret@db.internal:5432/rag"})
    shown = masked(s)
    assert "s3cret" not in str(shown)
    assert shown["database"]["dsn"] == "postgresql://app:***@db.internal:5432/rag"
    assert "s3cret" not in repr(s)
    assert shown["assess"]["grace_period"] == "1d"
