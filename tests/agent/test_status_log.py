"""`agentctl run` logs one INFO line per status change, and nothing per run (issue 17, item 2):
a real HTTP target stopped, started, made to echo the check's credentials, and healed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.model import CheckResult, Reason, Status
from agent.statuslog import MAX_DETAIL, StatusLog
from lab.ports import free_port

PASSWORD = "Pa55w0rd-in-url"
TOKEN = "tok3n-in-a-header-9f8e7d"
BASIC = "b3BzOlBhNTV3MHJkLWluLXVybA=="  # base64("ops:" + PASSWORD): what Basic auth sends


class Target:
    """A local HTTP server that can be stopped and started on the same port. In `echo` mode it
    answers with the credentials it was sent in a header the check looks at (a hostile target)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.echo = False
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                said = f"{self.headers.get('X-Api-Key')} {self.headers.get('Authorization')}"
                self.send_header("X-Echo", said if target.echo else "fine")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def write_config(path: Path, listen: int, target: int) -> None:
    path.write_text(
        f"agent: {{listen: '127.0.0.1:{listen}', interval: 0.5s, timeout: 0.4s}}\n"
        "checks:\n"
        "  - name: web\n"
        "    type: http\n"
        f"    url: 'http://ops:{PASSWORD}@127.0.0.1:{target}/health'\n"
        f"    headers: {{X-Api-Key: '{TOKEN}'}}\n"
        "    headers_match: [{name: X-Echo, matches: '^fine$'}]\n"
    )


async def agentctl_run(config: Path, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "run", "-c", str(config), *extra,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def read_until(proc: asyncio.subprocess.Process, lines: list[str], done: Callable[[str], bool]) -> None:
    """Collect stderr lines into `lines` until one satisfies `done` (bounded: 20 s)."""
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while True:
            raw = await proc.stderr.readline()
            assert raw, "the agent exited:\n" + "\n".join(lines)
            lines.append(raw.decode().rstrip("\n"))
            if done(lines[-1]):
                return


async def stop(proc: asyncio.subprocess.Process, lines: list[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    rest = await asyncio.wait_for(proc.stderr.read(), 20)
    lines.extend(rest.decode().splitlines())
    assert await asyncio.wait_for(proc.wait(), 20) == 0


def api_results(port: int) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/results", timeout=5) as resp:
        body = json.loads(resp.read())
    return list(body["results"] if isinstance(body, dict) else body)


async def test_the_log_shows_exactly_the_status_changes_and_no_secret(tmp_path: Path) -> None:
    target = Target()
    target.start()
    listen = free_port()
    config = tmp_path / "agent.yml"
    write_config(config, listen, target.port)
    proc = await agentctl_run(config)
    lines: list[str] = []
    try:
        await read_until(proc, lines, lambda line: "started:" in line)
        assert "started: 1 check (http 1) from" in lines[-1]
        assert "exporters: none; notifiers: none" in lines[-1]
        for _ in range(200):  # the first result (OK: not logged) is in
            try:
                if await asyncio.to_thread(api_results, listen):
                    break
            except OSError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no first result")
        where = f"check web [http http://127.0.0.1:{target.port}/health]: "
        target.stop()
        await read_until(proc, lines, lambda line: "OK -> CRITICAL" in line)
        target.start()
        await read_until(proc, lines, lambda line: "CRITICAL -> OK" in line)
        target.echo = True
        await read_until(proc, lines, lambda line: "OK -> CRITICAL" in line)
        target.echo = False
        await read_until(proc, lines, lambda line: "CRITICAL -> OK" in line)
    finally:
        await stop(proc, lines)
        target.stop()
    changes = [line.split("mamori.status: ", 1)[1] for line in lines if "mamori.status:" in line]
    assert [c.split(": ", 1)[0] + ": " for c in changes] == [where] * 4, changes
    # Refused, or reset when the server went away in the middle of the run.
    assert changes[0].startswith(
        tuple(f"{where}OK -> CRITICAL ({r})" for r in ("refused", "connection_reset"))
    )
    assert changes[1].startswith(where + "CRITICAL -> OK (ok): 200 OK")
    assert changes[2].startswith(where + "OK -> CRITICAL (")
    assert "X-Echo" in changes[2] and "***" in changes[2]
    assert changes[3].startswith(where + "CRITICAL -> OK (ok): 200 OK")
    assert all(" INFO " in line for line in lines if "mamori.status:" in line)
    log = "\n".join(lines)
    for secret in (PASSWORD, TOKEN, BASIC, "Pa55w0rd", "tok3n-in"):
        assert secret not in log
    assert "Traceback" not in log


async def test_json_lines_carry_the_fields_of_a_change_and_a_failing_start_is_said_once(
    tmp_path: Path,
) -> None:
    refused = free_port()  # nothing listens: the check fails from its first run on
    config = tmp_path / "agent.yml"
    write_config(config, free_port(), refused)
    proc = await agentctl_run(config, "--log-format", "json")
    lines: list[str] = []
    try:
        await read_until(proc, lines, lambda line: '"mamori.status"' in line)
    finally:
        await stop(proc, lines)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    changes = [r for r in records if r["logger"] == "mamori.status"]
    assert len(changes) == 1  # it stays CRITICAL: said once, not per run
    change = changes[0]
    assert change["level"] == "info"
    assert change["message"].startswith(
        f"check web [http http://127.0.0.1:{refused}/health]: first result CRITICAL (refused)"
    )
    assert {
        k: change[k] for k in ("check", "check_type", "target", "previous_status", "status", "reason")
    } == {
        "check": "web",
        "check_type": "http",
        "target": f"http://127.0.0.1:{refused}/health",
        "previous_status": None,
        "status": "CRITICAL",
        "reason": "refused",
    }
    assert change["detail"] and PASSWORD not in json.dumps(records)


def test_status_log_says_each_change_once_and_a_removed_check_starts_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def result(check: str, status: Status, message: str = "") -> CheckResult:
        reason = Reason.OK if status is Status.OK else Reason.REFUSED
        return CheckResult(check, "tcp", "db:5432", status, 0.0, 0.0, message=message, reason=reason)

    status_log = StatusLog()
    with caplog.at_level(logging.INFO, logger="mamori.status"):
        status_log.observe(result("a", Status.OK))  # a healthy first result: the start line says it
        status_log.observe(result("b", Status.CRITICAL, "refused\nby db"))
        status_log.observe(result("b", Status.CRITICAL, "refused again"))  # no change: no line
        status_log.observe(result("a", Status.WARNING, "x" * 1000))
        status_log.forget("b")
        status_log.observe(result("b", Status.CRITICAL, "back"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == [
        "check b [tcp db:5432]: first result CRITICAL (refused): refused by db",
        "check a [tcp db:5432]: OK -> WARNING (refused): " + "x" * (MAX_DETAIL - 3) + "...",
    ]
    assert lines[2:] == ["check b [tcp db:5432]: first result CRITICAL (refused): back"]
