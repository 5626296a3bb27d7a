"""Dashboard 1, Migration progress: where the run is, how fast it goes, what holds it back. No I/O."""

from __future__ import annotations

from typing import Any

from dashboards import common as c
from dashboards import thresholds as th

UID = "uuidguard-migration"
#: several replicas export the same journal numbers: max() neither doubles nor splits them
_RATE = "$__rate_interval"
STATE_COLOURS = {
    "none": c.TEXT,
    "planned": c.BLUE,
    "running": c.GREEN,
    "paused": c.ORANGE,
    "completed": "dark-green",
    "rolling_back": "purple",
    "rolled_back": "purple",
    "failed": c.RED,
}


def _batch_quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, max by (le) (rate({metric}_bucket[{_RATE}])))"


def build() -> dict[str, Any]:
    grid = c.Grid()
    grid.row("Now")
    grid.add(
        4,
        4,
        c.stat(
            "Run state",
            "The state of the latest migration run (none: no run planned yet). Paused or failed"
            " runs need a person: see migrate status and the audit.",
            [("max by (state) (uuidguard_migration_state) == 1", "{{state}}")],
            "none",
            colours=c.steps(c.BLUE),
            alerts=("UuidguardMigrationFailed", "UuidguardMigrationStalled"),
            text_mode="name",
            graph=False,
        ),
        c.stat(
            "Done",
            "Share of the latest run's documents handled (re-keyed or skipped).",
            [("max(uuidguard_migration_progress_ratio)", "done")],
            "percentunit",
            colours=c.steps(c.BLUE, (c.GREEN, 1.0)),
        ),
        c.stat(
            "Remaining",
            "Documents of the latest run not re-keyed yet.",
            [("max(uuidguard_migration_documents_remaining)", "remaining")],
            "short",
            alerts=("UuidguardMigrationStalled",),
        ),
        c.stat(
            "ETA",
            "Time to finish at the recent rate (pauses and throttle waits excluded); unknown"
            " before the first batches or while nothing runs.",
            [("max(uuidguard_migration_eta_seconds)", "eta")],
            "s",
            mappings=[c.value_map(("-1", "unknown", c.TEXT))],
            graph=False,
        ),
        c.stat(
            "Rate",
            "Documents re-keyed per second while batches run (pauses and waits excluded).",
            [("max(uuidguard_migration_documents_per_second)", "rate")],
            "suffix: docs/s",
        ),
        c.stat(
            "Run",
            "Id of the latest run (`uuidguard migrate status RUN`).",
            [("max(uuidguard_migration_run_id)", "run")],
            "none",
            graph=False,
        ),
    )
    grid.add(
        4,
        4,
        c.stat(
            "Batch time p95 (10m)",
            "95th percentile of the batches' duration over 10 minutes, as the alert"
            " UuidguardMigrationBatchesSlow evaluates it (orange above its threshold).",
            [("max(job:uuidguard_migration_batch_duration_seconds:p95_rate10m)", "p95")],
            "s",
            colours=c.alert_steps(th.BATCHES_SLOW),
            alerts=(th.BATCHES_SLOW.alert,),
        ),
        c.stat(
            "Lock waits (10m)",
            "Share of the last 10 minutes the batches waited for locks, all workers together,"
            " as UuidguardMigrationLockWaitsHigh evaluates it (orange: warning, red: critical,"
            " the run is paused).",
            [("max(job:uuidguard_migration_lock_wait_seconds:rate10m)", "lock waits")],
            "percentunit",
            colours=c.alert_steps(th.LOCK_WAITS_WARNING, th.LOCK_WAITS_CRITICAL),
            alerts=(th.LOCK_WAITS_WARNING.alert,),
        ),
        c.stat(
            "Throttled",
            "1 while a worker waits on a throttle signal or outside the allowed windows.",
            [("max(uuidguard_migration_throttled)", "throttled")],
            "none",
            colours=c.steps(c.GREEN, (c.ORANGE, 1.0)),
            mappings=[c.value_map(("0", "running free", c.GREEN), ("1", "waiting", c.ORANGE))],
            graph=False,
        ),
        c.stat(
            "Rollbacks",
            "Rollback commands on the latest run, any trigger (CLI, API, Slack, alert, daemon).",
            [("sum(max by (trigger) (uuidguard_migration_rollbacks_total))", "rollbacks")],
            "short",
            colours=c.steps(c.GREEN, (c.ORANGE, 1.0)),
            alerts=("UuidguardRagAccessibilityDropped", "UuidguardRagPinnedDocumentsInvisible"),
            graph=False,
        ),
        c.stat(
            "Failed batches",
            "Batches of the latest run that failed (their transaction rolled back).",
            [('max(uuidguard_migration_batches_total{state="failed"})', "failed")],
            "short",
            colours=c.steps(c.GREEN, (c.RED, 1.0)),
            alerts=("UuidguardMigrationFailed",),
            graph=False,
        ),
        c.stat(
            "Documents re-keyed",
            "Documents of the latest run re-keyed and committed so far.",
            [('max(uuidguard_migration_documents{state="done"})', "done")],
            "short",
        ),
    )
    grid.row("Progress")
    grid.add(
        12,
        8,
        c.timeline(
            "Run state over time",
            "Which state the latest run was in, over time.",
            [("max by (state) (uuidguard_migration_state) == 1", "{{state}}")],
            "none",
            [c.value_map(("1", "", c.GREEN))],
            alerts=("UuidguardMigrationFailed",),
        ),
        c.timeseries(
            "Documents by state",
            "The latest run's documents by state: done (re-keyed), pending, skipped (conflicts"
            " or gone), rolled back.",
            [('max by (state) (uuidguard_migration_documents{state!="total"})', "{{state}}")],
            "short",
            stacked=True,
        ),
    )
    grid.add(
        12,
        8,
        c.timeseries(
            "Throughput",
            "Rows rewritten per second by committed batches, per table (documents: documents"
            " re-keyed), and the run's own recent rate.",
            [
                (
                    f"max by (table) (rate(uuidguard_migration_rows_migrated_total[{_RATE}]))",
                    "{{table}} rows/s",
                ),
                ("max(uuidguard_migration_documents_per_second)", "documents/s (run rate)"),
            ],
            "ops",
        ),
        c.timeseries(
            "Progress and ETA",
            "Share done (left axis) and the estimated time to finish (right axis; -1: unknown).",
            [
                ("max(uuidguard_migration_progress_ratio)", "done"),
                ("max(uuidguard_migration_eta_seconds)", "ETA"),
            ],
            "percentunit",
            overrides=[c.right_axis("ETA", "s")],
        ),
    )
    grid.row("Batches")
    grid.add(
        8,
        8,
        c.timeseries(
            "Batch duration",
            "Percentiles of the batches' duration (claim, rewrite, journal, verify, commit). The"
            " batch size adapts toward migrate.batch_time; the dashed line is the alert's"
            " threshold.",
            [
                (_batch_quantile(0.5, "uuidguard_migration_batch_duration_seconds"), "p50"),
                (_batch_quantile(0.95, "uuidguard_migration_batch_duration_seconds"), "p95"),
                (_batch_quantile(0.99, "uuidguard_migration_batch_duration_seconds"), "p99"),
            ],
            "s",
            colours=c.alert_steps(th.BATCHES_SLOW),
            alerts=(th.BATCHES_SLOW.alert,),
        ),
        c.bargauge(
            "Batch duration distribution",
            "How many of the run's batches took up to each bucket's bound (non-cumulative).",
            [("max by (le) (uuidguard_migration_batch_duration_seconds_bucket)", "{{le}}")],
            "short",
            fmt="heatmap",
            alerts=(th.BATCHES_SLOW.alert,),
        ),
        c.timeseries(
            "Batch size",
            "Documents per batch: median and mean of the batches in each interval. Lock timeouts"
            " halve it; it grows back toward the target time.",
            [
                (_batch_quantile(0.5, "uuidguard_migration_batch_size"), "median"),
                (
                    f"max(rate(uuidguard_migration_batch_size_sum[{_RATE}]))"
                    f" / max(rate(uuidguard_migration_batch_size_count[{_RATE}]))",
                    "mean",
                ),
            ],
            "short",
        ),
    )
    grid.add(
        8,
        8,
        c.timeseries(
            "Lock waits",
            "Seconds the batches waited for locks per second (all workers): a share of time."
            " Lines: the alert's warning and critical thresholds (10-minute rate).",
            [
                (
                    f"max(rate(uuidguard_migration_lock_wait_seconds_total[{_RATE}]))",
                    "lock wait share",
                ),
                ("max(job:uuidguard_migration_lock_wait_seconds:rate10m)", "10m rate (alert)"),
            ],
            "percentunit",
            colours=c.alert_steps(th.LOCK_WAITS_WARNING, th.LOCK_WAITS_CRITICAL),
            alerts=(th.LOCK_WAITS_WARNING.alert,),
        ),
        c.timeseries(
            "Throttle waits by reason",
            "Share of time workers waited before batches, by throttle reason (lock waiters,"
            " old transactions, replica lag, windows, …); 0 when nothing held the run back.",
            [
                (
                    f"max by (reason) (rate(uuidguard_migration_throttle_seconds_total[{_RATE}]))"
                    " or on () vector(0)",
                    "{{reason}}",
                ),
                ("max(uuidguard_migration_throttled)", "throttled now"),
            ],
            "percentunit",
            stacked=True,
            alerts=("UuidguardMigrationStalled",),
        ),
        c.timeseries(
            "Rollbacks",
            "Rollback commands by trigger and the rows they restored (documents table). A"
            " rollback by an alert follows a drop in RAG accessibility or new integrity"
            " violations.",
            [
                ("max by (trigger) (uuidguard_migration_rollbacks_total)", "{{trigger}}"),
                (
                    'max(uuidguard_migration_rows_rolled_back_total{table="documents"})',
                    "documents restored to their old ids",
                ),
                (
                    'max by (state) (uuidguard_migration_batches_total{state!="committed"})',
                    "batches {{state}}",
                ),
            ],
            "short",
            alerts=(
                "UuidguardRagAccessibilityDropped",
                "UuidguardRagPinnedDocumentsInvisible",
                "UuidguardIntegrityViolationsRising",
            ),
        ),
    )
    return c.dashboard(
        UID,
        "uuidguard: Migration progress",
        "The latest re-keying run: state, progress, throughput, ETA, batches, lock and throttle"
        " waits, rollbacks. State changes are annotations.",
        grid,
        annotations=[c.state_annotation()],
    )
