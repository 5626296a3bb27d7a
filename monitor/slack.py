"""Slack: one message per alert group, updated in place; what was done, in its thread; and
buttons that act (pause, resume, roll back the last batch, roll back the run).

Every Slack call goes through one background thread with a queue, paced to Slack's one message
per second per channel, retried on rate limits and connection errors by slack-sdk's retry
handlers: Slack being slow or down never blocks or delays a pause or a rollback. A button press
is verified (Slack's request signature, five-minute replay window), honoured only for the
configured users and user groups (others get an ephemeral refusal), acknowledged at once (Slack
wants an answer within three seconds) and done after; every press is audited.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import sqlalchemy as sa
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine

from migrator import journal, runner, runs
from migrator.errors import UuidguardError
from migrator.settings import Settings
from monitor.policy import Notification

log = logging.getLogger("uuidguard.slack")
ACTIONS = {
    "uuidguard_pause": "Pause",
    "uuidguard_resume": "Resume",
    "uuidguard_rollback_last": "Roll back last batch",
    "uuidguard_rollback_run": "Roll back run",
}
GROUPS_CACHE_SECONDS = 300
EMOJI = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}


class Slack:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        mon = settings.monitoring
        self.channel = mon.slack_channel
        self.client: WebClient | None = None
        if mon.slack_token is not None:
            self.client = WebClient(
                token=mon.slack_token.get_secret_value(),
                base_url=mon.slack_base_url,
                timeout=10,
                retry_handlers=[
                    RateLimitErrorRetryHandler(max_retry_count=5),
                    ConnectionErrorRetryHandler(max_retry_count=3),
                ],
            )
        self.verifier = (
            SignatureVerifier(mon.slack_signing_secret.get_secret_value())
            if mon.slack_signing_secret is not None
            else None
        )
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._last_post = 0.0
        self._groups: tuple[float, set[str]] = (0.0, set())
        self.errors = 0

    # -- the sending thread ----------------------------------------------------------------
    def start(self) -> None:
        if self.client is not None and self._thread is None:
            self._thread = threading.Thread(target=self._work, name="uuidguard-slack", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far was sent (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(done.set)
        done.wait(timeout)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except (SlackApiError, OSError, httpx.HTTPError, sa.exc.DBAPIError) as exc:
                self.errors += 1
                log.warning(
                    "slack: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                )

    def _pace(self) -> None:
        wait = self.settings.monitoring.slack_min_interval.total_seconds() - (
            time.monotonic() - self._last_post
        )
        if wait > 0:
            time.sleep(wait)
        self._last_post = time.monotonic()

    # -- alerts ----------------------------------------------------------------------------
    def alert_group(self, note: Notification, decisions: list[dict[str, Any]]) -> None:
        """Post the group's message, or update it in place; say what was done in its thread."""
        if self.client is not None:
            self._queue.put(lambda: self._alert_group(note, decisions))

    def _alert_group(self, note: Notification, decisions: list[dict[str, Any]]) -> None:
        assert self.client is not None
        t = journal.metadata(self.settings.journal_schema).tables[
            f"{self.settings.journal_schema}.slack_messages"
        ]
        with self.engine.connect() as conn, conn.begin():
            known = (
                conn.execute(sa.select(t).where(t.c.group_key == note.groupKey)).mappings().first()
            )
            try:
                run: dict[str, Any] | None = runs.status(conn, self.settings, None)
            except UuidguardError:
                run = None
        fresh = [d for d in decisions if d["decision"] != "duplicate"]
        if known is not None and not fresh and known["status"] == note.status:
            return  # Alertmanager repeating itself: the message already says it
        text, blocks = _message(note, run)
        self._pace()
        if known is None:
            resp = self.client.chat_postMessage(channel=self.channel, text=text, blocks=blocks)
            channel, ts = str(resp["channel"]), str(resp["ts"])
        else:
            channel, ts = known["channel"], known["ts"]
            self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
        with self.engine.connect() as conn, conn.begin():
            conn.execute(
                pg_insert(t)
                .values(group_key=note.groupKey, channel=channel, ts=ts, status=note.status)
                .on_conflict_do_update(
                    index_elements=[t.c.group_key],
                    set_={"status": note.status, "updated_at": sa.func.now()},
                )
            )
        for line in _done_lines(fresh):
            self._pace()
            self.client.chat_postMessage(channel=channel, thread_ts=ts, text=line)

    # -- buttons ---------------------------------------------------------------------------
    def interaction(
        self, body: bytes, timestamp: str | None, signature: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Slack's request to /slack/interactions: (HTTP status, JSON body). Acts later."""
        if self.verifier is None:
            return 403, {"error": "set monitoring.slack_signing_secret to accept Slack requests"}
        if not self.verifier.is_valid(body, timestamp, signature):
            return 401, {"error": "bad or expired Slack signature"}
        try:
            form = parse_qs(body.decode())
            payload = json.loads(form["payload"][0])
        except (KeyError, IndexError, ValueError, UnicodeDecodeError):
            return 400, {"error": "not a block_actions payload"}
        return self.interactive(payload)

    def interactive(self, payload: Any) -> tuple[int, dict[str, Any]]:
        """A verified interactive payload (HTTP above, or Socket Mode)."""
        try:
            user = str(payload["user"]["id"])
            action = payload["actions"][0]
            action_id, run_id = str(action["action_id"]), int(action["value"])
        except (KeyError, IndexError, ValueError, TypeError, UnicodeDecodeError):
            return 400, {"error": "not a block_actions payload"}
        if action_id not in ACTIONS:
            return 400, {"error": f"unknown action {action_id}"}
        response_url = payload.get("response_url")
        where = (payload.get("channel", {}).get("id"), payload.get("message", {}).get("ts"))
        if not self.allowed(user):
            self._audit(run_id, f"slack:{user}", "refused", {"action": action_id})
            if response_url:
                self._queue.put(
                    lambda: self._respond(
                        response_url,
                        f"<@{user}> may not do that here; ask someone on the uuidguard"
                        " responders list.",
                    )
                )
            return 200, {}
        self._queue.put(lambda: self._act(action_id, run_id, user, where, response_url))
        return 200, {}

    def socket_mode(self) -> Any:
        """Socket Mode, for daemons without a public endpoint: Slack's interactive requests
        arrive over a websocket the daemon opens with the app-level token; the same handler
        answers them (the websocket is authenticated, so no request signature)."""
        token = self.settings.monitoring.slack_app_token
        if token is None or self.client is None:
            return None
        from slack_sdk.socket_mode import SocketModeClient
        from slack_sdk.socket_mode.client import BaseSocketModeClient
        from slack_sdk.socket_mode.request import SocketModeRequest
        from slack_sdk.socket_mode.response import SocketModeResponse

        client = SocketModeClient(app_token=token.get_secret_value(), web_client=self.client)

        def listener(c: BaseSocketModeClient, req: SocketModeRequest) -> None:
            if req.type == "interactive":
                c.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
                self.interactive(req.payload)

        client.socket_mode_request_listeners.append(listener)
        client.connect()
        return client

    def allowed(self, user: str) -> bool:
        mon = self.settings.monitoring
        if user in mon.slack_allowed_users:
            return True
        if not mon.slack_allowed_groups or self.client is None:
            return False
        at, members = self._groups
        if time.monotonic() - at > GROUPS_CACHE_SECONDS:
            members = set()
            try:
                for group in mon.slack_allowed_groups:
                    resp = self.client.usergroups_users_list(usergroup=group)
                    users: list[Any] = list(resp.get("users") or [])
                    members.update(str(u) for u in users)
            except SlackApiError as exc:
                log.warning("slack: cannot list user group members: %s", exc)
                return False
            self._groups = (time.monotonic(), members)
        return user in members

    def _act(
        self,
        action_id: str,
        run_id: int,
        user: str,
        where: tuple[str | None, str | None],
        response_url: str | None,
    ) -> None:
        actor = f"slack:{user}"
        try:
            if action_id in ("uuidguard_pause", "uuidguard_resume"):
                pausing = action_id == "uuidguard_pause"
                with self.engine.connect() as conn, conn.begin():
                    moved = runs.set_state(
                        conn,
                        self.settings,
                        run_id,
                        "paused" if pausing else "running",
                        actor,
                        "pause" if pausing else "resume",
                        source="slack",
                        allowed_from=("planned", "running") if pausing else ("paused",),
                    )
                said = (
                    f"<@{user}> {'paused' if pausing else 'resumed'} run {run_id}"
                    if moved
                    else f"run {run_id} was not {'running' if pausing else 'paused'}: nothing done"
                )
            else:
                everything = action_id == "uuidguard_rollback_run"
                n = runner.rollback(
                    self.engine,
                    self.settings,
                    run_id,
                    last=None if everything else 1,
                    everything=everything,
                    force=everything,
                    actor=actor,
                    source="slack",
                    reason=f"rolled back from Slack by {user}",
                )
                said = (
                    f"<@{user}> rolled back {'the whole run' if everything else 'the last batch'}"
                    f" of run {run_id}: {n:,} documents back on their old ids"
                )
        except UuidguardError as exc:
            said = f"{ACTIONS[action_id]} for run {run_id} failed: {exc}"
        channel, ts = where
        if self.client is not None and channel and ts:
            self._pace()
            self.client.chat_postMessage(channel=channel, thread_ts=ts, text=said)
        elif response_url:
            self._respond(response_url, said)

    def _respond(self, url: str, text: str) -> None:
        httpx.post(url, json={"response_type": "ephemeral", "text": text}, timeout=10)

    def _audit(self, run_id: int, actor: str, action: str, detail: dict[str, Any]) -> None:
        with self.engine.connect() as conn, conn.begin():
            journal.audit(
                conn, self.settings.journal_schema, action, run_id, detail, actor, "slack"
            )


def _message(note: Notification, run: dict[str, Any] | None) -> tuple[str, list[dict[str, Any]]]:
    first = note.alerts[0] if note.alerts else None
    name = note.groupLabels.get("alertname") or note.commonLabels.get("alertname", "alert")
    ann = note.commonAnnotations or (first.annotations if first else {})
    summary = ann.get("summary", name)
    text = f"{EMOJI.get(note.status, '')} {name} {note.status}: {summary}".strip()
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{name} — {note.status}"[:150]}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"*{summary}*\n{ann.get('description', '')}"[:3000]},
        },
    ]
    fields = [
        {"type": "mrkdwn", "text": f"*Severity*\n{note.commonLabels.get('severity', '–')}"},
        {"type": "mrkdwn", "text": f"*Alerts*\n{len(note.alerts)}"},
    ]
    if run is not None:
        fields.append(
            {
                "type": "mrkdwn",
                "text": f"*Run {run['run']}*\n{run['state']}, {run['percent']:.1f}% done,"
                f" {run['documents']['pending']:,} left",
            }
        )
    blocks.append({"type": "section", "fields": fields})
    if note.status == "firing" and run is not None and run["state"] in ("running", "paused"):
        blocks.append({"type": "actions", "elements": _buttons(int(run["run"]))})
    runbook = ann.get("runbook_url") or (first.annotations.get("runbook_url") if first else None)
    context = f"<{runbook}|Runbook>" if runbook else "uuidguard"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return text, blocks


