"""Migration runs: creating one (its bounded set of documents), states, status, fingerprints."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from migrator import assess, baseline, catalog, journal
from migrator import tables as tables_mod
from migrator.errors import UsageError, UuidguardError
from migrator.pace import recent_rate
from migrator.settings import Settings

Option = Literal["A", "B"]
ACTIVE = ("planned", "running", "paused", "rolling_back")
FINISHED = ("completed", "rolled_back", "failed")


class RunError(UuidguardError):
    """A run cannot do what was asked in its current state."""

    def __init__(self, run_id: int | None, problem: str, fix: str) -> None:
        prefix = f"run {run_id}: " if run_id is not None else ""
        super().__init__(f"{prefix}{problem}. Fix: {fix}")
        self.run_id = run_id


def config_fingerprint(settings: Settings) -> str:
    """What a run depends on: the mapping and the id rule. A change makes the journal unsafe."""
    data = settings.model_dump(mode="json", include={"mapping", "id_rule", "journal_schema"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(conn: Connection, settings: Settings) -> dict[str, Any]:
    """An order-independent fingerprint of every mapped table: rows, a hash of whole rows, and
    a hash of their content without the document-id columns.

    Each row is hashed and the hashes summed, so the same multiset of rows gives the same value
    whatever the physical order. The whole-row hash is what an exact rollback must restore;
    the content hash must survive re-keying unchanged, since only ids may move.
    """
    mt = tables_mod.reflect(conn, settings)
    id_columns: dict[str, set[str]] = {mt.documents.table.fullname: {settings.mapping.documents.id}}
    for ref, t in mt.references:
        id_columns.setdefault(t.table.fullname, set()).add(ref.column)
    out: dict[str, Any] = {}
    for table in [mt.documents.table] + [t.table for _, t in mt.references]:
        if table.fullname in out:
            continue
        whole = sa.func.hashtextextended(sa.cast(table.table_valued(), sa.Text), 0)
        content = sa.func.hashtextextended(
            sa.cast(
                sa.func.to_jsonb(table.table_valued()).op("-")(
                    sa.cast(sorted(id_columns[table.fullname]), pg.ARRAY(sa.Text))
                ),
                sa.Text,
            ),
            0,
        )
        count, total, content_total = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(sa.cast(whole, sa.Numeric)), 0),
                sa.func.coalesce(sa.func.sum(sa.cast(content, sa.Numeric)), 0),
            )
        ).one()
        out[table.fullname] = {
            "rows": int(count),
            "hash": str(total),
            "content": str(content_total),
        }
    return out


def active_run(conn: Connection, settings: Settings) -> int | None:
    """The run that is not finished, if any (at most one: a unique index says so)."""
    runs = journal.table(settings.journal_schema, "runs")
    found = conn.execute(sa.select(runs.c.id).where(runs.c.state.in_(ACTIVE))).scalar_one_or_none()
    return int(found) if found is not None else None


def create(
    conn: Connection,
    settings: Settings,
    option: Option,
    now: datetime,
    actor: str,
    take_fingerprint: bool = True,
) -> int:
    """Plan a run: fix the set of documents it will re-key, taken from one consistent snapshot.
    `take_fingerprint=False` is for `uuidguard plan`'s rehearsal, which is rolled back."""
    schema = settings.journal_schema
    journal.require_current(conn, schema)
    fks = catalog.strategies(conn, settings)  # refuses unmapped foreign keys before any write
    catalog.check_privileges(conn, settings, any(fk is not None for fk in fks.values()))
    active = conn.execute(
        sa.select(journal.table(settings.journal_schema, "runs").c.id).where(
            journal.table(settings.journal_schema, "runs").c.state.in_(ACTIVE)
        )
    ).scalar_one_or_none()
    if active is not None:
        raise RunError(
            active,
            "is still active; only one run at a time",
            f"finish it (`uuidguard migrate run {active}`) or roll it back first",
        )
    cl = assess.classify(conn, settings)
    if not cl.uuid_mode:
        raise UsageError(
            "the documents id column or a reference column is not of type uuid",
            "migrate uuid columns; text id columns are assessed but not yet re-keyed",
        )
    recent, frequent, _, _ = assess.priority_conditions(conn, cl.docs, settings, now)
    runs = journal.table(settings.journal_schema, "runs")
    rule = {"namespace": str(settings.id_rule.namespace), "template": settings.id_rule.template}
    try:
        run_id = conn.execute(
            sa.insert(runs)
            .values(
                option=option,
                state="planned",
                id_rule=rule,
                config_fingerprint=config_fingerprint(settings),
                created_by=actor,
            )
            .returning(runs.c.id)
        ).scalar_one()
    except sa_exc.IntegrityError as exc:
        raise RunError(None, "another run became active meanwhile", "try again") from exc
    c = cl.docs.c
    priority = sa.func.coalesce(sa.or_(recent, frequent, c.invisible), False)
    chosen = sa.select(
        sa.literal(run_id, sa.BigInteger),
        c.key,
        c.rule,
        c.user_id,
        c["class"],
        priority,
        # what the document owns once re-keyed: its own rows and those under its rule id
        c.own_chunks + c.rule_chunks_raw,
        c.own_embeddings + c.rule_embeddings_raw,
    ).where(c.rekey)
    if option == "B":
        chosen = chosen.where(priority)
    id_map = journal.table(settings.journal_schema, "id_map")
    conn.execute(
        sa.insert(id_map).from_select(
            ["run_id", "old_id", "new_id", "user_id", "class", "priority", "chunks", "embeddings"],
            chosen,
        )
    )
    count = conn.execute(sa.select(sa.func.count()).where(id_map.c.run_id == run_id)).scalar_one()
    before = fingerprint(conn, settings) if take_fingerprint else None
    conn.execute(
        sa.update(runs)
        .where(runs.c.id == run_id)
        .values(documents=count, fingerprint_before=before)
    )
    if take_fingerprint:
        baseline.record(
            conn, settings, run_id, "before", baseline.measure(conn, settings, cl, run_id)
        )
    journal.audit(conn, schema, "create", run_id, {"option": option, "documents": count}, actor)
    return int(run_id)


