"""The journal in the target database: its schema (Alembic, own version table) and the audit log."""

from __future__ import annotations

import functools
import getpass
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from migrator.errors import UuidguardError

MIGRATIONS = Path(__file__).parent / "journal_migrations"


class JournalError(UuidguardError):
    """The journal schema is missing or older than this uuidguard."""

    def __init__(self, schema: str, problem: str) -> None:
        super().__init__(f"journal schema {schema}: {problem}. Fix: run `uuidguard init`")
        self.schema = schema


def _config(conn: Connection, schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    cfg.attributes["schema"] = schema
    return cfg


def head() -> str:
    script = ScriptDirectory.from_config(_config(None, ""))  # type: ignore[arg-type]
    rev = script.get_current_head()
    assert rev is not None
    return rev


def current(conn: Connection, schema: str) -> str | None:
    """The journal's revision here, or None when it was never created."""
    exists = conn.execute(
        sa.text("SELECT to_regclass(:t) IS NOT NULL"),
        {"t": f"{conn.dialect.identifier_preparer.quote_schema(schema)}.alembic_version"},
    ).scalar_one()
    if not exists:
        return None
    ctx = MigrationContext.configure(conn, opts={"version_table_schema": schema})
    return ctx.get_current_revision()


def init(conn: Connection, schema: str) -> tuple[str | None, str]:
    """Create or upgrade the journal schema; idempotent. Returns (before, after) revisions."""
    before = current(conn, schema)
    conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
    conn.commit()
    command.upgrade(_config(conn, schema), "head")
    conn.commit()
    return before, head()


def downgrade(conn: Connection, schema: str, revision: str) -> None:
    """Take the journal back to an older revision (to run an older uuidguard on it); the
    revisions convert the rows, nothing is lost."""
    command.downgrade(_config(conn, schema), revision)
    conn.commit()


def require_current(conn: Connection, schema: str) -> None:
    rev = current(conn, schema)
    if rev is None:
        raise JournalError(schema, "it does not exist in this database")
    if rev != head():
        raise JournalError(schema, f"it is at revision {rev}, this uuidguard needs {head()}")


def table(schema: str, name: str) -> sa.Table:
    """One journal table (runs, id_map, batches, …) of the journal in `schema`."""
    return metadata(schema).tables[f"{schema}.{name}"]


@functools.cache
def metadata(schema: str) -> sa.MetaData:
    """The journal tables as Core objects, for queries (the revisions own the DDL)."""
    md = sa.MetaData(schema=schema)
    uuid = pg.UUID(as_uuid=False)
    ts = sa.DateTime(timezone=True)
    sa.Table(
        "runs",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("option", sa.Text),
        sa.Column("state", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("id_rule", pg.JSONB),
        sa.Column("config_fingerprint", sa.Text),
        sa.Column("documents", sa.BigInteger),
        sa.Column("settings", pg.JSONB),
        sa.Column("fingerprint_before", pg.JSONB),
        sa.Column("created_by", sa.Text),
        sa.Column("created_at", ts),
        sa.Column("updated_at", ts),
    )
    sa.Table(
        "id_map",
        md,
        sa.Column("run_id", sa.BigInteger),
        sa.Column("old_id", uuid),
        sa.Column("new_id", uuid),
        sa.Column("user_id", sa.Text),
        sa.Column("class", sa.Text),
        sa.Column("priority", sa.Boolean),
        sa.Column("state", sa.Text),
        sa.Column("batch_id", sa.BigInteger),
        sa.Column("chunks", sa.BigInteger),
        sa.Column("embeddings", sa.BigInteger),
    )
    sa.Table(
        "batches",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("run_id", sa.BigInteger),
        sa.Column("state", sa.Text),
        sa.Column("worker", sa.Text),
        sa.Column("documents", sa.Integer),
        sa.Column("rows", pg.JSONB),
        sa.Column("target_size", sa.Integer),
        sa.Column("started_at", ts),
        sa.Column("committed_at", ts),
        sa.Column("seconds", sa.Float),
        sa.Column("lock_wait_seconds", sa.Float),
        sa.Column("rolled_back_at", ts),
        sa.Column("error", sa.Text),
    )
    sa.Table(
        "rewrites",
        md,
        sa.Column("batch_id", sa.BigInteger),
        sa.Column("ref", sa.SmallInteger),
        sa.Column("keys", pg.JSONB),  # a JSON array of the rows' keys, each an array
        sa.Column("old_id", uuid),
    )
    sa.Table(
        "backups",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("created_at", ts),
        sa.Column("created_by", sa.Text),
        sa.Column("path", sa.Text),
        sa.Column("bytes", sa.BigInteger),
        sa.Column("tables", pg.JSONB),
        sa.Column("fingerprint", pg.JSONB),
        sa.Column("restored_fingerprint", pg.JSONB),
        sa.Column("verified", sa.Boolean),
        sa.Column("verified_at", ts),
        sa.Column("seconds", sa.Float),
        sa.Column("error", sa.Text),
    )
    sa.Table(
        "preflights",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("at", ts),
        sa.Column("actor", sa.Text),
        sa.Column("ok", sa.Boolean),
        sa.Column("config_fingerprint", sa.Text),
        sa.Column("checks", pg.JSONB),
    )
    sa.Table(
        "waits",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("run_id", sa.BigInteger),
        sa.Column("worker", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("detail", sa.Text),
        sa.Column("value", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("action", sa.Text),
        sa.Column("started_at", ts),
        sa.Column("seconds", sa.Float),
    )
    sa.Table(
        "alert_events",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("received_at", ts),
        sa.Column("group_key", sa.Text),
        sa.Column("fingerprint", sa.Text),
        sa.Column("alertname", sa.Text),
        sa.Column("status", sa.Text),
        sa.Column("starts_at", ts),
        sa.Column("run_id", sa.BigInteger),
        sa.Column("decision", sa.Text),
        sa.Column("detail", pg.JSONB),
    )
    sa.Table(
        "measurements",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("run_id", sa.BigInteger),
        sa.Column("phase", sa.Text),
        sa.Column("measured_at", ts),
        sa.Column("seconds", sa.Float),
        sa.Column("figures", pg.JSONB),
    )
    sa.Table(
        "probe_results",
        md,
        sa.Column("probe", sa.Text, primary_key=True),
        sa.Column("result", sa.Text),
        sa.Column("ran_at", ts),
        sa.Column("seconds", sa.Float),
        sa.Column("worker", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("last_success_at", ts),
        sa.Column("samples", pg.JSONB),
        sa.Column("detail", pg.JSONB),
    )
    sa.Table(
        "slack_messages",
        md,
        sa.Column("group_key", sa.Text, primary_key=True),
        sa.Column("channel", sa.Text),
        sa.Column("ts", sa.Text),
        sa.Column("status", sa.Text),
        sa.Column("updated_at", ts),
    )
    sa.Table(
        "audit",
        md,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("at", ts),
        sa.Column("actor", sa.Text),
        sa.Column("source", sa.Text),
        sa.Column("action", sa.Text),
        sa.Column("run_id", sa.BigInteger),
        sa.Column("detail", pg.JSONB),
    )
    return md


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def audit(
    conn: Connection,
    schema: str,
    action: str,
    run_id: int | None = None,
    detail: dict[str, Any] | None = None,
    actor: str | None = None,
    source: str = "cli",
) -> None:
    """Record who did what, in the caller's transaction (it commits with the change)."""
    t = table(schema, "audit")
    conn.execute(
        sa.insert(t).values(
            actor=actor or default_actor(),
            source=source,
            action=action,
            run_id=run_id,
            detail=json.loads(json.dumps(detail or {}, default=str)),
        )
    )


def audit_trail(conn: Connection, schema: str, run_id: int) -> list[dict[str, Any]]:
    """A run's audit rows in order: when (a datetime), action, actor, source, and the state
    and reason its detail names, if any."""
    t = table(schema, "audit")
    return [
        {
            "at": r.at,
            "action": r.action,
            "actor": r.actor,
            "source": r.source,
            "state": (r.detail or {}).get("state"),
            "reason": (r.detail or {}).get("reason"),
        }
        for r in conn.execute(
            sa.select(t.c.at, t.c.action, t.c.actor, t.c.source, t.c.detail)
            .where(t.c.run_id == run_id)
            .order_by(t.c.at, t.c.id)
        )
    ]
