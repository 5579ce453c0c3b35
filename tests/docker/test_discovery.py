"""Labelled app containers on the real engine, found by discovery and probed by the `lb` check with
the public Host and SNI, behind the real HAProxy; the `docker` check on the same containers.

The app containers serve TLS with a certificate for app.example.test only, so a backend probed by
its address passes only if the probe sends the public name. Containers are expensive on vfs
(a copy of the Python image each): three are made and shared by every assertion, in one story.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks.docker import DockerCheck, DockerConfig
from checks.lb import LbCheck, LbConfig
from lab.certs import DEFAULT_DNS_NAME, make_certs
from lab.docker import DockerEngine
from lab.docker_apps import AppContainer, app_image, run_app
from lab.haproxy import Backend, HAProxy
from lab.ports import accepts, free_port
from lab.wait import wait_until

PUBLIC = DEFAULT_DNS_NAME


@pytest.fixture
def public_name_resolves(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """app.example.test resolves to 127.0.0.1 (where HAProxy listens)."""
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == PUBLIC:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port or 0)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield


def members(result: CheckResult) -> dict[str, tuple[float, str]]:
    """member -> (status, reason)"""
    return {
        dict(s.labels)["member"]: (s.value, dict(s.labels)["reason"])
        for s in result.samples
        if s.name == "mamori_member_status"
    }


async def test_app_containers_are_discovered_probed_by_public_name_and_followed(
    engine: DockerEngine, tmp_path: Path, public_name_resolves: None
) -> None:
    certs = make_certs(tmp_path)
    image = await app_image(engine, "1")
    ports = {f"web-{i}": free_port() for i in (1, 2, 3)}

    async def start(name: str) -> AppContainer:
        labels = {
            "mamori.service": "web",
            "mamori.probe.port": str(ports[name]),
            "mamori.probe.path": "/api/health",
        }
        app = await run_app(engine, name, image, port=ports[name], labels=labels, tls=certs.named)
        await wait_until(f"{name} to listen", lambda: accepts(app.port), 30)
        return app

    # web-3 is a slot HAProxy knows before it runs: the scale-out below fills it.
    lb = HAProxy(
        tmp_path / "haproxy", [Backend(n, p) for n, p in ports.items()], certs.named, backend_tls=True
    )
    apps = dict(zip(("web-1", "web-2"), await asyncio.gather(start("web-1"), start("web-2")), strict=True))
    await lb.start()
    values: dict[str, Any] = {
        "name": "web", "type": "lb", "interval": 10, "timeout": 3,
        "url": f"https://{PUBLIC}:{lb.port}/api/health",
        "tls": {"ca_file": str(certs.ca_file)}, "backend_scheme": "https",
        "docker": {"socket": str(engine.socket), "service": "web"},
    }  # fmt: skip
    web = LbCheck(LbConfig.model_validate(values))
    by_ip = LbCheck(LbConfig.model_validate({**values, "url": f"https://127.0.0.1:{lb.port}/api/health"}))
    containers = DockerCheck(
        DockerConfig(name="c", interval=10, timeout=3, socket=engine.socket, service="web", expect_running=2)
    )
    try:
        await lb.wait_until_sees({"web-1": "UP", "web-2": "UP", "web-3": "DOWN"}, timeout=20)
        result = await execute(web)
        assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
        assert members(result) == {n: (0.0, "ok") for n in ("lb", "web-1", "web-2")}
        assert result.message.endswith("2/2 backends healthy")
        # The same containers probed without the public name: their certificate is for it only.
        result = await execute(by_ip)
        assert members(result)["web-1"] == (2.0, "tls_hostname"), result.message

        async def graded(reason: Reason, message: str) -> bool:
            outcome = await containers.run()
            return (outcome.reason, outcome.message) == (reason, message)

        # Healthy through their HEALTHCHECK (starting first: a note, not a problem).
        await wait_until("both healthy", lambda: graded(Reason.OK, "2 containers: 2 running (2 healthy)"), 30)

        # Scaled out: web-3 is in the next run.
        apps["web-3"] = await start("web-3")
        result = await execute(web)
        assert sorted(members(result)) == ["lb", "web-1", "web-2", "web-3"], result.message
        assert result.status is Status.OK, result.message

        # A failing HEALTHCHECK: web-2 answers 500; the docker check names it, the lb check too.
        await apps["web-2"].set_mode("error:500")
        await wait_until(
            "web-2 unhealthy",
            lambda: graded(
                Reason.CONTAINER_UNHEALTHY, "web-2: unhealthy; 3 containers: 3 running (2 healthy)"
            ),
            30,
        )
        outcome = await containers.run()
        assert outcome.status is Status.CRITICAL
        healthy = {
            dict(s.labels)["container"]: s.value
            for s in outcome.samples
            if s.name == "mamori_container_healthy"
        }
        assert healthy == {"web-1": 1.0, "web-2": 0.0, "web-3": 1.0}
        result = await execute(web)
        assert (result.status, result.reason) == (Status.CRITICAL, Reason.BACKEND_DOWN), result.message
        assert members(result)["web-2"] == (2.0, "status_mismatch"), result.message

        # Stopped and removed: gone from the next run; HAProxy routes to web-3 alone.
        await asyncio.gather(engine.docker("stop", "-t", "5", "web-1"), engine.docker("rm", "-f", "web-2"))
        await lb.wait_until_sees({"web-1": "DOWN", "web-2": "DOWN", "web-3": "UP"}, timeout=20)
        result = await execute(web)
        assert (result.status, result.reason) == (Status.OK, Reason.OK), result.message
        assert members(result) == {"lb": (0.0, "ok"), "web-3": (0.0, "ok")}
        outcome = await containers.run()
        assert (outcome.status, outcome.reason, outcome.message) == (
            Status.CRITICAL,
            Reason.CONTAINER_MISSING,
            "1 running, expected at least 2; 2 containers: 1 running, 1 exited (1 healthy); "
            "web-1 exited with code 0",
        )
    finally:
        await web.aclose()
        await by_ip.aclose()
        await containers.aclose()
        await lb.stop()
