"""alerts/: the Prometheus rules, their unit tests and the Alertmanager configuration, checked
with the real tools (promtool, amtool, Prometheus, Alertmanager) and against docs/metrics.md
and docs/runbooks/.

The rules are read as a real Prometheus loaded them (its /api/v1/rules), so no YAML library is
needed; the promtool test files are read line by line, in the layout they keep (`alertname:`
directly followed by `exp_alerts:`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import stack

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
AM_CONFIG = ALERTS / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RUNBOOK_URL = "https://github.com/uuidguard/uuidguard/blob/main/docs/runbooks/{}.md"
DAEMON_HOOK = "http://uuidguard:9477/hooks/alertmanager"
#: where the configuration expects alerts/ to be mounted (its *_file paths are absolute)
MOUNT = "/etc/alertmanager/"
RUNBOOK_SECTIONS = (
    "## What it means",
    "## What the daemon does by itself",
    "## How to check",
    "## What to do",
    "## Rolling back by hand",
)
#: the scopes monitor/policy.py knows (anything else silently becomes last_batch)
SCOPES = {"last_batch", "recent", "run"}
#: labels Prometheus adds to every scraped series, and the histogram bucket bound
SCRAPE_LABELS = {"job", "instance", "le"}

METRIC = re.compile(r"\buuidguard_[a-z0-9_]+")
RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(uuidguard_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
DOC_ROW = re.compile(r"^\| `(uuidguard_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \|", re.M)
CASE = re.compile(
    r"^\s*alertname:\s*(\S+)[ \t]*\n\s*exp_alerts:[ \t]*(\[\])?[ \t]*\n(\s*- exp_labels:)?", re.M
)
INPUT_SERIES = re.compile(r"^\s*- series:\s*'([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}'", re.M)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (`make test` installs it)")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool(args[0]), *args[1:]], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def _documented() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md: metric name -> (type, label names)."""
    out = {}
    for name, kind, labels in DOC_ROW.findall(METRICS_DOC.read_text()):
        out[name] = (kind, set(re.findall(r"`(\w+)`", labels)))
    assert out, "no metric found in docs/metrics.md"
    return out


def _base_metric(name: str, documented: dict[str, tuple[str, set[str]]]) -> str:
    """A histogram's series (_bucket, _sum, _count) named by the histogram."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and documented.get(base, ("",))[0] == "histogram":
            return base
    return name


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every rule as a real Prometheus loaded it, after a few evaluations (1 s interval)."""
    tmp = tmp_path_factory.mktemp("prometheus")
    with stack.prometheus(tmp, ["127.0.0.1:1"], RULE_FILES) as url:

        def loaded() -> list[dict[str, Any]]:
            groups = httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
            return [r for g in groups for r in g["rules"]]

        stack.wait_until(
            "every rule evaluated", lambda: all(r["lastEvaluation"][:4] != "0001" for r in loaded())
        )
        time.sleep(2)
        return loaded()


