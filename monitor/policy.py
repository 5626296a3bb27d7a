"""What an alert may do to a running migration: Alertmanager's webhook, and the daemon's own
check after each batch.

Alertmanager repeats notifications (repeat_interval, HA pairs, retries), so every alert is
recorded once per (fingerprint, start, status) and a replay decides nothing. An alert acts
through its labels (settings.policy): `uuidguard_action` pause | rollback and, for a
rollback, `uuidguard_scope` last_batch | recent | run. As in Argo Rollouts' analysis,
missing or failing data is *inconclusive*: such an alert notifies and may pause, never rolls
back by itself; and a failure limit tolerates the first N rollback alerts of a run (they
pause). Dry-run decides and audits without changing anything. Every decision is audited with
the alert that caused it.

Worst case from the first bad sample to the pause, with the shipped configuration: the probe
interval (canary 60 s) + Prometheus's scrape and evaluation intervals (15 s + 15 s) + the
alert's `for:` + Alertmanager's group_wait (10 s) + one webhook round trip; the batch canary
below acts within one batch, without Prometheus.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from migrator import journal, runner, runs
from migrator.errors import UuidguardError
from migrator.settings import Settings

log = logging.getLogger("uuidguard.policy")
#: the alerts of alerts/uuidguard.rules.yml (tests/test_alerts.py keeps this list equal to it);
#: only these, and settings.policy.extra_alerts, may act on a run
SHIPPED_ALERTS = frozenset(
    {
        "UuidguardCanaryErrors",
        "UuidguardDaemonDown",
        "UuidguardDaemonReplicaDown",
        "UuidguardDatabaseLatencyHigh",
        "UuidguardIntegrityViolations",
        "UuidguardIntegrityViolationsRising",
        "UuidguardMigrationBatchesSlow",
        "UuidguardMigrationFailed",
        "UuidguardMigrationLockWaitsHigh",
        "UuidguardMigrationStalled",
        "UuidguardNewUploadsNonconforming",
        "UuidguardPipelineNewOrphans",
        "UuidguardProbeFailing",
        "UuidguardProbeStale",
        "UuidguardRagAccessibilityDropped",
        "UuidguardRagAccessibilityLow",
        "UuidguardRagPinnedDocumentsInvisible",
    }
)
ACTIVE_STATES = ("running", "paused")


class Alert(BaseModel):
    """One alert of Alertmanager's webhook payload (version 4); unknown fields tolerated."""

    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str


