"""What a probe is, and how one runs: read-only, named, bounded on the server side.

A probe measures one aspect of UUID health (DESIGN §4) and returns samples: metric values
with labels that never carry a user or document id. `run_probe` gives it a connection in a
READ ONLY transaction whose `statement_timeout` and `lock_timeout` are set locally, under the
application_name `uuidguard-probe:<name>`, so an overrunning probe is cancelled by PostgreSQL
itself and can be found in pg_stat_activity.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from migrator import db
from migrator.settings import Settings

Budget = Literal["full", "incremental", "sampled"]
APPLICATION_NAME = "uuidguard-probe"


@dataclass(frozen=True)
class Sample:
    """One value of one metric (name without the `uuidguard_` prefix)."""

    metric: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass
class ProbeOutput:
    samples: list[Sample] = field(default_factory=list)
    #: what a person reading /api/v1/status should see (counts, examples without user ids)
    detail: dict[str, Any] = field(default_factory=dict)

    def add(self, metric: str, value: float, **labels: str) -> None:
        self.samples.append(Sample(metric, float(value), tuple(sorted(labels.items()))))


@dataclass
class ProbeContext:
    """State a probe keeps between its runs (watermarks), owned by the scheduler."""

    state: dict[str, Any] = field(default_factory=dict)


ProbeFunc = Callable[[Connection, Settings, ProbeContext], ProbeOutput]


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    interval: timedelta
    budget: Budget
    description: str
    func: ProbeFunc
    #: the metrics (without prefix) this probe sets, for documentation and staleness
    metrics: tuple[str, ...] = ()
    #: probes that write nothing but need more than a read-only transaction (none so far)
    read_only: bool = True


def run_probe(
    engine: Engine, settings: Settings, spec: ProbeSpec, ctx: ProbeContext
) -> tuple[ProbeOutput, float]:
    """Run one probe in its own bounded transaction; returns its output and wall seconds.
    Errors propagate (the scheduler counts them and backs off)."""
    started = time.monotonic()
    ms = f"{int(settings.probes.timeout.total_seconds() * 1000)}ms"
    with engine.connect() as conn, conn.begin():
        if spec.read_only:
            conn.execute(sa.text("SET TRANSACTION READ ONLY"))
        db.set_local(
            conn,
            {
                "application_name": f"{APPLICATION_NAME}:{spec.name}",
                "statement_timeout": ms,
                "lock_timeout": ms,
                "idle_in_transaction_session_timeout": ms,
            },
        )
        out = spec.func(conn, settings, ctx)
    return out, time.monotonic() - started