def resolve(conn: Connection, settings: Settings, run_id: int | None) -> dict[str, Any]:
    """The run asked for, or the one active run, or the latest; as a dict."""
    runs = journal.table(settings.journal_schema, "runs")
    journal.require_current(conn, settings.journal_schema)
    q = sa.select(runs)
    if run_id is not None:
        row = conn.execute(q.where(runs.c.id == run_id)).mappings().one_or_none()
        if row is None:
            raise RunError(run_id, "no such run", "list runs with `uuidguard migrate status`")
        return dict(row)
    row = conn.execute(q.where(runs.c.state.in_(ACTIVE))).mappings().one_or_none()
    if row is None:
        row = conn.execute(q.order_by(runs.c.id.desc()).limit(1)).mappings().one_or_none()
    if row is None:
        raise RunError(None, "there is no run yet", "create one with `uuidguard migrate create`")
    return dict(row)


def set_state(
    conn: Connection,
    settings: Settings,
    run_id: int,
    state: str,
    actor: str,
    action: str,
    reason: str | None = None,
    source: str = "cli",
    allowed_from: tuple[str, ...] = ACTIVE,
) -> bool:
    """Move a run to `state` if it is in one of `allowed_from`; audited. False if it was not."""
    runs = journal.table(settings.journal_schema, "runs")
    moved = conn.execute(
        sa.update(runs)
        .where(runs.c.id == run_id, runs.c.state.in_(allowed_from))
        .values(state=state, reason=reason, updated_at=sa.func.now())
    ).rowcount
    if moved:
        journal.audit(
            conn,
            settings.journal_schema,
            action,
            run_id,
            {"state": state, "reason": reason},
            actor,
            source,
        )
    return bool(moved)


def set_options(
    conn: Connection, settings: Settings, run_id: int, actor: str, **options: Any
) -> dict[str, Any]:
    """Change a run's live options (batch_time); every worker applies them before its next batch."""
    runs = journal.table(settings.journal_schema, "runs")
    state, stored = conn.execute(
        sa.select(runs.c.state, runs.c.settings).where(runs.c.id == run_id).with_for_update()
    ).one()
    if state in FINISHED:
        raise RunError(run_id, f"is {state}: nothing runs it any more", "create a new run")
    current = dict(stored or {})
    current.update({k: v for k, v in options.items() if v is not None})
    conn.execute(
        sa.update(runs)
        .where(runs.c.id == run_id)
        .values(settings=current, updated_at=sa.func.now())
    )
    journal.audit(conn, settings.journal_schema, "set", run_id, options, actor)
    return current


RATE_WINDOW_BATCHES = 50


def _eta(settings: Settings, pending: int, rate: float | None, recent: Any) -> float | None:
    """Remaining documents at the recent rate, plus the configured rest between the batches
    still to come (migrate.pause_between), which the rate leaves out."""
    if not rate:
        return None
    eta = pending / rate
    rest = settings.migrate.pause_between.total_seconds()
    if rest and recent:
        per_batch = sum(r[2] for r in recent) / len(recent)
        if per_batch > 0:
            eta += rest * pending / per_batch
    return eta


