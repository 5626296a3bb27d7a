"""The migration engine on real PostgreSQL: re-key everything, then roll back exactly."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from migrator import assess, catalog, dataset, db, journal, runner, runs, seed, verify
from migrator.idrule import IdRule
from migrator.pace import Pace
from migrator.settings import Settings, load_settings

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def _prepare(settings: Settings, fk: seed.FkMode, documents: int = 300) -> tuple[sa.Engine, dict]:
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    ds = dataset.generate(dataset.DatasetSpec(documents=documents, seed=5, as_of=AS_OF), rule)
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        manifest = seed.seed(conn, ds, "public", fk, replace=False).manifest
        journal.init(conn, settings.journal_schema)
    return engine, manifest


def _create(engine: sa.Engine, settings: Settings, option: runs.Option = "A") -> int:
    with engine.connect() as conn, conn.begin():
        return runs.create(conn, settings, option, AS_OF, "test")


def _fingerprint(engine: sa.Engine, settings: Settings) -> dict:
    with engine.connect() as conn:
        return runs.fingerprint(conn, settings)


@pytest.mark.parametrize("fk", seed.FK_MODES)
def test_option_a_rekeys_everything_and_rolls_back_exactly(
    settings: Settings, fk: seed.FkMode
) -> None:
    """Every FK variant: all random documents re-keyed, orphans healed, then an exact rollback."""
    engine, _ = _prepare(settings, fk)
    before = assess.run(engine, settings, now=AS_OF)
    run_id = _create(engine, settings)
    fp_before = _fingerprint(engine, settings)
    state = runner.run_batches(
        engine, settings, run_id, "w1", pace=Pace(size=40, min_size=40, max_size=40)
    )
    assert state == "completed"
    after = assess.run(engine, settings, now=AS_OF)
    b, a = before["documents"]["by_class"], after["documents"]["by_class"]
    canonical = before["conflicts"]["canonical"]
    assert a["random_consistent"] == a["random_mismatched"] == a["random_unprocessed"] == 0
    assert a["deterministic"] == b["deterministic"] + before["documents"]["to_rekey"]
    assert a["conflict"] == b["conflict"] - canonical
    assert a["other"] == b["other"]
    cb, ca = before["chunks"]["by_class"], after["chunks"]["by_class"]
    assert ca["orphan_healable"] == 0
    assert ca["attached"] == cb["attached"] + cb["orphan_healable"]
    assert ca["orphan_unmatched"] == cb["orphan_unmatched"]
    fp_after = _fingerprint(engine, settings)
    # same rows, same content: only the document-id columns moved
    for table, before_fp in fp_before.items():
        assert fp_after[table]["rows"] == before_fp["rows"]
        assert fp_after[table]["content"] == before_fp["content"]
    report = verify.run(engine, settings, run_id)
    assert report["ok"], report
    with engine.connect() as conn:
        st = runs.status(conn, settings, run_id)
    assert st["documents"]["done"] == before["documents"]["to_rekey"]
    assert st["percent"] == 100.0
    # conflicts untouched: no constraint dropped either
    with engine.connect() as conn:
        fks = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = 'documents'::regclass"
            )
        ).scalar_one()
    assert fks == (0 if fk == "none" else 3)

    with pytest.raises(runs.RunError):
        runner.rollback(engine, settings, run_id, everything=True)
    restored = runner.rollback(engine, settings, run_id, everything=True, force=True)
    assert restored == before["documents"]["to_rekey"]
    assert _fingerprint(engine, settings) == fp_before
    again = assess.run(engine, settings, now=AS_OF)
    assert again["documents"]["by_class"] == b
    assert again["chunks"]["by_class"] == cb
    with engine.connect() as conn:
        assert runs.status(conn, settings, run_id)["state"] == "rolled_back"
    assert verify.run(engine, settings, run_id)["ok"]


def test_roll_back_last_batches_then_continue(settings: Settings) -> None:
    """Rolling back the last K batches mid-run restores them; the run then continues to the end."""
    engine, _ = _prepare(settings, "none", documents=800)
    run_id = _create(engine, settings)
    fp_before = _fingerprint(engine, settings)
    assert (
        runner.run_batches(
            engine,
            settings,
            run_id,
            "w1",
            pace=Pace(size=25, min_size=25, max_size=25),
            max_batches=4,
        )
        == "running"
    )
    restored = runner.rollback(engine, settings, run_id, last=2)
    assert restored == 50
    with engine.connect() as conn:
        st = runs.status(conn, settings, run_id)
    assert st["state"] == "paused"
    assert st["documents"]["done"] == 50 and st["documents"]["rolled_back"] == 50
    with engine.begin() as conn:
        runs.set_state(
            conn, settings, run_id, "running", "test", "resume", allowed_from=("paused",)
        )
    assert (
        runner.run_batches(
            engine, settings, run_id, "w1", pace=Pace(size=100, min_size=100, max_size=100)
        )
        == "completed"
    )
    runner.rollback(engine, settings, run_id, everything=True, force=True)
    assert _fingerprint(engine, settings) == fp_before


def test_pause_stops_before_the_next_batch(settings: Settings) -> None:
    """A pause recorded by another connection takes effect before the next batch."""
    engine, _ = _prepare(settings, "strict")
    run_id = _create(engine, settings)
    seen = []

    def pause_after_first(result: runner.BatchResult) -> None:
        seen.append(result.batch_id)
        with engine.begin() as other:
            runs.set_state(other, settings, run_id, "paused", "test", "pause")

    state = runner.run_batches(
        engine,
        settings,
        run_id,
        "w1",
        pace=Pace(size=10, min_size=10, max_size=10),
        on_batch=pause_after_first,
    )
    assert state == "paused" and len(seen) == 1


def test_second_active_run_and_missing_journal_are_refused(settings: Settings) -> None:
    """No journal: a clear error naming `uuidguard init`; a second active run: refused."""
    rule = IdRule(settings.id_rule.namespace, settings.id_rule.template)
    ds = dataset.generate(dataset.DatasetSpec(documents=50, seed=5, as_of=AS_OF), rule)
    engine = db.create_engine(settings)
    with engine.connect() as conn:
        seed.seed(conn, ds, "public", "none", replace=False)
    with pytest.raises(journal.JournalError, match="uuidguard init"):
        _create(engine, settings)
    with engine.connect() as conn:
        assert journal.init(conn, settings.journal_schema)[0] is None
        assert journal.init(conn, settings.journal_schema)[0] == journal.head()  # idempotent
    first = _create(engine, settings)
    with pytest.raises(runs.RunError) as info:
        _create(engine, settings)
    assert info.value.run_id == first


def test_verify_catches_a_reference_left_behind(settings: Settings) -> None:
    """Verification fails, naming the check, when a row still points at an old id."""
    engine, _ = _prepare(settings, "none")
    run_id = _create(engine, settings)
    runner.run_batches(engine, settings, run_id, "w1", pace=Pace(size=100))
    with engine.begin() as conn:
        old, new = conn.execute(
            sa.text(
                "SELECT m.old_id, m.new_id FROM uuidguard.id_map m"
                " WHERE m.class = 'random_consistent' AND m.state = 'done' LIMIT 1"
            )
        ).one()
        conn.execute(
            sa.text(
                "UPDATE document_chunks SET document_id = :old WHERE id ="
                " (SELECT id FROM document_chunks WHERE document_id = :new LIMIT 1)"
            ),
            {"old": old, "new": new},
        )
    report = verify.run(engine, settings, run_id)
    assert not report["ok"]
    failed = [c["check"] for c in report["checks"] if not c["ok"]]
    assert failed == ["no document_chunks.document_id carries an old id"]


def test_a_failing_document_is_isolated_then_fails_the_run(settings: Settings) -> None:
    """A batch failing three times is halved until the culprit is alone; then the run fails
    with the reason, every other document re-keyed, and the run can be rolled back."""
    engine, _ = _prepare(settings, "none")
    run_id = _create(engine, settings)
    with engine.begin() as conn:
        victim = conn.execute(
            sa.text(
                "SELECT new_id FROM uuidguard.id_map WHERE class = 'random_consistent' ORDER BY user_id, old_id LIMIT 1"
            )
        ).scalar_one()
        conn.execute(
            sa.text(
                f"ALTER TABLE document_chunks ADD CONSTRAINT no_victim CHECK (document_id <> '{victim}') NOT VALID"
            )
        )
    with pytest.raises(runs.RunError, match="no_victim"):
        runner.run_batches(engine, settings, run_id, "w1", pace=Pace(size=16, min_size=16))
    with engine.connect() as conn:
        st = runs.status(conn, settings, run_id)
        failed_batches = (
            conn.execute(
                sa.text(
                    "SELECT target_size FROM uuidguard.batches WHERE state = 'failed' ORDER BY id"
                )
            )
            .scalars()
            .all()
        )
    assert st["state"] == "failed" and "no_victim" in st["reason"]
    assert failed_batches[:3] == [16, 16, 16] and failed_batches[-1] == 1
    assert st["documents"]["pending"] >= 1
    restored = runner.rollback(engine, settings, run_id, everything=True)
    assert restored == st["documents"]["done"]


def test_batch_time_changes_on_a_running_run(settings: Settings) -> None:
    """`migrate set --batch-time` reaches a worker before its next batch."""
    engine, _ = _prepare(settings, "none")
    run_id = _create(engine, settings)
    pace = Pace(target_seconds=0.2, size=10)

    def change(_: runner.BatchResult) -> None:
        with engine.begin() as conn:
            runs.set_options(conn, settings, run_id, "test", batch_time=0.05)

    runner.run_batches(engine, settings, run_id, "w1", pace=pace, max_batches=2, on_batch=change)
    assert pace.target_seconds == 0.05
    assert runner.run_batches(engine, settings, run_id, "w1", pace=Pace()) == "completed"
    with engine.begin() as conn, pytest.raises(runs.RunError, match="is completed"):
        runs.set_options(conn, settings, run_id, "test", batch_time=0.1)


def test_a_role_without_privileges_is_told_the_grant(settings: Settings) -> None:
    """A role that may only read gets one error naming what is missing and the GRANT to run."""
    engine, _ = _prepare(settings, "strict")
    role = f"ro_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public, uuidguard TO {role}"))
        conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public, uuidguard TO {role}"))
        conn.execute(sa.text(f"GRANT INSERT, UPDATE ON ALL TABLES IN SCHEMA uuidguard TO {role}"))
    assert settings.database.dsn is not None
    url = sa.make_url(settings.database.dsn.get_secret_value()).set(username=role)
    limited = load_settings(None, database={"dsn": url.render_as_string(hide_password=False)})
    try:
        with pytest.raises(catalog.PrivilegeError) as info:
            _create(db.create_engine(limited), limited)
        message = str(info.value)
        assert (
            "UPDATE on public.documents" in message
            and "GRANT UPDATE ON public.documents" in message
        )
        assert "session_replication_role" in message
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM uuidguard.runs")).scalar_one() == 0
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))


def test_rollback_while_a_worker_runs_leaves_no_batch_behind(settings: Settings) -> None:
    """A whole-run rollback issued mid-run waits for the batch in flight: none commits after it."""
    import threading

    engine, _ = _prepare(settings, "none", documents=1500)
    run_id = _create(engine, settings)
    fp_before = _fingerprint(engine, settings)
    started = threading.Event()
    outcome: list[object] = []

    def work() -> None:
        try:
            outcome.append(
                runner.run_batches(
                    engine,
                    settings,
                    run_id,
                    "w1",
                    pace=Pace(size=5, min_size=5, max_size=5),
                    on_batch=lambda _: started.set(),
                )
            )
        except Exception as exc:  # reported below
            outcome.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    assert started.wait(30)
    runner.rollback(engine, settings, run_id, everything=True)
    worker.join(60)
    # the worker stopped at its next batch, seeing the rollback under way or finished
    assert outcome in (["rolling_back"], ["rolled_back"])
    with engine.connect() as conn:
        committed = conn.execute(
            sa.text("SELECT count(*) FROM uuidguard.batches WHERE state = 'committed'")
        ).scalar_one()
    assert committed == 0
    assert _fingerprint(engine, settings) == fp_before


def test_run_refuses_a_changed_configuration(settings: Settings) -> None:
    """A run planned under one mapping or id rule refuses to continue under another."""
    engine, _ = _prepare(settings, "none", documents=100)
    run_id = _create(engine, settings)
    assert settings.database.dsn is not None
    changed = load_settings(
        None,
        database={"dsn": settings.database.dsn.get_secret_value()},
        id_rule={"template": "{file_sha256}:{user_id}"},
    )
    with pytest.raises(runs.RunError, match="another mapping or id rule"):
        runner.run_batches(engine, changed, run_id, "w1", pace=Pace(size=10))
    with engine.connect() as conn:
        assert runs.status(conn, settings, run_id)["documents"]["done"] == 0


def test_deleted_and_taken_documents_are_skipped(settings: Settings) -> None:
    """A document deleted since planning, or whose new id a fresh upload took, is skipped."""
    engine, _ = _prepare(settings, "none", documents=200)
    run_id = _create(engine, settings)
    with engine.begin() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT old_id, new_id FROM uuidguard.id_map"
                " WHERE class = 'random_unprocessed' ORDER BY old_id LIMIT 2"
            )
        ).all()
        (deleted, _), (kept, taken) = rows
        conn.execute(sa.text("DELETE FROM documents WHERE id = :id"), {"id": deleted})
        conn.execute(
            sa.text(
                "INSERT INTO documents (id, user_id, file_sha256, status, created_at, access_count)"
                " VALUES (:id, 'fresh', repeat('0', 64), 'uploaded', now(), 0)"
            ),
            {"id": taken},
        )
    assert runner.run_batches(engine, settings, run_id, "w1", pace=Pace(size=50)) == "completed"
    with engine.connect() as conn:
        st = runs.status(conn, settings, run_id)
        still_there = conn.execute(
            sa.text("SELECT count(*) FROM documents WHERE id = :id"), {"id": kept}
        ).scalar_one()
    assert st["documents"]["skipped"] == 2
    assert still_there == 1  # kept its old id: the new one belongs to someone else now


def test_a_failed_batch_verification_pauses_the_run_and_changes_nothing(
    settings: Settings,
) -> None:
    """A trigger that keeps chunks on their old id: the batch's own check catches it, the
    transaction is rolled back whole and the run is paused with the reason."""
    engine, _ = _prepare(settings, "none")
    run_id = _create(engine, settings)
    fp_before = _fingerprint(engine, settings)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION keep_old() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN NEW.document_id := OLD.document_id; RETURN NEW; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER keep_old BEFORE UPDATE ON document_chunks"
                " FOR EACH ROW EXECUTE FUNCTION keep_old()"
            )
        )
    with pytest.raises(runner.VerificationError, match=r"document_chunks\.document_id still carry"):
        runner.run_batches(engine, settings, run_id, "w1", pace=Pace(size=50))
    with engine.connect() as conn:
        st = runs.status(conn, settings, run_id)
        journaled = conn.execute(sa.text("SELECT count(*) FROM uuidguard.rewrites")).scalar_one()
    assert st["state"] == "paused" and "failed verification" in st["reason"]
    assert st["documents"]["done"] == 0 and journaled == 0
    assert _fingerprint(engine, settings) == fp_before


def test_journal_downgrade_and_upgrade_keep_every_rewritten_row(settings: Settings) -> None:
    """Revision 0002 groups the journal per document; going back to 0001 and forward again
    loses no row, and the run still rolls back exactly."""
    engine, _ = _prepare(settings, "strict")
    run_id = _create(engine, settings)
    fp_before = _fingerprint(engine, settings)
    runner.run_batches(
        engine, settings, run_id, "w1", pace=Pace(size=20, max_size=20), max_batches=3
    )
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT sum(jsonb_array_length(keys)) FROM uuidguard.rewrites")
        ).scalar_one()
        assert rows > 60  # 60 documents, several rows each
        journal.downgrade(conn, settings.journal_schema, "0001")
        assert journal.current(conn, settings.journal_schema) == "0001"
        assert conn.execute(sa.text("SELECT count(*) FROM uuidguard.rewrites")).scalar_one() == rows
        before, after = journal.init(conn, settings.journal_schema)
        assert (before, after) == ("0001", journal.head())
    runner.rollback(engine, settings, run_id, everything=True)
    assert _fingerprint(engine, settings) == fp_before


def test_status_mid_run_gives_a_rate_and_an_eta(settings: Settings) -> None:
    """The rate comes from the batches' busy time (start to commit), the ETA from it."""
    engine, _ = _prepare(settings, "none")
    run_id = _create(engine, settings)
    runner.run_batches(
        engine, settings, run_id, "w1", pace=Pace(size=10, max_size=10), max_batches=3
    )
    with engine.connect() as conn:
        st = runs.status(conn, settings, run_id)
    assert st["documents"]["done"] == 30
    assert st["documents_per_second"] > 0
    assert st["eta_seconds"] == pytest.approx(
        st["documents"]["pending"] / st["documents_per_second"]
    )
    assert 0 < st["percent"] < 100


