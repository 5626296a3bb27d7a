"""The plan (migrator.plan) as a person reads it, in Markdown. No I/O."""

from __future__ import annotations

from typing import Any

from migrator.reports.format import duration, num, table

TITLES = {
    "A": "A — re-key all random documents",
    "B": "B — priority documents only (recent, frequently used, invisible)",
    "C": "C — forward only: change no data, keep monitoring",
}


def to_markdown(plan: dict[str, Any], target: str) -> str:
    o = plan["options"]
    keys = ("A", "B", "C")
    lines = [
        f"# Migration plan for {target}",
        "",
        f"{num(plan['documents_invisible'])} documents of"
        f" {num(plan['users_with_invisible_documents'])} users are invisible to retrieval now.",
        "",
        f"**Recommendation: option {plan['recommendation']['option']}** —"
        f" {plan['recommendation']['reason']}.",
        "",
        "## Options",
        "",
    ]
    rows: list[list[object]] = [
        ["documents re-keyed", *[num(o[k]["documents"]) for k in keys]],
    ]
    for ref in o["A"]["rows"]:
        rows.append([f"rows of {ref}", *[num(o[k]["rows"][ref]) for k in keys]])
    rows += [
        ["documents visible again", *[num(o[k]["documents_restored"]) for k in keys]],
        ["users with documents visible again", *[num(o[k]["users_restored"]) for k in keys]],
        ["documents left invisible", *[num(o[k]["documents_left_invisible"]) for k in keys]],
        ["estimated duration", *[duration(o[k]["estimated_seconds"]) for k in keys]],
    ]
    lines.append(table(["", *(TITLES[k] for k in keys)], rows, "lrrr"))
    r = plan["rehearsal"]
    rate = r["rows_per_second"]
    lines += [
        "",
        f"Durations come from {r['source']}: {num(r['batches'])} batches in"
        f" {r['seconds']:.2f} s, {num(round(rate)) if rate else '–'} rows/s"
        f" ({num(round(r['documents_per_second'] or 0))} documents/s). Nothing was changed.",
        "",
        "## Foreign keys and how each is handled",
        "",
        table(
            ["reference", "constraint", "strategy", "why"],
            [
                [f["reference"], f["constraint"] or "–", f["strategy"], f["why"]]
                for f in plan["foreign_keys"]
            ],
        ),
        "",
        "## Risks",
        "",
    ]
    for k in keys:
        lines.append(f"**{TITLES[k]}**")
        lines += [f"- {risk}" for risk in plan["risks"][k]]
        lines.append("")
    lines += ["## Decision points: when to go on, when to roll back", ""]
    lines += [f"{i}. {p}" for i, p in enumerate(plan["decision_points"], 1)]
    lines += ["", "## Success criteria", ""]
    for k in keys:
        lines.append(f"**{TITLES[k]}**")
        lines += [f"- {c}" for c in plan["success_criteria"][k]]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
