"""Shared pieces of the command line: consoles, the options every command takes, settings."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from migrator import db
from migrator import settings as settings_mod

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
