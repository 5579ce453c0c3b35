"""The whole agent in one process: endpoint, results, metrics, readiness."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from collections.abc import Awaitable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import config, runtime
from agent.runtime import Agent
from lab.ports import free_port
from lab.wait import wait_until
from tests.conftest import SmallFs


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def aget(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, url)


@pytest.fixture
def port() -> int:
    return free_port()


async def test_agent_serves_results_and_metrics(port: int, tmp_path: Path) -> None:
    cfg = config.parse(
        f"""
agent:
  name: test-agent
  labels: {{site: tokyo, role: app}}
  listen: 127.0.0.1:{port}
  interval: 1s
  timeout: 1s
checks:
  - name: self
    type: http
    url: http://127.0.0.1:{port}/healthz
  - name: closed-port
    type: tcp
    host: 127.0.0.1
    port: {free_port()}
""",
        "test.yml",
        env={},
    )
    agent = Agent(cfg, None)
    task = asyncio.create_task(agent.run())
    base = f"http://127.0.0.1:{port}"

    async def both_ran() -> bool:
        status, body = await aget(f"{base}/api/v1/results")
        return status == 200 and len(json.loads(body)["results"]) == 2

    await wait_until("both checks to run", both_ran)
    assert await aget(f"{base}/healthz") == (200, "ok\n")
    assert await aget(f"{base}/ready") == (200, "ready\n")
    results = {r["check"]: r for r in json.loads((await aget(f"{base}/api/v1/results"))[1])["results"]}
    assert (results["self"]["status"], results["self"]["reason"]) == ("OK", "ok")
    assert (results["closed-port"]["status"], results["closed-port"]["reason"]) == ("CRITICAL", "refused")
    status, one = await aget(f"{base}/api/v1/results?check=self")
    assert status == 200 and json.loads(one)["target"] == f"http://127.0.0.1:{port}/healthz"
    assert (await aget(f"{base}/api/v1/results?check=nope"))[0] == 404

    _, text = await aget(f"{base}/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    self_labels = (("check", "self"), ("target", f"http://127.0.0.1:{port}/healthz"))
    assert samples[("probe_success", self_labels)] == 1
    assert samples[("probe_http_status_code", self_labels)] == 200
    closed = {
        k: v for k, v in samples.items() if k[0] == "probe_success" and ("check", "closed-port") in k[1]
    }
    assert list(closed.values()) == [0]
    info = [k for k in samples if k[0] == "mamori_agent_info"]
    assert dict(info[0][1]) == {"agent": "test-agent", "version": "0.1.0", "site": "tokyo", "role": "app"}
    assert samples[("mamori_checks_configured", ())] == 2
    assert samples[("mamori_check_runs_total", (("check", "self"), ("status", "ok")))] >= 1
    assert samples[("mamori_sink_dropped_total", (("sink", "prometheus"),))] == 0

    agent.stop()
    assert await asyncio.wait_for(task, 10) == 0
    with pytest.raises(OSError):
        get(f"{base}/healthz")


async def test_agent_reports_a_port_in_use_in_one_line(port: int, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        cfg = config.parse(f"agent:\n  listen: 127.0.0.1:{port}\n", "t.yml", env={})
        assert await Agent(cfg, None).run() == 1
    assert any(f"cannot listen on 127.0.0.1:{port}" in r.getMessage() for r in caplog.records)


async def test_ready_and_a_metric_say_durability_is_degraded_while_the_disk_is_full(
    port: int, small_fs: SmallFs
) -> None:
    """Issue 11, item 9: results lost to a full disk are drops with a reason (not sink errors),
    `/ready` answers 503 naming the file, `mamori_durability_degraded{file}` is 1; all of it
    clears when there is space again. Also the alert state file (item 1)."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    alerts, outbox = small_fs.path / "alerts.db", small_fs.path / "outbox.db"
    cfg = config.parse(
        f"""
agent: {{listen: "127.0.0.1:{port}", shutdown_timeout: 3s}}
checks:
  - {{name: app, type: tcp, host: 127.0.0.1, port: {target}, interval: 200ms, timeout: 200ms}}
outbox: {{path: {outbox}}}
exporters:
  - {{name: bus, type: mqtt, host: 127.0.0.1, port: {free_port()}}}
notifiers:
  - {{name: hook, type: webhook, url: "http://127.0.0.1:{free_port()}/hook"}}
alerts:
  state_file: {alerts}
  rules: [{{name: down, check: "*", status: critical}}]
  routes: {{critical: [hook]}}
  group_wait: 0s
""",
        "test.yml",
        env={},
    )
    agent = Agent(cfg, None)
    task = asyncio.create_task(agent.run())
    base = f"http://127.0.0.1:{port}"

    async def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = (await aget(f"{base}/metrics"))[1]
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def degraded(path: Path) -> tuple[str, tuple[tuple[str, str], ...]]:
        return ("mamori_durability_degraded", (("file", str(path)),))

    disk_full = ("mamori_outbox_dropped_total", (("reason", "disk_full"), ("sink", "bus")))
    try:
        await wait_until(
            "/ready to answer 200",
            lambda: _is(aget(f"{base}/ready"), (200, "ready\n")),
        )
        before = await samples()
        assert before[degraded(alerts)] == before[degraded(outbox)] == 0
        small_fs.fill()
        expected = (
            503,
            f"not ready: durability degraded: cannot write the outbox {outbox}: database or disk is full\n",
        )
        await wait_until("/ready to answer as expected", lambda: _is(aget(f"{base}/ready"), expected))
        server.close()  # the check fails: its alert cannot be stored either
        await server.wait_closed()
        expected = (
            503,
            f"not ready: durability degraded: cannot write the alert state file {alerts}: "
            "database or disk is full\n",
        )
        await wait_until("/ready to answer as expected", lambda: _is(aget(f"{base}/ready"), expected))
        during = await samples()
        assert during[degraded(alerts)] == during[degraded(outbox)] == 1
        assert during[disk_full] >= 1
        assert during[("mamori_sink_errors_total", (("sink", "outbox"),))] == 0
        assert during[("mamori_sink_errors_total", (("sink", "alerts"),))] == 0
        assert during[("mamori_alert_outbox_depth", (("route", "hook"),))] == 1  # kept in memory

        small_fs.free()
        await wait_until(
            "/ready to answer 200",
            lambda: _is(aget(f"{base}/ready"), (200, "ready\n")),
        )
        after = await samples()
        assert after[degraded(alerts)] == after[degraded(outbox)] == 0
        assert after[disk_full] == during[disk_full] or after[disk_full] > during[disk_full]
        assert after[("mamori_outbox_bytes", ())] > 0  # new results stored again
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 10) == 0
        server.close()
    store = sqlite3.connect(alerts)  # the trigger made during the spell was stored once there was space
    assert store.execute("SELECT count(*) FROM outbox WHERE route = 'hook'").fetchone()[0] == 1
    store.close()


