"""Dashboard 2, UUID consistency and RAG health: is the data right, can retrieval find it,
and are the probes that say so alive. No I/O."""

from __future__ import annotations

from typing import Any

from dashboards import common as c
from dashboards import thresholds as th

UID = "uuidguard-consistency"
_RATE = "$__rate_interval"


def build() -> dict[str, Any]:
    grid = c.Grid()
    grid.row("Now")
    grid.add(
        4,
        4,
        c.stat(
            "RAG accessibility (worst mode)",
            "Share of canary documents retrieval finds for their owner, in the worst canary"
            " mode (errors excluded). Red below the threshold of UuidguardRagAccessibilityLow.",
            [("min(max by (mode) (uuidguard_rag_accessibility_ratio))", "accessible")],
            "percentunit",
            colours=c.alert_steps(th.RAG_ACCESSIBILITY),
            alerts=(th.RAG_ACCESSIBILITY.alert, "UuidguardRagAccessibilityDropped"),
        ),
        c.stat(
            "Invisible documents",
            "Documents whose chunks exist under the rule id only: retrieval never finds them"
            " (full sweep). Re-keying makes them visible again.",
            [("max(uuidguard_documents_invisible)", "invisible")],
            "short",
            colours=c.steps(c.GREEN, (c.ORANGE, 1.0)),
            alerts=(th.RAG_ACCESSIBILITY.alert,),
        ),
        c.stat(
            "Orphan chunks (last scan cycle)",
            "Chunks whose document does not exist, counted by the last complete cycle of the"
            " rolling scan; a rise without a rollback means the pipeline writes wrong ids.",
            [('max(uuidguard_chunks_orphaned_rolling{cycle="last"})', "orphans")],
            "short",
            alerts=("UuidguardPipelineNewOrphans",),
        ),
        c.stat(
            "Nonconforming new uploads (15m)",
            "New documents of the last 15 minutes whose id is not the rule's: UUID generation"
            " failures in production. Red as soon as UuidguardNewUploadsNonconforming fires.",
            [("max(job:uuidguard_new_uploads_nonconforming:increase15m)", "nonconforming")],
            "short",
            colours=c.alert_steps(th.NEW_UPLOADS),
            alerts=(th.NEW_UPLOADS.alert,),
        ),
        c.stat(
            "Integrity violations",
            "Rows failing a referential check other than a missing document (embeddings of"
            " another document than their chunk's, chunks owned by another user, …).",
            [
                (
                    'sum(max by (check, reference) (uuidguard_integrity_violations{check!="document_missing"}))',
                    "violations",
                )
            ],
            "short",
            colours=c.alert_steps(th.INTEGRITY),
            alerts=(th.INTEGRITY.alert, "UuidguardIntegrityViolationsRising"),
        ),
        c.stat(
            "Probes fresh",
            "Probes whose latest value is fresh (under three intervals old), of all probes. A"
            " stale probe's metrics vanish and its alerts cannot fire.",
            [
                ("sum(max by (probe) (uuidguard_probe_up))", "fresh"),
                ("count(max by (probe) (uuidguard_probe_up))", "probes"),
            ],
            "short",
            alerts=("UuidguardProbeStale", "UuidguardProbeFailing"),
            graph=False,
        ),
    )
    grid.row("Documents and chunks")
    grid.add(
        12,
        8,
        c.timeseries(
            "Documents by id class",
            "Every document by id class (DESIGN §2.3) from the full sweep: deterministic ids"
            " are the rule's; random_* ones are what a run re-keys; conflict groups need a"
            " person.",
            [("max by (class) (uuidguard_documents_by_class)", "{{class}}")],
            "short",
            stacked=True,
        ),
        c.timeseries(
            "Orphan chunks by class",
            "Chunks without their document: orphan_healable ones wait under the rule id of an"
            " existing document (re-keying heals them), orphan_unmatched ones have no document"
            " at all. Dashed: the rolling scan's count.",
            [
                ('max by (class) (uuidguard_chunks_by_class{class=~"orphan.*"})', "{{class}}"),
                (
                    "max by (cycle) (uuidguard_chunks_orphaned_rolling)",
                    "rolling scan: {{cycle}} cycle",
                ),
            ],
            "short",
            alerts=("UuidguardPipelineNewOrphans",),
        ),
    )
    grid.add(
        12,
        8,
        c.timeseries(
            "Unprocessed documents",
            "Documents without chunks by status, split by whether they are past the grace"
            " period (stuck: they need a re-upload or a re-run of processing).",
            [
                (
                    "sum by (status, stuck) (max by (status, stuck) (uuidguard_documents_unprocessed))",
                    "{{status}} (stuck: {{stuck}})",
                ),
                ("max(uuidguard_documents_stuck)", "stuck (full sweep)"),
            ],
            "short",
            stacked=False,
        ),
        c.timeseries(
            "New-upload conformance",
            "New documents per second by whether their id is the rule's; the right axis is the"
            " nonconforming share of the last hour.",
            [
                (f"max by (result) (rate(uuidguard_new_uploads_total[{_RATE}]))", "{{result}}"),
                (
                    "max(job:uuidguard_new_uploads_nonconforming:ratio_rate1h) or on () vector(0)",
                    "nonconforming share (1h)",
                ),
            ],
            "ops",
            alerts=(th.NEW_UPLOADS.alert,),
            overrides=[c.right_axis("nonconforming share (1h)", "percentunit")],
        ),
    )
    grid.row("Pipeline and RAG accessibility")
    grid.add(
        8,
        8,
        c.timeseries(
            "Pipeline consistency",
            "Share of processed documents whose chunks and embeddings carry the document's own"
            " id: over all of them (full sweep) and over a random sample (every minute).",
            [
                ("max(uuidguard_pipeline_consistency_ratio)", "all processed documents"),
                ("max(uuidguard_pipeline_consistency_sampled_ratio)", "sample"),
            ],
            "percentunit",
            alerts=("UuidguardPipelineNewOrphans",),
        ),
        c.timeseries(
            "Canary accessibility by mode",
            "Share of canary documents retrieval finds for their owner, by canary mode"
            " (structural join path, vector_self similarity query, http application endpoint)."
            " The line is the threshold of UuidguardRagAccessibilityLow.",
            [("max by (mode) (uuidguard_rag_accessibility_ratio)", "{{mode}}")],
            "percentunit",
            colours=c.alert_steps(th.RAG_ACCESSIBILITY),
            alerts=(
                th.RAG_ACCESSIBILITY.alert,
                "UuidguardRagAccessibilityDropped",
                "UuidguardRagPinnedDocumentsInvisible",
            ),
        ),
        c.timeseries(
            "Canary checks by result",
            "Canary checks per second by mode and result: ok, invisible (retrieval missed the"
            " document), error (no verdict: the canary itself failed).",
            [
                (
                    "sum by (mode, result) (max by (mode, result, source)"
                    f" (rate(uuidguard_canary_checks_total[{_RATE}])))",
                    "{{mode}} {{result}}",
                )
            ],
            "ops",
            stacked=True,
            alerts=(th.CANARY_ERRORS.alert,),
        ),
    )
    grid.add(
        8,
        8,
        c.bargauge(
            "Canary documents in the latest round",
            "Documents of the latest canary round by mode, source (pinned, sample, batch) and"
            " result.",
            [
                (
                    "max by (mode, source, result) (uuidguard_canary_documents)",
                    "{{mode}} {{source}} {{result}}",
                )
            ],
            "short",
            alerts=("UuidguardRagPinnedDocumentsInvisible",),
        ),
        c.table(
            "Integrity violations by check",
            "Referential integrity violations by check and reference column, as of the latest"
            " sweep. document_missing rows are the orphans (see the orphan panels).",
            [("max by (check, reference) (uuidguard_integrity_violations)", "")],
            "short",
            alerts=(th.INTEGRITY.alert, "UuidguardIntegrityViolationsRising"),
            colours=c.alert_steps(th.INTEGRITY),
            organize={"excludeByName": {"Time": True}, "renameByName": {"Value": "rows"}},
        ),
        c.timeseries(
            "Documents by id version",
            "Documents by the UUID version of their id: v4 are random (to re-key), v5 follow"
            " the rule.",
            [("max by (version) (uuidguard_documents_by_id_version)", "{{version}}")],
            "short",
            stacked=True,
        ),
    )
    grid.row("Probe health")
    grid.add(
        12,
        8,
        c.timeline(
            "Probe freshness",
            "Whether each probe's latest value is fresh (under three of its intervals old)."
            " Stale probes export nothing, so their alerts cannot fire.",
            [("max by (probe) (uuidguard_probe_up)", "{{probe}}")],
            "none",
            [c.value_map(("1", "fresh", c.GREEN), ("0", "stale", c.RED))],
            alerts=("UuidguardProbeStale",),
        ),
        c.table(
            "Probes",
            "Per probe: seconds since its last success, share of failed runs (30 minutes, red"
            " above UuidguardProbeFailing's threshold) and the p95 duration of its runs.",
            [
                (
                    "time() - max by (probe) (uuidguard_probe_last_success_timestamp_seconds)",
                    "",
                ),
                ("max by (probe) (job_probe:uuidguard_probe_runs_failed:ratio_rate30m)", ""),
                (
                    "histogram_quantile(0.95, max by (probe, le)"
                    " (rate(uuidguard_probe_duration_seconds_bucket[5m])))",
                    "",
                ),
            ],
            "s",
            alerts=("UuidguardProbeFailing", "UuidguardProbeStale"),
            organize={
                "excludeByName": {"Time": True},
                "renameByName": {
                    "Value #A": "since last success",
                    "Value #B": "failed runs (30m)",
                    "Value #C": "p95 duration",
                },
            },
            overrides=[c.unit_of("failed runs (30m)", "percentunit")],
        ),
    )
    return c.dashboard(
        UID,
        "uuidguard: UUID consistency and RAG health",
        "Id classes, orphans, unprocessed documents, new-upload conformance, pipeline"
        " consistency, RAG canaries by mode, integrity violations, probe health.",
        grid,
        annotations=[c.state_annotation()],
    )
