"""`python -m lab.demo` as a user runs it from a checkout: a real subprocess, its printed URLs, a
fault injected from a second process, Ctrl-C (SIGINT) → exit 0 with no process left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from lab import REPO
from lab.ports import free_port
from lab.stack import Stack

AGENTCTL = [sys.executable, "-m", "agent.cli"]
DEMO = [sys.executable, "-m", "lab.demo"]
LAB_PROCESSES = {"postgres", "haproxy", "prometheus", "prometheus-alertmanager", "mosquitto"}


def agentctl(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTCTL, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def demo_cmd(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m lab.demo ARGS` from the checkout (the lab is not installed)."""
    return subprocess.run(
        [*DEMO, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=REPO
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """XDG_RUNTIME_DIR of our own: the demo's state file cannot meet anyone else's."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    return {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1"}


class Output:
    """The demo's stdout, read by a thread, with a wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


@pytest.fixture
def demo(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    proc = subprocess.Popen(
        [*DEMO, "--dir", str(tmp_path / "demo"), "--port", str(free_port())],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        yield proc, Output(proc)
    finally:
        if proc.poll() is None:  # the test failed before its SIGINT
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status), bytes(response.read())


def postgres_result(agent_url: str) -> dict[str, object]:
    _, body = get(f"{agent_url}/api/v1/results?check=postgres")
    data = json.loads(body)
    result: dict[str, object] = data["results"][0] if "results" in data else data
    return result


def lab_descendants(pid: int) -> dict[int, str]:
    found = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if child.name() in LAB_PROCESSES:
                found[child.pid] = child.name()
        except psutil.NoSuchProcess:
            pass
    return found


def alive(pids: dict[int, str]) -> dict[int, str]:
    out = {}
    for pid, name in pids.items():
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out[pid] = name
        except psutil.NoSuchProcess:
            pass
    return out


def test_demo_runs_injects_a_fault_and_stops_everything(
    demo: tuple[subprocess.Popen[str], Output], env: dict[str, str]
) -> None:
    proc, out = demo
    ready = out.wait_for(r"^ready in ", timeout=40)
    assert "all OK" in ready, out.text

    # Every URL it prints answers.
    urls = re.findall(r"https?://127\.0\.0\.1:\d+[^\s,)]*", out.text)
    agent_url = re.search(r"(http://127\.0\.0\.1:\d+)/metrics", out.text)
    assert agent_url is not None, out.text
    agent = agent_url.group(1)
    for path in ("/metrics", "/api/v1/results"):
        assert f"{agent}{path}" in urls
    prometheus = re.search(r"prometheus\s+(http://127\.0\.0\.1:\d+)(/classic)?/alerts", out.text)
    alertmanager = re.search(r"alertmanager\s+(http://127\.0\.0\.1:\d+)", out.text)
    assert prometheus is not None and alertmanager is not None, out.text
    assert re.search(r"mosquitto_sub -h 127\.0\.0\.1 -p \d+ -t 'mamori/lab/lab-agent/#' -v", out.text)
    assert "python -m lab.demo fault primary-down" in out.text
    for url in urls:
        if url.startswith("https://"):
            continue  # the web lab, TLS with the lab's CA: the agent's checks prove it answers
        try:
            status, _ = get(url)
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status == 200, url
    config = re.search(r"config (\S+\.yml)", out.text)
    assert config is not None
    assert agentctl("validate", config.group(1), env=env).returncode == 0

    # A fault from another process reaches the running demo, and the agent reports it.
    assert postgres_result(agent)["status"] == "OK"
    injected = demo_cmd("fault", "primary-down", env=env)
    assert injected.returncode == 0, injected.stderr
    assert injected.stdout.startswith("primary-down: primary stopped"), injected.stdout
    deadline = time.monotonic() + 10
    while (result := postgres_result(agent))["status"] != "CRITICAL":
        assert time.monotonic() < deadline, result
        time.sleep(0.2)
    assert result["reason"] == "primary_down"
    out.wait_for(r"postgres: OK → CRITICAL \(primary_down\)", timeout=5)

    unknown = demo_cmd("fault", "disk-full", env=env)
    assert unknown.returncode == 3
    assert "unknown fault 'disk-full'" in unknown.stderr and "primary-down" in unknown.stderr

    again = demo_cmd("--port", str(free_port()), env=env)
    assert again.returncode == 1 and "a demo is already running" in again.stderr, again.stderr

    # Ctrl-C: exit 0, and every process it started is gone.
    children = lab_descendants(proc.pid)
    assert set(children.values()) == LAB_PROCESSES, children
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0, out.text
    out.wait_for(r"^Stopped: every process the demo started is gone", timeout=5)
    assert alive(children) == {}

    gone = demo_cmd("fault", "primary-down", env=env)
    assert gone.returncode == 1
    assert gone.stderr.strip() == "lab.demo: no demo is running (start one with `python -m lab.demo`)"


def test_demo_faults_lists_every_fault(env: dict[str, str]) -> None:
    listed = demo_cmd("faults", env=env)
    assert listed.returncode == 0
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert names == list(Stack.FAULTS)


def test_demo_fault_with_a_stale_state_file(env: dict[str, str]) -> None:
    # A demo killed with SIGKILL leaves its state file: its PID is gone, so "no demo running".
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = Path(env["XDG_RUNTIME_DIR"]) / "mamori-demo.json"
    state.write_text(json.dumps({"pid": dead.pid, "host": "127.0.0.1", "port": free_port(), "token": "x"}))
    stale = demo_cmd("fault", "reset", env=env)
    assert stale.returncode == 1
    assert stale.stderr.strip() == "lab.demo: no demo is running (start one with `python -m lab.demo`)"


def test_the_product_cli_has_no_demo(env: dict[str, str]) -> None:
    # The lab is not shipped: the demo runs from a checkout, `python -m lab.demo`.
    gone = agentctl("demo", env=env)
    assert gone.returncode == 2 and "invalid choice: 'demo'" in gone.stderr, gone.stderr
