"""Probe results in memory: what /metrics and /api/v1/status read. No database access.

The scheduler writes here after every probe run; a scrape only reads a snapshot under a lock,
so a hundred scrapes cause no query. A value older than three of its probe's intervals is
dropped rather than served stale; one failing probe never hides the others.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from monitor.probing import ProbeOutput, ProbeSpec

#: probe duration histogram buckets, seconds
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STALE_AFTER_INTERVALS = 3


@dataclass
class Histogram:
    bounds: tuple[float, ...] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_le(bound), float(running)))
        out.append(("+Inf", float(running + self.counts[-1])))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


@dataclass
class ProbeRecord:
    spec: ProbeSpec
    output: ProbeOutput | None = None
    #: wall-clock time (unix seconds) of the output above, and of the last run of any result
    output_at: float | None = None
    last_run_at: float | None = None
    last_success_at: float | None = None
    runs: Counter[str] = field(default_factory=Counter)
    durations: Histogram = field(default_factory=Histogram)
    failures_in_a_row: int = 0
    last_error: str | None = None

    def fresh(self, now: float) -> bool:
        if self.output_at is None:
            return False
        return now - self.output_at <= STALE_AFTER_INTERVALS * self.spec.interval.total_seconds()


class Store:
    """Thread-safe: the scheduler's threads write, the HTTP server's threads read."""

    def __init__(self, specs: list[ProbeSpec]) -> None:
        self._lock = threading.Lock()
        self._records = {s.name: ProbeRecord(s) for s in specs}
        self.db_seconds = 0.0
        self.leader = False
        self.started_at = time.time()
        #: the daemon's own canary right after each batch it ran, and how many found a loss
        self.batch_canaries = 0
        self.batch_canary_failures = 0
        #: bumped on every change, so /metrics can reuse its rendering until the next one
        self.version = 0

    def success(self, name: str, output: ProbeOutput, seconds: float) -> None:
        now = time.time()
        with self._lock:
            r = self._records[name]
            r.output, r.output_at = output, now
            r.last_run_at = r.last_success_at = now
            r.runs["success"] += 1
            r.durations.observe(seconds)
            r.failures_in_a_row = 0
            r.last_error = None
            self.db_seconds += seconds
            self.version += 1

    def failure(self, name: str, result: str, error: str, seconds: float) -> int:
        """Record an error or timeout; returns the failures in a row (for the backoff)."""
        with self._lock:
            r = self._records[name]
            r.last_run_at = time.time()
            r.runs[result] += 1
            r.durations.observe(seconds)
            r.failures_in_a_row += 1
            r.last_error = error
            self.db_seconds += seconds
            self.version += 1
            return r.failures_in_a_row

    def add_db_seconds(self, seconds: float) -> None:
        with self._lock:
            self.db_seconds += seconds
            self.version += 1

    def batch_canary(self, lost: bool) -> None:
        with self._lock:
            self.batch_canaries += 1
            self.batch_canary_failures += int(lost)
            self.version += 1

    def stale_at(self, now: float) -> float:
        """When the next value served fresh now goes stale (inf when none will): until then,
        and until `version` changes, the exposition stays the same."""
        with self._lock:
            return min(
                (
                    r.output_at + STALE_AFTER_INTERVALS * r.spec.interval.total_seconds()
                    for r in self._records.values()
                    if r.fresh(now) and r.output_at is not None
                ),
                default=math.inf,
            )

    def snapshot(self) -> list[ProbeRecord]:
        """Copies, so readers never see a record change under them."""
        with self._lock:
            return [
                ProbeRecord(
                    spec=r.spec,
                    output=r.output,
                    output_at=r.output_at,
                    last_run_at=r.last_run_at,
                    last_success_at=r.last_success_at,
                    runs=Counter(r.runs),
                    durations=Histogram(
                        r.durations.bounds, list(r.durations.counts), r.durations.total
                    ),
                    failures_in_a_row=r.failures_in_a_row,
                    last_error=r.last_error,
                )
                for r in self._records.values()
            ]

    def status(self) -> list[dict[str, Any]]:
        now = time.time()
        return [
            {
                "probe": r.spec.name,
                "budget": r.spec.budget,
                "interval_seconds": r.spec.interval.total_seconds(),
                "last_success_at": r.last_success_at,
                "fresh": r.fresh(now),
                "runs": dict(r.runs),
                "failures_in_a_row": r.failures_in_a_row,
                "last_error": r.last_error,
                "detail": r.output.detail if r.output is not None and r.fresh(now) else None,
            }
            for r in self.snapshot()
        ]
