"""A strict fake Docker Engine API on a unix socket, for tests (no Docker engine runs here).

    async with fake_docker(tmp_path) as engine:
        engine.add("web-1", {"mamori.probe.port": "8080"}, "172.18.0.2", network="shop_default")
        client = DockerClient(engine.socket)
        engine.update("web-1", state="exited", exit_code=137, oom_killed=True)
        engine.fail_next(500, "boom"); engine.hang(); engine.garble_next(b"{not json")

It answers what Mamori reads, in the engine's documented JSON shapes (API v1.43, Docker 24.0),
and behaves like the engine where a client could get it wrong:
- `GET /_ping` (versioned or not): `OK` with the `Api-Version` header (1.43), which a client
  negotiates its version with. Pings are always answered (never a fault, never in `requests`):
  the faults are for the container requests a test aims them at.
- `GET /v{1.24..1.43}/containers/json`: `all` parsed as the engine parses booleans; without it
  only running, paused and restarting containers (the engine's "running" set); `filters` is
  URL-encoded JSON, either `{"label":["k","k=v"]}` or the `{"label":{"k=v":true}}` form; `k`
  means the label is present, `k=v` that it equals v, all must match; newest container first.
- `GET /v…/containers/{id}/json`: by full id, name (with or without "/"), or unique id prefix.
- Errors as the engine sends them, `{"message": …}`: 404 "No such container: X", 404 "page not
  found", 400 "invalid filter …", 400 "client version X is too old/new …", 405 for any method
  other than GET. An unversioned path is served as the newest version, as the engine does.
Filters the engine accepts but this fake does not implement answer 501, so a test can never
silently pass on an ignored filter.

`requests` records every request line (method, target) so tests can assert what was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import shutil
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

MIN_VERSION = (1, 24)
MAX_VERSION = (1, 43)  # Docker 24.0, as `_SERVER` says
STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
HEALTH = (None, "starting", "healthy", "unhealthy")
# The engine's "running" set: what `all=false` lists (it counts paused and restarting as running).
_LISTED_WITHOUT_ALL = ("running", "paused", "restarting")
# Filter keys the engine accepts on /containers/json; any other is "invalid filter".
_ENGINE_FILTERS = frozenset((
    "ancestor", "before", "expose", "exited", "health", "id", "isolation", "is-task", "label",
    "name", "network", "publish", "since", "status", "volume",
))  # fmt: skip
_VERSIONED = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")
_INSPECT = re.compile(r"^/containers/(.+)/json$")
_PING = re.compile(r"^(/v\d+\.\d+)?/_ping$")
_SERVER = "Docker/24.0.7 (linux)"
_CREATED_AT = 1_700_000_000  # a fixed epoch, so every answer is reproducible


@dataclass
class FakeContainer:
    id: str
    name: str
    labels: dict[str, str]
    networks: dict[str, str]  # network name -> IP while running ("" for host/none)
    network_mode: str
    state: str
    health: str | None
    restart_count: int
    oom_killed: bool
    exit_code: int
    image: str
    created: int

    @property
    def running(self) -> bool:
        return self.state in _LISTED_WITHOUT_ALL

    def _ip(self, net: str) -> str:
        # A stopped or restarting container keeps its network entries but has no address.
        return self.networks[net] if self.state in ("running", "paused") else ""

    def _endpoints(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for net in self.networks:
            ip = self._ip(net)
            out[net] = {
                "IPAMConfig": None,
                "Links": None,
                "Aliases": None,
                "MacAddress": "02:42:ac:12:00:02" if ip else "",
                "NetworkID": _hex(f"network {net}"),
                "EndpointID": _hex(f"endpoint {self.id} {net}") if ip else "",
                "Gateway": ip.rsplit(".", 1)[0] + ".1" if ip else "",
                "IPAddress": ip,
                "IPPrefixLen": 16 if ip else 0,
                "IPv6Gateway": "",
                "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0,
                "DriverOpts": None,
                "DNSNames": None,
            }
        return out

    def _status_text(self) -> str:
        health = {"healthy": " (healthy)", "unhealthy": " (unhealthy)", "starting": " (health: starting)"}
        return {
            "created": "Created",
            "running": "Up 5 minutes" + health.get(self.health or "", ""),
            "paused": "Up 5 minutes (Paused)",
            "restarting": f"Restarting ({self.exit_code}) 2 seconds ago",
            "removing": "Removal In Progress",
            "exited": f"Exited ({self.exit_code}) 3 minutes ago",
            "dead": "Dead",
        }[self.state]

    def list_entry(self) -> dict[str, Any]:
        """One element of GET /containers/json."""
        return {
            "Id": self.id,
            "Names": [f"/{self.name}"],
            "Image": self.image,
            "ImageID": "sha256:" + _hex(f"image {self.image}"),
            "Command": "/app/run",
            "Created": self.created,
            "Ports": [],
            "Labels": dict(self.labels),
            "State": self.state,
            "Status": self._status_text(),
            "HostConfig": {"NetworkMode": self.network_mode},
            "NetworkSettings": {"Networks": self._endpoints()},
            "Mounts": [],
        }

    def inspect(self) -> dict[str, Any]:
        """GET /containers/{id}/json."""
        state: dict[str, Any] = {
            "Status": self.state,
            "Running": self.running,
            "Paused": self.state == "paused",
            "Restarting": self.state == "restarting",
            "OOMKilled": self.oom_killed,
            "Dead": self.state == "dead",
            "Pid": 4242 if self.state in ("running", "paused") else 0,
            "ExitCode": self.exit_code,
            "Error": "",
            "StartedAt": "2023-11-14T22:13:20.000000000Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
        }
        if self.health is not None:
            state["Health"] = {"Status": self.health, "FailingStreak": 0, "Log": []}
        settings: dict[str, Any] = {
            "Bridge": "",
            "SandboxID": _hex(f"sandbox {self.id}"),
            "Ports": {},
            "Networks": self._endpoints(),
        }
        return {
            "Id": self.id,
            "Created": "2023-11-14T22:13:20.000000000Z",
            "Path": "/app/run",
            "Args": [],
            "State": state,
            "Image": "sha256:" + _hex(f"image {self.image}"),
            "Name": f"/{self.name}",
            "RestartCount": self.restart_count,
            "Driver": "overlay2",
            "Platform": "linux",
            "HostConfig": {
                "NetworkMode": self.network_mode,
                "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
            },
            "Config": {
                "Hostname": self.id[:12],
                "Image": self.image,
                "Labels": dict(self.labels),
                **({"Healthcheck": {"Test": ["CMD", "true"]}} if self.health is not None else {}),
            },
            "NetworkSettings": settings,
        }


def _hex(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


@dataclass(frozen=True)
class _Fault:
    kind: str  # "status", "raw", "hang", "close"
    status: int = 0
    body: bytes = b""


class _Reply(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class FakeDocker:
    """The engine's state and fault queue. Create with `fake_docker()`."""

    socket: Path
    containers: dict[str, FakeContainer] = field(default_factory=dict)  # by name, oldest first
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, target as sent)
    _faults: deque[_Fault] = field(default_factory=deque)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    # --- the container table ---

    def add(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        ip: str = "",
        network: str = "bridge",
        state: str = "running",
        health: str | None = None,
        restart_count: int = 0,
        oom_killed: bool = False,
        exit_code: int = 0,
        *,
        networks: dict[str, str] | None = None,
        image: str = "app:latest",
    ) -> FakeContainer:
        """Create a container. `network="host"` (or "none") is that network mode, with no IP;
        `networks` attaches it to several networks ({name: ip}) instead of `network`/`ip`."""
        if name in self.containers:
            raise ValueError(f"container {name} exists")
        nets = (
            dict(networks) if networks is not None else {network: "" if network in ("host", "none") else ip}
        )
        mode = next(iter(nets), "none") if nets else "none"
        container = FakeContainer(
            # A new id for every container, even one re-created under an old name, as the engine does.
            id=_hex(f"container {name} {next(self._serial)}"),
            name=name,
            labels=dict(labels or {}),
            networks=nets,
            network_mode=mode,
            state=state,
            health=health,
            restart_count=restart_count,
            oom_killed=oom_killed,
            exit_code=exit_code,
            image=image,
            created=_CREATED_AT + len(self.containers),
        )
        self._validate(container)
        self.containers[name] = container
        return container

    def remove(self, name: str) -> None:
        del self.containers[name]

    def update(self, name: str, **fields: Any) -> FakeContainer:
        """Change fields of a container (state, health, restart_count, oom_killed, exit_code,
        labels, networks, network_mode)."""
        container = self.containers[name]
        for key, value in fields.items():
            if key in ("id", "name") or not hasattr(container, key):
                raise ValueError(f"cannot update {key!r}")
            setattr(container, key, value)
        self._validate(container)
        return container

    def id_of(self, name: str) -> str:
        return self.containers[name].id

    @staticmethod
    def _validate(c: FakeContainer) -> None:
        # Catch test mistakes: a state or health the engine never reports.
        if c.state not in STATES:
            raise ValueError(f"state {c.state!r} is not one of {STATES}")
        if c.health not in HEALTH:
            raise ValueError(f"health {c.health!r} is not one of {HEALTH}")

    # --- faults, each for the next request ---

    def fail_next(self, status: int, message: str) -> None:
        """The next request is answered `status` with `{"message": message}`."""
        self._faults.append(_Fault("status", status, json.dumps({"message": message}).encode() + b"\n"))

    def garble_next(self, body: bytes, status: int = 200) -> None:
        """The next request is answered `status` with exactly `body` (e.g. invalid JSON)."""
        self._faults.append(_Fault("raw", status, body))

    def hang(self) -> None:
        """The next request is never answered (until the fake shuts down)."""
        self._faults.append(_Fault("hang"))

    def close_next(self) -> None:
        """The next request's connection is closed without an answer."""
        self._faults.append(_Fault("close"))

    # --- serving ---

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") and _PING.match(urlsplit(request.raw_path).path):
            return _response(200, b"OK", content_type="text/plain")
        self.requests.append((request.method, request.raw_path))
        if self._faults:
            fault = self._faults.popleft()
            if fault.kind == "hang":
                await self._release.wait()
            elif fault.kind == "close":
                if request.transport is not None:
                    request.transport.abort()
                return web.Response()  # never reaches the client: the connection is gone
            else:
                return _response(fault.status, fault.body)
        try:
            return _json(200, self._route(request.method, request.raw_path))
        except _Reply as reply:
            return _json(reply.status, {"message": reply.message})

    def _route(self, method: str, raw_target: str) -> Any:
        parts = urlsplit(raw_target)
        path = parts.path
        versioned = _VERSIONED.match(path)
        if versioned:
            version = (int(versioned.group(1)), int(versioned.group(2)))
            shown = f"{version[0]}.{version[1]}"
            if version < MIN_VERSION:
                raise _Reply(
                    400,
                    f"client version {shown} is too old. Minimum supported API version is "
                    f"{MIN_VERSION[0]}.{MIN_VERSION[1]}, please upgrade your client to a newer version",
                )
            if version > MAX_VERSION:
                raise _Reply(
                    400,
                    f"client version {shown} is too new. "
                    f"Maximum supported API version is {MAX_VERSION[0]}.{MAX_VERSION[1]}",
                )
            path = versioned.group(3)
        inspect = _INSPECT.match(path)
        if path != "/containers/json" and not inspect:
            raise _Reply(404, "page not found")
        if method != "GET":
            raise _Reply(405, f"method {method} not allowed")
        query = parse_qs(parts.query, keep_blank_values=True)
        if inspect:
            return self._find(inspect.group(1)).inspect()
        return self._list(query)

    def _list(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        all_ = _bool(query.get("all", [""])[0])
        filters = _filters(query.get("filters", [""])[0])
        for key in filters:
            if key not in _ENGINE_FILTERS:
                raise _Reply(400, f"invalid filter '{key}'")
            if key != "label":
                raise _Reply(501, f"fake Docker engine: filter {key!r} is not implemented")
        wanted = filters.get("label", [])
        out = []
        for c in reversed(self.containers.values()):  # newest first, like the engine
            if not all_ and not c.running:
                continue
            if wanted and not _labels_match(wanted, c.labels):
                continue
            out.append(c.list_entry())
        return out

    def _find(self, ref: str) -> FakeContainer:
        by_id = {c.id: c for c in self.containers.values()}
        if ref in by_id:
            return by_id[ref]
        name = ref.removeprefix("/")
        if name in self.containers:
            return self.containers[name]
        matches = [c for c in by_id.values() if c.id.startswith(ref)]
        if len(matches) > 1:
            raise _Reply(400, f"Multiple IDs found with provided prefix: {ref}")
        if not matches:
            raise _Reply(404, f"No such container: {ref}")
        return matches[0]


def _bool(value: str) -> bool:
    """The engine's httputils.BoolValue."""
    return value.strip().lower() not in ("", "0", "no", "false", "none")


def _filters(raw: str) -> dict[str, list[str]]:
    """The engine's filters.FromJSON: {"k": {"v": true}} or the older {"k": ["v"]}."""
    if raw == "":
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise _Reply(400, "invalid filter") from None
    if not isinstance(parsed, dict):
        raise _Reply(400, "invalid filter")
    out: dict[str, list[str]] = {}
    for key, values in parsed.items():
        if isinstance(values, list) and all(isinstance(v, str) for v in values):
            out[key] = list(values)
        elif isinstance(values, dict) and all(isinstance(v, bool) for v in values.values()):
            out[key] = [v for v, on in values.items() if on]
        else:
            raise _Reply(400, "invalid filter")
    return out


def _labels_match(wanted: list[str], labels: dict[str, str]) -> bool:
    """The engine's Args.MatchKVList: every `k` present, every `k=v` equal."""
    if not labels:
        return False
    for item in wanted:
        key, eq, value = item.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


def _response(status: int, body: bytes, content_type: str = "application/json") -> web.Response:
    headers = {
        "Api-Version": f"{MAX_VERSION[0]}.{MAX_VERSION[1]}",
        "Docker-Experimental": "false",
        "Ostype": "linux",
        "Server": _SERVER,
    }
    return web.Response(status=status, body=body, content_type=content_type, headers=headers)


def _json(status: int, payload: Any) -> web.Response:
    # The engine writes with Go's json.Encoder: compact, one trailing newline.
    return _response(status, json.dumps(payload, separators=(",", ":")).encode() + b"\n")


@asynccontextmanager
async def fake_docker(tmp_path: Path) -> AsyncIterator[FakeDocker]:
    """Serve a fake engine on a unix socket under `tmp_path` (or a short temporary directory when
    that path would exceed the 107-byte limit of unix socket paths). Leaving the context releases
    hung requests, closes every connection and removes the socket."""
    short_dir: str | None = None
    socket = tmp_path / "docker.sock"
    if len(str(socket).encode()) > 100:
        short_dir = tempfile.mkdtemp(prefix="dk", dir="/tmp")
        socket = Path(short_dir) / "docker.sock"
    engine = FakeDocker(socket)
    runner = web.ServerRunner(web.Server(engine.handle, access_log=None), shutdown_timeout=1.0)
    await runner.setup()
    site = web.UnixSite(runner, str(socket))
    await site.start()
    try:
        yield engine
    finally:
        engine._release.set()
        await runner.cleanup()
        socket.unlink(missing_ok=True)
        if short_dir is not None:
            shutil.rmtree(short_dir, ignore_errors=True)
