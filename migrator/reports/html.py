"""The completion report as one self-contained HTML page: inline CSS, charts as inline SVG drawn
here, no external URL of any kind (it opens offline). No I/O.
"""

from __future__ import annotations

from html import escape
from typing import Any

from migrator.reports.completion import STATUS_MARK, before_after_rows, span
from migrator.reports.format import duration, num

#: the charts every page carries, in order (a test counts them)
CHARTS = ("batch-durations", "throughput", "before-after-documents", "before-after-latency")
W, H = 640, 240
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 16, 44
BEFORE, AFTER, BAR, LINE = "#9aa5b1", "#2f6fde", "#2f6fde", "#1b8a5a"

CSS = """
:root { --fg: #1f2933; --muted: #52606d; --line: #e4e7eb; --ok: #1b8a5a; --bad: #c92a2a;
        --pending: #b7791f; --bg: #ffffff; --panel: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 32px 24px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 8px; color: var(--muted); }
.sub { color: var(--muted); margin: 0 0 20px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 12px; }
.card { background: var(--panel); border-radius: 8px; padding: 12px 14px; }
.card .v { font-size: 22px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; margin: 8px 0 16px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 16px; }
figure { margin: 0; background: var(--panel); border-radius: 8px; padding: 12px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
svg { width: 100%; height: auto; display: block; }
svg text { font-size: 11px; fill: var(--muted); }
.badge { display: inline-block; min-width: 64px; text-align: center; border-radius: 4px;
         padding: 1px 8px; font-size: 12px; font-weight: 700; color: #fff; }
.pass { background: var(--ok); } .fail { background: var(--bad); } .pending { background: var(--pending); }
.state { font-weight: 700; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; border-radius: 2px; }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
@media print { .charts { grid-template-columns: 1fr; } }
"""


def _fmt_axis(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:,.3g}k"
    if abs(v) >= 10:
        return f"{v:,.1f}".removesuffix(".0")
    if abs(v) >= 1:
        return f"{v:,.1f}"
    return f"{v:.3g}"


def _frame(name: str, title: str, body: list[str], top: float, unit: str) -> str:
    """An SVG with a y axis from 0 to `top` (4 grid lines) around the drawn body."""
    ih = H - PAD_T - PAD_B
    parts = [
        f'<svg class="chart" data-chart="{escape(name)}" viewBox="0 0 {W} {H}" role="img"'
        f' aria-label="{escape(title)}">'
    ]
    for i in range(5):
        y = PAD_T + ih - ih * i / 4
        parts.append(
            f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" stroke="#e4e7eb"/>'
        )
        parts.append(
            f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt_axis(top * i / 4)}</text>'
        )
    parts.append(
        f'<text x="12" y="{PAD_T + ih / 2:.1f}" transform="rotate(-90 12 {PAD_T + ih / 2:.1f})"'
        f' text-anchor="middle">{escape(unit)}</text>'
    )
    parts += body
    parts.append("</svg>")
    return "".join(parts)


def _nice_top(v: float) -> float:
    if v <= 0:
        return 1.0
    for e in range(-6, 16):
        for m in (1, 2, 2.5, 5):
            top = m * 10**e
            if top >= v:
                return float(top)
    return v


