"""Dashboard 4, System performance impact: does the migration slow the platform down. No I/O."""

from __future__ import annotations

from typing import Any

from dashboards import common as c
from dashboards import thresholds as th

UID = "uuidguard-performance"
_RATE = "$__rate_interval"
_LATENCY = "uuidguard_database_latency_seconds"
#: the first and the last value of the selected range, side by side
_BEFORE_AFTER = ("firstNotNull", "lastNotNull")


def _latency_quantile(q: float) -> str:
    # a gauge sampled every probes.latency_interval: percentiles over a 5-minute window
    return f"max(quantile_over_time({q}, {_LATENCY}[5m]))"


def build() -> dict[str, Any]:
    grid = c.Grid()
    grid.row("Now")
    grid.add(
        6,
        4,
        c.stat(
            "Database latency (5m average)",
            "A retrieval-shaped query (one document by key and its first chunks), averaged"
            " over 5 minutes as UuidguardDatabaseLatencyHigh evaluates it; the alert pauses a"
            " run.",
            [(f"max(avg_over_time({_LATENCY}[5m]))", "latency")],
            "s",
            colours=c.alert_steps(th.DATABASE_LATENCY),
            alerts=(th.DATABASE_LATENCY.alert,),
        ),
        c.stat(
            "Batch time p95 (10m)",
            "95th percentile of the batches' duration over 10 minutes (the alert's view).",
            [("max(job:uuidguard_migration_batch_duration_seconds:p95_rate10m)", "p95")],
            "s",
            colours=c.alert_steps(th.BATCHES_SLOW),
            alerts=(th.BATCHES_SLOW.alert,),
        ),
        c.stat(
            "Throttle share (10m)",
            "Share of the last 10 minutes workers waited on a throttle signal or window: the"
            " run giving way to the platform.",
            [
                (
                    "max(job:uuidguard_migration_throttle_seconds:rate10m) or on () vector(0)",
                    "waiting",
                )
            ],
            "percentunit",
            colours=c.steps(c.GREEN, (c.ORANGE, 0.5)),
            alerts=("UuidguardMigrationStalled",),
        ),
        c.stat(
            "Daemon database time",
            "Seconds of database time the daemon's probes and batches use per second: its own"
            " load on the server.",
            [(f"sum(rate(uuidguard_db_time_seconds_total[{_RATE}]))", "db time")],
            "percentunit",
        ),
    )
    grid.row("Latency")
    grid.add(
        12,
        9,
        c.timeseries(
            "Canary query latency percentiles",
            "Percentiles of the retrieval-shaped latency query over 5-minute windows. The line"
            " is UuidguardDatabaseLatencyHigh's threshold.",
            [
                (_latency_quantile(0.5), "p50"),
                (_latency_quantile(0.95), "p95"),
                (_latency_quantile(0.99), "p99"),
            ],
            "s",
            colours=c.alert_steps(th.DATABASE_LATENCY),
            alerts=(th.DATABASE_LATENCY.alert,),
        ),
        c.timeseries(
            "RAG canary round duration",
            "Percentiles of the canary probe's runs (every mode's retrieval query on the"
            " pinned and sampled documents).",
            [
                (
                    f"histogram_quantile({q}, max by (le) (rate("
                    f'uuidguard_probe_duration_seconds_bucket{{probe="canary"}}[{_RATE}])))',
                    f"p{int(q * 100)}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
            "s",
            alerts=("UuidguardCanaryErrors",),
        ),
    )
    grid.row("Batches against throttling")
    grid.add(
        24,
        9,
        c.timeseries(
            "Batch duration against throttle waits",
            "Batch duration percentiles (left) with the share of time workers waited on the"
            " throttle and the lock-wait share (right): batches that slow down while the"
            " throttle holds back point to platform load, not to the run.",
            [
                (
                    "histogram_quantile(0.95, max by (le)"
                    f" (rate(uuidguard_migration_batch_duration_seconds_bucket[{_RATE}])))",
                    "batch p95",
                ),
                (
                    "histogram_quantile(0.5, max by (le)"
                    f" (rate(uuidguard_migration_batch_duration_seconds_bucket[{_RATE}])))",
                    "batch p50",
                ),
                (
                    "sum(max by (reason) (rate(uuidguard_migration_throttle_seconds_total"
                    f"[{_RATE}]))) or on () vector(0)",
                    "throttle wait share",
                ),
                (
                    f"max(rate(uuidguard_migration_lock_wait_seconds_total[{_RATE}]))",
                    "lock wait share",
                ),
            ],
            "s",
            colours=c.alert_steps(th.BATCHES_SLOW),
            alerts=(th.BATCHES_SLOW.alert, th.LOCK_WAITS_WARNING.alert),
            overrides=[
                c.right_axis("throttle wait share", "percentunit"),
                c.right_axis("lock wait share", "percentunit"),
            ],
        ),
    )
    grid.row("Before and after (first and last value of the selected range)")
    grid.add(
        6,
        5,
        c.stat(
            "Database latency: before / after",
            "5-minute average latency at the start and at the end of the selected range: pick"
            " a range from before the run to now to see what the run cost.",
            [(f"max(avg_over_time({_LATENCY}[5m]))", "latency")],
            "s",
            colours=c.alert_steps(th.DATABASE_LATENCY),
            alerts=(th.DATABASE_LATENCY.alert,),
            calcs=_BEFORE_AFTER,
            graph=False,
        ),
        c.stat(
            "RAG accessibility: before / after",
            "Worst canary mode's accessibility at the start and at the end of the range.",
            [("min(max by (mode) (uuidguard_rag_accessibility_ratio))", "accessible")],
            "percentunit",
            colours=c.alert_steps(th.RAG_ACCESSIBILITY),
            alerts=(th.RAG_ACCESSIBILITY.alert,),
            calcs=_BEFORE_AFTER,
            graph=False,
        ),
        c.stat(
            "Invisible documents: before / after",
            "Documents invisible to retrieval at the start and at the end of the range.",
            [("max(uuidguard_documents_invisible)", "invisible")],
            "short",
            calcs=_BEFORE_AFTER,
            graph=False,
        ),
        c.stat(
            "Pipeline consistency: before / after",
            "Share of processed documents whose chunks and embeddings agree on its id, at the"
            " start and at the end of the range.",
            [("max(uuidguard_pipeline_consistency_ratio)", "consistent")],
            "percentunit",
            calcs=_BEFORE_AFTER,
            graph=False,
        ),
    )
    return c.dashboard(
        UID,
        "uuidguard: System performance impact",
        "What the migration costs the platform: retrieval-shaped query latency, canary round"
        " duration, batch durations against throttle and lock waits, and before/after values.",
        grid,
        annotations=[c.state_annotation()],
    )
