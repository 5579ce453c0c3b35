"""A Retry-After survives kill -9 (issue 11, item 5): a real `agentctl run` is throttled by the
strict OTLP receiver and Slack fakes (429, Retry-After), killed with SIGKILL inside the window and
started again at once; neither service may hear from it again before the window ends.

Before, the exporter's deadline lived only in memory: the restarted agent pushed within ~2 s.
The notifier's lived in its outbox row already; this keeps both so."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab.ports import free_port
from tests.fakes.http_faults import FakeHttpService
from tests.fakes.otlp_receiver import otlp_receiver
from tests.fakes.slack import fake_slack

RETRY_AFTER = 8.0


def config_text(tmp_path: Path, otlp: str, slack: str) -> str:
    return f"""
agent: {{listen: "127.0.0.1:{free_port()}", shutdown_timeout: 2s}}
checks:
  - {{name: web, type: tcp, host: 127.0.0.1, port: {free_port()}, interval: 500ms, timeout: 300ms}}
outbox: {{path: {tmp_path / "outbox.db"}}}
exporters:
  - {{name: otel, type: otel, endpoint: "{otlp}", timeout: 1s}}
notifiers:
  - {{name: chat, type: slack, webhook_url: "{slack}"}}
alerts:
  state_file: {tmp_path / "alerts.db"}
  rules: [{{name: down, check: "*", status: critical}}]
  routes: {{critical: [chat]}}
  group_wait: 0s
"""


class Watch:
    """When each request reached a fake (polled every 20 ms: the times are at most that late)."""

    def __init__(self, fake: FakeHttpService) -> None:
        self.fake = fake
        self.times: list[float] = []

    def poll(self) -> None:
        now = time.monotonic()
        while len(self.times) < self.fake.attempts:
            self.times.append(now)


def agent(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "-c", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_a_retry_after_given_before_kill_9_is_waited_out_after_the_restart(tmp_path: Path) -> None:
    async with otlp_receiver() as rx, fake_slack() as slack:
        rx.throttle(10**6, retry_after=RETRY_AFTER)
        slack.throttle(10**6, retry_after=RETRY_AFTER)
        path = tmp_path / "agent.yml"
        path.write_text(config_text(tmp_path, rx.endpoint, slack.add_webhook()))
        watches = [Watch(rx), Watch(slack)]
        first = agent(path)
        procs = [first]
        try:
            for _ in range(1000):  # both throttled once
                for w in watches:
                    w.poll()
                if all(w.times for w in watches):
                    break
                await asyncio.sleep(0.02)
            assert all(w.times for w in watches), "the agent never reached both services"
            await asyncio.sleep(0.3)  # let the answers be recorded (the exporter's SDK may retry once)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            for w in watches:
                w.poll()
            last = [w.times[-1] for w in watches]  # each service's last 429 before the kill
            before = [len(w.times) for w in watches]
            assert max(time.monotonic() - t for t in last) < RETRY_AFTER - 3  # killed inside the window

            procs.append(agent(path))
            deadline = max(last) + RETRY_AFTER + 4
            while time.monotonic() < deadline and not all(
                len(w.times) > n for w, n in zip(watches, before, strict=True)
            ):
                for w in watches:
                    w.poll()
                await asyncio.sleep(0.02)
            for w, n, t, name in zip(watches, before, last, ("otlp", "slack"), strict=True):
                assert len(w.times) > n, f"{name}: the restarted agent never retried"
                waited = w.times[n] - t
                # Within polling lateness (20 ms) and a margin for the answer's own latency.
                assert waited >= RETRY_AFTER - 0.5, f"{name}: retried {waited:.1f}s after the 429"
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
