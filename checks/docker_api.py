"""A read-only Docker Engine API client over the engine's unix socket, and container discovery.

Only `GET` requests are ever sent (`/_ping`, `/vX.Y/containers/json` and
`/vX.Y/containers/{id}/json`): an agent with the socket mounted must not be able to change
anything through this module. The API version is negotiated as Docker's own clients do: the
first request of a client pings the engine and uses the lower of the engine's `Api-Version` and
`API_VERSION`, so the agent speaks to Debian's Docker 20.10 (API 1.41) as to Docker 29, which
refuses anything older than 1.44. A fixed version cannot serve both.

aiohttp is imported here and nowhere else in the checks: this module is imported only when a
config uses Docker, so an agent without Docker checks never pays for aiohttp's import time or RSS.

Guarantees of `DockerClient`:
- Every failure of the engine or the socket raises `DockerError` with a one-line message that
  names the socket and says what to do; nothing else escapes (except `CancelledError`).
- Each request is bounded by the client's `timeout` and its answer by `MAX_RESPONSE_BYTES`.
- One connector and session per client, created on the first request; `aclose()` is safe to
  call twice, and without any request having been made.

`discover()` turns labelled, running containers into `Backend`s (address, port, path) for
checks that probe the apps inside the containers.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from pydantic import Field, field_validator, model_validator

from agent.fields import Model
from checks.net import os_reason, printable

if TYPE_CHECKING:
    import aiohttp

# The newest API version whose answers this module reads; an older engine's own version is used
# instead (see `_negotiate`). What is read (State, Health, RestartCount, Labels, Networks) has
# the same shape from 1.24 on; 1.44 added Health.Status "none", which checks/docker.py handles.
API_VERSION = "v1.45"
_VERSION = re.compile(r"^v?([0-9]{1,3})\.([0-9]{1,3})$")
DEFAULT_SOCKET = Path("/var/run/docker.sock")
DEFAULT_TIMEOUT = 10.0
# A list of thousands of containers is a few MB; anything far beyond that is not the engine.
MAX_RESPONSE_BYTES = 32 * 2**20
# sun_path is 108 bytes on Linux, including the terminating NUL: a longer path cannot be connected to.
MAX_SOCKET_PATH = 107
# Enough parallel requests to inspect a host's containers quickly without queueing the engine.
CONNECTION_LIMIT = 8
_USER_AGENT = "mamori"
_FIX_PERMISSION = "mount the socket read-only and add the agent's user to the docker group"
_FIX_MISSING = "is Docker running, and is the socket mounted into the agent's container (read-only)?"


class DockerError(Exception):
    """The engine could not be asked or answered with an error. `str(exc)` is one line for a human;
    `status` is the engine's HTTP status when it answered (e.g. 404 for a vanished container)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _one_line(text: str, limit: int = 300) -> str:
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# aiohttp's parser messages (llhttp's, or its Python parser's), by their start, in HTTP's words:
# the rest of such a message is the parser's (a caret, a Python bytes literal, "RTSP/ or ICE/").
_PARSER_WORDS = (
    (("bad status line", "invalid status code", "expected space after version", "expected dot"),
     "invalid status line"),
    (("invalid header token", "invalid http header", "expected lf after headers", "invalid header value"),
     "invalid header line"),
    (("got more than", "header name is too long", "header value is too long", "status line is too long"),
     "header line too long"),
    (("content-length can't be present", "transfer-encoding can't be present"),
     "Content-Length and Transfer-Encoding both present"),
    (("invalid character in content-length", "duplicate content-length"), "invalid Content-Length"),
    (("chunk size overflow", "invalid character in chunk size"), "invalid chunk size"),
)  # fmt: skip


def _parser_words(message: str) -> str:
    lowered = message.lower()
    for starts, words in _PARSER_WORDS:
        if lowered.startswith(starts):
            return words
    return "not a valid HTTP response"


def connect_error_message(socket: Path | str, exc: OSError) -> str:
    """The one-line message for an OSError met while connecting to the engine's socket."""
    where = f"cannot reach the Docker engine at {socket}"
    if isinstance(exc, PermissionError):
        return f"{where}: permission denied — {_FIX_PERMISSION}"
    if isinstance(exc, FileNotFoundError):
        return f"{where}: no such socket — {_FIX_MISSING}"
    if isinstance(exc, ConnectionRefusedError):
        return f"{where}: connection refused — is the Docker engine running?"
    return f"{where}: {_one_line(os_reason(exc))}"


