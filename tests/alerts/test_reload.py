"""SIGHUP with changed `alerts:`/`notifiers:`: the agent's own alerting restarts on the new rules
between two results, keeping its state — a firing alert is not paged again, a new rule pages, the
incident of a removed rule is resolved, and a new config that cannot be used leaves the previous
alerting running (and a later good one is applied)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent import config
from agent.runtime import Agent
from lab.ports import free_port
from lab.wait import wait_until
from tests.conftest import SmallFs


@asynccontextmanager
async def recorder() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on 127.0.0.1: (url, every JSON body received)."""
    bodies: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", bodies
    finally:
        await runner.cleanup()


def agent_yaml(port: int, url: str, state: Path, rules: str) -> str:
    return f"""
agent: {{name: reloader, listen: "127.0.0.1:{port}", interval: 0.2s, timeout: 0.2s}}
checks:
  - {{name: closed, type: tcp, host: 127.0.0.1, port: {free_port()}, interval: 0.2s, timeout: 0.2s}}
notifiers:
  - {{name: hook, type: webhook, url: "{url}"}}
alerts:
  state_file: {state}
  group_wait: 0s
  rules:
{rules}
  routes: {{critical: [hook], warning: [hook]}}
"""


RULE_DOWN = "    - {name: down, check: closed, status: critical, severity: critical}\n"
RULE_WARN = "    - {name: also, check: closed, status: critical, severity: warning}\n"
RULE_THIRD = "    - {name: third, check: closed, status: critical, severity: critical}\n"


def events(bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(b["alert"], b["event"]) for b in bodies]


async def test_reload_restarts_alerting_with_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    path = tmp_path / "agent.yml"
    async with recorder() as (url, bodies):
        # The port in the check is picked once: keep the same check across reloads.
        text = agent_yaml(port, url, tmp_path / "alerts.db", RULE_DOWN)
        path.write_text(text)
        agent = Agent(config.load(path, {}), path, {})
        task = asyncio.create_task(agent.run())
        try:
            await wait_until("the first page", lambda: events(bodies) == [("down", "trigger")])

            # A second rule: it pages; the first, still firing, is not paged again.
            path.write_text(text.replace(RULE_DOWN, RULE_DOWN + RULE_WARN))
            agent.reload()
            await wait_until("the new rule's page", lambda: ("also", "trigger") in events(bodies))
            await asyncio.sleep(0.6)  # three more runs of the check
            assert events(bodies) == [("down", "trigger"), ("also", "trigger")]

            # A new config whose state file cannot be opened: alerting stays on the previous one.
            (tmp_path / "file").write_text("")
            bad = text.replace(str(tmp_path / "alerts.db"), str(tmp_path / "file" / "alerts.db"))
            path.write_text(bad.replace(RULE_DOWN, RULE_DOWN + RULE_WARN))
            agent.reload()
            await wait_until("the fallback", lambda: "alerting kept on the previous config" in caplog.text)
            assert "cannot create the directory of the alert state file" in caplog.text
            await asyncio.sleep(0.6)
            assert events(bodies) == [("down", "trigger"), ("also", "trigger")]
            # ... and its metrics are still served (a rebuilt sink starts its counters at 0).
            assert (
                agent.metrics.registry.get_sample_value(
                    "mamori_alert_notifications_total", {"route": "hook", "outcome": "delivered"}
                )
                is not None
            )

            # A good config again, with "also" gone and a third rule: the third pages, the
            # incident of the removed rule is closed once, "down" is not paged again.
            path.write_text(text.replace(RULE_DOWN, RULE_DOWN + RULE_THIRD))
            agent.reload()
            await wait_until("the third rule's page", lambda: ("third", "trigger") in events(bodies))
            await wait_until("the removed rule's resolve", lambda: ("also", "resolve") in events(bodies))
            await asyncio.sleep(0.6)
            assert sorted(events(bodies)) == [
                ("also", "resolve"),
                ("also", "trigger"),
                ("down", "trigger"),
                ("third", "trigger"),
            ]
        finally:
            agent.stop()
            assert await asyncio.wait_for(task, 10) == 0


async def test_reload_while_the_state_file_cannot_be_written_keeps_alerting_running(
    tmp_path: Path, small_fs: SmallFs, caplog: pytest.LogCaptureFixture
) -> None:
    """A SIGHUP while the disk under alerts.db is full must not close alerting (what waits in
    memory would be lost, and the file could not be opened again): it is kept as it runs, pages
    what waited once there is space, and a SIGHUP after that applies the new rules."""
    port = free_port()
    path = tmp_path / "agent.yml"
    async with recorder() as (url, bodies):
        text = agent_yaml(port, url, small_fs.path / "alerts.db", RULE_DOWN)
        path.write_text(text)
        agent = Agent(config.load(path, {}), path, {})
        task = asyncio.create_task(agent.run())
        try:
            await wait_until("the first page", lambda: events(bodies) == [("down", "trigger")])
            small_fs.fill()
            await wait_until("the state file failing", lambda: agent.state_files["alerts"].degraded)
            path.write_text(text.replace(RULE_DOWN, RULE_DOWN + RULE_WARN))
            agent.reload()
            await wait_until(
                "the reload kept", lambda: "cannot be written now; send SIGHUP again" in caplog.text
            )
            await asyncio.sleep(0.6)
            assert events(bodies) == [("down", "trigger")]
            small_fs.free()
            await wait_until("writable again", lambda: not agent.state_files["alerts"].degraded)
            agent.reload()
            await wait_until("the new rule's page", lambda: ("also", "trigger") in events(bodies))
            assert events(bodies) == [("down", "trigger"), ("also", "trigger")]
        finally:
            agent.stop()
            assert await asyncio.wait_for(task, 10) == 0
