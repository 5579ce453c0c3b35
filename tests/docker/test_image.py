"""The agent's image and its Compose service, for real: `docker build` of deploy/docker/Dockerfile
on the lab's engine, then the shipped deploy/docker/compose.agent.yml under `docker-compose` 1.29.

The build's base is the lab's Debian bookworm python3 (PYTHON_IMAGE), its dependencies come from
the wheelhouse `make` fills (.venv/wheelhouse), served on 127.0.0.1 to a build on the host
network, as docs/deploy.md tells a site without access to an index to do. Built once per session.

Compose runs a copy of compose.agent.yml in a directory of its own (as on a host, /srv/mamori),
with tests/docker/compose.lab.yml for what this machine cannot do (each line says why); every
other difference is a variable of the shipped file, set in `.env`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import yaml

from lab import REPO
from lab.docker import DockerEngine
from lab.docker_apps import app_image, run_app
from lab.ports import free_port
from lab.wait import wait_until

DOCKERFILE = REPO / "deploy/docker/Dockerfile"
COMPOSE = REPO / "deploy/docker/compose.agent.yml"
OVERRIDE = Path(__file__).with_name("compose.lab.yml")
WHEELHOUSE = REPO / ".venv" / "wheelhouse"
UID = 10001
# A small extra, so that the build's EXTRAS path is exercised without the OCI SDK's ~250 MB
# (three times the build's time on vfs); `oci` installs the same way.
EXTRAS = "otel"


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def served(directory: Path) -> Iterator[str]:
    """`directory` as a pip find-links page on 127.0.0.1 (an index-less mirror)."""
    handler = functools.partial(_QuietFiles, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="wheelhouse", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def agent_image(docker_engine: DockerEngine) -> str:
    """The agent's image, built once per session from the checkout; its tag."""
    assert WHEELHOUSE.is_dir() and any(WHEELHOUSE.glob("setuptools-*.whl")), (
        f"{WHEELHOUSE} is missing: `make` builds it when it sets up .venv"
    )
    tag = "mamori-agent:lab"

    async def build() -> None:
        base = await docker_engine.image("python")
        with served(WHEELHOUSE) as find_links:
            started = time.monotonic()
            await docker_engine.docker(
                "build", "--network", "host", "-q", "-f", str(DOCKERFILE),
                "--build-arg", f"PYTHON_IMAGE={base}",
                "--build-arg", f"EXTRAS={EXTRAS}",
                "--build-arg", "PIP_NO_INDEX=1",
                "--build-arg", f"PIP_FIND_LINKS={find_links}",
                "-t", tag, str(REPO),
                timeout=600,
            )  # fmt: skip
            print(f"agent image built in {time.monotonic() - started:.1f} s")

    asyncio.run(build())
    return tag


@pytest.mark.timeout(600)  # the first test of the image waits for its build
async def test_the_image_is_what_the_dockerfile_says(engine: DockerEngine, agent_image: str) -> None:
    config = (await engine.inspect(agent_image))["Config"]
    assert isinstance(config, dict)
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["agentctl"]
    assert config["Cmd"] == ["run", "-c", "/etc/mamori/agent.yml"]
    assert config["WorkingDir"] == "/var/lib/mamori"
    assert list(config["Volumes"]) == ["/var/lib/mamori"]
    assert config["Healthcheck"]["Test"][0] == "CMD-SHELL"
    assert config["Labels"]["io.mamori.extras"] == EXTRAS
    # As the image's user: the venv's agentctl with the extra, no pip anywhere, the state
    # directory its own (0750), the root filesystem not writable.
    probe = (
        "import importlib.util as u, os, shutil, stat, sys;"
        "s = os.stat('/var/lib/mamori');"
        "print(sys.prefix, shutil.which('agentctl'), bool(u.find_spec('pip')),"
        " bool(u.find_spec('opentelemetry.sdk')), s.st_uid, oct(stat.S_IMODE(s.st_mode)),"
        " os.access('/opt/mamori', os.W_OK), os.getuid(),"
        " any(u.find_spec(m) for m in ('lab', 'tests', 'bench')))"
    )
    done = await engine.docker(
        "run",
        "--rm",
        "--network",
        "host",
        *engine.labels(),
        "--entrypoint",
        "python3",
        agent_image,
        "-c",
        probe,
    )
    assert done.stdout.split() == [
        "/opt/mamori", "/opt/mamori/bin/agentctl", "False", "True", str(UID), "0o750", "False", str(UID),
        "False",  # no lab, test or benchmark code in the image
    ]  # fmt: skip