class DockerClient:
    """Read-only client for one engine socket. Not thread-safe; use from one event loop."""

    def __init__(self, socket: Path | str = DEFAULT_SOCKET, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket = Path(socket)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._version: str | None = None  # negotiated at the first request, e.g. "v1.41"

    async def list_containers(
        self, labels: Mapping[str, str | None], all_: bool = False
    ) -> list[dict[str, Any]]:
        """Containers whose labels match every entry of `labels` (value None: the label is present;
        a string: the label equals it). Running (and paused/restarting) ones only unless `all_`.

        Entries are the engine's JSON objects, unchanged. Raises DockerError."""
        query: dict[str, str] = {"all": "true" if all_ else "false"}
        if labels:
            selectors = [key if value is None else f"{key}={value}" for key, value in labels.items()]
            query["filters"] = json.dumps({"label": selectors}, separators=(",", ":"))
        answer = await self._get("/containers/json", urlencode(query, quote_via=quote))
        if not isinstance(answer, list) or not all(isinstance(c, dict) for c in answer):
            raise DockerError(f"unexpected answer from the Docker engine at {self.socket}: expected a list")
        return answer

    async def inspect(self, id_: str) -> dict[str, Any]:
        """The engine's inspect object for a container (full id, unique id prefix, or name).
        Raises DockerError; `status` 404 means there is no such container (any more)."""
        answer = await self._get(f"/containers/{quote(id_, safe='')}/json")
        if not isinstance(answer, dict):
            raise DockerError(
                f"unexpected answer from the Docker engine at {self.socket}: expected an object"
            )
        return answer

    async def aclose(self) -> None:
        """Close the session. Safe to call twice; later requests raise DockerError."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _session_for_request(self) -> aiohttp.ClientSession:
        # aiohttp (~10 MB, ~0.1 s) is imported only when a check really talks to an engine: the
        # config models of this module are loaded with every `lb` check, Docker or not.
        import aiohttp

        if self._closed:
            raise DockerError(f"the client for the Docker engine at {self.socket} is closed")
        if self._session is None:
            connector = aiohttp.UnixConnector(path=str(self.socket), limit=CONNECTION_LIMIT)
            # Our own deadline (asyncio.timeout) covers connect, headers and body together;
            # trust_env stays off so no proxy variable can redirect a socket request.
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": _USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,
            )
        return self._session

    async def _negotiate(self) -> str:
        """The API version to speak: the lower of the engine's (the `Api-Version` header of
        `GET /_ping`) and ours. An engine that does not say gets ours, and answers for itself."""
        if self._version is None:
            status, headers, body = await self._fetch("/_ping")
            if not 200 <= status < 300:
                why = _error_text(body)
                raise DockerError(
                    f"the Docker engine at {self.socket} answered {status} to GET /_ping: {why}", status
                )
            theirs = _VERSION.match(headers.get("Api-Version", "").strip())
            ours = _VERSION.match(API_VERSION)
            assert ours is not None
            version = (int(ours.group(1)), int(ours.group(2)))
            if theirs is not None:
                version = min(version, (int(theirs.group(1)), int(theirs.group(2))))
            self._version = f"v{version[0]}.{version[1]}"
        return self._version

    async def _get(self, path: str, query: str = "") -> Any:
        try:
            target = f"/{await self._negotiate()}{path}"
            status, _, body = await self._fetch(target, query)
        except DockerError as exc:
            if exc.status is None:
                self._version = None  # the engine may come back as another version (an upgrade)
            raise
        if not 200 <= status < 300:
            raise DockerError(
                f"the Docker engine at {self.socket} answered {status} to GET {target}: {_error_text(body)}",
                status,
            )
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            if isinstance(exc, json.JSONDecodeError):
                detail = exc.msg
            else:
                detail = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "nested too deeply"
            raise DockerError(
                f"invalid JSON from the Docker engine at {self.socket} (GET {target}): {detail}", status
            ) from None

    async def _fetch(self, target: str, query: str = "") -> tuple[int, Mapping[str, str], bytes]:
        """One GET of `target`: (status, headers, body). Raises DockerError for everything that is
        not an HTTP answer (socket, timeout, protocol, size)."""
        import aiohttp
        from yarl import URL

        session = self._session_for_request()
        url = URL(f"http://docker{target}" + (f"?{query}" if query else ""), encoded=True)
        what = f"GET {target}"
        try:
            async with asyncio.timeout(self.timeout):
                async with session.get(url, allow_redirects=False) as resp:
                    status = resp.status
                    headers = resp.headers
                    body = await self._read(resp, what)
        except TimeoutError:
            raise DockerError(
                f"no answer from the Docker engine at {self.socket} within {self.timeout:g}s ({what})"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise DockerError(connect_error_message(self.socket, exc.os_error)) from None
        except aiohttp.ServerDisconnectedError:
            raise DockerError(
                f"the Docker engine at {self.socket} closed the connection without answering ({what})"
            ) from None
        except aiohttp.ClientResponseError as exc:  # not valid HTTP
            raise DockerError(
                f"invalid HTTP from the Docker engine at {self.socket} ({what}): {_parser_words(exc.message)}"
            ) from None
        except aiohttp.ClientPayloadError:
            raise DockerError(
                f"the Docker engine at {self.socket} sent an incomplete or invalid body ({what})"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            # aiohttp's text names its own classes; the OS's names what happened.
            why = os_reason(exc) if isinstance(exc, OSError) else "the connection failed"
            raise DockerError(
                f"connection to the Docker engine at {self.socket} failed ({what}): {_one_line(why)}"
            ) from None
        return status, headers, body

    async def _read(self, resp: aiohttp.ClientResponse, what: str) -> bytes:
        body = bytearray()
        async for chunk in resp.content.iter_any():
            body += chunk
            if len(body) > MAX_RESPONSE_BYTES:
                raise DockerError(
                    f"the Docker engine at {self.socket} sent more than {MAX_RESPONSE_BYTES} bytes ({what})"
                )
        return bytes(body)


def _error_text(body: bytes) -> str:
    """The engine's `{"message": …}`, or the start of whatever else it sent."""
    text = body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return _one_line(text) or "(empty body)"
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return _one_line(parsed["message"])
    return _one_line(text)


