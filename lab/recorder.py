"""The stack's loopback notification recorder: where Alertmanager's receivers (PagerDuty, Slack,
the dead-man's switch) and the lab agent's own webhook notifier all send, on 127.0.0.1.

    recorder = Recorder(directory / "notifications.jsonl")
    await recorder.start()          # recorder.base_url: http://127.0.0.1:PORT
    recorder.notifications          # every request, oldest first (also appended to the file)
    await recorder.stop()           # safe twice and before start()
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.ports import HOST

log = logging.getLogger("mamori.lab.recorder")


@dataclass(frozen=True)
class RecordedNotification:
    """One request a receiver got: from Alertmanager (`receiver` pagerduty, slack or
    deadmans-switch) or from the lab agent's own notifier (`receiver` agent); `summary` a one-line
    rendering of what it said (for the agent's: event, rule, severity, summary)."""

    at: float
    receiver: str
    summary: str
    body: Any


class Recorder:
    """Answers Alertmanager like PagerDuty's Events API v2, a Slack webhook and a dead-man's
    switch would (2xx), and records every request."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file
        self.notifications: list[RecordedNotification] = []
        self.listeners: list[Callable[[RecordedNotification], None]] = []
        self.port = 0
        self._runner: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/pagerduty/v2/enqueue", self._pagerduty)
        app.router.add_post("/slack", self._slack)
        app.router.add_post("/deadmans-switch", self._deadman)
        app.router.add_post("/agent-webhook", self._agent_webhook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        await web.TCPSite(runner, HOST, 0).start()
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _record(self, receiver: str, summary: str, body: Any) -> None:
        note = RecordedNotification(time.time(), receiver, summary, body)
        self.notifications.append(note)
        with self.log_file.open("a") as f:
            f.write(
                json.dumps({"at": note.at, "receiver": receiver, "summary": summary, "body": body}) + "\n"
            )
        for listener in self.listeners:
            try:
                listener(note)
            except Exception:  # a listener's bug must not make Alertmanager retry
                log.exception("notification listener failed")

    async def _pagerduty(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        payload = body.get("payload") or {}
        summary = f"{body.get('event_action', '?')}: {payload.get('summary', '')}".strip()
        self._record("pagerduty", summary, body)
        answer = {"status": "success", "message": "Event processed", "dedup_key": body.get("dedup_key")}
        return web.json_response(answer, status=202)

    async def _slack(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        titles = [str(a.get("title", "")) for a in body.get("attachments", [])] or [str(body.get("text", ""))]
        self._record("slack", "; ".join(titles), body)
        return web.Response(text="ok")

    async def _agent_webhook(self, request: Any) -> Any:
        """The lab agent's own notifier (its `alerts:` section), as a generic webhook."""
        from aiohttp import web

        body = await request.json()
        # The rule (`alert`) and its severity: two rules on one fault often share a summary.
        rule = f"{body.get('alert', '?')} ({body.get('severity', '?')})"
        self._record("agent", f"{body.get('event', '?')} {rule}: {body.get('summary', '')}", body)
        return web.Response(text="ok")

    async def _deadman(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.json()
        self._record("deadmans-switch", f"{len(body.get('alerts', []))} alert(s) (Watchdog)", body)
        return web.Response(text="ok")
