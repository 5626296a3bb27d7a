"""Dashboard 3, User impact: how many users and documents the damage touches, and how many
the migration gave back. Counts and buckets only: no metric carries a user id. No I/O."""

from __future__ import annotations

from typing import Any

from dashboards import common as c
from dashboards import thresholds as th

UID = "uuidguard-user-impact"


def _restored(metric: str) -> str:
    """How far `metric` fell from its highest point in the dashboard's range."""
    return f"max(max_over_time({metric}[$__range])) - max({metric})"


def build() -> dict[str, Any]:
    grid = c.Grid()
    grid.row("Now")
    grid.add(
        4,
        4,
        c.stat(
            "Users affected",
            "Users with at least one affected document (invisible, unprocessed or in a"
            " conflict group), of all users with documents.",
            [('max(uuidguard_users_affected{impact="any"})', "affected")],
            "short",
            colours=c.steps(c.GREEN, (c.ORANGE, 1.0)),
        ),
        c.stat(
            "Share of users affected",
            "Affected users as a share of all users with at least one document.",
            [('max(uuidguard_users_affected{impact="any"}) / max(uuidguard_users)', "share")],
            "percentunit",
            colours=c.steps(c.GREEN, (c.ORANGE, 0.01)),
        ),
        c.stat(
            "Users restored",
            "Users who had invisible documents at the worst point of the selected time range"
            " and no longer have them: the migration's effect on people.",
            [(_restored('uuidguard_users_affected{impact="invisible"}'), "restored")],
            "short",
            colours=c.steps(c.BLUE),
        ),
        c.stat(
            "Documents invisible",
            "Documents retrieval cannot find for their owner right now (chunks under the rule"
            " id only).",
            [("max(uuidguard_documents_invisible)", "invisible")],
            "short",
            colours=c.steps(c.GREEN, (c.ORANGE, 1.0)),
            alerts=(th.RAG_ACCESSIBILITY.alert,),
        ),
        c.stat(
            "Documents restored",
            "Invisible documents at the worst point of the selected range that retrieval finds"
            " again now.",
            [(_restored("uuidguard_documents_invisible"), "restored")],
            "short",
            colours=c.steps(c.BLUE),
        ),
        c.stat(
            "Documents stuck",
            "Documents never processed past the grace period: their users must re-upload (the"
            " migration cannot help them).",
            [("max(uuidguard_documents_stuck)", "stuck")],
            "short",
            colours=c.steps(c.GREEN, (c.ORANGE, 1.0)),
        ),
    )
    grid.row("Users")
    grid.add(
        12,
        9,
        c.timeseries(
            "Users affected by impact",
            "Users with at least one document in each impact: invisible to retrieval,"
            " unprocessed, in a conflict group, any of them. A user may count in several.",
            [("max by (impact) (uuidguard_users_affected)", "{{impact}}")],
            "short",
        ),
        c.bargauge(
            "Affected users by affected documents",
            "Affected users bucketed by how many of their documents are affected: a few users"
            " with many documents need a different message than many with one.",
            [("max by (bucket) (uuidguard_users_by_affected_documents)", "{{bucket}}")],
            "short",
        ),
    )
    grid.row("Documents")
    grid.add(
        12,
        9,
        c.timeseries(
            "Documents invisible and restored",
            "Documents invisible to retrieval now, and how many the run re-keyed (each re-keyed"
            " mismatched document is visible again).",
            [
                ("max(uuidguard_documents_invisible)", "invisible"),
                ('max(uuidguard_migration_documents{state="done"})', "re-keyed by the run"),
                (
                    'max(uuidguard_migration_documents{state="rolled_back"})',
                    "rolled back (invisible again)",
                ),
            ],
            "short",
            alerts=(th.RAG_ACCESSIBILITY.alert, "UuidguardRagAccessibilityDropped"),
        ),
        c.timeseries(
            "Documents needing people",
            "What re-keying does not fix: documents stuck unprocessed (re-upload) and documents"
            " in conflict groups (the user chooses between duplicates).",
            [
                ("max(uuidguard_documents_stuck)", "stuck"),
                ('max(uuidguard_documents_by_class{class="conflict"})', "in conflict groups"),
                ("max(uuidguard_documents_to_rekey)", "still to re-key"),
            ],
            "short",
        ),
    )
    return c.dashboard(
        UID,
        "uuidguard: User impact",
        "Users affected and restored, documents invisible and restored, and what needs a"
        " person. Counts and buckets only: no metric carries a user or document id.",
        grid,
        annotations=[c.state_annotation()],
    )
