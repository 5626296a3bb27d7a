"""One batch, forward or backward: claim, rewrite every reference, journal, verify, commit.

Forward, each batch is one transaction with local lock and statement timeouts. The foreign key
on each reference decides the statement order (catalog.py): plain and deferrable references
are rewritten explicitly; ON UPDATE CASCADE ones follow the document; a NOT DEFERRABLE one
needs the document copied under its new id before its rows move. Every rewritten row is
journaled with its key, so a rollback restores exactly those rows and no others: chunks that
pointed at the new id before the run (the healed orphans) stay where they were.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Engine

from migrator import catalog, db, journal, runs
from migrator import tables as tables_mod
from migrator import throttle as throttle_mod
from migrator.errors import UuidguardError
from migrator.pace import Pace
from migrator.settings import Settings

BATCH = "ug_batch"
#: A batch joins a few hundred ids to tables of millions of rows: index probes, always. Left
#: to itself, the planner switches to hash joins over whole-table scans once a batch passes
#: ~780 documents (1M chunks), and that batch takes 3x as long: found by
#: benchmarks/migrate.py, where every batch above that size was a p99 outlier.
INDEX_PROBES = {"enable_hashjoin": "off", "enable_mergejoin": "off"}
MAX_CONTENTION_RETRIES = 20
# lock_timeout and deadlocks: worth retrying the whole batch
_CONTENTION = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)


class VerificationError(UuidguardError):
    """A batch's own checks failed inside its transaction; nothing of it was committed."""

    def __init__(self, batch_id: int, problem: str) -> None:
        super().__init__(
            f"batch {batch_id} failed verification: {problem}. Fix: nothing was changed; "
            "inspect the documents named in the journal, then resume or roll back"
        )
        self.batch_id = batch_id


class WorkerError(UuidguardError):
    """Some worker processes of a multi-worker run failed."""

    def __init__(self, failed: int, workers: int) -> None:
        super().__init__(
            f"{failed} of {workers} workers failed (their batches were rolled back whole). Fix: "
            "read their error above, then run `uuidguard migrate run` again to continue"
        )


@dataclass
class Plan:
    """What the engine needs to know about the schema, read once per worker, and the
    statements of a batch and of its rollback, built from it once (their parameters are bound
    per batch)."""

    tables: tables_mod.MappedTables
    fks: dict[int, catalog.ForeignKey | None]
    settings: Settings
    copy_documents: bool = field(init=False)
    sql: Statements = field(init=False)

    def __post_init__(self) -> None:
        self.copy_documents = any(
            fk is not None and fk.strategy == "copy" for fk in self.fks.values()
        )
        self.sql = Statements(self)


@dataclass(frozen=True)
class Stopped:
    """The run is no longer running (paused, rolling back, ...): no batch was started."""

    state: str


@dataclass(frozen=True)
class BatchResult:
    batch_id: int
    documents: int
    skipped: int
    rows: dict[str, int]
    seconds: float


def plan(conn: Connection, settings: Settings) -> Plan:
    return Plan(tables_mod.reflect(conn, settings), catalog.strategies(conn, settings), settings)