# --- Compose -----------------------------------------------------------------------------------


def agent_config(listen: str, socket_checks: list[dict[str, Any]], closed: int) -> dict[str, Any]:
    """The agent's config: this host, the app containers it discovers, a check that always fails
    (so an alert fires), a notifier and an exporter whose services are down (so the alert's
    notification and the exporter's results wait in the state volume)."""
    return {
        "agent": {"name": "lab-docker-host", "listen": listen, "interval": "1s", "timeout": "1s"},
        "checks": [
            {"name": "host", "type": "host", "procfs": "/host/proc", "rootfs": "/host"},
            *socket_checks,
            {"name": "gone", "type": "tcp", "host": "127.0.0.1", "port": closed, "timeout": "1s"},
        ],
        "outbox": {"path": "/var/lib/mamori/outbox.db"},
        "exporters": [{"name": "bus", "type": "mqtt", "host": "127.0.0.1", "port": closed}],
        "notifiers": [{"name": "hook", "type": "webhook", "url": f"http://127.0.0.1:{closed}/hook"}],
        "alerts": {
            "state_file": "/var/lib/mamori/alerts.db",
            "group_wait": "0s",
            "routes": {"critical": ["hook"]},
            "rules": [
                {
                    "name": "gone_down",
                    "check": "gone",
                    "status": "critical",
                    "for": "0s",
                    "severity": "critical",
                }
            ],
        },
    }


