"""The one stand-in of the test suite: a local HTTP server speaking the few Slack Web API
methods uuidguard calls, behind slack-sdk's `base_url`. It checks the bearer token and
records every call, so tests assert on what Slack would have received."""

from __future__ import annotations

import json
import threading
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


@contextmanager
def fake_slack(token: str = TOKEN) -> Iterator[FakeSlack]:
    state: FakeSlack

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if self.headers.get("Content-Type", "").startswith("application/json"):
                body: dict[str, Any] = json.loads(raw or "{}")
            else:
                body = {k: v[0] for k, v in parse_qs(raw).items()}
            method = self.path.rsplit("/", 1)[-1]
            state.calls.append((method, body))
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                self._send({"ok": False, "error": "invalid_auth"})
            elif method == "auth.test":
                self._send({"ok": True, "user": "uuidguard", "team": "test", "user_id": "U1"})
            else:
                self._send({"ok": False, "error": "unknown_method"})

        def _send(self, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
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
