"""The alert thresholds the dashboards colour their stat panels by. No I/O.

Each value is the one an alert in alerts/uuidguard.rules.yml compares with; a test reads the
rule file and fails when an alert's expression no longer holds `op value`, so a panel turns red
exactly where the alert would fire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RUNBOOKS = "https://github.com/uuidguard/uuidguard/blob/main/docs/runbooks/"


@dataclass(frozen=True)
class AlertThreshold:
    alert: str
    severity: Literal["warning", "critical"]
    op: Literal[">", "<"]
    value: float

    @property
    def runbook(self) -> str:
        return runbook(self.alert)


def runbook(alert: str) -> str:
    """The runbook_url the alert carries (the same scheme as the rule file's annotations)."""
    return f"{RUNBOOKS}{alert}.md"


RAG_ACCESSIBILITY = AlertThreshold("UuidguardRagAccessibilityLow", "warning", "<", 0.9)
DATABASE_LATENCY = AlertThreshold("UuidguardDatabaseLatencyHigh", "warning", ">", 0.5)
BATCHES_SLOW = AlertThreshold("UuidguardMigrationBatchesSlow", "warning", ">", 1.0)
LOCK_WAITS_WARNING = AlertThreshold("UuidguardMigrationLockWaitsHigh", "warning", ">", 0.1)
LOCK_WAITS_CRITICAL = AlertThreshold("UuidguardMigrationLockWaitsHigh", "critical", ">", 0.5)
CANARY_ERRORS = AlertThreshold("UuidguardCanaryErrors", "warning", ">", 0.2)
PROBE_FAILING = AlertThreshold("UuidguardProbeFailing", "warning", ">", 0.5)
NEW_UPLOADS = AlertThreshold("UuidguardNewUploadsNonconforming", "critical", ">", 0.0)
INTEGRITY = AlertThreshold("UuidguardIntegrityViolations", "warning", ">", 0.0)

ALL = (
    RAG_ACCESSIBILITY,
    DATABASE_LATENCY,
    BATCHES_SLOW,
    LOCK_WAITS_WARNING,
    LOCK_WAITS_CRITICAL,
    CANARY_ERRORS,
    PROBE_FAILING,
    NEW_UPLOADS,
    INTEGRITY,
)