# --- reading the engine's JSON ---------------------------------------------------------------
# The engine's answers are data from outside: every accessor tolerates a missing key or a wrong
# type, so a surprising engine produces a note, never an exception in a check.


def obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def integer(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def container_name(entry: Mapping[str, Any]) -> str:
    """The container's own name without the leading "/" (list entries: `Names`; inspect: `Name`).

    `Names` also holds legacy-link aliases ("/app/db"); the container's own name is the one with
    no further "/". Falls back to the short id."""
    names = entry.get("Names")
    candidates = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    if isinstance(entry.get("Name"), str):
        candidates.append(entry["Name"])
    for name in candidates:
        if name.startswith("/") and "/" not in name[1:] and len(name) > 1:
            return name[1:]
    if candidates and candidates[0].strip("/"):
        return candidates[0].strip("/")
    return short_id(entry)


def short_id(entry: Mapping[str, Any]) -> str:
    return text(entry.get("Id"))[:12]


def labels_of(entry: Mapping[str, Any]) -> dict[str, str]:
    """`Labels` of a list entry, or `Config.Labels` of an inspect object."""
    raw = entry.get("Labels") if "Labels" in entry else obj(entry.get("Config")).get("Labels")
    return {k: v for k, v in obj(raw).items() if isinstance(v, str)}


# --- discovery -------------------------------------------------------------------------------

_LABEL_KEY = re.compile(r"^[^=\s]+$")
_PORT = re.compile(r"[0-9]{1,5}")


def _default_labels() -> dict[str, str | None]:
    return {"mamori.probe.port": None}


class ContainerSelector(Model):
    """Which containers: the engine-side label filter plus an optional service name."""

    socket: Path = DEFAULT_SOCKET
    labels: dict[str, str | None] = Field(default_factory=_default_labels)
    service_label: str = Field(default="mamori.service", pattern=_LABEL_KEY.pattern)
    service: str | None = Field(default=None, min_length=1)

    @field_validator("socket")
    @classmethod
    def _socket_path(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path")
        if len(str(value).encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"a unix socket path must be at most {MAX_SOCKET_PATH} bytes")
        return value

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        # The engine splits a selector at its first "=": a key containing one would select by
        # a different key than the one written.
        bad = [k for k in value if not _LABEL_KEY.match(k)]
        if bad:
            raise ValueError(f"invalid label key {bad[0]!r}: must be non-empty, without '=' or spaces")
        return value

    @model_validator(mode="after")
    def _service_agrees_with_labels(self) -> ContainerSelector:
        wanted = self.labels.get(self.service_label)
        if self.service is not None and wanted is not None and wanted != self.service:
            raise ValueError(
                f"service: {self.service!r} contradicts labels[{self.service_label!r}] = {wanted!r}; "
                "no container could match both"
            )
        return self

    def selector(self) -> dict[str, str | None]:
        """The label filter sent to the engine: `labels`, plus `service_label=service` if set."""
        if self.service is None:
            return dict(self.labels)
        return {**self.labels, self.service_label: self.service}


class DiscoveryConfig(ContainerSelector):
    """Where the apps to probe run: containers selected by labels, addressed by labels.

    `network` names the Docker network whose IP is used (Compose names them `<project>_<name>`);
    by default the first network, in name order, on which the container has an address.
    Containers in host network mode have no IP of their own: `host_address` is used for them."""

    port_label: str = Field(default="mamori.probe.port", pattern=_LABEL_KEY.pattern)
    path_label: str = Field(default="mamori.probe.path", pattern=_LABEL_KEY.pattern)
    network: str | None = Field(default=None, min_length=1)
    host_address: str = Field(default="127.0.0.1", min_length=1, pattern=r"^[^\s/@]+$")


@dataclass(frozen=True, slots=True)
class Backend:
    """One probe-able app container."""

    name: str  # container name, without the leading "/"
    host: str  # IP address (or host_address for host network mode)
    port: int
    path: str | None  # from the path label; None when absent
    container_id: str  # short (12 hex digits)
    service: str | None  # value of the service label, None when absent


def _address(entry: Mapping[str, Any], cfg: DiscoveryConfig) -> tuple[str | None, str]:
    """(address, why not) for a list entry."""
    mode = text(obj(entry.get("HostConfig")).get("NetworkMode"))
    if mode == "host":
        return cfg.host_address, ""
    if mode == "none" or mode.startswith("container:"):
        return None, f"network mode {mode} gives it no address of its own"
    networks = obj(obj(entry.get("NetworkSettings")).get("Networks"))

    def ip(name: str) -> str:
        net = obj(networks.get(name))
        return text(net.get("IPAddress")) or text(net.get("GlobalIPv6Address"))

    if cfg.network is not None:
        if cfg.network not in networks:
            attached = ", ".join(sorted(networks)) or "none"
            return None, f"not attached to network {cfg.network} (attached: {attached})"
        return (ip(cfg.network) or None), f"no IP address on network {cfg.network}"
    for name in sorted(networks):
        if ip(name):
            return ip(name), ""
    return None, "no IP address on any network"


def _port(value: str | None, label: str) -> tuple[int | None, str]:
    if value is None:
        return None, f"no {label} label"
    if not _PORT.fullmatch(value) or not 1 <= int(value) <= 65535:
        return None, f"invalid {label} label {value!r} (expected a port 1-65535)"
    return int(value), ""


def to_backend(entry: Mapping[str, Any], cfg: DiscoveryConfig) -> tuple[Backend | None, str]:
    """A list entry as a Backend, or (None, note saying why it is skipped)."""
    name = container_name(entry)
    state = text(entry.get("State")) or "unknown"
    if state != "running":
        return None, f"{name} skipped: {state}"
    labels = labels_of(entry)
    port, why = _port(labels.get(cfg.port_label), cfg.port_label)
    if port is None:
        return None, f"{name} skipped: {why}"
    path = labels.get(cfg.path_label) or None
    if path is not None and (not path.startswith("/") or any(c.isspace() for c in path)):
        return None, f"{name} skipped: invalid {cfg.path_label} label {path!r} (expected /a/path)"
    host, why = _address(entry, cfg)
    if host is None:
        return None, f"{name} skipped: {why}"
    return Backend(name, host, port, path, short_id(entry), labels.get(cfg.service_label)), ""


async def discover(client: DockerClient, cfg: DiscoveryConfig) -> tuple[list[Backend], list[str]]:
    """The running containers selected by `cfg`, as backends sorted by name, and one note per
    selected container that was skipped (not running, bad or missing port label, no address).

    One engine request (the container list). Raises DockerError when the engine cannot be asked."""
    containers = await client.list_containers(cfg.selector(), all_=False)
    backends: list[Backend] = []
    notes: list[str] = []
    for entry in sorted(containers, key=lambda e: (container_name(e), short_id(e))):
        backend, note = to_backend(entry, cfg)
        if backend is not None:
            backends.append(backend)
        else:
            notes.append(note)
    return backends, notes
