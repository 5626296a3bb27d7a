"""Batch size toward a target batch time. No I/O.

pt-online-schema-change's --chunk-time idea with GitLab's growth cap: the rate is smoothed
over recent batches, a step may grow the size by at most `growth_cap`, and a lock timeout
halves it at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Pace:
    target_seconds: float = 0.2
    min_size: int = 10
    max_size: int = 5000
    size: int = 100
    growth_cap: float = 1.5
    #: weight of the newest batch in the smoothed rate
    alpha: float = 0.4
    rate: float | None = None

    def observe(self, documents: int, seconds: float) -> int:
        """Account for a committed batch; returns the size for the next one."""
        if documents > 0 and seconds > 0:
            current = documents / seconds
            self.rate = (
                current
                if self.rate is None
                else self.alpha * current + (1 - self.alpha) * self.rate
            )
            desired = self.rate * self.target_seconds
            self.size = self._bounded(min(desired, self.size * self.growth_cap))
        return self.size

    def on_lock_timeout(self) -> int:
        self.size = self._bounded(self.size / 2)
        return self.size

    def _bounded(self, size: float) -> int:
        return max(self.min_size, min(self.max_size, int(size)))


def recent_rate(batches: list[tuple[float, float, int]]) -> float | None:
    """Documents per second over the time batches were actually running.

    The union of the batches' [start, commit] intervals is the busy time: overlapping batches
    of several workers count once, and pauses or waits between batches not at all, so the ETA
    stays honest after a pause (gh-ost's whole-run average does not).
    """
    if not batches:
        return None
    busy = 0.0
    end = float("-inf")
    for start, commit, _ in sorted(batches):
        if commit <= end:
            continue
        busy += commit - max(start, end)
        end = commit
    docs = sum(n for _, _, n in batches)
    return docs / busy if busy > 0 and docs > 0 else None
