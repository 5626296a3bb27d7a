"""Shared pieces of the command line: consoles, the options every command takes, settings."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from migrator import dataset, db
from migrator import seed as seed_mod
from migrator import settings as settings_mod
from migrator.idrule import IdRule

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML settings file (default: $UUIDGUARD_CONFIG or ./uuidguard.toml).",
    ),
]
DsnOpt = Annotated[
    str | None,
    typer.Option(
        "--dsn", help="PostgreSQL URL; without it the embedded server is used.", show_default=False
    ),
]
DebugOpt = Annotated[
    bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
]


class Format(StrEnum):
    md = "md"
    json = "json"


def load(config: Path | None, dsn: str | None) -> settings_mod.Settings:
    """Settings from the file and environment, with --dsn on top (sources merge key by key)."""
    if dsn is not None:
        return settings_mod.load_settings(config, database={"dsn": dsn})
    return settings_mod.load_settings(config)


def target_of(settings: settings_mod.Settings) -> str:
    if settings.database.dsn is None:
        return f"the embedded PostgreSQL in {settings.database.state_dir}"
    return db.describe(settings.database.dsn.get_secret_value())


def aware(value: datetime) -> datetime:
    """A datetime from the command line, read as UTC when it names no zone."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def seed_dataset(
    s: settings_mod.Settings, spec: dataset.DatasetSpec, fk: str, replace: bool
) -> seed_mod.SeedResult:
    rule = IdRule(s.id_rule.namespace, s.id_rule.template)
    data = dataset.generate(spec, rule)
    engine = db.create_engine(s)
    total = data.manifest["chunks"]["total"]
    err.print(
        f"seeding {data.manifest['documents']['total']:,} documents and {total:,} chunks into "
        f"{target_of(s)} …"
    )
    with db.connect(engine) as conn, db.translate_errors("seeding"):
        return seed_mod.seed(conn, data, s.mapping.schema_, fk, replace)  # type: ignore[arg-type]


def print_manifest(result: seed_mod.SeedResult) -> None:
    m = result.manifest
    out.print(
        f"seeded in {result.seconds:.1f} s (foreign keys: {m['fk']}, embeddings as {m['vector_type']})"
    )
    for section in ("documents", "chunks"):
        out.print(f"{section}: {m[section]['total']:,}")
        for cls, n in m[section]["by_class"].items():
            out.print(f"  {cls:<20} {n:>10,}")
    e = m["embeddings"]
    out.print(
        f"embeddings: {e['total']:,} ({e['document_missing']:,} without their document, "
        f"{e['chunk_missing']:,} without their chunk)"
    )
    out.print(
        f"shares: {m['shares']:,}   users: {m['users']['total']:,}   conflict groups: {m['conflicts']['groups']:,}"
    )
    if m["fk"] != "none":
        out.print(
            "foreign keys to documents were added NOT VALID: enforced for new rows, not checked "
            "for the orphans already loaded",
            style="dim",
        )