_BATCH_DDL = sa.text(
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {BATCH} (old_id uuid PRIMARY KEY,"
    " new_id uuid NOT NULL UNIQUE) ON COMMIT DELETE ROWS"
)
#: the batch table: old and new id of each document of the batch; its UNIQUE new_id makes a
#: batch that would give two documents one id fail instead of merging them
_BATCH_T = sa.table(BATCH, sa.column("old_id"), sa.column("new_id"))


def _batch_table(conn: Connection) -> None:
    """Create the session's batch table once per database session: a transaction that
    created it and committed marks the connection (`_batch_table_kept`), a rolled-back one
    leaves it unmarked, and a new session after a lost connection starts unmarked."""
    if not conn.info.get(BATCH):
        conn.execute(_BATCH_DDL)


def _batch_table_kept(conn: Connection) -> None:
    conn.info[BATCH] = True


def _journal(md: sa.MetaData, schema: str) -> tuple[sa.Table, sa.Table, sa.Table, sa.Table]:
    runs_t, id_map, batches, rewrites = (
        md.tables[f"{schema}.{n}"] for n in ("runs", "id_map", "batches", "rewrites")
    )
    return runs_t, id_map, batches, rewrites


def _keys(
    t: tables_mod.MappedTable, pk: tuple[str, ...], column: str, new_id: sa.ColumnElement[Any]
) -> sa.ColumnElement[Any]:
    """A row's key as it will be after the rewrite (the key may include the rewritten column)."""
    return sa.func.jsonb_build_array(*[new_id if col == column else t.c(col) for col in pk])


def _count_in(
    t: tables_mod.MappedTable, col: str, ids: sa.ColumnElement[Any]
) -> sa.ScalarSelect[Any]:
    return (
        sa.select(sa.func.count())
        .select_from(t.table)
        .where(t.c(col).in_(sa.select(ids)))
        .scalar_subquery()
    )


def set_batch_locals(conn: Connection, settings: Settings, lock_timeout: timedelta) -> None:
    """Local timeouts; the lease: a worker that hangs inside a batch loses it to the server."""
    ms = {
        "statement_timeout": settings.database.statement_timeout,
        "lock_timeout": lock_timeout,
        "idle_in_transaction_session_timeout": settings.migrate.lease,
    }
    db.set_local(
        conn,
        {k: f"{int(v.total_seconds() * 1000)}ms" for k, v in ms.items()} | INDEX_PROBES,
    )


class Statements:
    """The statements of a forward batch and of a batch's rollback, built once per worker; each
    execution binds `p_run_id`, `p_batch_id`, `p_size`... (prefixed: an UPDATE would take a
    parameter named like one of its columns for a value to SET). SQLAlchemy compiles each once
    (its compiled cache), so a batch spends its time in PostgreSQL rather than in building SQL
    (benchmarks/migrate.py)."""

    def __init__(self, p: Plan) -> None:
        settings = p.settings
        schema = settings.journal_schema
        runs_t, id_map, batches, rewrites = _journal(journal.metadata(schema), schema)
        b = _BATCH_T
        run_id = sa.bindparam("p_run_id", type_=sa.BigInteger)
        batch_id = sa.bindparam("p_batch_id", type_=sa.BigInteger)
        self.run_state = (
            sa.select(runs_t.c.state, runs_t.c.settings)
            .where(runs_t.c.id == run_id)
            .with_for_update(read=True)
        )
        self.new_batch = (
            sa.insert(batches)
            .values(
                run_id=run_id,
                state="committed",
                worker=sa.bindparam("p_worker"),
                documents=0,
                target_size=sa.bindparam("p_size"),
            )
            .returning(batches.c.id)
        )
        self.clear = sa.delete(b)
        # one user's documents together; the id map's new state and batch, and the batch
        # table's rows, in one statement
        claim = (
            sa.select(id_map.c.old_id)
            .where(id_map.c.run_id == run_id, id_map.c.state == "pending")
            .order_by(id_map.c.user_id, id_map.c.old_id)
            .limit(sa.bindparam("p_size", type_=sa.Integer))
            .with_for_update(skip_locked=True)
            .cte("claim")
        )
        claimed = (
            sa.update(id_map)
            .where(id_map.c.run_id == run_id, id_map.c.old_id == claim.c.old_id)
            .values(state="done", batch_id=batch_id)
            .returning(id_map.c.old_id, id_map.c.new_id)
            .cte("claimed")
        )
        filled = (
            sa.insert(b)
            .from_select(["old_id", "new_id"], sa.select(claimed.c.old_id, claimed.c.new_id))
            .returning(b.c.old_id)
            .cte("filled")
        )
        self.claim = sa.select(sa.func.count()).select_from(filled)
        # without statistics the planner assumes a temporary table of ~1,000 rows and scans
        # the mapped tables whole instead of probing their indexes (400 ms against 0.3 ms)
        self.analyze = sa.text(f"ANALYZE {BATCH}")

        d = p.tables.documents
        dm = settings.mapping.documents
        doc_id = d.c(dm.id)
        # no one deletes these documents or changes their ids until the batch commits; counted
        # in the server (the ids come to Python only when some document is missing). FOR KEY
        # SHARE leaves the application's writes to their other columns free (the usual
        # access_count updates wait only from the documents' own UPDATE at the end of the
        # batch to its commit); where a copied document (a NOT DEFERRABLE key) or a cascade
        # would lose or move such a write, or an insert of a row referencing the old id,
        # FOR UPDATE holds them off for the whole batch
        strict = p.copy_documents or any(
            fk is not None and fk.strategy == "cascade" for fk in p.fks.values()
        )
        lock = (
            sa.select(doc_id)
            .where(doc_id.in_(sa.select(b.c.old_id)))
            .with_for_update(read=not strict, key_share=not strict)
            .cte("lock")
        )
        self.lock = sa.select(sa.func.count()).select_from(lock)
        # new ids taken since the run was planned: one index probe per document (an EXISTS in
        # the locking statement above measured twice as slow, benchmarks/migrate.py)
        self.taken = sa.select(b.c.old_id).select_from(b.join(d.table, doc_id == b.c.new_id))
        self.gone = sa.select(b.c.old_id).where(~sa.exists().where(doc_id == b.c.old_id))
        skipped: sa.BindParameter[Any] = sa.bindparam("p_skipped", expanding=True)
        self.skip = (
            sa.update(id_map)
            .where(id_map.c.run_id == run_id, id_map.c.old_id.in_(skipped))
            .values(state="skipped")
        )
        self.unbatch = sa.delete(b).where(b.c.old_id.in_(skipped))

        #: deferrable keys, deferred in each batch (names quoted with the connection's dialect)
        self.deferred = [
            (fk.schema, fk.name)
            for fk in p.fks.values()
            if fk is not None and fk.strategy == "deferred"
        ]
        self.copy: sa.Insert | None = None
        if p.copy_documents:
            # a NOT DEFERRABLE key: the new document must exist before its rows move to it
            cols = [c.name for c in d.table.columns]
            copy = sa.select(*[b.c.new_id if c == dm.id else d.table.c[c] for c in cols])
            self.copy = sa.insert(d.table).from_select(
                cols, copy.select_from(d.table.join(b, doc_id == b.c.old_id))
            )
        self.rewrites: list[tuple[str, sa.Select[Any]]] = []
        for i, (ref, t) in enumerate(p.tables.references):
            col = t.c(ref.column)
            fk = p.fks.get(i)
            if fk is not None and fk.strategy == "cascade" and not p.copy_documents:
                # the document's rename carries these rows along: journal them first
                rows = (
                    sa.select(
                        _keys(t, ref.primary_key, ref.column, b.c.new_id).label("key"),
                        col.label("old_id"),
                    )
                    .select_from(t.table.join(b, col == b.c.old_id))
                    .cte(f"rows_{i}")
                )
            else:
                rows = (
                    sa.update(t.table)
                    .where(col == b.c.old_id)
                    .values({ref.column: b.c.new_id})
                    .returning(
                        sa.func.jsonb_build_array(*[t.c(k) for k in ref.primary_key]).label("key"),
                        b.c.old_id.label("old_id"),
                    )
                    .cte(f"rows_{i}")
                )
            # one journal row per document and reference, with the keys of its rewritten rows
            journaled = (
                sa.insert(rewrites)
                .from_select(
                    ["batch_id", "ref", "keys", "old_id"],
                    sa.select(
                        batch_id,
                        sa.literal(i, sa.SmallInteger),
                        sa.func.jsonb_agg(rows.c.key),
                        rows.c.old_id,
                    ).group_by(rows.c.old_id),
                )
                .returning(sa.func.jsonb_array_length(rewrites.c["keys"]).label("n"))
                .cte(f"journaled_{i}")
            )
            self.rewrites.append(
                (
                    f"{ref.table}.{ref.column}",
                    sa.select(sa.func.coalesce(sa.func.sum(journaled.c.n), 0)),
                )
            )
        if p.copy_documents:
            done = (
                sa.delete(d.table)
                .where(doc_id.in_(sa.select(b.c.old_id)))
                .returning(doc_id)
                .cte("rekeyed")
            )
        else:
            done = (
                sa.update(d.table)
                .where(doc_id == b.c.old_id)
                .values({dm.id: b.c.new_id})
                .returning(doc_id)
                .cte("rekeyed")
            )
        self.rekey = sa.select(sa.func.count()).select_from(done)
        # no reference to an old id remains, rows the application added meanwhile included
        self.left = sa.select(
            *[_count_in(t, ref.column, b.c.old_id) for ref, t in p.tables.references]
        )
        self.finish = (
            sa.update(batches)
            .where(batches.c.id == batch_id)
            .values(
                documents=sa.bindparam("p_documents"),
                rows=sa.bindparam("p_rows"),
                committed_at=sa.func.clock_timestamp(),
                seconds=sa.bindparam("p_seconds"),
            )
        )

        # --- a rollback's statements ---
        self.batch_state = (
            sa.select(batches.c.state).where(batches.c.id == batch_id).with_for_update()
        )
        mapped = (
            sa.insert(b)
            .from_select(
                ["old_id", "new_id"],
                sa.select(id_map.c.old_id, id_map.c.new_id).where(
                    id_map.c.batch_id == batch_id, id_map.c.state == "done"
                ),
            )
            .returning(b.c.old_id)
            .cte("mapped")
        )
        self.unmap = sa.select(sa.func.count()).select_from(mapped)
        # the documents' own UPDATE locks them
        self.unkey = sa.update(d.table).where(doc_id == b.c.new_id).values({dm.id: b.c.old_id})
        self.restores: list[tuple[str, sa.Select[Any]]] = []
        for i, (ref, t) in enumerate(p.tables.references):
            col = t.c(ref.column)
            mine = sa.and_(rewrites.c.batch_id == batch_id, rewrites.c.ref == i)
            # the rows a batch rewrote: found through the reference's index on the new id (one
            # probe per document), then kept only if the batch journaled their key (rows that
            # pointed at the new id before the run, the healed orphans, stay where they were)
            key = sa.func.jsonb_array_elements(rewrites.c["keys"]).table_valued(
                sa.column("value", pg.JSONB)
            )
            journaled_key = (
                sa.exists()
                .select_from(key)
                .where(key.c.value == sa.func.jsonb_build_array(*[t.c(k) for k in ref.primary_key]))
            )
            restored = (
                sa.update(t.table)
                .where(
                    mine,
                    b.c.old_id == rewrites.c.old_id,
                    col == b.c.new_id,
                    journaled_key,
                )
                .values({ref.column: rewrites.c.old_id})
                .returning(sa.literal(1))
                .cte(f"restored_{i}")
            )
            journaled_rows = (
                sa.select(
                    sa.func.coalesce(sa.func.sum(sa.func.jsonb_array_length(rewrites.c["keys"])), 0)
                )
                .where(mine)
                .scalar_subquery()
            )
            self.restores.append(
                (
                    f"{ref.table}.{ref.column}",
                    sa.select(
                        sa.select(sa.func.count()).select_from(restored).scalar_subquery(),
                        journaled_rows,
                    ),
                )
            )
        self.unmapped = (
            sa.update(id_map)
            .where(id_map.c.batch_id == batch_id, id_map.c.state == "done")
            .values(state="rolled_back")
        )
        self.undone = (
            sa.update(batches)
            .where(batches.c.id == batch_id)
            .values(state="rolled_back", rolled_back_at=sa.func.now())
        )


def _claim(
    conn: Connection, p: Plan, run_id: int, batch_id: int, size: int, clear: bool
) -> int | None:
    """Claim up to `size` pending documents for this batch into the batch table, one user's
    documents together; None when there is none. `clear`: the batch table may hold an earlier
    batch of the same transaction (`uuidguard plan`'s rehearsal); otherwise it is empty, since
    every commit empties it (ON COMMIT DELETE ROWS)."""
    _batch_table(conn)
    if clear:
        conn.execute(p.sql.clear)
    n = conn.execute(
        p.sql.claim, {"p_run_id": run_id, "p_batch_id": batch_id, "p_size": size}
    ).scalar_one()
    if n == 0:
        return None
    conn.execute(p.sql.analyze)
    return int(n)


def _lock_and_skip(conn: Connection, p: Plan, run_id: int, claimed: int) -> int:
    """Lock the batch's documents; leave out those deleted since the run was planned or whose
    new id was taken since (a fresh upload of the same file): reported, never forced.
    Returns how many were left out. Two statements when nothing is left out (the usual case)."""
    locked = conn.execute(p.sql.lock).scalar_one()
    skipped = list(conn.execute(p.sql.taken).scalars())
    if locked < claimed:  # some were deleted since the run was planned
        skipped += list(conn.execute(p.sql.gone).scalars())
    skipped = list(dict.fromkeys(skipped))
    if skipped:
        conn.execute(p.sql.skip, {"p_run_id": run_id, "p_skipped": skipped})
        conn.execute(p.sql.unbatch, {"p_skipped": skipped})
    return len(skipped)


def _rewrite(conn: Connection, p: Plan, batch_id: int) -> tuple[dict[str, int], int]:
    """Re-key the documents and every reference, journaling each rewritten row's key, grouped
    into one journal row per document and reference. Returns rows rewritten per reference
    and the documents re-keyed."""
    prep = conn.dialect.identifier_preparer
    for schema, name in p.sql.deferred:
        conn.execute(
            sa.text(f"SET CONSTRAINTS {prep.quote_schema(schema)}.{prep.quote(name)} DEFERRED")
        )
    if p.sql.copy is not None:
        conn.execute(p.sql.copy)
    rewritten: dict[str, int] = {}
    for name, statement in p.sql.rewrites:
        rewritten[name] = int(conn.execute(statement, {"p_batch_id": batch_id}).scalar_one())
    documents = conn.execute(p.sql.rekey).scalar_one()
    return rewritten, int(documents)


def _verify(conn: Connection, p: Plan, batch_id: int, moving: int, rekeyed: int) -> None:
    """Inside the batch's transaction: every document was re-keyed, and (in one statement) no
    reference to an old id remains, rows the application added meanwhile included."""
    if rekeyed != moving:
        raise VerificationError(batch_id, f"{rekeyed} of {moving} documents were re-keyed")
    left = conn.execute(p.sql.left).one()
    for (ref, _), n in zip(p.tables.references, left, strict=True):
        if n:
            raise VerificationError(
                batch_id, f"{n} rows of {ref.table}.{ref.column} still carry an old id"
            )


def forward_batch(
    conn: Connection,
    settings: Settings,
    p: Plan,
    run_id: int,
    pace: Pace,
    worker: str,
    lock_timeout: timedelta,
) -> BatchResult | Stopped | None:
    """Re-key up to `pace.size` pending documents of the run in one transaction; None when
    none is claimable, Stopped when the run is not running. A batch time changed on the run
    (`uuidguard migrate set`) is applied to `pace` before the batch is sized."""
    started = time.monotonic()
    with conn.begin() as tx:
        set_batch_locals(conn, settings, lock_timeout)
        # a shared lock on the run row: pause and rollback update that row, so they wait for
        # the batches in flight, and no batch commits after a rollback has listed the batches
        state, live = conn.execute(p.sql.run_state, {"p_run_id": run_id}).one()
        if state != "running":
            return Stopped(str(state))
        if (live or {}).get("batch_time"):
            pace.retarget(float(live["batch_time"]))
        result = apply_batch(conn, settings, p, run_id, pace.size, worker, started)
        if result is None:
            tx.rollback()  # nothing pending: not even the batch row stays
    if isinstance(result, BatchResult):  # committed, with the batch table it used
        _batch_table_kept(conn)
    return result


def apply_batch(
    conn: Connection,
    settings: Settings,
    p: Plan,
    run_id: int,
    size: int,
    worker: str,
    started: float,
    clear: bool = False,
) -> BatchResult | None:
    """One batch's work inside the caller's transaction, which the caller commits (a batch)
    or rolls back (nothing claimable, or `uuidguard plan`'s measured rehearsal, which runs
    several batches in one transaction and passes `clear`)."""
    batch_id = conn.execute(
        p.sql.new_batch, {"p_run_id": run_id, "p_worker": worker, "p_size": size}
    ).scalar_one()
    n = _claim(conn, p, run_id, batch_id, size, clear)
    if n is None:
        return None
    skipped = _lock_and_skip(conn, p, run_id, n)
    n -= skipped
    rewritten, rekeyed = _rewrite(conn, p, batch_id)
    _verify(conn, p, batch_id, n, rekeyed)
    seconds = time.monotonic() - started
    conn.execute(
        p.sql.finish,
        {"p_batch_id": batch_id, "p_documents": n, "p_rows": rewritten, "p_seconds": seconds},
    )
    return BatchResult(batch_id, n, skipped, rewritten, time.monotonic() - started)


def rollback_batch(
    conn: Connection, settings: Settings, p: Plan, batch_id: int, lock_timeout: timedelta
) -> int:
    """Undo one committed batch exactly; returns the documents restored to their old ids.

    Under enforced foreign keys, restoring the healed orphans means a document id that rows
    still reference disappears again; PostgreSQL's referential triggers would refuse or
    cascade, so the restore runs with session_replication_role = replica, which turns those
    triggers off for this transaction only (superuser, or GRANT SET ON PARAMETER). The journal
    says exactly which rows to move back, so nothing is left to the triggers.
    """
    sql = p.sql
    bound = {"p_batch_id": batch_id}
    with conn.begin():
        set_batch_locals(conn, settings, lock_timeout)
        state = conn.execute(sql.batch_state, bound).scalar_one()
        if state != "committed":
            return 0
        if any(fk is not None for fk in p.fks.values()):
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        _batch_table(conn)
        n = conn.execute(sql.unmap, bound).scalar_one()
        conn.execute(sql.analyze)
        conn.execute(sql.unkey)
        for name, statement in sql.restores:
            restored, journaled = conn.execute(statement, bound).one()
            if restored != journaled:
                raise VerificationError(
                    batch_id, f"rollback restored {restored} of {journaled} rows of {name}"
                )
        conn.execute(sql.unmapped, bound)
        conn.execute(sql.undone, bound)
    _batch_table_kept(conn)
    return n


def run_batches(
    engine: Engine,
    settings: Settings,
    run_id: int,
    worker: str,
    pace: Pace,
    max_batches: int | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
    actor: str | None = None,
    lock_timeout: timedelta | None = None,
    joining: bool = False,
    throttle: throttle_mod.Throttle | None = None,
    stop: threading.Event | None = None,
) -> str:
    """Run batches until the run is done, paused, or `max_batches` ran; returns the run state.
    `joining`: a worker of a multi-worker run, for which the others may already have finished
    the run; a completed run is then its result, not an error.

    Before each batch the throttle (default: from the settings) may make the worker wait or
    pause the run (throttle.gate); its query and Prometheus must answer before the first.
    `stop` (the daemon's shutdown): once set, this worker leaves before its next batch, a wait
    included, and the run stays as it is for the other workers.

    Lock timeouts and deadlocks are expected on a live database: the batch is rolled back
    whole, the size halved, and it is retried after a capped exponential backoff. A batch whose
    own verification fails pauses the run with the reason, and the error is raised.
    """
    actor = actor or journal.default_actor()
    lock_timeout = lock_timeout or settings.migrate.lock_timeout
    throttle = throttle or throttle_mod.Throttle(settings)
    with db.connect(engine) as conn:
        throttle.validate(conn)
        with conn.begin():
            run = runs.resolve(conn, settings, run_id)
            if run["config_fingerprint"] != runs.config_fingerprint(settings):
                raise runs.RunError(
                    run_id,
                    "was planned with another mapping or id rule",
                    "restore the configuration it was created with, or roll it back and create a new run",
                )
            if run["state"] == "completed" and joining:
                return "completed"
            if run["state"] in runs.FINISHED:
                raise runs.RunError(run_id, f"is {run['state']}", "create a new run")
            if run["state"] == "rolling_back":
                raise runs.RunError(run_id, "is rolling back", "finish the rollback first")
            if run["state"] == "paused":
                raise runs.RunError(
                    run_id, "is paused", f"`uuidguard migrate resume {run_id}` first"
                )
            runs.set_state(
                conn, settings, run_id, "running", actor, "run", allowed_from=("planned", "running")
            )
            p = plan(conn, settings)
        done = retries = failures = 0
        base_seconds = pace.target_seconds
        while max_batches is None or done < max_batches:
            stopped = throttle_mod.gate(
                conn, settings, throttle, run_id, worker, pace, base_seconds, actor, stop
            )
            if stopped is not None:
                return stopped
            try:
                # the batch reads the run's state and live settings under its own lock
                result = forward_batch(conn, settings, p, run_id, pace, worker, lock_timeout)
            except sa_exc.OperationalError as exc:
                if not isinstance(exc.orig, _CONTENTION):
                    failures = _failed(conn, settings, run_id, worker, pace, failures, exc, actor)
                    continue
                retries += 1
                if retries > MAX_CONTENTION_RETRIES:
                    raise
                pace.on_lock_timeout()
                time.sleep(min(0.05 * 2**retries, 5.0))
                continue
            except sa_exc.DBAPIError as exc:
                failures = _failed(conn, settings, run_id, worker, pace, failures, exc, actor)
                continue
            except VerificationError as exc:
                with conn.begin():
                    runs.set_state(
                        conn, settings, run_id, "paused", actor, "pause", reason=str(exc)
                    )
                raise
            if isinstance(result, Stopped):
                return result.state
            if result is None:
                # nothing claimable: done, or other workers hold the rest (their rows come
                # back as pending if they die, so keep looking until none is pending)
                if _pending(conn, settings, run_id) == 0:
                    break
                time.sleep(0.2)
                continue
            retries = failures = 0
            done += 1
            pace.observe(result.documents + result.skipped, result.seconds)
            if on_batch is not None:
                on_batch(result)
            rest = settings.migrate.pause_between.total_seconds()
            if rest:
                if stop is not None:
                    stop.wait(rest)
                else:
                    time.sleep(rest)
        with conn.begin():
            if _pending(conn, settings, run_id, autocommit=False) == 0:
                runs.set_state(
                    conn,
                    settings,
                    run_id,
                    "completed",
                    actor,
                    "complete",
                    allowed_from=("running",),
                )
            return str(runs.resolve(conn, settings, run_id)["state"])


def _failed(
    conn: Connection,
    settings: Settings,
    run_id: int,
    worker: str,
    pace: Pace,
    failures: int,
    exc: sa_exc.DBAPIError,
    actor: str,
) -> int:
    """A batch failed for a reason other than contention: it was rolled back whole. Record it;
    after three failures in a row halve the batch (the culprit ends up alone), and when a
    single document keeps failing mark the run failed with the reason."""
    schema = settings.journal_schema
    batches = journal.table(schema, "batches")
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    failures += 1
    with conn.begin():
        conn.execute(
            sa.insert(batches).values(
                run_id=run_id,
                state="failed",
                worker=worker,
                documents=0,
                target_size=pace.size,
                error=reason,
            )
        )
        if failures < 3:
            return failures
        if pace.size > 1:
            pace.min_size = 1
            pace.size = max(1, pace.size // 2)
            return 0
        runs.set_state(conn, settings, run_id, "failed", actor, "fail", reason=reason)
    raise runs.RunError(
        run_id, f"failed: {reason}", "fix the cause, then roll the run back or create a new one"
    )


def _pending(conn: Connection, settings: Settings, run_id: int, autocommit: bool = True) -> int:
    schema = settings.journal_schema
    id_map = journal.table(schema, "id_map")
    query = sa.select(sa.func.count()).where(id_map.c.run_id == run_id, id_map.c.state == "pending")
    if not autocommit:
        return int(conn.execute(query).scalar_one())
    with conn.begin():
        return int(conn.execute(query).scalar_one())


def rollback(
    engine: Engine,
    settings: Settings,
    run_id: int,
    last: int | None = None,
    since: Any = None,
    everything: bool = False,
    force: bool = False,
    actor: str | None = None,
    source: str = "cli",
    reason: str = "rollback requested",
) -> int:
    """Roll back the last K batches, the batches since a time, or the whole run; newest first.
    `source` says where the command came from in the audit log (cli, api, slack, alert)."""
    actor = actor or journal.default_actor()
    schema = settings.journal_schema
    batches = journal.table(schema, "batches")
    with db.connect(engine) as conn:
        with conn.begin():
            run = runs.resolve(conn, settings, run_id)
            if run["state"] == "completed" and not force:
                raise runs.RunError(
                    run_id, "is completed", "pass --force to roll back a completed run"
                )
            if run["state"] == "rolled_back":
                raise runs.RunError(run_id, "is already rolled back", "nothing to do")
            target = "rolling_back" if everything else "paused"
            runs.set_state(
                conn,
                settings,
                run_id,
                target,
                actor,
                "rollback",
                reason=reason,
                source=source,
                allowed_from=(
                    "planned",
                    "running",
                    "paused",
                    "completed",
                    "rolling_back",
                    "failed",
                ),
            )
            # read committed: this statement sees every batch committed before the update above
            q = sa.select(batches.c.id).where(
                batches.c.run_id == run_id, batches.c.state == "committed"
            )
            if since is not None:
                q = q.where(batches.c.committed_at >= since)
            q = q.order_by(batches.c.id.desc())
            if last is not None:
                q = q.limit(last)
            ids = [r[0] for r in conn.execute(q)]
            p = plan(conn, settings)
        restored = 0
        for batch_id in ids:
            restored += rollback_batch(conn, settings, p, batch_id, settings.migrate.lock_timeout)
        if everything:
            with conn.begin():
                runs.set_state(
                    conn,
                    settings,
                    run_id,
                    "rolled_back",
                    actor,
                    "rolled back",
                    source=source,
                    allowed_from=("rolling_back",),
                )
        return restored
