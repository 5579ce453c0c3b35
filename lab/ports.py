"""Ports of the lab's servers, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
from contextlib import suppress

HOST = "127.0.0.1"


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
