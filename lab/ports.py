"""Ports on 127.0.0.1, where everything the lab, the tests and the benchmarks start listens."""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress

HOST = "127.0.0.1"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (bound to port 0, read back, closed):
    nothing listens there, so connecting to it is refused until someone takes it."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


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
