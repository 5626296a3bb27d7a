"""`uuidguard preflight`: the pass/fail checklist before a run (DESIGN §3.5, seed B.3.1).

Each check says pass, warn or fail, with the reason and the fix. The result is recorded in the
journal; `uuidguard migrate run` refuses a run while the latest preflight failed, unless forced.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from migrator import calibrate, catalog, db, journal, runs
from migrator.errors import UuidguardError
from migrator.reports.format import duration, size
from migrator.settings import Settings

Status = Literal["pass", "warn", "fail"]
#: bytes of journal per document: its id map row, its journal rows, its share of a batch row
JOURNAL_BYTES_PER_DOCUMENT = 250
HTTP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


class PreflightFailed(UuidguardError):
    def __init__(self, when: datetime, failed: list[str]) -> None:
        super().__init__(
            f"the latest preflight ({when:%Y-%m-%d %H:%M} UTC) failed: {', '.join(failed)}. Fix:"
            " resolve them and run `uuidguard preflight` again, or pass --force to run anyway"
        )


def run(
    engine: Engine, settings: Settings, actor: str, now: datetime | None = None
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    checks: list[Check] = []
    with db.connect(engine) as conn:
        with conn.begin():
            current = journal.current(conn, settings.journal_schema)
            head = journal.head()
            if current == head:
                checks.append(Check("journal schema current", "pass", f"revision {head}"))
            else:
                what = "missing" if current is None else f"at revision {current}, {head} needed"
                checks.append(
                    Check("journal schema current", "fail", f"{what}; run `uuidguard init`")
                )
        with conn.begin():
            checks.append(_calibration(conn, settings))
        with conn.begin():
            checks.append(_privileges(conn, settings))
        if current == head:
            with conn.begin():
                checks.append(_backup(conn, settings, now))
            with conn.begin():
                checks.append(_active_run(conn, settings))
            with conn.begin():
                checks.append(_disk(conn, settings))
        checks.extend(_monitoring(settings))
        ok = all(c.status != "fail" for c in checks)
        report = {"at": now.isoformat(), "ok": ok, "checks": [asdict(c) for c in checks]}
        if current == head:
            with conn.begin():
                t = journal.table(settings.journal_schema, "preflights")
                conn.execute(
                    sa.insert(t).values(
                        at=now,
                        actor=actor,
                        ok=ok,
                        config_fingerprint=runs.config_fingerprint(settings),
                        checks=report["checks"],
                    )
                )
                journal.audit(conn, settings.journal_schema, "preflight", None, {"ok": ok}, actor)
    return report


def require_passed(conn: Connection, settings: Settings, force: bool) -> str | None:
    """Raise when the latest preflight failed (unless `force`); a note when there is none."""
    t = journal.table(settings.journal_schema, "preflights")
    latest = conn.execute(sa.select(t).order_by(t.c.id.desc()).limit(1)).mappings().first()
    if latest is None:
        return (
            "no preflight was run: `uuidguard preflight` checks backup, calibration and monitoring"
        )
    if not latest["ok"] and not force:
        failed = [c["name"] for c in latest["checks"] if c["status"] == "fail"]
        raise PreflightFailed(latest["at"].astimezone(UTC), failed)
    return None


def _calibration(conn: Connection, settings: Settings) -> Check:
    name = "id rule calibrated at 100%"
    r = calibrate.calibrate(conn, settings, None, 3)
    if r["candidates"] == 0:
        return Check(
            name,
            "warn",
            "no version-5 ids to compare with: the rule cannot be confirmed on this data",
        )
    if r["calibrated"]:
        return Check(name, "pass", f"{r['reproduced']:,} of {r['candidates']:,} v5 ids reproduced")
    return Check(
        name,
        "fail",
        f"{r['reproduced']:,} of {r['candidates']:,} v5 ids reproduced ({100 * r['share']:.2f}%):"
        " fix [id_rule] (`uuidguard calibrate` shows the mismatches)",
    )


def _privileges(conn: Connection, settings: Settings) -> Check:
    name = "privileges"
    try:
        fks = catalog.strategies(conn, settings)
        catalog.check_privileges(conn, settings, any(fk is not None for fk in fks.values()))
    except UuidguardError as exc:
        return Check(name, "fail", str(exc))
    role = conn.execute(sa.text("SELECT current_user")).scalar_one()
    return Check(name, "pass", f"role {role} may read and write the mapped tables")


def _backup(conn: Connection, settings: Settings, now: datetime) -> Check:
    name = "verified backup"
    t = journal.table(settings.journal_schema, "backups")
    latest = (
        conn.execute(
            sa.select(t).where(t.c.verified.is_(True)).order_by(t.c.verified_at.desc()).limit(1)
        )
        .mappings()
        .first()
    )
    limit = settings.backup.max_age
    if latest is None:
        return Check(name, "fail", "no verified backup in the journal: run `uuidguard backup`")
    age = now - latest["verified_at"]
    where = latest["path"]
    if age > limit:
        return Check(
            name,
            "fail",
            f"the latest verified backup ({where}) is {duration(age.total_seconds())} old, more"
            f" than backup.max_age {duration(limit.total_seconds())}: run `uuidguard backup`",
        )
    if not Path(where).is_file():
        return Check(name, "fail", f"the latest verified backup {where} is gone from disk")
    return Check(
        name, "pass", f"{where}, verified {duration(age.total_seconds())} ago by a test restore"
    )


def _active_run(conn: Connection, settings: Settings) -> Check:
    name = "no other active run"
    active = runs.active_run(conn, settings)
    if active is None:
        return Check(name, "pass", "none: `uuidguard migrate create` plans one")
    state = runs.resolve(conn, settings, active)["state"]
    if state in ("planned", "running", "paused"):
        return Check(name, "pass", f"run {active} is {state}, the one `migrate run` continues")
    return Check(
        name, "fail", f"run {active} is {state}: let it finish or roll it back before another"
    )


def _disk(conn: Connection, settings: Settings) -> Check:
    """Journal rows plus the dead row versions a run leaves until vacuum, against free space."""
    name = "free disk for the journal"
    active = runs.active_run(conn, settings)
    m = settings.mapping
    tables = [m.documents.table] + [r.table for r in settings.reference_columns()]
    q = conn.dialect.identifier_preparer
    need = 0
    documents = 0
    if active is not None:
        documents = int(runs.resolve(conn, settings, active)["documents"])
    for table in dict.fromkeys(tables):
        name_q = f"{q.quote_schema(m.schema_)}.{q.quote(table)}"
        rows, total_bytes = conn.execute(
            sa.text(
                "SELECT greatest(reltuples, 0)::bigint, pg_total_relation_size(oid)"
                " FROM pg_class WHERE oid = to_regclass(:t)"
            ),
            {"t": name_q},
        ).one()
        if table == m.documents.table and not documents:
            documents = int(rows)  # no run planned: assume every document
        # every document's rows may be rewritten once: one new row version each, until vacuum
        share = min(1.0, documents / max(int(rows), 1)) if table == m.documents.table else 1.0
        need += int(total_bytes * share)
    need += documents * JOURNAL_BYTES_PER_DOCUMENT
    directory = _data_directory(conn)
    if directory is None:
        return Check(
            name,
            "warn",
            f"about {size(need)} needed; free space is not visible from this connection"
            " (a remote server, or no pg_read_all_settings): check it on the server",
        )
    free = shutil.disk_usage(directory).free
    status: Status = "pass" if free > 2 * need else "warn" if free > need else "fail"
    return Check(name, status, f"about {size(need)} needed, {size(free)} free at {directory}")


def _data_directory(conn: Connection) -> Path | None:
    try:
        with conn.begin_nested():
            found = conn.execute(sa.text("SELECT current_setting('data_directory')")).scalar_one()
    except sa.exc.DBAPIError:
        return None
    path = Path(found)
    return path if path.is_dir() else None


def _monitoring(settings: Settings) -> list[Check]:
    mon = settings.monitoring
    out: list[Check] = []
    if mon.prometheus_url:
        out.append(_prometheus(mon.prometheus_url, mon.daemon_url))
    else:
        out.append(
            Check("Prometheus scrapes the daemon", "warn", "monitoring.prometheus_url not set")
        )
    if mon.alertmanager_url:
        out.append(_ready("Alertmanager reachable", mon.alertmanager_url.rstrip("/") + "/-/ready"))
    else:
        out.append(Check("Alertmanager reachable", "warn", "monitoring.alertmanager_url not set"))
    if mon.slack_token is not None:
        out.append(_slack(mon.slack_token.get_secret_value(), mon.slack_base_url))
    else:
        out.append(Check("Slack token valid", "warn", "monitoring.slack_token not set"))
    return out


def _prometheus(url: str, daemon_url: str) -> Check:
    name = "Prometheus scrapes the daemon"
    try:
        r = httpx.get(url.rstrip("/") + "/api/v1/targets", timeout=HTTP_TIMEOUT)
        r.raise_for_status()
        targets = r.json()["data"]["activeTargets"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return Check(name, "fail", f"{url} did not answer its targets API ({_short(exc)})")
    for target in targets:
        if target.get("scrapeUrl") == daemon_url:
            if target.get("health") == "up":
                return Check(name, "pass", f"{daemon_url} is up in {url}")
            return Check(
                name,
                "fail",
                f"{daemon_url} is {target.get('health')} in {url}: {target.get('lastError')}",
            )
    return Check(
        name, "fail", f"{url} has no target {daemon_url}: add it to Prometheus's scrape_configs"
    )


def _ready(name: str, url: str) -> Check:
    try:
        r = httpx.get(url, timeout=HTTP_TIMEOUT)
    except httpx.HTTPError as exc:
        return Check(name, "fail", f"{url}: {_short(exc)}")
    if r.status_code != 200:
        return Check(name, "fail", f"{url} answered {r.status_code}")
    return Check(name, "pass", f"{url} is ready")


def _slack(token: str, base_url: str) -> Check:
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    name = "Slack token valid"
    try:
        resp = WebClient(token=token, base_url=base_url, timeout=int(HTTP_TIMEOUT)).auth_test()
    except SlackApiError as exc:
        return Check(name, "fail", f"auth.test refused the token: {exc.response.get('error')}")
    except OSError as exc:  # urllib's URLError and socket errors
        return Check(name, "fail", f"{base_url} unreachable: {_short(exc)}")
    return Check(name, "pass", f"token of {resp.get('user')} in team {resp.get('team')}")


def _short(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
