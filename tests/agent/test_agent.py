"""The whole agent in one process: endpoint, results, metrics, readiness."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import config
from agent.runtime import Agent
from tests.conftest import free_port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def aget(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, url)


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Poll `predicate`; a refused connection (the agent not listening yet) counts as not yet."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if await predicate():
                return
        except OSError:  # urllib's URLError included
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


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

    await wait_for(both_ran)
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