def status(conn: Connection, settings: Settings, run_id: int | None) -> dict[str, Any]:
    """A run's state, progress by document state, and its batches' timings."""
    run = resolve(conn, settings, run_id)
    id_map, batches = (
        journal.table(settings.journal_schema, "id_map"),
        journal.table(settings.journal_schema, "batches"),
    )
    by_state: dict[str, int] = dict(
        conn.execute(
            sa.select(id_map.c.state, sa.func.count())
            .where(id_map.c.run_id == run["id"])
            .group_by(id_map.c.state)
        ).all()
    )
    b = conn.execute(
        sa.select(
            sa.func.count().filter(batches.c.state == "committed"),
            sa.func.count().filter(batches.c.state == "rolled_back"),
            sa.func.count().filter(batches.c.state == "failed"),
            sa.func.percentile_cont(0.5).within_group(batches.c.seconds),
            sa.func.percentile_cont(0.99).within_group(batches.c.seconds),
            sa.func.max(batches.c.seconds),
            sa.func.sum(batches.c.seconds).filter(batches.c.state == "committed"),
        ).where(batches.c.run_id == run["id"])
    ).one()
    total = int(run["documents"])
    done = int(by_state.get("done", 0))
    pending = int(by_state.get("pending", 0))
    recent = conn.execute(
        sa.select(batches.c.started_at, batches.c.committed_at, batches.c.documents)
        .where(batches.c.run_id == run["id"], batches.c.committed_at.is_not(None))
        .order_by(batches.c.committed_at.desc())
        .limit(RATE_WINDOW_BATCHES)
    ).all()
    rate = recent_rate([(r[0].timestamp(), r[1].timestamp(), r[2]) for r in recent])
    return {
        "run": run["id"],
        "option": run["option"],
        "state": run["state"],
        "reason": run["reason"],
        "created_at": run["created_at"].isoformat(),
        "documents": {
            "total": total,
            "done": done,
            "pending": pending,
            "skipped": int(by_state.get("skipped", 0)),
            "rolled_back": int(by_state.get("rolled_back", 0)),
        },
        "percent": round(100 * (total - pending) / total, 2) if total else 100.0,
        "batches": {
            "committed": b[0],
            "rolled_back": b[1],
            "failed": b[2],
            "p50_seconds": b[3],
            "p99_seconds": b[4],
            "max_seconds": b[5],
        },
        "documents_per_second": rate,
        "eta_seconds": _eta(settings, pending, rate, recent),
        **_waits(conn, settings, run),
    }


def _waits(conn: Connection, settings: Settings, run: dict[str, Any]) -> dict[str, Any]:
    """Seconds waited by throttle reason, and the wait going on now, if any: the latest wait
    updated recently (a waiting worker updates it every check_interval) after which its
    worker started no batch. Waits are not busy time: the ETA's rate never counts them."""
    waits, batches = (
        journal.table(settings.journal_schema, "waits"),
        journal.table(settings.journal_schema, "batches"),
    )
    by_reason = conn.execute(
        sa.select(waits.c.reason, sa.func.sum(waits.c.seconds))
        .where(waits.c.run_id == run["id"])
        .group_by(waits.c.reason)
        .order_by(waits.c.reason)
    ).all()
    current = None
    if run["state"] == "running":
        secs = sa.func.make_interval(0, 0, 0, 0, 0, 0, waits.c.seconds)
        stale = max(3 * settings.throttle.check_interval.total_seconds(), 10.0)
        later_batch = sa.exists().where(
            batches.c.run_id == waits.c.run_id,
            batches.c.worker == waits.c.worker,
            batches.c.started_at >= waits.c.started_at + secs,
        )
        current = (
            conn.execute(
                sa.select(waits.c.reason, waits.c.detail, waits.c.started_at, waits.c.worker)
                .where(
                    waits.c.run_id == run["id"],
                    waits.c.action == "wait",
                    waits.c.started_at + secs
                    >= sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, stale),
                    ~later_batch,
                )
                .order_by(waits.c.started_at.desc())
                .limit(1)
            )
            .mappings()
            .one_or_none()
        )
    return {
        "waits": {reason: round(float(s or 0), 3) for reason, s in by_reason},
        "waiting": None
        if current is None
        else {
            "reason": current["reason"],
            "detail": current["detail"],
            "since": current["started_at"].astimezone(UTC).isoformat(),
            "worker": current["worker"],
        },
    }