class Notification(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: Literal["4"]
    groupKey: str
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(max_length=1000)


def _tables(settings: Settings) -> tuple[sa.Table, sa.Table]:
    md = journal.metadata(settings.journal_schema)
    s = settings.journal_schema
    return md.tables[f"{s}.alert_events"], md.tables[f"{s}.runs"]


def handle(
    engine: Engine, settings: Settings, note: Notification, on_rollback: Any = None
) -> list[dict[str, Any]]:
    """Decide (and do) what each alert of the notification asks; returns the decisions."""
    decisions = []
    for alert in note.alerts:
        decision, detail, rollback = _decide(engine, settings, note, alert)
        decisions.append(
            {
                "alertname": alert.labels.get("alertname", ""),
                "fingerprint": alert.fingerprint,
                "status": alert.status,
                "decision": decision,
                **detail,
            }
        )
        if rollback is not None:
            thread = threading.Thread(
                target=_rollback, args=(engine, settings, *rollback), name="uuidguard-rollback"
            )
            thread.start()
            if on_rollback is not None:
                on_rollback(thread)
    return decisions


def _decide(
    engine: Engine, settings: Settings, note: Notification, alert: Alert
) -> tuple[str, dict[str, Any], tuple[int, dict[str, Any], str] | None]:
    p = settings.policy
    events, runs_t = _tables(settings)
    name = alert.labels.get("alertname", "unnamed")
    with engine.connect() as conn, conn.begin():
        active = runs.active_run(conn, settings)
        state = None
        if active is not None:
            # under the row lock: two deliveries at once decide one after the other
            state = conn.execute(
                sa.select(runs_t.c.state).where(runs_t.c.id == active).with_for_update()
            ).scalar_one()
        recorded = conn.execute(
            pg_insert(events)
            .values(
                group_key=note.groupKey,
                fingerprint=alert.fingerprint,
                alertname=name,
                status=alert.status,
                starts_at=alert.startsAt,
                run_id=active,
                decision="pending",
                detail={"labels": alert.labels},
            )
            .on_conflict_do_nothing(constraint="alert_events_once")
            .returning(events.c.id)
        ).scalar_one_or_none()
        if recorded is None:
            return "duplicate", {}, None

        def done(decision: str, **detail: Any) -> str:
            conn.execute(
                sa.update(events)
                .where(events.c.id == recorded)
                .values(decision=decision, detail={"labels": alert.labels, **detail})
            )
            return decision

        if alert.status == "resolved":
            return done("resolved"), {}, None
        action = alert.labels.get(p.action_label, "")
        if action not in ("pause", "rollback"):
            return done("notify"), {}, None
        if name not in SHIPPED_ALERTS and name not in p.extra_alerts:
            journal.audit(
                conn,
                settings.journal_schema,
                "refused",
                active,
                {"alert": name, "asked": action, "why": "unknown alert"},
                name,
                "alert",
            )
            return done("unknown_alert"), {}, None
        if active is None or state not in ACTIVE_STATES:
            return done("no_active_run"), {}, None
        detail: dict[str, Any] = {"run": active}
        inconclusive = alert.labels.get(p.inconclusive_label) == "true" or name in p.inconclusive
        if action == "rollback" and inconclusive:
            action, detail["why"] = "pause", "inconclusive data never rolls back"
        if action == "rollback" and p.failure_limit:
            seen = conn.execute(
                sa.select(sa.func.count()).where(
                    events.c.run_id == active,
                    events.c.status == "firing",
                    events.c.id != recorded,
                    events.c.detail["labels"][p.action_label].astext == "rollback",
                )
            ).scalar_one()
            if seen < p.failure_limit:
                action = "pause"
                detail["why"] = f"failure {seen + 1} of {p.failure_limit} tolerated"
        # the same action again within the debounce window only notifies (the run is
        # already paused, or a rollback of it is already under way)
        last = conn.execute(
            sa.select(sa.func.max(events.c.received_at)).where(
                events.c.run_id == active,
                events.c.id != recorded,
                events.c.decision == action,
            )
        ).scalar_one()
        now = conn.execute(sa.select(sa.func.now())).scalar_one()
        if last is not None and now - last < p.debounce:
            return done("debounced", **detail), detail, None
        reason = f"alert {name}: {alert.annotations.get('summary', '')}".strip(": ")
        if p.dry_run:
            return done(f"dry_run:{action}", **detail), detail, None
        if state == "running":
            runs.set_state(
                conn,
                settings,
                active,
                "paused",
                name,
                "pause",
                reason=reason,
                source="alert",
                allowed_from=("running",),
            )
        if action == "pause":
            return done("pause", **detail), detail, None
        scope = alert.labels.get(p.scope_label, "last_batch")
        kwargs: dict[str, Any] = {}
        if scope == "run":
            kwargs["everything"] = True
        elif scope == "recent":
            kwargs["since"] = alert.startsAt - p.recent_window
        else:
            scope = "last_batch"
            kwargs["last"] = 1
        detail["scope"] = scope
        kwargs["reason"] = f"{reason} (rollback, scope {scope})"
        return done("rollback", **detail), detail, (active, kwargs, name)


def _rollback(
    engine: Engine, settings: Settings, run_id: int, kwargs: dict[str, Any], actor: str
) -> None:
    try:
        runner.rollback(engine, settings, run_id, actor=actor, source="alert", **kwargs)
    except UuidguardError as exc:
        log.error("rollback of run %s asked by %s failed: %s", run_id, actor, exc)


def batch_canary(conn: Connection, settings: Settings, batch_id: int) -> list[str]:
    """The documents of a just-committed batch that had chunks before and that retrieval does
    not find now (structural canary); empty when all is well."""
    from monitor import canary

    schema = settings.journal_schema
    id_map = journal.metadata(schema).tables[f"{schema}.id_map"]
    docs = list(
        conn.execute(
            sa.select(sa.cast(id_map.c.new_id, sa.Text))
            .where(
                id_map.c.batch_id == batch_id,
                id_map.c.state == "done",
                # unprocessed documents have no chunks to find: they were never visible
                id_map.c["class"].in_(("random_consistent", "random_mismatched")),
            )
            .order_by(sa.func.random())
            .limit(settings.policy.batch_canary_documents)
        ).scalars()
    )
    if not docs:
        return []
    results = canary.check(conn, settings, "structural", docs)
    return [r.document_id for r in results if r.result == "invisible"]