def histogram_svg(bins: list[dict[str, Any]]) -> str:
    top = _nice_top(max([b["batches"] for b in bins], default=0))
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    body: list[str] = []
    n = max(len(bins), 1)
    bw = iw / n
    for i, b in enumerate(bins):
        h = ih * b["batches"] / top
        x = PAD_L + i * bw
        body.append(
            f'<rect x="{x + 1:.1f}" y="{PAD_T + ih - h:.1f}" width="{max(bw - 2, 1):.1f}"'
            f' height="{h:.1f}" fill="{BAR}"><title>{b["low"] * 1000:.1f}–{b["high"] * 1000:.1f} ms:'
            f" {b['batches']} batches</title></rect>"
        )
        if i % max(1, n // 6) == 0 or i == n - 1:
            body.append(
                f'<text x="{x + bw / 2:.1f}" y="{H - PAD_B + 16}" text-anchor="middle">'
                f"{b['high'] * 1000:,.0f}</text>"
            )
    body.append(
        f'<text x="{PAD_L + iw / 2:.1f}" y="{H - 6}" text-anchor="middle">batch duration, ms (upper bound)</text>'
    )
    return _frame(CHARTS[0], "Batch duration distribution", body, top, "batches")


def throughput_svg(points: list[dict[str, Any]]) -> str:
    top = _nice_top(max([p["per_second"] for p in points], default=0))
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    n = len(points)
    step = iw / max(n - 1, 1)
    xy = [
        (PAD_L + (i * step if n > 1 else iw / 2), PAD_T + ih - ih * p["per_second"] / top)
        for i, p in enumerate(points)
    ]
    body: list[str] = []
    if xy:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        area = f"{xy[0][0]:.1f},{PAD_T + ih} {path} {xy[-1][0]:.1f},{PAD_T + ih}"
        body.append(f'<polygon points="{area}" fill="{LINE}" fill-opacity="0.15"/>')
        body.append(f'<polyline points="{path}" fill="none" stroke="{LINE}" stroke-width="2"/>')
        for (x, y), p in zip(xy, points, strict=True):
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{LINE}"><title>{escape(p["start"])}:'
                f" {p['documents']} documents, {p['per_second']}/s</title></circle>"
            )
        total = points[0]["seconds"] * n
        for i in (0, n // 2, n - 1) if n > 2 else range(n):
            x = xy[i][0]
            body.append(
                f'<text x="{x:.1f}" y="{H - PAD_B + 16}" text-anchor="middle">'
                f"+{duration(i * points[0]['seconds'])}</text>"
            )
        body.append(
            f'<text x="{PAD_L + iw / 2:.1f}" y="{H - 6}" text-anchor="middle">time since the first'
            f" batch (run span {duration(total)})</text>"
        )
    return _frame(CHARTS[1], "Throughput over time", body, top, "documents / s")


def bars_svg(name: str, title: str, rows: list[tuple[str, float, float]], unit: str) -> str:
    """Grouped bars: before and after for each label."""
    top = _nice_top(max([max(b, a) for _, b, a in rows], default=0))
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    gw = iw / max(len(rows), 1)
    bw = min(gw * 0.36, 40)
    body: list[str] = []
    for i, (label, b, a) in enumerate(rows):
        gx = PAD_L + i * gw + gw / 2
        for j, (v, colour, what) in enumerate(((b, BEFORE, "before"), (a, AFTER, "after"))):
            h = ih * v / top
            x = gx - bw - 1 + j * (bw + 2)
            body.append(
                f'<rect x="{x:.1f}" y="{PAD_T + ih - h:.1f}" width="{bw:.1f}" height="{h:.1f}"'
                f' fill="{colour}"><title>{escape(label)} {what}: {num(v)}</title></rect>'
            )
        # a label wider than its group (about 6 px a character) goes on two lines
        words = label.split(" ", 1) if len(label) * 6 > gw and " " in label else [label]
        lines = "".join(
            f'<tspan x="{gx:.1f}" dy="{0 if k == 0 else 12}">{escape(w)}</tspan>'
            for k, w in enumerate(words)
        )
        body.append(f'<text y="{H - PAD_B + 16}" text-anchor="middle">{lines}</text>')
    # the legend at the top right, clear of two-line labels
    body.append(
        f'<rect x="{W - PAD_R - 120}" y="2" width="10" height="10" fill="{BEFORE}"/>'
        f'<text x="{W - PAD_R - 106}" y="11">before</text>'
        f'<rect x="{W - PAD_R - 50}" y="2" width="10" height="10" fill="{AFTER}"/>'
        f'<text x="{W - PAD_R - 36}" y="11">after</text>'
    )
    return _frame(name, title, body, top, unit)


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(
        f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(str(v))}</td>' if i in numeric else f"<td>{_cell(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, _Raw):
        return str(v)
    return escape(str(v))


class _Raw(str):
    """Markup built here, not to be escaped again."""


def _badge(status: str) -> _Raw:
    return _Raw(f'<span class="badge {escape(status)}">{STATUS_MARK[status]}</span>')


def _codes(ids: list[str]) -> _Raw:
    return _Raw(", ".join(f"<code>{escape(i)}</code>" for i in ids) or "–")


def to_html(report: dict[str, Any], target: str = "") -> str:
    run, bt, tl = report["run"], report["batches"], report["timeline"]
    before, after = report["before"] or {}, report["after"]
    doc_rows: list[tuple[str, float, float]] = []
    for label, path in (
        ("invisible docs", ("documents", "invisible")),
        ("mismatched", ("documents", "by_class", "random_mismatched")),
        ("consistent", ("documents", "by_class", "random_consistent")),
        ("unprocessed", ("documents", "by_class", "random_unprocessed")),
        ("conflict", ("documents", "by_class", "conflict")),
        ("orphan chunks", ("chunks", "orphan")),
        ("users affected", ("users_with_invisible_documents",)),
    ):
        b_val: Any = before
        a_val: Any = after
        for p in path:
            b_val = b_val.get(p, 0) if isinstance(b_val, dict) else 0
            a_val = a_val[p]
        doc_rows.append((label, float(b_val or 0), float(a_val)))
    bl, al = before.get("latency", {}), after["latency"]
    lat_rows = [
        ("p50", 1000 * float(bl.get("p50_seconds") or 0), 1000 * float(al["p50_seconds"] or 0)),
        ("p99", 1000 * float(bl.get("p99_seconds") or 0), 1000 * float(al["p99_seconds"] or 0)),
    ]
    charts = [
        ("Batch duration distribution", histogram_svg(bt["duration_histogram"])),
        ("Throughput over time", throughput_svg(bt["throughput"])),
        (
            "Before and after: documents, chunks, users",
            bars_svg(CHARTS[2], "Before and after", doc_rows, "count"),
        ),
        (
            "Retrieval latency on the fixed canary set",
            bars_svg(CHARTS[3], "Retrieval latency", lat_rows, "ms"),
        ),
    ]
    passed = sum(1 for i in report["checklist"] if i["status"] == "pass")
    cards = [
        ("state", run["state"]),
        ("documents re-keyed", num(bt["documents"])),
        ("batches", num(bt["total"])),
        ("spent in batches", span(bt["busy_seconds"])),
        ("invisible now", num(after["documents"]["invisible"])),
        ("checklist", f"{passed} / {len(report['checklist'])} pass"),
    ]
    where = f" on {target}" if target else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Migration completion report — run {run['id']}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>Migration completion report — run {run['id']}</h1>",
        f'<p class="sub">{escape(where.strip())} · option {escape(str(run["option"]))} · created by'
        f" {escape(str(run['created_by']))} at {escape(run['created_at'])} · state"
        f' <span class="state">{escape(run["state"])}</span>'
        + (f" ({escape(run['reason'])})" if run["reason"] else "")
        + f" · generated {escape(report['generated_at'])}</p>",
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="v">{escape(v)}</div><div class="k">{escape(k)}</div></div>'
            for k, v in cards
        )
        + "</div>",
        "<h2>Charts</h2>",
        '<div class="charts">'
        + "".join(
            f"<figure><figcaption>{escape(t)}</figcaption>{svg}</figure>" for t, svg in charts
        )
        + "</div>",
        "<h2>Planned against done</h2>",
        _table(
            ["class", "planned", "done", "pending", "skipped", "rolled back"],
            [
                [
                    c,
                    num(v["planned"]),
                    num(v["done"]),
                    num(v["pending"]),
                    num(v["skipped"]),
                    num(v["rolled_back"]),
                ]
                for c, v in report["classes"].items()
            ],
            {1, 2, 3, 4, 5},
        ),
        "<h2>Before and after</h2>",
        _table(["figure", "before", "after"], [list(r) for r in before_after_rows(report)], {1, 2}),
        f'<p class="sub">Before: {escape(str(before.get("measured_at", "not measured")))}; after:'
        f" {escape(after['measured_at'])}. Latency: the retrieval query on the fixed canary set of"
        f" {after['canary']['checked']} documents, {al['samples']} timings.</p>",
        "<h2>Timeline</h2>",
        f"<p>{tl['state_changes']} state changes, {tl['pauses']} pauses, {len(tl['rollbacks'])}"
        f" rollbacks, {len(tl['alerts'])} alerts received.</p>",
        _table(
            ["at", "action", "state", "by", "reason"],
            [
                [e["at"], e["action"], e["state"], f"{e['actor']} ({e['source']})", e["reason"]]
                for e in tl["events"]
            ],
        ),
        "<h3>Throttle waits by reason</h3>",
        _table(
            ["reason", "action", "times", "seconds"],
            [
                [w["reason"], w["action"], num(w["count"]), num(w["seconds"])]
                for w in tl["throttle_waits"]
            ],
            {2, 3},
        )
        if tl["throttle_waits"]
        else "<p>No throttle wait.</p>",
        "<h3>Rollbacks</h3>",
        _table(
            ["at", "trigger", "by"],
            [[r["at"], r["trigger"], f"{r['actor']} ({r['source']})"] for r in tl["rollbacks"]],
        )
        if tl["rollbacks"]
        else "<p>No rollback.</p>",
        "<h3>Alerts received</h3>",
        _table(
            ["received", "alert", "status", "decision"],
            [[a["received_at"], a["alertname"], a["status"], a["decision"]] for a in tl["alerts"]],
        )
        if tl["alerts"]
        else "<p>No alert received.</p>",
        "<h2>What remains for humans</h2>",
        _table(
            ["what", "count", "meaning", "sample ids"],
            [
                [k.replace("_", " "), num(v["count"]), v["what"], _codes(v["samples"])]
                for k, v in report["remains"].items()
            ],
            {1},
        ),
        "<h2>Verification</h2>",
        _table(
            ["check", "result", "detail"],
            [
                [c["check"], "ok" if c["ok"] else f"{num(c['failures'])} failing", c["detail"]]
                for c in report["verification"]["checks"]
            ],
        ),
        "<h2>Post-migration validation checklist (B.3.2)</h2>",
        _table(
            ["item", "status", "evidence"],
            [[i["item"], _badge(i["status"]), i["evidence"]] for i in report["checklist"]],
        ),
        "<footer>Generated by uuidguard from the journal and a measurement taken at report time."
        " Self-contained: no external resources.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"