@pytest.fixture(scope="module")
def alerts(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = [r for r in rules if r["type"] == "alerting"]
    assert found, "no alerting rule loaded"
    return found


def _alert_names(alerts: list[dict[str, Any]]) -> set[str]:
    return {a["name"] for a in alerts}


def test_rule_files_pass_promtool_check() -> None:
    """`promtool check rules` accepts every rule file."""
    assert RULE_FILES, "no alerts/*.rules.yml"
    proc = _run("promtool", "check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_pass() -> None:
    """Every `promtool test rules` case in alerts/tests/ passes."""
    assert TEST_FILES, "no alerts/tests/*.yml"
    proc = _run("promtool", "test", "rules", *map(str, TEST_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alertmanager_config_passes_amtool_check() -> None:
    """`amtool check-config` accepts the Alertmanager configuration and its templates."""
    proc = _run("amtool", "check-config", str(AM_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 templates" in proc.stdout


def test_every_rule_evaluates_without_error(rules: list[dict[str, Any]]) -> None:
    """Prometheus evaluates every rule without an error (no bad vector matching, no type error)."""
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken


def test_every_alert_has_severity_annotations_and_for(alerts: list[dict[str, Any]]) -> None:
    """Each alert has a severity, a summary, a description that shows the value, its runbook's
    URL and a `for:`."""
    for a in alerts:
        name = a["name"]
        assert name.startswith("Uuidguard"), name
        assert a["labels"].get("severity") in ("critical", "warning"), name
        notes = a["annotations"]
        assert notes.get("summary"), name
        assert "$value" in notes.get("description", ""), name
        assert notes.get("runbook_url") == RUNBOOK_URL.format(name), name
        assert a["duration"] > 0, f"{name} has no for:"


def test_actions_follow_the_policy(alerts: list[dict[str, Any]]) -> None:
    """Only pause and rollback act; a rollback names a scope the policy knows and needs an active
    run; an inconclusive alert (missing or erroring data) never rolls back."""
    actions = {}
    for a in alerts:
        labels, name = a["labels"], a["name"]
        action = labels.get("uuidguard_action")
        assert action in (None, "pause", "rollback"), name
        if action == "rollback":
            assert labels.get("uuidguard_scope") in SCOPES, name
            assert labels.get("uuidguard_inconclusive") != "true", name
            assert "job:uuidguard_migration_active:max == 1" in a["query"], name
        else:
            assert "uuidguard_scope" not in labels, name
        assert labels.get("uuidguard_inconclusive") in (None, "true"), name
        actions[name] = action
    for name in ("UuidguardCanaryErrors", "UuidguardProbeFailing", "UuidguardProbeStale"):
        assert actions[name] != "rollback"
    assert "rollback" in actions.values() and "pause" in actions.values()


def test_expressions_use_only_documented_metrics(rules: list[dict[str, Any]]) -> None:
    """Every uuidguard_ metric and label named in a rule is in docs/metrics.md, and every
    recorded series an expression reads is recorded by a rule."""
    documented = _documented()
    recorded = {r["name"] for r in rules if r["type"] == "recording"}
    for r in rules:
        query = r["query"]
        used = set(RECORDED.findall(query))
        assert used <= recorded, (r["name"], used - recorded)
        bare = RECORDED.sub(" ", query)
        for name in METRIC.findall(bare):
            assert _base_metric(name, documented) in documented, (r["name"], name)
        for name, matchers in SELECTOR.findall(bare):
            labels = set(MATCHER_LABEL.findall(matchers))
            allowed = documented[_base_metric(name, documented)][1] | SCRAPE_LABELS
            assert labels <= allowed, (r["name"], name, labels - allowed)
    for name in recorded:
        assert METRIC.search(name), f"{name}: name a recorded series after its uuidguard_ metric"


def test_unit_test_inputs_are_real_series() -> None:
    """The unit tests feed only documented metrics with their documented labels, so a case
    cannot pass on a series the daemon never exports."""
    documented = _documented()
    seen = 0
    for path in TEST_FILES:
        for name, labels in INPUT_SERIES.findall(path.read_text()):
            seen += 1
            if name == "up":
                continue
            base = _base_metric(name, documented)
            assert base in documented, (path.name, name)
            keys = set(re.findall(r"(\w+)\s*=", labels))
            allowed = documented[base][1] | SCRAPE_LABELS
            assert keys <= allowed, (path.name, name, keys - allowed)
            assert {"job", "instance"} <= keys, (path.name, name)
    assert seen


def test_every_alert_has_a_firing_and_a_silent_case(alerts: list[dict[str, Any]]) -> None:
    """Each alert has at least one unit test case where it fires and one where it does not."""
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        text = path.read_text()
        cases = CASE.findall(text)
        assert len(cases) == len(re.findall(r"^\s*alertname:", text, re.M)), (
            f"{path.name}: write `exp_alerts:` right after `alertname:`"
        )
        for name, empty, item in cases:
            if empty:
                silent.add(name)
            else:
                assert item, f"{path.name}: {name} case with neither [] nor an alert"
                firing.add(name)
    names = _alert_names(alerts)
    assert names - firing == set(), "alerts without a firing case"
    assert names - silent == set(), "alerts without a not-firing case"
    assert (firing | silent) - names == set(), "cases for alerts that do not exist"


def test_every_alert_has_its_runbook(alerts: list[dict[str, Any]]) -> None:
    """docs/runbooks/<Alert>.md exists for each alert with every section, the index links each,
    and no runbook is left for an alert that is gone."""
    names = _alert_names(alerts)
    index = (RUNBOOKS / "README.md").read_text()
    for name in names:
        page = RUNBOOKS / f"{name}.md"
        assert page.is_file(), name
        text = page.read_text()
        assert text.startswith(f"# {name}\n"), name
        for section in RUNBOOK_SECTIONS:
            assert section in text, (name, section)
        assert f"]({name}.md)" in index, name
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == names
    for page in RUNBOOKS.glob("*.md"):
        for target in re.findall(r"\]\(([A-Za-z]+\.md)(?:#[\w-]+)?\)", page.read_text()):
            assert (RUNBOOKS / target).is_file(), (page.name, target)


def _receivers(labels: dict[str, str]) -> list[str]:
    proc = _run(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={AM_CONFIG}",
        *(f"{k}={v}" for k, v in sorted(labels.items())),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().split(",")


DAEMON_DOWN = ("UuidguardDaemonDown", "UuidguardDaemonReplicaDown")


def test_routes_send_everything_to_the_daemon_but_its_own_death(
    alerts: list[dict[str, Any]],
) -> None:
    """Each alert reaches the daemon's webhook (which posts it to Slack once and acts); the
    daemon-down alerts reach Slack straight from Alertmanager, by severity."""
    for a in alerts:
        labels = {"alertname": a["name"], **a["labels"]}
        if a["name"] in DAEMON_DOWN:
            expected = [f"slack-{labels['severity']}"]
        else:
            expected = ["uuidguard-daemon"]
        assert _receivers(labels) == expected, a["name"]


def test_files_the_config_reads_exist() -> None:
    """Every *_file (under the mount point of alerts/) and template the Alertmanager
    configuration names exists in alerts/ (amtool does not check), and the daemon's webhook is
    there with a bearer token from a file."""
    text = AM_CONFIG.read_text()
    files = re.findall(r"^\s*\w+_file:\s*(\S+)\s*$", text, re.M)
    assert files
    for name in files:
        assert name.startswith(MOUNT + "secrets/"), name
        assert (ALERTS / name.removeprefix(MOUNT)).is_file(), name
    templates = re.findall(r"^templates:\s*\n((?:\s+- .+\n)+)", text, re.M)
    assert templates
    for glob in re.findall(r"- (\S+)", templates[0]):
        assert list(ALERTS.glob(glob)), glob
    assert DAEMON_HOOK in text
    assert f"credentials_file: {MOUNT}secrets/webhook_token" in text
    assert (ALERTS / "secrets" / "README.md").is_file()


@pytest.fixture
def alertmanager_dir(tmp_path: Path) -> Path:
    """A copy of alerts/ (configuration, templates, placeholder secrets) standing in for its
    mount point, to start Alertmanager from."""
    target = tmp_path / "alerts"
    shutil.copytree(ALERTS, target, ignore=shutil.ignore_patterns("tests", "*.rules.yml"))
    return target


def _mounted_config(directory: Path) -> str:
    return (directory / "alertmanager.yml").read_text().replace(MOUNT, f"{directory}/")


def _post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    now = datetime.now(UTC).isoformat()
    body = [
        {"labels": labels, "annotations": _annotations(labels), "startsAt": now}
        for labels in alerts
    ]
    httpx.post(f"{url}/api/v2/alerts", json=body, timeout=5).raise_for_status()


def _annotations(labels: dict[str, str]) -> dict[str, str]:
    name = labels["alertname"]
    return {
        "summary": f"summary of {name}",
        "description": f"description of {name}",
        "runbook_url": RUNBOOK_URL.format(name),
    }


def test_inhibitions(alertmanager_dir: Path) -> None:
    """In a real Alertmanager: the daemon down suppresses stale probes, the critical level of an
    alert suppresses its warning level, and other alerts stay active."""
    (alertmanager_dir / "secrets" / "slack_api_url").write_text("http://127.0.0.1:9/\n")
    config = _mounted_config(alertmanager_dir)
    with stack.alertmanager(alertmanager_dir, config) as url:
        job = {"job": "uuidguard"}
        _post_alerts(
            url,
            [
                {"alertname": "UuidguardDaemonDown", "severity": "critical", **job},
                {
                    "alertname": "UuidguardProbeStale",
                    "severity": "warning",
                    "probe": "canary",
                    **job,
                },
                {"alertname": "UuidguardMigrationLockWaitsHigh", "severity": "warning", **job},
                {
                    "alertname": "UuidguardMigrationLockWaitsHigh",
                    "severity": "critical",
                    "uuidguard_action": "pause",
                    **job,
                },
                {
                    "alertname": "UuidguardRagAccessibilityLow",
                    "severity": "warning",
                    "mode": "http",
                    **job,
                },
            ],
        )

        def states() -> dict[tuple[str, str], str]:
            got = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
            return {
                (a["labels"]["alertname"], a["labels"]["severity"]): a["status"]["state"]
                for a in got
            }

        stack.wait_until("five alerts", lambda: len(states()) == 5, timeout=10)
        assert states() == {
            ("UuidguardDaemonDown", "critical"): "active",
            ("UuidguardProbeStale", "warning"): "suppressed",
            ("UuidguardMigrationLockWaitsHigh", "critical"): "active",
            ("UuidguardMigrationLockWaitsHigh", "warning"): "suppressed",
            ("UuidguardRagAccessibilityLow", "warning"): "active",
        }


class _Recorder(BaseHTTPRequestHandler):
    calls: list[tuple[str, dict[str, str], Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.calls.append((self.path, dict(self.headers.items()), json.loads(body or b"null")))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, dict[str, str], Any]]]]:
    """A local HTTP server standing in for Slack's incoming webhook and the daemon's hook."""
    calls: list[tuple[str, dict[str, str], Any]] = []
    handler = type("Recorder", (_Recorder,), {"calls": calls})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()


def test_notifications_reach_the_daemon_or_slack_once(
    alertmanager_dir: Path, recorder: tuple[str, list[tuple[str, dict[str, str], Any]]]
) -> None:
    """In a real Alertmanager: an acting alert reaches the daemon's webhook only (v4 payload,
    bearer token read from its file; the daemon posts it to Slack); the daemon being down
    reaches Slack straight, with its summary and runbook in the message."""
    base, calls = recorder
    secrets = alertmanager_dir / "secrets"
    (secrets / "slack_api_url").write_text(f"{base}/slack\n")
    (secrets / "webhook_token").write_text("test-webhook-token\n")
    config = _mounted_config(alertmanager_dir)
    assert DAEMON_HOOK in config
    config = config.replace(DAEMON_HOOK, f"{base}/hooks/alertmanager")
    with stack.alertmanager(alertmanager_dir, config) as url:
        acting = {
            "alertname": "UuidguardRagAccessibilityDropped",
            "severity": "critical",
            "uuidguard_action": "rollback",
            "uuidguard_scope": "recent",
            "mode": "structural",
            "job": "uuidguard",
        }
        notifying = {
            "alertname": "UuidguardDaemonDown",
            "severity": "critical",
            "job": "uuidguard",
        }
        _post_alerts(url, [acting, notifying])

        def paths() -> list[str]:
            return sorted(path for path, _, _ in calls)

        stack.wait_until(
            "Slack once and the hook once",
            lambda: paths() == ["/hooks/alertmanager", "/slack"],
            timeout=60,
        )
    hooks = [(h, b) for p, h, b in calls if p == "/hooks/alertmanager"]
    headers, payload = hooks[0]
    assert headers["Authorization"] == "Bearer test-webhook-token"
    assert payload["version"] == "4"
    assert payload["receiver"] == "uuidguard-daemon"
    assert [a["labels"]["alertname"] for a in payload["alerts"]] == [acting["alertname"]]
    texts, links = {}, {}
    for path, _, body in calls:
        if path == "/slack":
            attachment = body["attachments"][0]
            assert body["channel"] == "#uuidguard-alerts"
            texts[attachment["title"]] = attachment["text"]
            links[attachment["title"]] = attachment["title_link"]
    title = f"[FIRING:1] {notifying['alertname']} (critical)"
    assert list(texts) == [title]
    assert f"summary of {notifying['alertname']}" in texts[title]
    assert RUNBOOK_URL.format(notifying["alertname"]) in texts[title]
    assert links[title] == RUNBOOK_URL.format(notifying["alertname"])


def test_the_policy_knows_every_shipped_alert(alerts: list[dict[str, Any]]) -> None:
    """monitor/policy.py lets only the shipped alerts act: its list is the rule file's."""
    from monitor.policy import SHIPPED_ALERTS

    assert {a["name"] for a in alerts} == set(SHIPPED_ALERTS)
