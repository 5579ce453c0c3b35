"""What the network checks (http, tcp) share: resolve, connect, phase timing, failures as values.

Inside a probe a failing target is raised as `ProbeError` (reason + short human message) so the
happy path reads straight through; each check's `run()` catches it and returns a `CheckOutcome`.
`ProbeError` must never escape `run()`.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from agent.model import Reason, Sample, Status

IpProtocol = Literal["ip4", "ip6"]

# One read from the socket; also the most any single read can add to memory.
READ_SIZE = 64 * 1024


def compile_regex(value: Any) -> Any:
    """Compile at config load so a bad pattern is a config error naming the pattern."""
    if isinstance(value, str):
        try:
            return re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


Regex = Annotated[re.Pattern[str], BeforeValidator(compile_regex)]


def printable(text: str) -> str:
    """`text` with every character that is not printable escaped (controls, tabs, line and
    paragraph separators, ESC): what a target sent stays on the message's one line, and a
    terminal shows it rather than obeying it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def quote_bytes(data: bytes, limit: int = 32) -> str:
    """Bytes a target sent, for a message: in double quotes, printable ASCII as it is and any
    other byte as \\xNN, cut after `limit` bytes."""
    shown = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in data[:limit])
    return f'"{shown}"' + ("..." if len(data) > limit else "")


def peer_text(raw: bytes, limit: int = 80) -> str:
    """Text a target sent (a reason phrase): UTF-8 if it is, else Latin-1 (what HTTP allowed),
    printable and at most `limit` characters."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return printable(text if len(text) <= limit else text[: limit - 3] + "...")


def os_reason(exc: OSError) -> str:
    """The operating system's words for `exc` ("Connection refused"), without Python's."""
    if exc.strerror:
        return str(exc.strerror)
    if exc.errno:
        return os.strerror(exc.errno)
    return "connection failed"


@dataclass(frozen=True, slots=True)
class Failure:
    status: Status
    reason: Reason
    message: str


class ProbeError(Exception):
    """A target failure inside a probe. Carries a `Failure`; caught by the check's `run()`."""

    def __init__(self, reason: Reason, message: str, status: Status = Status.CRITICAL) -> None:
        super().__init__(message)
        self.failure = Failure(status, reason, message)


@dataclass(frozen=True, slots=True)
class Address:
    """One resolved address: `host` is an IP literal."""

    family: int
    host: str
    port: int

    @property
    def ip_version(self) -> int:
        return 6 if self.family == socket.AF_INET6 else 4

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"


def host_port(host: str, port: int) -> str:
    """`host:port`, with brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Phases:
    """Accumulated time per named phase, plus the phase in progress (for timeout messages).

    `with phases.phase(name):` times one phase; phases follow one another, never nest. A phase
    interrupted by an exception (a timeout included) still records its elapsed time.
    """

    # The context manager is the object itself rather than a generator (contextlib): a probe
    # enters four or five phases, and a generator-based one costs several times as much.
    __slots__ = ("_t0", "current", "seconds")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(names, 0.0)
        self.current: str = names[0]
        self._t0 = 0.0

    def phase(self, name: str) -> Phases:
        self.current = name
        return self

    def __enter__(self) -> None:
        self._t0 = time.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        self.seconds[self.current] += time.monotonic() - self._t0

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def samples(self, metric: str) -> tuple[Sample, ...]:
        return tuple(Sample(metric, round(v, 9), _phase_labels(k)) for k, v in self.seconds.items())


@functools.cache
def _phase_labels(name: str) -> tuple[tuple[str, str], ...]:
    # Phase names are a few constants: one labels tuple each, shared by every check's latest
    # result (10 000 http checks hold ~5 MB less, issue 16).
    return (("phase", name),)


def _ordered(infos: list[Any], preferred: IpProtocol, fallback: bool) -> list[tuple[int, str]]:
    want = socket.AF_INET6 if preferred == "ip6" else socket.AF_INET
    seen: list[tuple[int, str]] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr[0]) not in seen:
            seen.append((family, sockaddr[0]))
    first = [a for a in seen if a[0] == want]
    return first + ([a for a in seen if a[0] != want] if fallback else [])


@functools.lru_cache(maxsize=4096)
def _literal_family(host: str) -> int | None:
    """The address family of an IP literal, None for a host name: asked on every probe of the
    same few hosts, and `ip_address` raises twice for a name."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if literal.version == 6 else socket.AF_INET


async def resolve(host: str, port: int, preferred: IpProtocol, fallback: bool) -> Address:
    """The address to probe: the first of the preferred family, else (with `fallback`) of the other.

    Raises ProbeError(dns). An IP literal is used as it is: no lookup, and no trip through the
    resolver's thread pool (whose first use costs milliseconds).
    """
    family = _literal_family(host)
    if family is not None:
        return Address(family, host, port)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ProbeError(Reason.DNS, f"cannot resolve {host}: {exc.strerror or 'lookup failed'}") from None
    except UnicodeError:
        raise ProbeError(Reason.DNS, f"cannot resolve {host}: invalid name") from None
    candidates = _ordered(infos, preferred, fallback)
    if not candidates:
        wanted = "IPv6" if preferred == "ip6" else "IPv4"
        why = f"no {wanted} address (ip_protocol_fallback is off)" if not fallback else "no IP address"
        raise ProbeError(Reason.DNS, f"cannot resolve {host}: {why}")
    family, ip = candidates[0]
    return Address(family, ip, port)


def connect_failure(exc: OSError, address: Address) -> ProbeError:
    """Map a connect() error to a reason."""
    if isinstance(exc, ConnectionRefusedError):
        return ProbeError(Reason.REFUSED, f"connection refused by {address}")
    if isinstance(exc, ConnectionResetError):
        return ProbeError(Reason.CONNECTION_RESET, f"connection reset by {address}")
    detail = os_reason(exc)
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return ProbeError(Reason.UNREACHABLE, f"{address} unreachable ({detail})")
    # Anything else (ETIMEDOUT surfaces as TimeoutError and is handled by the caller's deadline).
    return ProbeError(Reason.UNREACHABLE, f"cannot connect to {address} ({detail})")


async def open_connection(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to `address`. Raises ProbeError(refused|unreachable|connection_reset)."""
    try:
        return await asyncio.open_connection(
            address.host, address.port, family=address.family, limit=READ_SIZE
        )
    except TimeoutError:
        raise
    except OSError as exc:
        raise connect_failure(exc, address) from None


def write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """`writer.write(data)`, unless the connection is already closed (the peer reset it before we
    spoke): asyncio's loop drops such a write, uvloop's raises RuntimeError. Either way the
    caller's `drain()` then raises the connection's error, an OSError it maps to a reason."""
    if not writer.transport.is_closing():
        writer.write(data)


def connection_lost(exc: OSError, when: str) -> ProbeError:
    """A connection that broke after it was established: always connection_reset."""
    if isinstance(exc, ConnectionResetError):
        return ProbeError(Reason.CONNECTION_RESET, f"connection reset by peer {when}")
    return ProbeError(Reason.CONNECTION_RESET, f"connection lost {when} ({os_reason(exc)})")


def abort(writer: asyncio.StreamWriter | None) -> None:
    """Drop a connection now, without waiting for the peer: a probe never waits on a close."""
    if writer is not None:
        writer.transport.abort()


def timeout_failure(timeout: float, doing: str) -> Failure:
    return Failure(Status.CRITICAL, Reason.TIMEOUT, f"timeout after {timeout:g}s {doing}")
