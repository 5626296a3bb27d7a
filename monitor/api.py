"""The daemon's HTTP face (starlette): metrics, health, status, and migration control.

/metrics reads the in-memory store only. The control endpoints need the configured bearer
token (compared in constant time: 401 without a token, 403 with a wrong one, 403 when none
is configured), bodies are capped, and every call is audited with its source address.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from migrator import db, runner, runs
from migrator.errors import UuidguardError
from monitor import policy
from monitor.daemon import Daemon
from monitor.metrics import registry

MAX_BODY = 64 * 1024
VERSION = "0.1.0"


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: str = Field("last", pattern="^(last|since|all)$")
    last: int = Field(1, ge=1, le=100_000)
    since: datetime | None = None
    force: bool = False


class BodyLimit:
    """413 for a declared or streamed body larger than MAX_BODY."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and int(declared or 0) > MAX_BODY:
            await JSONResponse({"error": "body too large"}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await JSONResponse({"error": "body too large"}, status_code=413)(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(daemon: Daemon) -> ASGIApp:
    reg = registry(daemon.store, VERSION)
    settings = daemon.settings
    token = settings.serve.api_token

    rendered: dict[str, Any] = {"key": None, "body": b"", "until": 0.0}

    def exposition() -> bytes:
        # rendered again only when the store changed (a probe reported, leadership moved) or
        # a value went stale: any number of scrapes in between cost one rendering. The key is
        # read before rendering, so a change during it renders again at the next scrape.
        now = time.time()
        key = (daemon.store.version, daemon.store.leader)
        if rendered["key"] != key or now >= rendered["until"]:
            rendered["until"] = daemon.store.stale_at(now)
            rendered["body"], rendered["key"] = generate_latest(reg), key
        body: bytes = rendered["body"]
        return body

    async def metrics(_: Request) -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(_: Request) -> Response:
        checks = {
            "database": daemon.database_ok,
            "scheduler": daemon.running,
            "journal_current": daemon.journal_ok,
        }
        return JSONResponse(
            {"ready": all(checks.values()), **checks},
            status_code=200 if all(checks.values()) else 503,
        )

    async def status(_: Request) -> Response:
        return Response(json.dumps(daemon.status(), default=str), media_type="application/json")

    def authorized(
        request: Request, secret: SecretStr | None, key: str = "serve.api_token"
    ) -> Response | None:
        """401 without a bearer token, 403 with a wrong one or when `key` is not configured."""
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            return JSONResponse(
                {"error": "bearer token required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if secret is None or not secret.get_secret_value():
            return JSONResponse({"error": f"this endpoint is disabled: set {key}"}, status_code=403)
        given = header[7:].strip().encode()
        if not hmac.compare_digest(given, secret.get_secret_value().encode()):
            return JSONResponse({"error": "wrong token"}, status_code=403)
        return None

    async def alertmanager(request: Request) -> Response:
        """Alertmanager's webhook (payload version 4): the policy decides, idempotently."""
        refused = authorized(request, settings.serve.webhook_token, "serve.webhook_token")
        if refused is not None:
            return refused
        raw = await request.body()
        try:
            note = policy.Notification.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(x) for x in first["loc"])
            return JSONResponse(
                {"error": f"not an Alertmanager v4 payload: {where}: {first['msg']}"},
                status_code=422,
            )
        decisions = await run_in_threadpool(policy.handle, daemon.engine, settings, note)
        # the message goes out from Slack's own thread: a slow Slack never delays this answer
        daemon.slack.alert_group(note, decisions)
        return JSONResponse({"decisions": decisions})

    async def slack_interactions(request: Request) -> Response:
        body = await request.body()
        status, answer = await run_in_threadpool(
            daemon.slack.interaction,
            body,
            request.headers.get("x-slack-request-timestamp"),
            request.headers.get("x-slack-signature"),
        )
        return JSONResponse(answer, status_code=status)

    def control(
        action: Callable[[Request, int, str, dict[str, Any]], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            refused = authorized(request, token)
            if refused is not None:
                return refused
            raw = await request.body()
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                return JSONResponse({"error": "body is not JSON"}, status_code=400)
            if not isinstance(body, dict):
                return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
            actor = f"api:{request.client.host if request.client else 'unknown'}"
            try:
                run_id = await run_in_threadpool(_active_or_latest, daemon)
                return await action(request, run_id, actor, body)
            except UuidguardError as exc:
                return JSONResponse({"error": str(exc)}, status_code=409)

        return endpoint

    async def pause(_: Request, run_id: int, actor: str, body: dict[str, Any]) -> Response:
        moved = await run_in_threadpool(
            _set_state, daemon, run_id, "paused", actor, "pause", ("planned", "running")
        )
        return JSONResponse({"run": run_id, "paused": moved}, status_code=200 if moved else 409)

    async def resume(_: Request, run_id: int, actor: str, body: dict[str, Any]) -> Response:
        moved = await run_in_threadpool(
            _set_state, daemon, run_id, "running", actor, "resume", ("paused",)
        )
        return JSONResponse({"run": run_id, "resumed": moved}, status_code=200 if moved else 409)

    async def rollback(_: Request, run_id: int, actor: str, body: dict[str, Any]) -> Response:
        try:
            req = RollbackRequest.model_validate(body)
        except ValidationError as exc:
            return JSONResponse({"error": exc.errors(include_url=False)[0]["msg"]}, status_code=422)
        kwargs: dict[str, Any] = {"force": req.force, "actor": actor}
        if req.scope == "all":
            kwargs["everything"] = True
        elif req.scope == "since":
            if req.since is None:
                return JSONResponse({"error": "scope since needs since"}, status_code=422)
            kwargs["since"] = req.since
        else:
            kwargs["last"] = req.last

        def work() -> None:
            try:
                runner.rollback(daemon.engine, settings, run_id, source="api", **kwargs)
            except UuidguardError as exc:
                daemon.last_error = str(exc)

        # a rollback can take minutes: accept now, do it in the background, audit says when
        threading.Thread(target=work, name="uuidguard-rollback", daemon=True).start()
        return JSONResponse(
            {"run": run_id, "rollback": req.scope, "accepted": True}, status_code=202
        )

    routes = [
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/api/v1/status", status),
        Route("/api/v1/migration/pause", control(pause), methods=["POST"]),
        Route("/api/v1/migration/resume", control(resume), methods=["POST"]),
        Route("/api/v1/migration/rollback", control(rollback), methods=["POST"]),
        Route("/hooks/alertmanager", alertmanager, methods=["POST"]),
        Route("/slack/interactions", slack_interactions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(BodyLimit)])
    headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        """GET /metrics straight from the cache, past routing and middleware: a scrape is
        two ASGI messages (what lets fifty scrapers at once stay in the milliseconds)."""
        if scope["type"] == "http" and scope["path"] == "/metrics" and scope["method"] == "GET":
            body = exposition()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return asgi


def _active_or_latest(daemon: Daemon) -> int:
    with db.connect(daemon.engine) as conn, conn.begin():
        return int(runs.resolve(conn, daemon.settings, None)["id"])


def _set_state(
    daemon: Daemon, run_id: int, state: str, actor: str, action: str, allowed: tuple[str, ...]
) -> bool:
    with db.connect(daemon.engine) as conn, conn.begin():
        return runs.set_state(
            conn, daemon.settings, run_id, state, actor, action, source="api", allowed_from=allowed
        )
