"""dashboards/ and the full stack: the committed JSON is what the sources generate, every panel
is a current type reading the datasource variable, every query names only exported metrics and
returns data from a real Prometheus scraping a migrating daemon, and the compose stack's
configuration is valid (promtool, the Compose Specification, files it mounts)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from dashboards import build, common
from dashboards import thresholds as th
from migrator import runs
from migrator.settings import Settings, load_settings
from monitor import metrics, migration_probe, probes
from monitor.cli import app
from tests.migrator.test_migrate import _create, _prepare
from tests.stack import prometheus, serve_daemon, wait_until

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "uuidguard.rules.yml"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
#: PromQL words that look like names: binary operators, modifiers
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left"}
KEYWORDS |= {"group_right", "offset", "bool", "inf", "nan"}


def _dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in build.generate().items()}


def _queries(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every Prometheus annotation."""
    out = [
        (f"{d['uid']}: {p['title']} {t['refId']}", t["expr"])
        for p in d["panels"]
        for t in p.get("targets", [])
    ]
    out += [
        (f"{d['uid']}: annotation {a['name']}", a["expr"])
        for a in d["annotations"]["list"]
        if "expr" in a
    ]
    return out


def _names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, keywords, labels, strings removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)
    e = re.sub(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(", "(", e)
    return {t for t in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*", e) if t not in KEYWORDS}


def _exported() -> set[str]:
    """Every series name the daemon's registry exports (histograms with their suffixes)."""
    s = load_settings(None)
    specs = [*probes.probe_specs(s), migration_probe.spec(s)]
    cat = metrics.catalog([(p.name, p.description, p.metrics) for p in specs])
    names = {metrics.PREFIX + n for n in cat} | {"up"}
    names |= {
        metrics.PREFIX + n + suffix
        for n, doc in cat.items()
        if doc.kind == "histogram"
        for suffix in HISTOGRAM_SUFFIXES
    }
    return names


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_committed_json_is_what_the_sources_generate(tmp_path: Path) -> None:
    """`dashboards build` into a temp dir writes exactly the committed files, and `check`
    passes on them and fails once one differs."""
    runner = CliRunner()
    result = runner.invoke(app, ["dashboards", "build", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in build.GENERATED.glob("*.json"))
    for name in built:
        assert (tmp_path / name).read_text() == (build.GENERATED / name).read_text(), name
    assert runner.invoke(app, ["dashboards", "check"]).exit_code == 0
    (tmp_path / built[0]).write_text("{}\n")
    result = runner.invoke(app, ["dashboards", "check", "--out", str(tmp_path)])
    assert result.exit_code == 1 and built[0] in result.output


def test_panels_are_current_and_read_the_datasource_variable() -> None:
    """Current schema, stable uids, current panel types only, a unit and description and
    runbook-bearing links everywhere, and `${datasource}` on every panel, query and annotation."""
    dashboards = _dashboards()
    assert len(dashboards) == 4
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == 4 and all(u.startswith("uuidguard-") for u in uids)
    for name, d in dashboards.items():
        assert d["schemaVersion"] == common.SCHEMA_VERSION, name
        assert "rows" not in d and d.get("id") is None
        (var,) = d["templating"]["list"]
        assert (var["name"], var["type"], var["query"]) == (
            "datasource",
            "datasource",
            "prometheus",
        )
        assert any(link["url"].startswith(th.RUNBOOKS) for link in d["links"])
        panels = [p for p in d["panels"] if p["type"] != "row"]
        assert len({p["id"] for p in d["panels"]}) == len(d["panels"])
        for p in panels:
            where = f"{name}: {p['title']}"
            assert p["type"] in common.PANEL_TYPES, where
            assert p["fieldConfig"]["defaults"].get("unit"), where
            assert p.get("description"), where
            assert p["datasource"] == common.DATASOURCE, where
            assert p["targets"] and all(t["datasource"] == common.DATASOURCE for t in p["targets"])
            assert set(p["gridPos"]) == {"h", "w", "x", "y"}, where
            assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, where
            for step in p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", []):
                assert step["value"] is None or isinstance(step["value"], float), where
            for link in p["links"]:
                assert link["url"].startswith(th.RUNBOOKS), where
        for a in d["annotations"]["list"]:
            if "expr" in a:
                assert a["datasource"] == common.DATASOURCE
        text = json.dumps(d)
        # a datasource uid other than the variable (or Grafana's built-in) is a blank dashboard
        uids_named = set(re.findall(r'"uid": "([^"]*)"', text)) - {d["uid"]}
        assert uids_named <= {"${datasource}", "-- Grafana --"}, uids_named


def test_stat_thresholds_and_runbooks_match_the_alert_rules() -> None:
    """Each threshold the panels colour by is the value its alert compares with, and every
    runbook a panel links to is one the rules' alerts carry and that exists."""
    alerts = {}
    for rule in _rules():
        if "alert" in rule:
            alerts.setdefault(rule["alert"], []).append(rule)
    for t in th.ALL:
        candidates = [r for r in alerts[t.alert] if r["labels"]["severity"] == t.severity]
        assert candidates, t
        expr = candidates[0]["expr"]
        assert re.search(rf"{re.escape(t.op)}\s*{t.value:g}\b", expr), (t, expr)
        assert candidates[0]["annotations"]["runbook_url"] == t.runbook
    linked = {
        link["url"]
        for d in _dashboards().values()
        for p in d["panels"]
        for link in p.get("links", [])
    }
    urls = {r["annotations"]["runbook_url"] for rs in alerts.values() for r in rs}
    assert linked and linked <= urls, linked - urls
    for url in linked:
        assert (ROOT / "docs" / "runbooks" / url.rsplit("/", 1)[1]).is_file(), url


def test_every_query_names_only_exported_metrics() -> None:
    """Every metric in every panel query and annotation is exported by the daemon's registry,
    or is a recording rule of alerts/uuidguard.rules.yml built from exported metrics."""
    exported = _exported()

    def known(name: str) -> bool:
        return name in exported

    recorded = {r["record"]: r["expr"] for r in _rules() if "record" in r}
    for record, expr in recorded.items():
        assert all(known(n) or n in recorded for n in _names(expr)), (record, _names(expr))
    seen: set[str] = set()
    for d in _dashboards().values():
        for where, expr in _queries(d):
            names = _names(expr)
            assert names, (where, expr)
            bad = {n for n in names if not known(n) and n not in recorded}
            assert not bad, (where, bad)
            seen |= names
    # the parser finds what it should: a histogram suffix and a recording rule at least
    assert "uuidguard_migration_batch_duration_seconds_bucket" in seen
    assert any(":" in n for n in seen)


def test_the_name_parser_ignores_functions_labels_and_variables() -> None:
    """The regex parser keeps metric names and drops the rest (else the check above proves
    nothing)."""
    expr = (
        'histogram_quantile(0.95, max by (le, probe) (rate(uuidguard_x_bucket{probe="canary",'
        ' result=~"a|b"}[$__rate_interval]))) / on (job) job:rec:max or on () vector(0)'
    )
    assert _names(expr) == {"uuidguard_x_bucket", "job:rec:max"}


def test_promtool_accepts_the_prometheus_config() -> None:
    """alerts/prometheus.yml (the compose stack's) loads, with the rule file beside it."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs it (Debian package prometheus)"
    r = subprocess.run(
        [promtool, "check", "config", str(ROOT / "alerts" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "uuidguard.rules.yml" in r.stdout + r.stderr
    config = yaml.safe_load((ROOT / "alerts" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "uuidguard"]
    assert job["static_configs"][0]["targets"] == ["uuidguard:9477"]


def test_compose_file_is_valid_and_mounts_what_exists() -> None:
    """docker-compose.yml validates against the Compose Specification; every file or
    directory it mounts or builds from exists; the five services are there."""
    compose = yaml.safe_load(COMPOSE.read_text())
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(compose)
    services = compose["services"]
    assert set(services) == {"postgres", "uuidguard", "prometheus", "alertmanager", "grafana"}
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg17")
    local = []
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                local.append((name, source))
        build_ctx = svc.get("build")
        if build_ctx is not None:
            context = build_ctx if isinstance(build_ctx, str) else build_ctx.get("context", ".")
            local.append((name, context))
            dockerfile = (
                "Dockerfile"
                if isinstance(build_ctx, str)
                else build_ctx.get("dockerfile", "Dockerfile")
            )
            local.append((name, str(Path(context) / dockerfile)))
    assert local
    for name, source in local:
        assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
    # the secrets are never in the file: they come from the environment
    text = COMPOSE.read_text()
    assert not re.search(r"hooks\.slack\.com/services/T\w+/|xox[abp]-\d+-", text)
    assert "SLACK_WEBHOOK_URL" in text and "SLACK_BOT_TOKEN" in text


# -- end to end ------------------------------------------------------------------------------


def _substitute(expr: str, rate: str, window: str) -> str:
    """Grafana's variables as Grafana would expand them for this Prometheus (1 s scrapes)."""
    return (
        expr.replace("$__rate_interval", rate)
        .replace("$__interval", rate)
        .replace("$__range", window)
    )


def _range(prom: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{prom}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": 1},
        timeout=10,
    )
    body = r.json()
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def _instant(prom: str, expr: str) -> list[dict[str, Any]]:
    try:
        r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
        return list(r.json()["data"]["result"])
    except (httpx.HTTPError, ValueError, KeyError):
        return []


def _numbers(result: list[dict[str, Any]]) -> list[float]:
    values = [v for series in result for _, v in series.get("values", [series.get("value")])]
    return [float(v) for v in values if v not in ("NaN", "+Inf", "-Inf")]


def test_every_panel_query_returns_data_from_a_migrating_daemon(
    settings: Settings, tmp_path: Path
) -> None:
    """Real Prometheus (with our rules) scrapes a daemon that runs a migration on a seeded
    database: every query of every panel and annotation returns numbers over the window."""
    engine, _ = _prepare(settings, "none", documents=400)
    run_id = _create(engine, settings)
    assert settings.database.dsn is not None
    s = load_settings(
        None,
        database={"dsn": settings.database.dsn.get_secret_value()},
        probes={
            "interval": "1s",
            "full_sweep_interval": "2s",
            "documents_interval": "1s",
            "canary_interval": "1s",
            "latency_interval": "1s",
            "jitter": "0s",
            "orphan_scan_page": 1000,
        },
        migrate={"start_batch": 10, "max_batch": 10, "pause_between": "1s"},
    )
    with (
        serve_daemon(s, probes.probe_specs(s)) as served,
        prometheus(tmp_path / "prom", [served.url.removeprefix("http://")], [RULES]) as prom,
    ):
        started = time.time()
        # the run is planned while Prometheus watches; then an operator starts it
        wait_until(
            "Prometheus to see the planned run",
            lambda: bool(_instant(prom, 'uuidguard_migration_state{state="planned"} == 1')),
            60,
        )
        with engine.begin() as conn:
            assert runs.set_state(
                conn, s, run_id, "running", "test", "run", allowed_from=("planned",)
            )
        wait_until(
            "batches to be scraped",
            lambda: any(
                float(r["value"][1]) >= 3
                for r in _instant(prom, 'uuidguard_migration_batches_total{state="committed"}')
            ),
            60,
        )
        wait_until(
            "a complete orphan-scan cycle and the sweeps",
            lambda: (
                bool(_instant(prom, 'uuidguard_chunks_orphaned_rolling{cycle="last"}'))
                and bool(_instant(prom, "uuidguard_documents_invisible"))
                and bool(_instant(prom, "uuidguard_integrity_violations"))
            ),
            60,
        )
        time.sleep(3)
        end = time.time()
        window = f"{int(end - started) - 2}s"
        empty = []
        checked = 0
        for d in _dashboards().values():
            for where, expr in _queries(d):
                query = _substitute(expr, "10s", window)
                checked += 1
                if not _numbers(_range(prom, query, started, end)):
                    empty.append((where, query))
    with engine.connect() as conn:
        done = conn.execute(
            sa.text("SELECT count(*) FROM uuidguard.batches WHERE state = 'committed'")
        ).scalar_one()
    assert int(done) >= 3
    assert checked > 60
    assert not empty, "\n".join(f"{w}: {q}" for w, q in empty)
