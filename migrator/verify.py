"""Post-migration validation (DESIGN §3.5, seed B.3.2): the run's promises, checked set-based."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from migrator import db, journal, runs
from migrator import tables as tables_mod
from migrator.settings import Settings


def run(engine: Engine, settings: Settings, run_id: int | None) -> dict[str, Any]:
    with db.connect(engine) as conn, db.translate_errors("verification"), conn.begin():
        db.set_local_timeouts(conn, settings.database.statement_timeout)
        return verify(conn, settings, run_id)


def verify(conn: Connection, settings: Settings, run_id: int | None) -> dict[str, Any]:
    """Checks, each with its count of offending rows (0 passes):

    - every re-keyed document exists under its new id and no longer under its old one;
    - no reference anywhere still carries an old id of a re-keyed document;
    - rows and content of every mapped table are as they were when the run was planned
      (whole-row hashes after a whole rollback; id-free content hashes otherwise);
    - structural RAG canary: every re-keyed document that had chunks before reaches them now
      through the join retrieval uses (chunks by document id, owner matching).
    """
    run = runs.resolve(conn, settings, run_id)
    schema = settings.journal_schema
    id_map = journal.metadata(schema).tables[f"{schema}.id_map"]
    mt = tables_mod.reflect(conn, settings)
    d, dm = mt.documents, settings.mapping.documents
    done = (
        sa.select(id_map.c.old_id, id_map.c.new_id, id_map.c["class"], id_map.c.user_id)
        .where(id_map.c.run_id == run["id"], id_map.c.state == "done")
        .subquery("done")
    )
    checks: list[dict[str, Any]] = []

    def check(name: str, bad: int, detail: str = "") -> None:
        checks.append({"check": name, "failures": int(bad), "ok": bad == 0, "detail": detail})

    moved = conn.execute(sa.select(sa.func.count()).select_from(done)).scalar_one()
    missing_new = conn.execute(
        sa.select(sa.func.count())
        .select_from(done)
        .where(~sa.exists().where(d.c(dm.id) == done.c.new_id))
    ).scalar_one()
    check("re-keyed documents exist under their new id", missing_new, f"{moved:,} re-keyed")
    still_old = conn.execute(
        sa.select(sa.func.count())
        .select_from(done)
        .where(sa.exists().where(d.c(dm.id) == done.c.old_id))
    ).scalar_one()
    check("no document keeps an old id", still_old)
    for ref, t in mt.references:
        col = t.c(ref.column)
        left = conn.execute(
            sa.select(sa.func.count()).select_from(t.table).where(col.in_(sa.select(done.c.old_id)))
        ).scalar_one()
        check(f"no {ref.table}.{ref.column} carries an old id", left)
    before = run["fingerprint_before"] or {}
    now = runs.fingerprint(conn, settings)
    key = "hash" if run["state"] == "rolled_back" else "content"
    for table, fp in before.items():
        current = now.get(table, {})
        changed = int(current.get("rows") != fp["rows"] or current.get(key) != fp[key])
        check(
            f"{table} {'exactly as before the run' if key == 'hash' else 'rows and content unchanged'}",
            changed,
            f"{fp['rows']:,} rows before, {current.get('rows', 0):,} now",
        )
    ch, cm = mt.chunks, settings.mapping.chunks
    reach = sa.exists().where(ch.c(cm.document_id) == done.c.new_id)
    if cm.user_id is not None:
        reach = reach.where(ch.c(cm.user_id) == done.c.user_id)
    unreachable = conn.execute(
        sa.select(sa.func.count())
        .select_from(done)
        .where(done.c["class"].in_(["random_consistent", "random_mismatched"]), ~reach)
    ).scalar_one()
    check("structural RAG canary: re-keyed documents reach their chunks", unreachable)
    return {
        "run": run["id"],
        "state": run["state"],
        "ok": all(c["ok"] for c in checks),
        "checks": checks,
    }
