"""Batch size toward a target batch time. No I/O.

pt-online-schema-change's --chunk-time idea with GitLab's growth cap, and room for jitter:
the cost of a document is smoothed over recent batches, and every batch also records how
much slower (or faster) it was than that smoothed cost predicted. The size is chosen so that
a batch as slow as the slower recent ones (`headroom_quantile` of the last `window`) still
fits the target: on a steady database batches take the target's length; where checkpoints,
autovacuum or other load make some batches slower, the size leaves room for them instead of
letting them become a long tail. A step may grow the size by at most `growth_cap`, and a
lock timeout halves it at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Pace:
    target_seconds: float = 0.2
    min_size: int = 10
    max_size: int = 5000
    size: int = 100
    #: TCP slow start doubles too: from the small first batch to full size in a few steps
    growth_cap: float = 2.0
    #: weight of the newest batch in the smoothed cost
    alpha: float = 0.4
    #: how many recent batches the headroom is taken from, and which of their slowness: the
    #: slowest tenth, since what operators bound is the batch p99 (at 0.8 the p99 overran the
    #: 0.2 s target by up to 40% on benchmarks/migrate.py's mix of documents with and without
    #: chunks)
    window: int = 20
    headroom_quantile: float = 0.9
    #: smoothed seconds per document
    cost: float | None = None
    #: recent batches' cost divided by the smoothed cost before them
    ratios: deque[float] = field(default_factory=deque)

    @property
    def rate(self) -> float | None:
        """Smoothed documents per second."""
        return 1 / self.cost if self.cost else None

    @property
    def headroom(self) -> float:
        """How much slower than predicted a batch may be and still fit (1 when steady)."""
        if not self.ratios:
            return 1.0
        ordered = sorted(self.ratios)
        slow = ordered[min(len(ordered) - 1, int(self.headroom_quantile * len(ordered)))]
        return slow if slow > 1.01 else 1.0  # within 1% of the prediction is steady

    def observe(self, documents: int, seconds: float) -> int:
        """Account for a committed batch; returns the size for the next one."""
        if documents > 0 and seconds > 0:
            current = seconds / documents
            if self.cost is None:
                self.cost = current
            else:
                self.ratios.append(current / self.cost)
                while len(self.ratios) > self.window:
                    self.ratios.popleft()
                self.cost = self.alpha * current + (1 - self.alpha) * self.cost
            desired = self.target_seconds / (self.cost * self.headroom)
            self.size = self._bounded(min(desired, self.size * self.growth_cap))
        return self.size

    def retarget(self, seconds: float) -> int:
        """A new target batch time (`uuidguard migrate set`): the size follows at once."""
        if seconds > 0 and seconds != self.target_seconds:
            self.size = self._bounded(self.size * seconds / self.target_seconds)
            self.target_seconds = seconds
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