class Deployment:
    """The copied compose file, its .env, config and secrets in a directory of their own."""

    def __init__(self, engine: DockerEngine, directory: Path, image: str) -> None:
        self.engine = engine
        self.directory = directory
        self.image = image
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def write(self, config: dict[str, Any]) -> None:
        d = self.directory
        d.mkdir(mode=0o755)
        shutil.copy(COMPOSE, d / "compose.agent.yml")
        shutil.copy(OVERRIDE, d / "compose.lab.yml")
        (d / "agent.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        (d / "agent.yml").chmod(0o644)
        secrets = d / "secrets"
        secrets.mkdir(mode=0o755)
        # Every secret the shipped file names (read from it: a secret added there is here too).
        shipped = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["secrets"]
        for entry in shipped.values():
            name = Path(entry["file"]).name
            (secrets / name).write_text("unused\n", encoding="utf-8")
            os.chown(secrets / name, UID, UID)
            (secrets / name).chmod(0o400)
        socket = self.engine.socket
        env = {
            "DOCKER_GID": str(socket.stat().st_gid),  # as `getent group docker` gives it on a host
            "MAMORI_IMAGE": self.image,
            "MAMORI_LISTEN": f"127.0.0.1:{self.port}",
            "MAMORI_HEALTHCHECK_URL": f"{self.url}/healthz",
            "LAB_DOCKER_SOCKET": str(socket),
            "LAB_ID": self.engine.id,
        }
        (d / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")

    async def compose(self, *args: str) -> str:
        done = await self.engine.compose(
            "-p", "mamori", "-f", "compose.agent.yml", "-f", "compose.lab.yml", *args,
            cwd=self.directory, timeout=180,
        )  # fmt: skip
        return done.stdout

    async def health(self) -> str:
        state = (await self.engine.inspect("mamori-agent"))["State"]
        assert isinstance(state, dict)
        return str(state["Health"]["Status"]) if state.get("Health") else str(state["Status"])

    async def wait_healthy(self, timeout: float = 60) -> float:
        started = time.monotonic()

        async def healthy() -> bool:
            return await self.health() == "healthy"

        await wait_until("the agent's container to be healthy", healthy, timeout, interval=0.3)
        return time.monotonic() - started

    async def results(self, session: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        async with session.get(f"{self.url}/api/v1/results") as response:
            body = await response.json()
        items = body["results"] if isinstance(body, dict) else body
        return {item["check"]: item for item in items}

    async def metric(self, session: aiohttp.ClientSession, line_start: str) -> float:
        async with session.get(f"{self.url}/metrics") as response:
            text = await response.text()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
        assert values, f"no {line_start} in /metrics"
        return values[0]

    async def alerts(self) -> dict[str, Any]:
        done = await self.engine.docker(
            "exec", "mamori-agent", "agentctl", "alerts", "-c", "/etc/mamori/agent.yml", "--json"
        )
        data: dict[str, Any] = json.loads(done.stdout)
        return data


def sample(result: dict[str, Any], name: str, **labels: str) -> float:
    for s in result["samples"]:
        if s["name"] == name and all(s["labels"].get(k) == v for k, v in labels.items()):
            return float(s["value"])
    raise AssertionError(f"no sample {name} {labels} in {result['check']}: {result['message']}")


@pytest.mark.timeout(600)  # the build too, when this test runs alone
async def test_the_shipped_compose_service_on_a_real_engine(
    engine: DockerEngine, agent_image: str, tmp_path: Path
) -> None:
    timings: dict[str, float] = {}
    # Two app containers on the host network, found by the labels docs/deploy.md gives them
    # (the probe port is a label: one network here, so each app has a port of its own).
    app_tag = await app_image(engine, "1")
    apps = []
    for name in ("web-1", "web-2"):
        port = free_port()
        labels = {"mamori.service": "web", "mamori.probe.port": str(port), "mamori.probe.path": "/api/health"}
        apps.append(await run_app(engine, name, app_tag, port=port, labels=labels))
    socket_checks: list[dict[str, Any]] = [
        {"name": "web-containers", "type": "docker", "service": "web", "expect_running": 2},
        {"name": "web", "type": "lb", "url": f"{apps[0].url}/api/health", "docker": {"service": "web"}},
    ]
    deployment = Deployment(engine, tmp_path / "srv-mamori", agent_image)
    deployment.write(agent_config(f"127.0.0.1:{deployment.port}", socket_checks, free_port()))

    started = time.monotonic()
    await deployment.compose("up", "-d")
    timings["up"] = time.monotonic() - started
    timings["healthy"] = await deployment.wait_healthy()

    # Runs as uid 10001, read-only root, the docker group added, the limits in effect.
    info = await engine.inspect("mamori-agent")
    host_config, config = info["HostConfig"], info["Config"]
    assert isinstance(host_config, dict) and isinstance(config, dict)
    gid = str(engine.socket.stat().st_gid)
    assert config["User"] == f"{UID}:{UID}"
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["GroupAdd"] == [gid]
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["Memory"] == 256 * 2**20
    assert host_config["NanoCpus"] == 500_000_000 or host_config["CpuQuota"] == host_config["CpuPeriod"] // 2
    assert host_config["PidsLimit"] == 128
    mounts = {m["Destination"]: m for m in info["Mounts"]}  # type: ignore[attr-defined]
    assert mounts["/var/run/docker.sock"]["RW"] is False
    assert mounts["/host/proc"]["RW"] is False and mounts["/host"]["RW"] is False
    assert mounts["/var/lib/mamori"]["Type"] == "volume"

    # Inside: the agent's process, the socket readable through its group only.
    probe = (
        "import os, stat;"
        "s = os.stat('/var/run/docker.sock');"
        "print(os.getuid(), os.getgid(), ','.join(map(str, os.getgroups())),"
        " s.st_uid, s.st_gid, oct(stat.S_IMODE(s.st_mode)), os.access('/', os.W_OK))"
    )
    done = await engine.docker("exec", "mamori-agent", "python3", "-c", probe)
    uid, pgid, groups, sock_uid, sock_gid, mode, root_writable = done.stdout.split()
    assert (uid, pgid, sock_uid, sock_gid, mode) == (str(UID), str(UID), "0", gid, "0o660")
    assert gid in groups.split(",") and root_writable == "False"
    done = await engine.docker("exec", "mamori-agent", "sh", "-c", "touch /etc/x", check=False)
    assert done.returncode != 0 and "Read-only file system" in done.stderr

    async with aiohttp.ClientSession() as session:

        async def host_ran() -> bool:
            return "host" in await deployment.results(session)

        await wait_until("the host check's first result", host_ran, 15, interval=0.3)
        results = await deployment.results(session)
        # The host check reports the host's figures, not the container's.
        host = results["host"]
        assert host["status"] in ("OK", "WARNING"), host["message"]
        assert sample(host, "mamori_host_memory_total_bytes") == psutil.virtual_memory().total
        assert sample(host, "mamori_host_cpus") == psutil.cpu_count()
        root = os.statvfs("/")
        assert (
            sample(host, "mamori_host_filesystem_size_bytes", mountpoint="/") == root.f_blocks * root.f_frsize
        )
        assert abs(sample(host, "mamori_host_boot_time_seconds") - psutil.boot_time()) <= 1
        assert sample(host, "mamori_host_processes") > 10  # the host's, not the container's two

        # The failing check's alert fires; its notification and the exporter's results wait.
        async def waiting() -> bool:
            state = await deployment.alerts()
            return [a["state"] for a in state["alerts"]] == ["firing"] and state["outbox"].get("hook", 0) >= 1

        await wait_until("the alert to fire and its notification to wait", waiting, 30, interval=0.5)
        before = await deployment.alerts()
        assert await deployment.metric(session, 'mamori_outbox_depth{sink="bus"}') > 0

        # `docker stop`: SIGTERM, the agent drains and exits 0 well within the grace period.
        started = time.monotonic()
        await engine.docker("stop", "mamori-agent", timeout=60)
        timings["stop"] = time.monotonic() - started
        state = (await engine.inspect("mamori-agent"))["State"]
        assert isinstance(state, dict)
        assert state["ExitCode"] == 0 and state["OOMKilled"] is False
        assert timings["stop"] < 15, "SIGTERM must stop it well within stop_grace_period (30 s)"
        stopped_at = time.time()

        # down + up: a new container on the same named volume keeps alert state and the outbox.
        await deployment.compose("down")
        assert not (await engine.docker("ps", "-aq", "--filter", "name=mamori-agent")).stdout.split()
        await deployment.compose("up", "-d")
        await deployment.wait_healthy()
        after = await deployment.alerts()
        assert [(a["rule"], a["state"], a["since"]) for a in after["alerts"]] == [
            (a["rule"], a["state"], a["since"]) for a in before["alerts"]
        ]
        assert after["outbox"]["hook"] >= before["outbox"]["hook"]
        oldest = await deployment.metric(session, 'mamori_outbox_oldest_age_seconds{sink="bus"}')
        assert oldest >= time.time() - stopped_at, "results from before `down` still wait in outbox.db"

        # The sibling app containers, discovered over the socket and probed.
        async def discovered() -> bool:
            results = await deployment.results(session)
            return all(results.get(c, {}).get("status") == "OK" for c in ("web-containers", "web"))

        try:
            await wait_until("the agent to see both app containers", discovered, 30, interval=0.5)
        except TimeoutError:
            seen = {c: (r["status"], r["message"]) for c, r in (await deployment.results(session)).items()}
            pytest.fail(f"the agent did not see both app containers: {seen}")
        results = await deployment.results(session)
        assert "2 containers: 2 running (2 healthy)" in results["web-containers"]["message"]
        probed = {
            s["labels"]["member"]
            for s in results["web"]["samples"]
            if s["name"] == "mamori_member_status" and s["labels"]["role"] == "backend"
        }
        assert probed == {"web-1", "web-2"}, results["web"]["samples"][:12]

        await deployment.compose("down", "-v")
    print(f"compose: {', '.join(f'{k} {v:.1f} s' for k, v in timings.items())}")
