"""lab.ports: where the lab's servers are given their ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lab import ports
from lab.ports import free_port, port_is_free


def _floor() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_ports_lie_below_the_kernels_ephemeral_range_and_are_never_repeated() -> None:
    """Neither another process's `bind(0)` nor an outgoing connection's source port can take a
    port from below the ephemeral range, while a container is still being started for it."""
    handed = [free_port() for _ in range(500)]
    assert len(set(handed)) == len(handed)
    assert all(ports._LOWEST <= port < _floor() for port in handed), sorted(handed)[-5:]
    assert all(port_is_free(port) for port in handed)


def test_a_bound_port_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        held = sock.getsockname()[1]
        ports._recent.pop(held, None)  # only the bind check may refuse it here
        # The next draw: a port that is free and not handed out recently (not merely held ± 1,
        # which this process or another may have taken: that made this test fail once in CI).
        spare = next(
            p
            for p in range(ports._LOWEST, _floor())
            if p != held and p not in ports._recent and port_is_free(p)
        )
        draws = iter([held, spare])
        monkeypatch.setattr(ports._random, "randrange", lambda *_: next(draws))
        assert free_port() == spare


def test_without_room_below_the_range_it_takes_the_kernels_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_ephemeral_floor", lambda: ports._LOWEST + 10)
    port = free_port()
    assert port >= _floor() and port_is_free(port)
