"""Calibration (DESIGN §2.2): does the configured id rule reproduce the application's v5 ids?"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from migrator import db, idrule, ruleids
from migrator import tables as tables_mod
from migrator.settings import Settings


def run(
    engine: Engine, settings: Settings, since: datetime | None = None, examples: int = 10
) -> dict[str, Any]:
    with db.connect(engine) as conn, db.translate_errors("calibration"), conn.begin():
        db.set_local_timeouts(conn, settings.database.statement_timeout)
        return calibrate(conn, settings, since, examples)


def calibrate(
    conn: Connection, settings: Settings, since: datetime | None, examples: int
) -> dict[str, Any]:
    """Share of deterministic-looking (version 5) ids that the rule reproduces, with misses."""
    mt = tables_mod.reflect(conn, settings)
    m = settings.mapping.documents
    d = mt.documents
    rule = idrule.IdRule(settings.id_rule.namespace, settings.id_rule.template)
    uuid_mode = d.is_uuid(m.id)
    rule_t, path = ruleids.materialize(
        conn, mt, rule, m.user_id, m.file_sha256, m.id, uuid_mode, settings.id_rule.sql_fast_path
    )
    key = ruleids.key_expr(d.c(m.id), uuid_mode)
    is_v5 = sa.func.lower(sa.cast(d.c(m.id), sa.Text)).op("~")(idrule.UUID_V5_PATTERN)
    cond: list[sa.ColumnElement[bool]] = [is_v5]
    if since is not None:
        cond.append(d.c(m.created_at) >= since)
    base = sa.select(d.table, rule_t.c.rule_id).join(rule_t, rule_t.c.doc_key == key).where(*cond)
    sub = base.subquery("candidates")
    sk = ruleids.key_expr(sub.c[m.id], uuid_mode)
    matches = sub.c.rule_id == sk
    candidates, reproduced = conn.execute(
        sa.select(sa.func.count(), sa.func.count().filter(matches))
    ).one()
    misses = [
        {
            "id": str(r[0]),
            "user_id": r[1],
            "file_sha256": r[2],
            "rule_id": str(r[3]) if r[3] is not None else None,
        }
        for r in conn.execute(
            sa.select(
                sa.cast(sub.c[m.id], sa.Text),
                sa.cast(sub.c[m.user_id], sa.Text),
                sa.cast(sub.c[m.file_sha256], sa.Text),
                sub.c.rule_id,
            )
            .where(sa.or_(~matches, sub.c.rule_id.is_(None)))
            .order_by(sub.c[m.created_at].desc())
            .limit(examples)
        )
    ]
    share = reproduced / candidates if candidates else None
    return {
        "candidates": candidates,
        "reproduced": reproduced,
        "share": share,
        "calibrated": candidates > 0 and reproduced == candidates,
        "since": since.isoformat() if since else None,
        "id_rule": {"namespace": str(rule.namespace), "template": rule.template},
        "rule_id_path": path,
        "mismatches": misses,
    }
