"""SIGHUP's reload path in one process: the file is loaded off the event loop, and every failure
to load it (invalid, hostile, or a bug in the loader) is counted and logged in one line while the
previous config keeps running (issue 12, items 4 and 5)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.config import AgentConfig
from agent.runtime import Agent
from lab.ports import free_port


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def agent_yaml(port: int, checks: list[str]) -> str:
    body = "".join(f"  - {{name: {n}, type: tcp, host: 127.0.0.1, port: {free_port()}}}\n" for n in checks)
    return f"agent: {{listen: '127.0.0.1:{port}', interval: 10s, timeout: 1s}}\nchecks:\n{body}"


def failures(agent: Agent) -> float | None:
    return agent.metrics.registry.get_sample_value("mamori_config_reloads_total", {"outcome": "failure"})


async def started(port: int) -> None:
    for _ in range(200):
        try:
            await asyncio.to_thread(get, f"http://127.0.0.1:{port}/healthz")
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("the agent did not start")


async def test_a_slow_load_runs_off_the_event_loop_and_a_loader_bug_is_one_counted_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    path = tmp_path / "agent.yml"
    path.write_text(agent_yaml(port, ["a"]))
    agent = Agent(config.load(path, {}), path, {})
    task = asyncio.create_task(agent.run())
    loading = threading.Event()

    def slow_buggy_load(where: Any, env: Mapping[str, str] | None = None) -> AgentConfig:
        loading.set()
        time.sleep(1.5)  # a slow disk, a huge file: in the loader's thread, not the loop's
        raise RuntimeError("boom\nsecond line")

    try:
        await started(port)
        monkeypatch.setattr(config, "load", slow_buggy_load)
        reload = agent.reload()
        assert reload is not None
        await asyncio.to_thread(loading.wait, 5)
        t0 = time.monotonic()
        assert (await asyncio.to_thread(get, f"http://127.0.0.1:{port}/healthz")).strip() == "ok"
        assert time.monotonic() - t0 < 0.5, "/healthz waited for the loader"
        await reload
        assert failures(agent) == 1
        assert [c.name for c in agent.config.checks] == ["a"]
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage() for r in errors] == [
            "config reload failed (a bug: RuntimeError: boom second line); still running the previous config"
        ]
        assert all(r.exc_info is None for r in errors)
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_hostile_files_fail_the_reload_in_one_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    path = tmp_path / "agent.yml"
    path.write_text(agent_yaml(port, ["a", "b"]))
    agent = Agent(config.load(path, {}), path, {})
    task = asyncio.create_task(agent.run())
    invalid = Path(__file__).parent / "invalid_configs"
    hostile = ["alias_bomb", "alias_recursive_mapping", "deep_nesting", "check_type_list", "empty"]
    try:
        await started(port)
        for n, name in enumerate(hostile, 1):
            caplog.clear()
            path.write_text((invalid / f"{name}.yml").read_text())
            reload = agent.reload()
            assert reload is not None
            await reload
            assert failures(agent) == n
            lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(lines) == 2 and lines[0].startswith("config reload failed;"), (name, lines)
            assert lines[1].startswith(f"  {path}"), lines
            assert [c.name for c in agent.config.checks] == ["a", "b"]
        # A good file after all that is applied.
        path.write_text(agent_yaml(port, ["a", "c"]))
        reload = agent.reload()
        assert reload is not None
        await reload
        assert [c.name for c in agent.config.checks] == ["a", "c"]
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_reloads_are_applied_one_at_a_time_in_order(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "agent.yml"
    path.write_text(agent_yaml(port, ["a"]))
    agent = Agent(config.load(path, {}), path, {})
    task = asyncio.create_task(agent.run())
    try:
        await started(port)
        path.write_text(agent_yaml(port, ["b"]))
        first = agent.reload()
        path.write_text(agent_yaml(port, ["c"]))
        second = agent.reload()
        assert first is not None and second is not None
        await asyncio.gather(first, second)
        assert [c.name for c in agent.config.checks] == ["c"]
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_a_reload_removes_a_check_through_the_pipeline(tmp_path: Path) -> None:
    # The removal is an event in the pipeline (CheckRemoved), not a call from the runtime into
    # the Prometheus store: the check's series, its result and the agent's own series of it go.
    port = free_port()
    path = tmp_path / "agent.yml"
    path.write_text(agent_yaml(port, ["a", "b"]).replace("10s, timeout: 1s", "0.5s, timeout: 0.5s"))
    agent = Agent(config.load(path, {}), path, {})
    task = asyncio.create_task(agent.run())
    try:
        await started(port)
        for _ in range(100):
            if {r.check for r in agent.latest.all()} == {"a", "b"}:
                break
            await asyncio.sleep(0.05)
        assert 'check="b"' in await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
        path.write_text(agent_yaml(port, ["a"]).replace("10s, timeout: 1s", "0.5s, timeout: 0.5s"))
        reload = agent.reload()
        assert reload is not None
        await reload
        assert await agent.fanout.drain(timeout=5)
        assert [r.check for r in agent.latest.all()] == ["a"]
        assert 'check="b"' not in await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
        await asyncio.sleep(0.6)  # a's next run: b stays gone
        assert [r.check for r in agent.latest.all()] == ["a"]
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_a_reload_names_only_what_changed_about_alerting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 17: SIGHUP warned "alerts added or removed" on every reload after one that changed
    # the section, configs without alerts included. Now one line, from the reload that changes
    # it, and none when the file comes back to what the agent runs.
    alerts = f"alerts: {{state_file: '{tmp_path / 'alerts.db'}'}}\n"
    for first, steps in [
        ("", [("a, b", "", []), ("a", alerts, ["added"]), ("a, b", alerts, []), ("a", "", [])]),
        (alerts, [("a", "", ["removed"]), ("a, b", "", []), ("a", alerts, [])]),
    ]:
        port = free_port()
        path = tmp_path / "agent.yml"
        path.write_text(agent_yaml(port, ["a"]) + first)
        agent = Agent(config.load(path, {}), path, {})
        task = asyncio.create_task(agent.run())
        try:
            await started(port)
            for checks, section, said in steps:
                caplog.clear()
                path.write_text(agent_yaml(port, checks.split(", ")) + section)
                with caplog.at_level(logging.INFO, logger="mamori.agent"):
                    done = agent.reload()
                    assert done is not None
                    await done
                lines = [r.getMessage() for r in caplog.records if "alert" in r.getMessage()]
                assert lines == [
                    f"config reload: alerts: {what}; the agent's alerting"
                    f" {'starts' if what == 'added' else 'stops'} after a restart"
                    for what in said
                ], (checks, section)
        finally:
            agent.stop()
            assert await asyncio.wait_for(task, 10) == 0
