"""`agentctl run` as a real process: SIGHUP with good and bad configs, SIGTERM, SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.ports import free_port
from lab.wait import wait_until_sync


def results(port: int) -> dict[str, dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/results", timeout=5) as resp:
        return {r["check"]: r for r in json.loads(resp.read())["results"]}


def config_text(port: int, checks: list[str]) -> str:
    body = "".join(
        f"  - {{name: {name}, type: tcp, host: 127.0.0.1, port: {port}, interval: 500ms, timeout: 500ms}}\n"
        for name in checks
    )
    return f"agent:\n  listen: 127.0.0.1:{port}\n  shutdown_timeout: 5s\nchecks:\n{body}"


class Running:
    def __init__(self, proc: subprocess.Popen[str], port: int, path: Path) -> None:
        self.proc, self.port, self.path = proc, port, path

    def log(self) -> str:
        self.proc.terminate()
        return self.proc.communicate(timeout=10)[1]


@pytest.fixture
def agent_proc(tmp_path: Path) -> Iterator[Running]:
    port = free_port()
    path = tmp_path / "agent.yml"
    path.write_text(config_text(port, ["a", "b"]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    running = Running(proc, port, path)
    try:
        wait_until_sync("results of a and b", lambda: set(results(port)) == {"a", "b"}, 15)
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_sighup_with_a_good_config_applies_it_and_keeps_unchanged_checks(agent_proc: Running) -> None:
    port = agent_proc.port
    agent_proc.path.write_text(config_text(port, ["a", "c"]))
    agent_proc.proc.send_signal(signal.SIGHUP)
    wait_until_sync("results of a and c", lambda: set(results(port)) == {"a", "c"}, 15)
    # `a` kept its schedule: its runs stay 500 ms apart across the reload.
    first = results(port)["a"]["started_at"]
    wait_until_sync("a new run of a", lambda: results(port)["a"]["started_at"] != first, 15)
    gap = float(results(port)["a"]["started_at"]) - float(first)  # type: ignore[arg-type]
    assert 0.4 < gap < 0.6
    log = agent_proc.log()
    assert "config reloaded: 1 added, 0 changed, 1 removed, 1 unchanged" in log


def test_sighup_with_a_bad_config_keeps_the_old_one(agent_proc: Running) -> None:
    port = agent_proc.port
    agent_proc.path.write_text("checks:\n  - name: a\n    type: tcp\n    port: nope\n")
    agent_proc.proc.send_signal(signal.SIGHUP)
    time.sleep(1.2)
    assert agent_proc.proc.poll() is None
    assert set(results(port)) == {"a", "b"}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert 'mamori_config_reloads_total{outcome="failure"} 1.0' in metrics
    log = agent_proc.log()
    assert "config reload failed; still running the previous config:" in log
    assert f"{agent_proc.path}:4: checks[0].port: Input should be a valid integer" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_cleanly(agent_proc: Running, sig: signal.Signals) -> None:
    t0 = time.monotonic()
    agent_proc.proc.send_signal(sig)
    _, err = agent_proc.proc.communicate(timeout=15)
    assert agent_proc.proc.returncode == 0
    assert time.monotonic() - t0 < 5
    assert "stopped" in err and "Traceback" not in err


def test_sighup_with_a_fifo_as_a_secret_file_keeps_the_agent_answering(
    agent_proc: Running, tmp_path: Path
) -> None:
    """Reading the FIFO used to block the event loop for ever: /healthz and every check froze."""
    port = agent_proc.port
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    agent_proc.path.write_text(
        config_text(port, ["a"])
        + f"  - name: api\n    type: http\n    url: http://127.0.0.1:{port}/healthz\n"
        + f"    bearer_token_file: {fifo}\n"
    )
    agent_proc.proc.send_signal(signal.SIGHUP)
    time.sleep(1.2)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
        assert resp.status == 200
    assert set(results(port)) == {"a", "b"}
    log = agent_proc.log()
    assert (
        f"{agent_proc.path}:9: checks[1].bearer_token_file: cannot read {fifo}: a FIFO, not a regular file"
        in log
    ), log
    assert "Traceback" not in log


def test_sighup_with_an_alias_bomb_keeps_the_agent_answering(agent_proc: Running) -> None:
    """Issue 12, item 4: a "billion laughs" file sent by SIGHUP once wedged the agent (/healthz
    dead, gigabytes of log). Now it is one counted failure, and the previous config runs on."""
    port = agent_proc.port
    bomb = Path(__file__).parent / "invalid_configs" / "alias_bomb.yml"
    agent_proc.path.write_text(bomb.read_text())
    agent_proc.proc.send_signal(signal.SIGHUP)
    for _ in range(10):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            assert resp.read().strip() == b"ok"
        time.sleep(0.05)

    def failed() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return 'mamori_config_reloads_total{outcome="failure"} 1.0' in resp.read().decode()

    wait_until_sync("the failed reload", failed, 15)
    first = results(port)["a"]["started_at"]
    wait_until_sync(
        "a new run of a", lambda: results(port)["a"]["started_at"] != first, 15
    )  # the old checks still run
    assert set(results(port)) == {"a", "b"}
    log = agent_proc.log()
    assert f"{agent_proc.path}:6: x-e: the document expands to more than 100000 nodes (YAML aliases)" in log
    assert "Traceback" not in log
    assert len(log) < 10_000
