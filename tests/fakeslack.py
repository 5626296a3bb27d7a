"""The one stand-in of the test suite: a local HTTP server speaking the few Slack Web API
methods uuidguard calls (auth.test, chat.postMessage, chat.update, usergroups.users.list) and
answering response_url posts, behind slack-sdk's `base_url`. It checks the bearer token,
records every call, and can answer the next calls with HTTP 429 to exercise retries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

TOKEN = "xoxb-test-token"


@dataclass
class FakeSlack:
    base_url: str
    token: str = TOKEN
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    rate_limit_next: int = 0
    _ts: int = 0

    @property
    def response_url(self) -> str:
        return self.base_url.replace("/api/", "/response/") + "r1"

    def messages(self, method: str = "chat.postMessage") -> list[dict[str, Any]]:
        return [body for m, body in self.calls if m == method]

    def wait_for(self, method: str, n: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.messages(method)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"Slack got {len(self.messages(method))} {method}, wanted {n}")
            time.sleep(0.05)
        return self.messages(method)


@contextmanager
def fake_slack(token: str = TOKEN) -> Iterator[FakeSlack]:
    state: FakeSlack
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                body: dict[str, Any] = json.loads(raw or "{}")
            else:
                body = {k: v[0] for k, v in parse_qs(raw).items()}
            for key in ("blocks",):
                if isinstance(body.get(key), str):
                    body[key] = json.loads(body[key])
            if self.path.startswith("/response/"):
                state.responses.append(body)
                self._send({"ok": True})
                return
            method = self.path.rsplit("/", 1)[-1]
            with lock:
                if state.rate_limit_next > 0:
                    state.rate_limit_next -= 1
                    state.calls.append((f"429:{method}", body))
                    self._send({"ok": False, "error": "ratelimited"}, 429, {"Retry-After": "1"})
                    return
                state.calls.append((method, body))
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                self._send({"ok": False, "error": "invalid_auth"})
            elif method == "auth.test":
                self._send({"ok": True, "user": "uuidguard", "team": "test", "user_id": "U1"})
            elif method == "chat.postMessage":
                with lock:
                    state._ts += 1
                    ts = f"1700000000.{state._ts:06d}"
                self._send({"ok": True, "channel": "C1", "ts": ts, "message": {"ts": ts}})
            elif method == "chat.update":
                self._send({"ok": True, "channel": body.get("channel"), "ts": body.get("ts")})
            elif method == "usergroups.users.list":
                users = state.groups.get(str(body.get("usergroup")), [])
                self._send({"ok": True, "users": users})
            else:
                self._send({"ok": False, "error": "unknown_method"})

        def _send(
            self, payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = FakeSlack(f"http://127.0.0.1:{server.server_address[1]}/api/", token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
