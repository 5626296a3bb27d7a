"""User communication drafts (seed B.1.2): one Markdown draft per audience and a mail-merge
file, filled from the run's journal and an assessment taken now.

Audiences: (1) notice before the migration to users with invisible or at-risk documents,
(2) "your documents are searchable again" after it, (3) action needed: stuck uploads and
duplicate uploads in conflict, (4) an internal note for support and on-call. The drafts are
Jinja2 templates shipped in reports/templates/ (StrictUndefined: an unknown field is an error),
overridable file by file with a directory of one's own.
"""

from __future__ import annotations

import csv
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from migrator import assess, journal, ruleids, runs
from migrator import tables as tables_mod
from migrator.errors import UsageError
from migrator.reports.format import num, size
from migrator.settings import Settings

TEMPLATES = Path(__file__).parent / "templates"
DRAFTS = {
    "notice": "notice.md.j2",
    "restored": "restored.md.j2",
    "action_needed": "action_needed.md.j2",
    "internal": "internal.md.j2",
}
RECIPIENT_FIELDS = (
    "user_id",
    "segment",
    "invisible",
    "at_risk",
    "restored",
    "rekeyed",
    "stuck",
    "duplicates",
    "filenames",
)
#: filenames per user in the mail-merge file and the drafts
FILENAMES = 3
#: users listed by name in each draft (the CSV has all of them)
USERS_SHOWN = 25


def build(
    conn: Connection, settings: Settings, run_id: int | None, now: datetime
) -> dict[str, Any]:
    """The drafts' context: the run, per-user counts from its id map (what it planned and did)
    and from an assessment taken now (what is left: stuck uploads, duplicates)."""
    run = runs.resolve(conn, settings, run_id)
    rid = int(run["id"])
    st = runs.status(conn, settings, rid)
    report = assess.assess(conn, settings, now)  # leaves ug_docs for the per-user queries below
    mt = tables_mod.reflect(conn, settings)
    users: dict[str, dict[str, Any]] = {}

    def user(uid: Any) -> dict[str, Any]:
        return users.setdefault(
            str(uid),
            {
                "user_id": str(uid),
                "invisible": 0,
                "at_risk": 0,
                "restored": 0,
                "rekeyed": 0,
                "stuck": 0,
                "duplicates": 0,
                "files": {"notice": [], "restored": [], "action": []},
            },
        )

    id_map = journal.table(settings.journal_schema, "id_map")
    m = settings.mapping.documents
    d = mt.documents
    name = sa.cast(d.c(m.filename), sa.Text) if m.filename else sa.cast(d.c(m.id), sa.Text)
    current = sa.case((id_map.c.state == "done", id_map.c.new_id), else_=id_map.c.old_id)
    mine = (
        sa.select(
            id_map.c.user_id,
            id_map.c["class"],
            id_map.c.state,
            name,
        )
        .select_from(id_map.outerjoin(d.table, d.c(m.id) == current))
        .where(id_map.c.run_id == rid)
        .order_by(id_map.c.user_id, name)
    )
    for uid, cls, state, filename in conn.execute(mine):
        u = user(uid)
        if cls == "random_mismatched":
            u["invisible"] += 1
            if state == "done":
                u["restored"] += 1
        elif cls == "random_consistent":
            u["at_risk"] += 1
        if state == "done":
            u["rekeyed"] += 1
        if filename is not None:
            if cls in ("random_mismatched", "random_consistent"):
                _add(u["files"]["notice"], filename)
            if cls == "random_mismatched" and state == "done":
                _add(u["files"]["restored"], filename)

    # what is left now: stuck uploads and members of conflict groups (duplicates)
    docs = sa.table(
        "ug_docs",
        sa.column("key"),
        sa.column("user_id"),
        sa.column("class"),
        sa.column("never_processed"),
        sa.column("created_at"),
    )
    stuck = sa.and_(docs.c.never_processed, docs.c.created_at < now - settings.assess.grace_period)
    uuid_mode = report["meta"]["key_mode"] == "uuid"
    left = (
        sa.select(
            docs.c.user_id,
            stuck.label("stuck"),
            (docs.c["class"] == "conflict").label("duplicate"),
            name,
        )
        .select_from(docs.join(d.table, ruleids.key_expr(d.c(m.id), uuid_mode) == docs.c.key))
        .where(sa.or_(stuck, docs.c["class"] == "conflict"))
        .order_by(docs.c.user_id, name)
    )
    for uid, is_stuck, dup, filename in conn.execute(left):
        u = user(uid)
        u["stuck"] += int(bool(is_stuck))
        u["duplicates"] += int(bool(dup))
        if filename is not None:
            _add(u["files"]["action"], filename)

    ordered = sorted(users.values(), key=lambda u: u["user_id"])
    segments = {
        "notice": [u for u in ordered if u["invisible"] or u["at_risk"]],
        "restored": [u for u in ordered if u["restored"]],
        "action": [u for u in ordered if u["stuck"] or u["duplicates"]],
    }
    conflicts = report["conflicts"]
    return {
        "run": {
            "id": rid,
            "option": run["option"],
            "state": run["state"],
            "created_at": run["created_at"].isoformat(),
            "updated_at": run["updated_at"].isoformat() if run["updated_at"] else None,
            "documents": int(run["documents"]),
            "done": st["documents"]["done"],
            "pending": st["documents"]["pending"],
            "percent": st["percent"],
        },
        "generated_at": now.isoformat(),
        "assessment": {
            "documents": report["documents"]["total"],
            "invisible": report["documents"]["invisible"],
            "by_class": report["documents"]["by_class"],
            "users_total": report["users"]["total"],
            "users_with_invisible_documents": report["users"]["invisible_documents"],
            "stuck": report["failure_patterns"]["stuck"]["documents"],
            "stuck_oldest": report["failure_patterns"]["stuck"]["oldest_created_at"],
            "conflict_groups": conflicts["groups"],
            "conflict_documents": conflicts["documents"],
            "conflict_examples": conflicts["detail"][:5],
            "grace_period_hours": report["meta"]["grace_period_hours"],
            "affected_bytes": size(report["storage"]["affected_bytes"]),
        },
        "totals": {
            "invisible": sum(u["invisible"] for u in ordered),
            "at_risk": sum(u["at_risk"] for u in ordered),
            "restored": sum(u["restored"] for u in ordered),
            "rekeyed": sum(u["rekeyed"] for u in ordered),
            "stuck": sum(u["stuck"] for u in ordered),
            "duplicates": sum(u["duplicates"] for u in ordered),
        },
        "segments": {k: {"users": len(v), "shown": v[:USERS_SHOWN]} for k, v in segments.items()},
        "recipients": [
            {"segment": seg, **u} for seg in ("notice", "restored", "action") for u in segments[seg]
        ],
        "timeline": [
            {**e, "at": e["at"].isoformat(timespec="seconds")}
            for e in journal.audit_trail(conn, settings.journal_schema, rid)
        ],
    }