async def _is(answer: Awaitable[tuple[int, str]], expected: tuple[int, str]) -> bool:
    return await answer == expected


@pytest.mark.parametrize("freeze", [True, False])
async def test_only_the_agents_own_process_freezes_what_it_started_with(
    port: int, freeze: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`agentctl run` moves what the agent started with out of the cyclic collector's reach
    (issue 16: a full collection walked 10 000 checks' objects); an agent inside another
    process (a test) must not freeze that process's objects."""
    import gc

    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    thresholds: list[tuple[int, ...]] = []
    monkeypatch.setattr(gc, "set_threshold", lambda *t: thresholds.append(t))
    cfg = config.parse(f"agent: {{name: a, listen: '127.0.0.1:{port}'}}\n", "test.yml", env={})
    agent = Agent(cfg, None, freeze_gc=freeze)
    task = asyncio.create_task(agent.run())
    await wait_until("the agent to listen", lambda: aget(f"http://127.0.0.1:{port}/healthz"))
    agent.stop()
    assert await task == 0
    assert frozen == ([True] if freeze else [])
    # ... and makes full collections rare (they walked every live result: the p99 lateness);
    # young collections keep their thresholds.
    young = gc.get_threshold()[:2]
    assert thresholds == ([(*young, runtime.FULL_GC_AFTER_YOUNG)] if freeze else [])
    assert runtime.FULL_GC_AFTER_YOUNG > 10


async def test_the_collector_runs_young_often_middle_sometimes_and_full_rarely(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`agentctl run` collects on its own schedule (CPython's allocation count cannot see the
    churn of results): generation 0 each tick, 1 every GC_MIDDLE_EVERY ticks, 2 every
    GC_FULL_EVERY."""
    import gc

    collected: list[int] = []
    ticks = 2 * runtime.GC_FULL_EVERY
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        assert seconds == runtime.GC_YOUNG_EVERY
        if len(collected) == ticks:
            raise asyncio.CancelledError
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)

    def collect(generation: int = 2) -> int:
        collected.append(generation)
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    with pytest.raises(asyncio.CancelledError):
        await runtime.collect_garbage()
    assert len(collected) == ticks
    assert collected.count(2) == 2 and collected[runtime.GC_FULL_EVERY - 1] == 2
    assert collected.count(1) == ticks // runtime.GC_MIDDLE_EVERY - 2
    assert collected[: runtime.GC_MIDDLE_EVERY] == [0] * (runtime.GC_MIDDLE_EVERY - 1) + [1]
    assert runtime.GC_YOUNG_EVERY * runtime.GC_FULL_EVERY >= 60  # full ones minutes apart
