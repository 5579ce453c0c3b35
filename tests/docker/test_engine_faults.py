"""The `docker` check and Docker discovery when the real engine is hung, gone or crashed.

Each fault breaks the engine, so the test runs a DockerEngine of its own, not the session's
(`docker_engine` is requested only to run with the Docker tests, last, in the service lane).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks.base import Check
from checks.docker import DockerCheck, DockerConfig
from checks.lb import LbCheck, LbConfig
from lab.docker import DockerEngine

NO_SOCKET = (
    "no such socket — is Docker running, and is the socket mounted into the agent's container (read-only)?"
)


async def timed(check: Check[Any]) -> tuple[CheckResult, float]:
    t0 = time.monotonic()
    result = await execute(check)
    return result, time.monotonic() - t0


async def test_a_hung_removed_crashed_or_stopped_engine_is_unknown_within_the_timeout(
    docker_engine: DockerEngine, tmp_path: Path
) -> None:
    engine = DockerEngine(tmp_path / "engine")
    await engine.start()
    socket = engine.socket
    check = DockerCheck(DockerConfig(name="containers", interval=30, timeout=1, socket=socket))
    lb_config = {"name": "web", "type": "lb", "url": "http://127.0.0.1:9/", "interval": 30, "timeout": 2}
    lb = LbCheck(LbConfig.model_validate({**lb_config, "docker": {"socket": str(socket)}}))
    try:
        result, _ = await timed(check)
        assert (result.status, result.reason, result.message) == (
            Status.OK,
            Reason.OK,
            "no containers match the labels mamori.probe.port",
        )

        # Hung: dockerd and containerd stopped; the socket accepts, nothing answers.
        engine.freeze()
        try:
            result, elapsed = await timed(check)
            discovery, discovery_elapsed = await timed(lb)
        finally:
            engine.thaw()
        assert (result.status, result.reason, result.message) == (
            Status.UNKNOWN,
            Reason.UNAVAILABLE,
            f"no answer from the Docker engine at {socket} within 1s",
        )
        assert 1.0 <= elapsed < 1.4, elapsed  # the check's own timeout, not the harness's (+0.5 s)
        # Discovery never worked for this lb check: UNKNOWN, within its client's timeout (1 s).
        assert (discovery.status, discovery.reason, discovery.message) == (
            Status.UNKNOWN,
            Reason.UNAVAILABLE,
            f"cannot discover backends: no answer from the Docker engine at {socket} within 1s (GET /_ping)",
        )
        assert discovery_elapsed < 1.4, discovery_elapsed
        assert (await execute(check)).status is Status.OK  # thawed: the same check answers again

        # The socket path removed (an agent's mount gone): a check that connects now finds no
        # socket, at once. (A connection opened before keeps working: the engine is still there.)
        moved = socket.with_name("moved.sock")
        socket.rename(moved)
        fresh = DockerCheck(DockerConfig(name="containers", interval=30, timeout=1, socket=socket))
        try:
            result, elapsed = await timed(fresh)
            assert (await execute(check)).status is Status.OK
        finally:
            moved.rename(socket)
            await fresh.aclose()
        assert (result.status, result.reason) == (Status.UNKNOWN, Reason.UNAVAILABLE)
        assert result.message == f"cannot reach the Docker engine at {socket}: {NO_SOCKET}"
        assert result.samples == ()
        assert elapsed < 0.5, elapsed

        # Crashed: dockerd killed, its socket file left behind refuses connections.
        await engine.crash()
        result, elapsed = await timed(check)
        assert (result.status, result.reason, result.message) == (
            Status.UNKNOWN,
            Reason.UNAVAILABLE,
            f"cannot reach the Docker engine at {socket}: connection refused — is the Docker engine running?",
        )
        assert elapsed < 0.5, elapsed
        await engine.stop()
        # Stopped: the socket is gone with its directory.
        result, elapsed = await timed(check)
        assert (result.status, result.reason, result.target) == (
            Status.UNKNOWN,
            Reason.UNAVAILABLE,
            f"docker:{socket}",
        )
        assert result.message == f"cannot reach the Docker engine at {socket}: {NO_SOCKET}"
        assert elapsed < 0.5, elapsed
    finally:
        await engine.stop()
        await check.aclose()
        await check.aclose()  # safe twice
        await lb.aclose()
