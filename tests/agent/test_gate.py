"""The deploy gate, as CI runs it: `agentctl check --tag app --wait-healthy --timeout …`."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from lab.apps import AppServer


async def start_apps(n: int) -> list[AppServer]:
    apps = [AppServer(f"app-{i}") for i in range(1, n + 1)]
    for app in apps:
        await app.start()
    return apps


def write_config(path: Path, apps: list[AppServer]) -> None:
    lines = ["agent: {interval: 30s, timeout: 2s}", "checks:"]
    for app in apps:
        lines.append(f"  - {{name: {app.name}, type: http, url: '{app.url}/api/health', tags: [app]}}")
    lines.append("  - {name: other, type: tcp, host: 127.0.0.1, port: 1, tags: [db]}")  # not selected
    path.write_text("\n".join(lines) + "\n")


async def gate(config: Path, timeout: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "check", "-c", str(config), "--tag", "app",
        "--wait-healthy", "--timeout", timeout, "--poll", "200ms",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_gate_opens_only_after_the_last_backend_is_up(tmp_path: Path) -> None:
    apps = await start_apps(3)
    try:
        for app in apps:
            await app.down()
        config = tmp_path / "agent.yml"
        write_config(config, apps)
        proc = await gate(config, "30s")
        for app in apps:  # a rolling update: one by one
            await asyncio.sleep(1.0)
            assert proc.returncode is None  # still waiting
            await app.up()
        last_up = time.monotonic()
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        assert time.monotonic() - last_up < 5
        progress = err.decode().splitlines()
        assert (
            "0/3 OK; waiting for app-1 CRITICAL (refused), app-2 CRITICAL (refused), app-3 CRITICAL (refused)"
            in progress[0]
        )
        assert "3/3 OK" in progress[-1]
        assert [line.split()[2] for line in out.decode().splitlines()[1:]] == ["OK", "OK", "OK"]
    finally:
        for app in apps:
            await app.stop()


async def test_gate_fails_with_a_summary_when_a_backend_never_comes_up(tmp_path: Path) -> None:
    apps = await start_apps(2)
    try:
        await apps[1].down()
        config = tmp_path / "agent.yml"
        write_config(config, apps)
        t0 = time.monotonic()
        proc = await gate(config, "3s")
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 2
        assert time.monotonic() - t0 < 3 + 2.5  # the timeout, plus interpreter start-up
        last = err.decode().splitlines()[-1]
        assert last.endswith("gave up after 3s: 1/2 OK; waiting for app-2 CRITICAL (refused)")
        # It gives up when it says it does (it used to stop one poll early: at 8s of 10s).
        assert float(last[1:].split("s]")[0]) >= 3.0
        rows = {line.split()[0]: line.split()[2] for line in out.decode().splitlines()[1:]}
        assert rows == {"app-1": "OK", "app-2": "CRITICAL"}
    finally:
        for app in apps:
            await app.stop()