def test_pause_between_batches_rests_and_counts_in_the_eta(settings: Settings) -> None:
    """migrate.pause_between sleeps after each batch; the ETA adds the rests still to come."""
    engine, _ = _prepare(settings, "none")
    assert settings.database.dsn is not None
    rested = load_settings(
        None,
        database={"dsn": settings.database.dsn.get_secret_value()},
        migrate={"pause_between": "0.3s"},
    )
    run_id = _create(engine, rested)
    started = time.monotonic()
    runner.run_batches(engine, rested, run_id, "w", Pace(size=10, max_size=10), max_batches=3)
    assert time.monotonic() - started >= 0.9
    with engine.connect() as conn:
        plain = runs.status(conn, settings, run_id)
        with_rest = runs.status(conn, rested, run_id)
    batches_left = plain["documents"]["pending"] / 10
    assert with_rest["eta_seconds"] == pytest.approx(plain["eta_seconds"] + 0.3 * batches_left)


@pytest.mark.parametrize(("fk", "writes_wait"), [("none", False), ("strict", True)])
def test_a_batch_lets_the_application_write_its_documents_until_the_end(
    settings: Settings, fk: seed.FkMode, writes_wait: bool
) -> None:
    """Inside a batch, after its documents are locked: the application's update of another
    column goes through (FOR KEY SHARE) while a delete waits for the batch; with a NOT
    DEFERRABLE key the documents are copied, so the update waits too (FOR UPDATE)."""
    engine, _ = _prepare(settings, fk, documents=120)
    run_id = _create(engine, settings)
    with engine.connect() as conn, conn.begin():
        runs.set_state(conn, settings, run_id, "running", "test", "run")
    with engine.connect() as conn:
        p = runner.plan(conn, settings)
    other = db.create_engine(settings)
    with engine.connect() as conn:
        tx = conn.begin()
        runner.set_batch_locals(conn, settings, settings.migrate.lock_timeout)
        batch_id = conn.execute(
            p.sql.new_batch, {"p_run_id": run_id, "p_worker": "w", "p_size": 5}
        ).scalar_one()
        claimed = runner._claim(conn, p, run_id, batch_id, 5, clear=False)
        assert claimed is not None
        assert conn.execute(p.sql.lock).scalar_one() == claimed
        doc = conn.execute(sa.text(f"SELECT old_id FROM {runner.BATCH} LIMIT 1")).scalar_one()

        def attempt(statement: str) -> bool:
            """True when it went through, False when it waited for the batch's lock."""
            with other.connect() as oconn, oconn.begin() as otx:
                oconn.execute(sa.text("SET LOCAL lock_timeout = '300ms'"))
                try:
                    oconn.execute(sa.text(statement), {"id": doc})
                except sa.exc.OperationalError as exc:
                    assert "lock timeout" in str(exc)
                    return False
                otx.rollback()  # leave the document as it was
                return True

        update = "UPDATE documents SET access_count = access_count + 1 WHERE id = :id"
        assert attempt(update) is not writes_wait
        assert attempt("UPDATE documents SET id = gen_random_uuid() WHERE id = :id") is False
        if fk == "none":
            assert attempt("DELETE FROM documents WHERE id = :id") is False
        tx.rollback()
    other.dispose()


def test_a_stopped_batch_leaves_the_session_able_to_run_the_next(settings: Settings) -> None:
    """The batch table is created once per session and remembered only once a batch using it
    committed: a first turn that finds the run paused does not make the next one skip it."""
    engine, _ = _prepare(settings, "none", documents=60)
    run_id = _create(engine, settings)
    with engine.connect() as conn:
        with conn.begin():
            p = runner.plan(conn, settings)
            runs.set_state(conn, settings, run_id, "paused", "test", "pause")
        pace = Pace(size=10, max_size=10)
        stopped = runner.forward_batch(
            conn, settings, p, run_id, pace, "w", settings.migrate.lock_timeout
        )
        assert stopped == runner.Stopped("paused")
        with conn.begin():
            runs.set_state(conn, settings, run_id, "running", "test", "resume")
        result = runner.forward_batch(
            conn, settings, p, run_id, pace, "w", settings.migrate.lock_timeout
        )
        assert isinstance(result, runner.BatchResult) and result.documents == 10
