"""`AppFleet`: the production web path on app containers of a real Docker Engine, and a rolling deploy.

    fleet = AppFleet(engine, directory, apps=3)
    await fleet.start(await app_image(engine, "1"))    # app-1..app-3 healthy, UP behind HAProxy
    async with Traffic(fleet.url, fleet.ca_file) as traffic:
        steps = await fleet.rolling_deploy(await app_image(engine, "2"))
    traffic.failures                                   # [] for a zero-downtime rollout
    await fleet.stop()

Clients → the real HAProxy (lab/haproxy.py, TLS with the lab CA's certificate for 127.0.0.1) →
N containers of the lab's app server (lab/docker_apps.py), each on its own 127.0.0.1 port, named
app-1…app-N and labelled as the production apps are (deploy/examples/production.yml:
`mamori.service=web`, `mamori.probe.port`, `mamori.probe.path=/api/health`), so an agent given
the engine's socket discovers them as it would on a Docker host.

`rolling_deploy(image)` replaces the containers one at a time the way an operator does for zero
downtime: drain the server in HAProxy (runtime API) and wait until it has no session left, put
it in maintenance, `docker stop` (SIGTERM) and `docker rm` the old container, start the new image
under the same name on the same port, wait until its HEALTHCHECK says `healthy`, put it back in
rotation and wait until HAProxy's own check sees it UP. A container that does not become healthy
within `health_timeout` (unhealthy, exited, or still starting) stops the rollout with
`RolloutError` naming it: it stays out of rotation (in maintenance) and the containers not yet
replaced keep the old image, which is what an operator's script does before a rollback.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from lab.certs import Certs, make_certs
from lab.docker import DockerEngine
from lab.docker_apps import AppContainer, run_app
from lab.haproxy import BACKEND, Backend, HAProxy
from lab.ports import free_port
from lab.wait import wait_until

SERVICE = "web"  # the service name production.yml's `web` and `web-containers` checks select
HEALTH_PATH = "/api/health"
_STOP_GRACE = 10  # docker stop -t: the app exits on SIGTERM at once; this only bounds a stuck one
_DRAIN_TIMEOUT = 10.0  # requests in flight take milliseconds; a hung one is cut off after this
_UP_TIMEOUT = 10.0  # HAProxy needs `rise 2` checks 500 ms apart: ~1 s


class RolloutError(RuntimeError):
    """A rollout stopped: the message names the container and what it was seen doing."""


@dataclass(frozen=True)
class Step:
    """One container replaced: its name, the images before and after, and how long it was out
    of rotation (drain to UP again)."""

    name: str
    old_image: str
    new_image: str
    seconds: float


def labels_for(port: int) -> dict[str, str]:
    """The labels of an app container: what production's discovery selects (docs/checks/docker.md)."""
    return {"mamori.service": SERVICE, "mamori.probe.port": str(port), "mamori.probe.path": HEALTH_PATH}