def _buttons(run_id: int) -> list[dict[str, Any]]:
    out = []
    for action_id, label in ACTIONS.items():
        button: dict[str, Any] = {
            "type": "button",
            "action_id": action_id,
            "text": {"type": "plain_text", "text": label},
            "value": str(run_id),
        }
        if action_id.startswith("uuidguard_rollback"):
            button["style"] = "danger"
            button["confirm"] = {
                "title": {"type": "plain_text", "text": "Roll back?"},
                "text": {
                    "type": "mrkdwn",
                    "text": f"{label} of run {run_id}: the journal restores the old ids exactly.",
                },
                "confirm": {"type": "plain_text", "text": label},
                "deny": {"type": "plain_text", "text": "Cancel"},
            }
        out.append(button)
    return out


def _done_lines(decisions: list[dict[str, Any]]) -> list[str]:
    lines = []
    for d in decisions:
        decision = d["decision"]
        if decision == "pause":
            lines.append(f"Paused run {d.get('run')} because of {d['alertname']}.")
        elif decision == "rollback":
            lines.append(
                f"Rolling back run {d.get('run')} ({d.get('scope')}) because of {d['alertname']}."
            )
        elif decision.startswith("dry_run:"):
            lines.append(f"Dry run: would {decision.split(':', 1)[1]} run {d.get('run')}.")
        elif decision == "resolved":
            lines.append(f"{d['alertname']} resolved.")
    return lines
