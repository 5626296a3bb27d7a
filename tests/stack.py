"""Real monitoring parts for end-to-end tests: the daemon served on a free port in a thread,
Debian's `prometheus` and `prometheus-alertmanager` in temp dirs (`make test` installs them).
Every process is stopped by its context manager, on failure too."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from migrator.settings import Settings
from monitor.api import create_app
from monitor.daemon import Daemon
from monitor.probing import ProbeSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Served:
    daemon: Daemon
    url: str


@contextmanager
def serve_daemon(settings: Settings, specs: list[ProbeSpec]) -> Iterator[Served]:
    """The daemon with its scheduler and HTTP server on a free port, in this process."""
    port = free_port()
    daemon = Daemon(settings, specs)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(daemon), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    daemon.start()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until("the daemon's HTTP server", lambda: _answers(f"{url}/healthz"))
        yield Served(daemon, url)
    finally:
        server.should_exit = True
        thread.join(10)
        daemon.shutdown()


@contextmanager
def _process(
    name: str, args: list[str], tmp: Path, ready: str
) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which(name)
    if binary is None:
        pytest.fail(f"{name} is not installed (`make test` installs it)")
    log = (tmp / f"{name}.log").open("w")
    proc = subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(f"{name} to be ready", lambda: proc.poll() is None and _answers(ready))
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@contextmanager
def prometheus(
    tmp: Path,
    targets: list[str],
    rule_files: list[Path] | None = None,
    alertmanager_url: str | None = None,
) -> Iterator[str]:
    """Prometheus scraping `targets` (host:port) every second, evaluating `rule_files` every
    second and sending alerts to `alertmanager_url`; yields its URL."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = tmp / "prometheus.yml"
    rules = "".join(f"  - {p}\n" for p in rule_files or [])
    alerting = ""
    if alertmanager_url is not None:
        host = alertmanager_url.removeprefix("http://")
        alerting = f"alerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['{host}']}}]\n"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        + alerting
        + (f"rule_files:\n{rules}" if rules else "")
        + "scrape_configs:\n"
        "  - job_name: uuidguard\n"
        f"    static_configs: [{{targets: [{', '.join(repr(t) for t in targets)}]}}]\n"
    )
    url = f"http://127.0.0.1:{port}"
    args = [
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with _process("prometheus", args, tmp, f"{url}/-/ready"):
        yield url


@contextmanager
def alertmanager(tmp: Path, config_text: str) -> Iterator[str]:
    """Alertmanager with the given configuration; yields its URL."""
    tmp.mkdir(parents=True, exist_ok=True)
    port, cluster = free_port(), free_port()
    config = tmp / "alertmanager.yml"
    config.write_text(config_text)
    url = f"http://127.0.0.1:{port}"
    args = [
        f"--config.file={config}",
        f"--storage.path={tmp / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--cluster.listen-address=127.0.0.1:{cluster}",
    ]
    with _process("prometheus-alertmanager", args, tmp, f"{url}/-/ready"):
        yield url