def _add(files: list[str], filename: str) -> None:
    if len(files) < FILENAMES and filename not in files:
        files.append(filename)


def environment(templates: Path | None) -> jinja2.Environment:
    """Templates from `templates` first (per file name), then the shipped ones."""
    loaders: list[jinja2.BaseLoader] = []
    if templates is not None:
        if not templates.is_dir():
            raise UsageError(
                f"--templates {templates} is not a directory",
                "name a directory holding one or more of " + ", ".join(DRAFTS.values()),
            )
        loaders.append(jinja2.FileSystemLoader(str(templates)))
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATES)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown for people to edit, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = num
    return env


_UNDEFINED = re.compile(r"(?:has no attribute|is undefined)")
_NAME = re.compile(r"'([^']+)'")


def render(context: dict[str, Any], templates: Path | None = None) -> dict[str, str]:
    """Each draft's Markdown by audience. A broken template fails with one line naming it."""
    env = environment(templates)
    out: dict[str, str] = {}
    for audience, file in DRAFTS.items():
        try:
            out[audience] = env.get_template(file).render(**context)
        except jinja2.TemplateSyntaxError as exc:
            raise UsageError(
                f"template {exc.filename or file} line {exc.lineno}: syntax error: {exc.message}",
                "fix the template, or remove it from --templates to use the shipped one",
            ) from exc
        except jinja2.UndefinedError as exc:
            names = _NAME.findall(str(exc))
            field = names[-1] if names and _UNDEFINED.search(str(exc)) else str(exc)
            raise UsageError(
                f"template {file} refers to unknown field {field!r}",
                "use only the fields listed in the shipped templates (reports/templates/"
                f"{file}), or remove it from --templates",
            ) from exc
    return out


def write(context: dict[str, Any], out_dir: Path, templates: Path | None = None) -> list[Path]:
    """The drafts and recipients.csv into `out_dir` (created if need be); returns the paths."""
    drafts = render(context, templates)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for audience, text in drafts.items():
            path = out_dir / f"{audience}.md"
            path.write_text(text)
            paths.append(path)
        path = out_dir / "recipients.csv"
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=RECIPIENT_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for r in context["recipients"]:
                files = r["files"]["action" if r["segment"] == "action" else r["segment"]]
                writer.writerow({**r, "filenames": "; ".join(files)})
        paths.append(path)
    except OSError as exc:
        raise UsageError(
            f"cannot write the drafts into {out_dir}: {exc.strerror or exc}",
            "pass --out with a directory you can write to",
        ) from exc
    return paths