class AppFleet:
    """`apps` app containers behind HAProxy, replaceable one at a time.

    `start()` returns once every container is healthy and HAProxy sees each UP; on a failure
    whatever was started is stopped before the error propagates. `stop()` removes the fleet's
    containers and stops HAProxy; safe twice and before `start()`.
    """

    def __init__(self, engine: DockerEngine, directory: Path, apps: int = 3, prefix: str = "app") -> None:
        if apps < 1:
            raise ValueError(f"a fleet needs at least one app, not {apps}")
        self.engine = engine
        self.directory = directory
        (directory / "certs").mkdir(parents=True, exist_ok=True)
        self.certs: Certs = make_certs(directory / "certs")
        # Container names are the engine's, shared by every fleet on it: `prefix` keeps two apart.
        self.ports = {f"{prefix}-{i}": free_port() for i in range(1, apps + 1)}
        self.haproxy = HAProxy(
            directory / "haproxy",
            [Backend(name, port) for name, port in self.ports.items()],
            self.certs.valid,
        )
        self.containers: dict[str, AppContainer] = {}

    @property
    def url(self) -> str:
        """The health endpoint through the load balancer: `https://127.0.0.1:PORT/api/health`."""
        return self.haproxy.url(HEALTH_PATH)

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_file

    async def start(self, image: str, *, health_timeout: float = 60.0) -> None:
        """Start every container of `image` at once, then HAProxy; return when all serve."""
        try:
            started = await asyncio.gather(
                *(self._run(name, image) for name in self.ports), return_exceptions=True
            )
            for result in started:
                if isinstance(result, BaseException):
                    raise result
            await asyncio.gather(*(self._wait_healthy(name, health_timeout) for name in self.ports))
            await self.haproxy.start()
            await self.haproxy.wait_until_sees({name: "UP" for name in self.ports}, _UP_TIMEOUT)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop HAProxy and remove the fleet's containers. Safe twice; never raises for a
        container already gone."""
        try:
            await self.haproxy.stop()
        finally:
            names = list(self.containers)
            self.containers.clear()
            if names:
                await self.engine.docker("rm", "-f", *names, check=False, timeout=60)

    async def __aenter__(self) -> AppFleet:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- the rollout ------------------------------------------------------------------------------

    async def rolling_deploy(self, image: str, *, health_timeout: float = 30.0) -> list[Step]:
        """Replace every container not yet on `image`, one at a time, in name order. Raises
        RolloutError at the first that does not become healthy (the rest are left as they were)."""
        steps = []
        for name in sorted(self.ports, key=lambda n: int(n.rpartition("-")[2])):
            if self.containers[name].image != image:
                steps.append(await self.replace(name, image, health_timeout=health_timeout))
        return steps

    async def replace(self, name: str, image: str, *, health_timeout: float = 30.0) -> Step:
        """Take `name` out of rotation, replace its container by one of `image`, put it back."""
        old = self.containers[name]
        began = time.monotonic()
        await self.haproxy.runtime(f"set server {BACKEND}/{name} state drain")
        await wait_until(
            f"{name} to finish its requests", lambda: self._no_sessions(name), _DRAIN_TIMEOUT, interval=0.05
        )
        await self.haproxy.runtime(f"set server {BACKEND}/{name} state maint")
        await self.engine.docker("stop", "-t", str(_STOP_GRACE), name)
        await self.engine.docker("rm", name)
        del self.containers[name]
        await self._run(name, image)
        await self._wait_healthy(name, health_timeout)
        await self.haproxy.runtime(f"set server {BACKEND}/{name} state ready")
        await self.haproxy.wait_until_sees({name: "UP"}, _UP_TIMEOUT)
        return Step(name, old.image, image, time.monotonic() - began)

    # --- helpers -----------------------------------------------------------------------------------

    async def _run(self, name: str, image: str) -> None:
        port = self.ports[name]
        self.containers[name] = await run_app(self.engine, name, image, port=port, labels=labels_for(port))

    async def health(self, name: str) -> tuple[str, str]:
        """The container's state (`running`, `exited`…) and health (`starting`, `healthy`,
        `unhealthy`, or `none` without a HEALTHCHECK)."""
        data: dict[str, Any] = await self.engine.inspect(name)
        state = data["State"]
        return str(state["Status"]), str((state.get("Health") or {}).get("Status", "none"))

    async def _wait_healthy(self, name: str, timeout: float) -> None:
        began = time.monotonic()
        state, health = "unknown", "unknown"
        while time.monotonic() - began < timeout:
            state, health = await self.health(name)
            if state == "running" and health == "healthy":
                return
            if state != "running" or health == "unhealthy":
                break  # final: an operator would not wait for it to heal
            await asyncio.sleep(0.2)
        seen = f"{state}, {health}" if state == "running" else await self._why_down(name, state)
        raise RolloutError(
            f"{name} ({self.containers[name].image}) is not healthy after {time.monotonic() - began:.1f} s:"
            f" {seen}; rollout stopped, {name} left out of rotation"
        )

    async def _why_down(self, name: str, state: str) -> str:
        """`exited 1 (… the last lines it wrote)`: what an operator reads first about a container
        that died at start (a port already taken, a crash on import)."""
        data: dict[str, Any] = await self.engine.inspect(name)
        code = data["State"].get("ExitCode")
        logs = await self.engine.docker("logs", "--tail", "3", name, check=False)
        said = " / ".join(line.strip() for line in (logs.stdout + logs.stderr).splitlines() if line.strip())
        return f"{state} {code}" + (f" ({said[-300:]})" if said else "")

    async def _no_sessions(self, name: str) -> bool:
        answer = await self.haproxy.runtime("show stat")
        rows = csv.DictReader(io.StringIO(answer.removeprefix("# ")))
        return any(r["pxname"] == BACKEND and r["svname"] == name and r["scur"] == "0" for r in rows)


# --- a client population ------------------------------------------------------------------------------


@dataclass
class Traffic:
    """`clients` clients requesting `url` back to back (keep-alive, no cookies: round robin),
    recording every answer. A failure is any request that is not a 200 within `timeout`.

    Use `async with`: requests start on entry and stop on exit (the last ones complete)."""

    url: str
    ca_file: Path
    clients: int = 2
    timeout: float = 5.0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Traffic:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        self._tasks = [asyncio.create_task(self._client(self._session)) for _ in range(self.clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            if self._session is not None:
                await self._session.close()

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                async with session.get(self.url) as response:
                    await response.read()
                    if response.status == 200:
                        self.ok += 1
                        self.versions[response.headers.get("X-Version", "?")] += 1
                    else:
                        self.failures.append(
                            f"{response.status} from {response.headers.get('X-Instance', '?')}"
                        )
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc} after {time.monotonic() - began:.2f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.02)
