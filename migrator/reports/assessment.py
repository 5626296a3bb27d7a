"""The assessment as a person reads it (Markdown), as machines read it (JSON), and per user (CSV).

No I/O beyond writing the files the caller names.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from migrator.dataset import CHUNK_CLASSES, DOCUMENT_CLASSES
from migrator.reports.format import num, pct, size, table

MEANING = {
    "deterministic": "id equals the rule's id: nothing to do",
    "random_consistent": "random id, chunks under it: reachable now, re-key before reprocessing",
    "random_mismatched": "random id, chunks under the rule id: invisible to RAG, re-keying heals it",
    "random_unprocessed": "random id, no chunks under either id: re-key; stuck ones need reprocessing",
    "conflict": "rule id shared or taken: one canonical member re-keyed at most, the rest for a human",
    "other": "neither a v4 id nor the rule's (v1, nil, malformed): reported only",
}
CHUNK_MEANING = {
    "attached": "its document exists",
    "orphan_healable": "re-keying a random document attaches it",
    "orphan_unmatched": "no document will ever own it: kept and reported",
}
CONFLICTS_SHOWN = 20
USERS_CSV_FIELDS = (
    "user_id",
    "documents",
    "affected",
    "invisible",
    "unprocessed",
    "conflict",
    "chunks",
    "invisible_chunks",
    "affected_bytes",
    "invisible_share",
)


def to_json(report: dict[str, Any]) -> str:
    """The stable machine form; the per-user rows go to the CSV instead."""
    public = {k: v for k, v in report.items() if k != "per_user"}
    return json.dumps(public, indent=2, sort_keys=False, default=str) + "\n"


def write_users_csv(report: dict[str, Any], path: Path) -> int:
    """One row per affected user, for the communication work; returns the row count."""
    rows = report.get("per_user", [])
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=USERS_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            share = row["invisible"] / row["documents"] if row["documents"] else 0.0
            writer.writerow({**row, "invisible_share": f"{share:.4f}"})
    return len(rows)


def to_markdown(report: dict[str, Any], target: str = "") -> str:
    d, ch, emb, u = report["documents"], report["chunks"], report["embeddings"], report["users"]
    fp, prio, conf, meta = (
        report["failure_patterns"],
        report["priority"],
        report["conflicts"],
        report["meta"],
    )
    total = d["total"]
    bc = d["by_class"]
    affected = total - bc["deterministic"]
    out: list[str] = ["# UUID damage assessment", ""]
    where = f" of {target}" if target else ""
    out.append(
        f"Assessment{where}, generated {meta['generated_at'][:19].replace('T', ' ')} UTC in "
        f"{meta['seconds']:.1f} s on PostgreSQL {meta['server_version'] // 10000}. Id rule: "
        f'`uuid5({meta["id_rule"]["namespace"]}, "{meta["id_rule"]["template"]}")`, computed in '
        f"{meta['rule_id_path']}."
    )
    out += ["", "## Summary", ""]
    if total == 0:
        out += ["The documents table is empty: there is nothing to assess.", ""]
    ret = fp["retrieval"]
    out += [
        f"- **{num(total)} documents**, of which **{num(affected)} ({pct(affected, total)}) do not "
        f"carry the rule's id**; {num(u['affected'])} of {num(u['total'])} users own at least one.",
        f"- **{num(ret['documents_invisible'])} documents ({pct(ret['documents_invisible'], total)}) "
        f"are invisible to RAG today**: they were processed, but their chunks carry an id no document "
        f"has. They belong to {num(u['invisible_documents'])} users.",
        f"- **{num(ret['chunks_invisible'])} of {num(ch['total'])} chunks "
        f"({pct(ret['chunks_invisible'], ch['total'])}) are unreachable**: "
        f"{num(ch['by_class']['orphan_healable'])} will be attached by re-keying, "
        f"{num(ch['by_class']['orphan_unmatched'])} belong to no document and stay orphaned.",
        f"- A full migration re-keys **{num(d['to_rekey'])} documents** "
        f"({size(report['storage']['affected_bytes'])} of affected data with their chunks and "
        f"embeddings); {num(conf['groups'])} conflict groups ({num(conf['documents'])} documents) need a "
        f"human decision, {num(bc['other'])} documents have ids of another kind.",
        f"- **{num(fp['stuck']['documents'])} documents are stuck**: no chunks under any id, older "
        f"than the {meta['grace_period_hours']:g} h grace period.",
        f"- **{num(prio['documents'])} high-priority documents** to re-key first (created or used in "
        f"the last {meta['priority_window_days']:g} days, or opened at least "
        f"{num(prio['access_count_threshold'])} times).",
        "",
        "## Documents by class",
        "",
        table(
            [
                "class",
                "documents",
                "share",
                "to re-key",
                "size with chunks and embeddings",
                "meaning",
            ],
            [
                [
                    f"`{c}`",
                    num(bc[c]),
                    pct(bc[c], total),
                    num(d["to_rekey_by_class"][c]),
                    size(d["bytes_by_class"][c]),
                    MEANING[c],
                ]
                for c in DOCUMENT_CLASSES
            ],
            "lrrrrl",
        ),
        "",
        "## Chunks and embeddings",
        "",
        table(
            ["chunk class", "chunks", "share", "size", "meaning"],
            [
                [
                    f"`{c}`",
                    num(ch["by_class"][c]),
                    pct(ch["by_class"][c], ch["total"]),
                    size(ch["bytes_by_class"][c]),
                    CHUNK_MEANING[c],
                ]
                for c in CHUNK_CLASSES
            ],
            "lrrrl",
        ),
        "",
        f"Embeddings: {num(emb['total'])} in all; {num(emb['document_missing'])} carry a document id "
        f"no document has; {num(emb['chunk_missing'])} point at a chunk that no longer exists.",
        "",
        "## Failure patterns",
        "",
        "### Stuck in the pipeline",
        "",
    ]
    stuck = fp["stuck"]
    if stuck["documents"]:
        out += [
            f"{num(stuck['documents'])} documents have no chunks under their own id or the rule's and "
            f"are older than {meta['grace_period_hours']:g} h (oldest uploaded "
            f"{(stuck['oldest_created_at'] or '')[:10]}). They need reprocessing or a re-upload.",
            "",
            table(
                ["status", "documents"], [[s, num(n)] for s, n in stuck["by_status"].items()], "lr"
            ),
            "",
            table(
                ["class", "documents"],
                [[f"`{c}`", num(n)] for c, n in stuck["by_class"].items()],
                "lr",
            ),
            "",
        ]
    else:
        out += ["No document is stuck.", ""]
    out += [
        "### Retrieval",
        "",
        table(
            ["measure", "value"],
            [
                [
                    "documents invisible to RAG",
                    f"{num(ret['documents_invisible'])} ({pct(ret['documents_invisible'], total)})",
                ],
                [
                    "chunks unreachable",
                    f"{num(ret['chunks_invisible'])} ({pct(ret['chunks_invisible'], ch['total'])})",
                ],
                ["users with invisible documents", num(ret["users_with_invisible_documents"])],
                [
                    "processed under the rule id (pipeline mismatch)",
                    num(fp["pipeline_mismatch"]["documents"]),
                ],
            ],
            "lr",
        ),
        "",
        "## Users",
        "",
        f"{num(u['total'])} users own documents; {num(u['affected'])} own at least one affected "
        f"document and {num(u['invisible_documents'])} at least one invisible document.",
        "",
        table(
            ["affected documents per user", "users"],
            [[k, num(v)] for k, v in u["by_affected_documents"].items()],
            "lr",
        ),
        "",
        table(
            ["share of the user's documents invisible", "users"],
            [[k, num(v)] for k, v in u["by_invisible_share"].items()],
            "lr",
        ),
        "",
    ]
    if u["top"]:
        out += [
            f"Most affected users (top {len(u['top'])}):",
            "",
            table(
                [
                    "user",
                    "documents",
                    "affected",
                    "invisible",
                    "unprocessed",
                    "conflict",
                    "invisible share",
                ],
                [
                    [
                        f"`{r['user_id']}`",
                        num(r["documents"]),
                        num(r["affected"]),
                        num(r["invisible"]),
                        num(r["unprocessed"]),
                        num(r["conflict"]),
                        f"{100 * r['invisible_share']:.1f}%",
                    ]
                    for r in u["top"]
                ],
                "lrrrrrr",
            ),
            "",
        ]
    out += [
        "## High-priority documents",
        "",
        f"{num(prio['documents'])} documents that a migration would re-key were created or opened "
        f"since {prio['window_start'][:10]} ({num(prio['recent'])}) or are opened often "
        f"(at least {num(prio['access_count_threshold'])} times: {num(prio['frequent'])}); "
        f"{num(prio['invisible'])} of them are invisible today.",
        "",
    ]
    if prio["by_class"]:
        out += [
            table(
                ["class", "documents"],
                [[f"`{c}`", num(n)] for c, n in prio["by_class"].items()],
                "lr",
            ),
            "",
        ]
    for title, label, matrix in (
        ("Documents by upload month", "month", d["by_month"]),
        ("Documents by status", "status", d["by_status"]),
    ):
        out += [f"## {title}", ""]
        if matrix:
            out += [_class_matrix(label, matrix), ""]
    out += ["## Conflict groups", ""]
    if conf["groups"]:
        kinds = ", ".join(f"{num(n)} {k.replace('_', ' ')}" for k, n in conf["by_kind"].items())
        out += [
            f"{num(conf['groups'])} groups ({kinds}). Where the rule id is free, the canonical member "
            "(processed first, then most chunks, then oldest, then smallest id) is re-keyed and the "
            "others keep their ids; where a document already holds the rule id, nobody moves. Nothing "
            "is merged or deleted.",
            "",
            table(
                ["user", "rule id", "kind", "members", "re-keyed", "kept"],
                [
                    [
                        f"`{g['user_id']}`",
                        f"`{g['rule_id']}`",
                        g["kind"].replace("_", " "),
                        len(g["members"]),
                        f"`{g['canonical']}`"
                        if g["canonical"]
                        else "none (held by " + f"`{g['holder']}`)",
                        ", ".join(f"`{m['id']}`" for m in g["members"] if m["action"] == "keep"),
                    ]
                    for g in conf["detail"][:CONFLICTS_SHOWN]
                ],
            ),
            "",
        ]
        if conf["groups"] > CONFLICTS_SHOWN:
            out += [
                f"… and {num(conf['groups'] - CONFLICTS_SHOWN)} more groups in the JSON report.",
                "",
            ]
    else:
        out += ["No conflicts.", ""]
    out += ["## Samples for follow-up", ""]
    rows = [
        [f"document `{c}`", ", ".join(f"`{i}`" for i in ids) or "–"]
        for c, ids in report["samples"]["documents"].items()
    ]
    rows += [
        [f"chunk `{c}`", ", ".join(f"`{i}`" for i in ids) or "–"]
        for c, ids in report["samples"]["chunks"].items()
    ]
    if stuck["samples"]:
        rows.append(["stuck document", ", ".join(f"`{i}`" for i in stuck["samples"])])
    out += [table(["what", "ids"], rows), ""]
    return "\n".join(out)


def _class_matrix(label: str, matrix: dict[str, dict[str, int]]) -> str:
    """Rows of documents per class, one row per month or status."""
    return table(
        [label, *DOCUMENT_CLASSES],
        [[row, *(num(v.get(c, 0)) for c in DOCUMENT_CLASSES)] for row, v in matrix.items()],
        "l" + "r" * len(DOCUMENT_CLASSES),
    )


def write_all(report: dict[str, Any], out_dir: Path, target: str = "") -> list[Path]:
    """assessment.md, assessment.json and users.csv in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js, users = out_dir / "assessment.md", out_dir / "assessment.json", out_dir / "users.csv"
    md.write_text(to_markdown(report, target))
    js.write_text(to_json(report))
    write_users_csv(report, users)
    return [md, js, users]
