"""Ports on 127.0.0.1, where everything the lab, the tests and the benchmarks start listens."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections import OrderedDict
from contextlib import suppress
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago: nothing listens there, so connecting to
    it is refused until someone takes it.

    It is drawn at random from below the kernel's ephemeral range (`ip_local_port_range`), where
    neither `bind(port 0)` nor an outgoing connection's source port can land: the time between
    this call and the server's own bind (an image build, a container start, under a parallel
    suite's load) is then no window for another process to take it. No port is handed out twice
    by one process while it is still among its recent ones. Falls back to the kernel's choice
    when that range is too narrow or full."""
    floor = _ephemeral_floor()
    if floor - _LOWEST >= _MIN_SPAN:
        for _ in range(_ATTEMPTS):
            port = _random.randrange(_LOWEST, floor)
            if port not in _recent and port_is_free(port):
                return _remember(port)
    while True:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _recent:
            return _remember(port)


_LOWEST = 15000  # above the usual fixed service ports (postgres 5432, 8080, 9090-9200...)
_MIN_SPAN = 2000
_ATTEMPTS = 200
_RECENT = 4096
_random = random.Random(os.urandom(16))  # not the global one: tests may seed that alike
_recent: OrderedDict[int, None] = OrderedDict()


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out on its own (32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _remember(port: int) -> int:
    _recent[port] = None
    while len(_recent) > _RECENT:
        _recent.popitem(last=False)
    return port


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:`port` can be bound now."""
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


async def accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether 127.0.0.1:port accepts a TCP connection now (a start-up wait polls this)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return True
