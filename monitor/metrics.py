"""The Prometheus exposition: a collector that reads the store, never the database.

Every metric the daemon exports is in CATALOG with its type, help and labels; docs/metrics.md
is generated from it (`uuidguard metrics-doc`), and a test checks that the exposition and the
catalog agree, so the documentation cannot drift. Names follow Prometheus's rules: the
`uuidguard_` prefix, base units, `_total` for counters; no label carries a user or document id.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitor.store import Store

PREFIX = "uuidguard_"
Kind = Literal["gauge", "counter", "histogram", "info"]


@dataclass(frozen=True)
class MetricDoc:
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    source: str = "daemon"


#: the daemon's own metrics; probe metrics are added from the probes' specs (see `catalog`)
DAEMON_METRICS: dict[str, MetricDoc] = {
    "build_info": MetricDoc("info", "uuidguard's version", ("version",)),
    "leader": MetricDoc("gauge", "1 when this replica holds the leader lock and runs the probes"),
    "up_since_timestamp_seconds": MetricDoc("gauge", "When this daemon started, unix time"),
    "db_time_seconds_total": MetricDoc(
        "counter", "Database time the daemon spent in probes and batches"
    ),
    "probe_runs_total": MetricDoc(
        "counter", "Probe runs by result: success, error, timeout", ("probe", "result")
    ),
    "probe_duration_seconds": MetricDoc("histogram", "Wall time of each probe run", ("probe",)),
    "probe_last_success_timestamp_seconds": MetricDoc(
        "gauge", "When each probe last succeeded, unix time", ("probe",)
    ),
    "probe_up": MetricDoc(
        "gauge", "1 when the probe's latest value is fresh (under three intervals old)", ("probe",)
    ),
    "batch_canary_runs_total": MetricDoc(
        "counter",
        "Structural canaries the daemon ran right after its own batches, by result: ok, or"
        " lost (documents it could not find: the batch was rolled back and the run paused)",
        ("result",),
    ),
}


def catalog(store_specs: list[tuple[str, str, tuple[str, ...]]]) -> dict[str, MetricDoc]:
    """DAEMON_METRICS plus, for each probe (name, description, metric names), its metrics with
    the documentation in PROBE_METRICS."""
    out = dict(DAEMON_METRICS)
    for probe, _, names in store_specs:
        for name in names:
            doc = PROBE_METRICS.get(name)
            if doc is None:
                raise KeyError(f"metric {name} of probe {probe} is not documented in PROBE_METRICS")
            out[name] = MetricDoc(doc.kind, doc.help, doc.labels, source=f"probe {probe}")
    return out


#: metrics set by probes: their documentation lives here, next to the daemon's
PROBE_METRICS: dict[str, MetricDoc] = {
    "database_latency_seconds": MetricDoc(
        "gauge", "Duration of a cheap canary query on the mapped tables (system impact signal)"
    ),
    "documents_by_id_version": MetricDoc(
        "gauge", "Documents by UUID version of their id: v1…v8, nil, other", ("version",)
    ),
    "documents_unprocessed": MetricDoc(
        "gauge",
        "Documents without chunks, by status and whether they are past the grace period",
        ("status", "stuck"),
    ),
    "documents_unprocessed_oldest_age_seconds": MetricDoc(
        "gauge", "Age of the oldest unprocessed document"
    ),
    "new_uploads_total": MetricDoc(
        "counter",
        "New documents seen since the daemon started, by whether their id is the rule's"
        " (nonconforming: UUID generation failures in production)",
        ("result",),
    ),
    "new_uploads_watermark_timestamp_seconds": MetricDoc(
        "gauge", "Creation time up to which new uploads have been checked"
    ),
    "chunks_orphaned_rolling": MetricDoc(
        "gauge",
        "Orphaned chunks found by the rolling scan: in the last complete cycle, and so far in"
        " the current one",
        ("cycle",),
    ),
    "chunks_rolling_scan_progress_ratio": MetricDoc(
        "gauge", "How far the rolling orphan scan is through the chunks table, 0 to 1"
    ),
    "chunks_rolling_scan_cycles_total": MetricDoc(
        "counter", "Complete cycles of the rolling orphan scan"
    ),
    "pipeline_consistency_sampled_ratio": MetricDoc(
        "gauge",
        "Share of sampled processed documents whose chunks and embeddings agree on its id",
    ),
    "pipeline_sampled_documents": MetricDoc(
        "gauge", "Sampled processed documents by consistency result", ("result",)
    ),
    "integrity_violations": MetricDoc(
        "gauge",
        "Referential integrity violations by check and reference column",
        ("check", "reference"),
    ),
    "documents_by_class": MetricDoc(
        "gauge", "Documents by id class (DESIGN §2.3), from the full sweep", ("class",)
    ),
    "chunks_by_class": MetricDoc(
        "gauge", "Chunks by class: attached, orphan_healable, orphan_unmatched", ("class",)
    ),
    "documents_invisible": MetricDoc(
        "gauge", "Documents whose chunks exist under the rule id only: invisible to retrieval"
    ),
    "documents_stuck": MetricDoc("gauge", "Documents never processed past the grace period"),
    "documents_to_rekey": MetricDoc("gauge", "Documents a run of option A would re-key"),
    "users": MetricDoc("gauge", "Users with at least one document"),
    "users_affected": MetricDoc(
        "gauge",
        "Users with at least one document affected, by impact: any, invisible, unprocessed,"
        " conflict (counts, never user ids)",
        ("impact",),
    ),
    "users_by_affected_documents": MetricDoc(
        "gauge", "Affected users bucketed by how many of their documents are affected", ("bucket",)
    ),
    "pipeline_consistency_ratio": MetricDoc(
        "gauge",
        "Share of processed documents whose chunks and embeddings agree on its id (full sweep)",
    ),
    "pipeline_inconsistent_documents": MetricDoc(
        "gauge", "Processed documents whose chunks or embeddings carry another id"
    ),
    "canary_checks_total": MetricDoc(
        "counter",
        "RAG canary checks by mode (structural, vector_self, http), result (ok, invisible,"
        " error) and source (pinned, sample, batch)",
        ("mode", "result", "source"),
    ),
    "canary_documents": MetricDoc(
        "gauge",
        "Documents in the latest canary round by mode, result and source",
        ("mode", "result", "source"),
    ),
    "rag_accessibility_ratio": MetricDoc(
        "gauge",
        "Share of canary documents retrieval finds for their owner, by mode (errors excluded)",
        ("mode",),
    ),
    "migration_state": MetricDoc(
        "gauge", "1 for the state the latest run is in (none when there is no run)", ("state",)
    ),
    "migration_run_id": MetricDoc("gauge", "Id of the latest run"),
    "migration_documents": MetricDoc(
        "gauge",
        "Documents of the latest run by state: total, done, pending, skipped, rolled_back",
        ("state",),
    ),
    "migration_documents_remaining": MetricDoc(
        "gauge", "Documents of the latest run not re-keyed yet"
    ),
    "migration_progress_ratio": MetricDoc(
        "gauge", "Share of the latest run's documents handled, 0 to 1"
    ),
    "migration_rows_migrated_total": MetricDoc(
        "counter", "Rows rewritten by committed batches, by table and column", ("table",)
    ),
    "migration_rows_rolled_back_total": MetricDoc(
        "counter", "Rows restored by rolled-back batches, by table and column", ("table",)
    ),
    "migration_batches_total": MetricDoc(
        "counter", "Batches of the latest run by state: committed, rolled_back, failed", ("state",)
    ),
    "migration_batch_duration_seconds": MetricDoc(
        "histogram", "Duration of the latest run's batches, from start to commit"
    ),
    "migration_batch_size": MetricDoc("histogram", "Documents per batch of the latest run"),
    "migration_lock_wait_seconds_total": MetricDoc(
        "counter", "Time the latest run's batches waited for locks"
    ),
    "migration_throttle_seconds_total": MetricDoc(
        "counter", "Time workers waited before batches, by throttle reason", ("reason",)
    ),
    "migration_throttled": MetricDoc(
        "gauge", "1 while a worker waits on a throttle signal or window"
    ),
    "migration_rollbacks_total": MetricDoc(
        "counter",
        "Rollback commands on the latest run by trigger: cli, api, slack, alert, daemon",
        ("trigger",),
    ),
    "migration_eta_seconds": MetricDoc(
        "gauge", "Estimated seconds to finish the latest run from its recent rate; -1 unknown"
    ),
    "migration_documents_per_second": MetricDoc(
        "gauge", "Recent re-keying rate over the time batches ran (pauses and waits excluded)"
    ),
}


class StoreCollector(Collector):
    def __init__(self, store: Store, version: str) -> None:
        self.store = store
        self.version = version

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        records = self.store.snapshot()
        yield _info("build_info", {"version": self.version})
        yield _gauge("leader", 1.0 if self.store.leader else 0.0)
        yield _gauge("up_since_timestamp_seconds", self.store.started_at)
        db = CounterMetricFamily(
            PREFIX + "db_time_seconds", DAEMON_METRICS["db_time_seconds_total"].help
        )
        db.add_metric([], self.store.db_seconds)
        yield db
        runs = CounterMetricFamily(
            PREFIX + "probe_runs",
            DAEMON_METRICS["probe_runs_total"].help,
            labels=["probe", "result"],
        )
        hist = HistogramMetricFamily(
            PREFIX + "probe_duration_seconds",
            DAEMON_METRICS["probe_duration_seconds"].help,
            labels=["probe"],
        )
        last = GaugeMetricFamily(
            PREFIX + "probe_last_success_timestamp_seconds",
            DAEMON_METRICS["probe_last_success_timestamp_seconds"].help,
            labels=["probe"],
        )
        up = GaugeMetricFamily(
            PREFIX + "probe_up", DAEMON_METRICS["probe_up"].help, labels=["probe"]
        )
        values: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = defaultdict(list)
        for r in records:
            name = r.spec.name
            for result in ("success", "error", "timeout"):
                runs.add_metric([name, result], float(r.runs.get(result, 0)))
            hist.add_metric([name], r.durations.cumulative(), r.durations.total)
            if r.last_success_at is not None:
                last.add_metric([name], r.last_success_at)
            fresh = r.fresh(now)
            up.add_metric([name], 1.0 if fresh else 0.0)
            if fresh and r.output is not None:
                for s in r.output.samples:
                    values[s.metric].append((s.labels, s.value))
        yield from (runs, hist, last, up)
        canaries = CounterMetricFamily(
            PREFIX + "batch_canary_runs",
            DAEMON_METRICS["batch_canary_runs_total"].help,
            labels=["result"],
        )
        lost = self.store.batch_canary_failures
        canaries.add_metric(["ok"], float(self.store.batch_canaries - lost))
        canaries.add_metric(["lost"], float(lost))
        yield canaries
        yield from _probe_families(values)


def _probe_families(
    values: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]],
) -> Iterator[Metric]:
    histograms = {n for n, d in PROBE_METRICS.items() if d.kind == "histogram"}
    for name in sorted(histograms):
        buckets = values.pop(f"{name}_bucket", [])
        total = values.pop(f"{name}_sum", [])
        values.pop(f"{name}_count", None)
        if not buckets:
            continue
        doc = PROBE_METRICS[name]
        h = HistogramMetricFamily(PREFIX + name, doc.help, labels=list(doc.labels))
        ordered = sorted(
            ((dict(lp)["le"], v) for lp, v in buckets),
            key=lambda kv: float("inf") if kv[0] == "+Inf" else float(kv[0]),
        )
        h.add_metric([], ordered, total[0][1] if total else 0.0)
        yield h
    for name, samples in sorted(values.items()):
        doc = PROBE_METRICS.get(name, MetricDoc("gauge", name.replace("_", " ")))
        labels = list(doc.labels)
        fam: CounterMetricFamily | GaugeMetricFamily
        if doc.kind == "counter":
            fam = CounterMetricFamily(PREFIX + name.removesuffix("_total"), doc.help, labels=labels)
        else:
            fam = GaugeMetricFamily(PREFIX + name, doc.help, labels=labels)
        for label_pairs, value in samples:
            given = dict(label_pairs)
            fam.add_metric([given.get(k, "") for k in labels], value)
        yield fam


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(PREFIX + name, DAEMON_METRICS[name].help)
    g.add_metric([], value)
    return g


def _info(name: str, labels: dict[str, str]) -> InfoMetricFamily:
    i = InfoMetricFamily(PREFIX + name.removesuffix("_info"), DAEMON_METRICS[name].help)
    i.add_metric([], labels)
    return i


def registry(store: Store, version: str) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StoreCollector(store, version))
    return reg


def markdown(specs: list[tuple[str, str, str, tuple[str, ...]]]) -> str:
    """docs/metrics.md: every metric with its type, labels, meaning and source. `specs` are
    (probe, budget, description, metric names) of every probe, the migration probe included."""
    cat = catalog([(name, desc, metrics) for name, _, desc, metrics in specs])
    lines = [
        "# Metrics",
        "",
        "Generated from `monitor/metrics.py` and the probes' specs by `uuidguard metrics-doc`;"
        " a test keeps this file equal to what the code exports. Every name has the"
        " `uuidguard_` prefix; no label carries a user or document id. `/metrics` reads values"
        " the probes stored: a scrape never queries the database, and a value older than three"
        " of its probe's intervals is dropped rather than served stale.",
        "",
        "| metric | type | labels | meaning | set by |",
        "| :--- | :--- | :--- | :--- | :--- |",
    ]
    for name, doc in sorted(cat.items()):
        shown = PREFIX + name
        labels = ", ".join(f"`{x}`" for x in doc.labels) or "–"
        lines.append(f"| `{shown}` | {doc.kind} | {labels} | {doc.help} | {doc.source} |")
    lines += [
        "",
        "## Probes",
        "",
        "| probe | budget | what it reads |",
        "| :--- | :--- | :--- |",
    ]
    for name, budget, desc, _ in specs:
        lines.append(f"| `{name}` | {budget} | {desc} |")
    return "\n".join(lines) + "\n"
