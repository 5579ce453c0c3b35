"""The agent's event loop (agent/eventloop.py): MAMORI_EVENT_LOOP's choice and its validation, the
fallback without uvloop, and the check types giving the same results on uvloop as on asyncio's loop.

The parity tests probe real local servers that run on a loop of their own, in a thread, so both
loops probe the very same servers (same ports, same certificates) and a result must be equal
field by field: status, reason, message, the series and their labels, every value that is not a
time, and the same phases timed (a phase's duration > 0 on one loop is > 0 on the other).
Subprocess tests (`agentctl run` in test_signals, test_cli…) run on uvloop by default, as shipped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from agent.eventloop import ENV, EventLoop, EventLoopError, choose
from agent.model import CheckResult, Reason, Status
from agent.runner import execute
from checks.http.check import HttpCheck
from checks.net import write
from checks.tcp import TcpCheck
from lab.certs import Certs, make_certs, server_context
from lab.ports import free_port
from tests.servers import Server, banner, serve_http, serve_tcp

T = TypeVar("T")
UVLOOP_VERSION = version("uvloop")
REPO = Path(__file__).resolve().parents[2]


# --- the choice -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "auto", " AUTO ", "uvloop", "UVLoop"])
def test_auto_and_uvloop_choose_uvloop(value: str | None) -> None:
    loop = choose({} if value is None else {ENV: value})
    assert loop.name == f"uvloop {UVLOOP_VERSION}"
    assert loop.factory is uvloop.new_event_loop


def test_asyncio_chooses_asyncios_own_loop() -> None:
    loop = choose({ENV: "asyncio"})
    assert (loop.name, loop.factory) == ("asyncio", None)


@pytest.mark.parametrize("value", ["uv", "trio", "1", "uvloop,asyncio"])
def test_a_bad_value_is_one_line_naming_the_choices(value: str) -> None:
    with pytest.raises(EventLoopError) as err:
        choose({ENV: value})
    assert str(err.value) == (
        f"invalid MAMORI_EVENT_LOOP={value!r}: use auto, uvloop, asyncio (default: auto, uvloop if installed)"
    )


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    assert choose({}) == EventLoop("asyncio (uvloop is not installed)", None)
    assert choose({ENV: "asyncio"}) == EventLoop("asyncio", None)
    with pytest.raises(EventLoopError, match=r"^MAMORI_EVENT_LOOP=uvloop, but uvloop cannot be imported"):
        choose({ENV: "uvloop"})


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_run_runs_on_the_chosen_loop_and_closes_it(name: str) -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> int:
        seen.append(asyncio.get_running_loop())
        return 42

    assert choose({ENV: name}).run(main()) == 42
    expected = uvloop.Loop if name == "uvloop" else asyncio.BaseEventLoop
    assert isinstance(seen[0], expected)
    assert (name == "uvloop") == isinstance(seen[0], uvloop.Loop)
    assert seen[0].is_closed()


def test_agentctl_check_refuses_a_bad_value_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check", "tcp://127.0.0.1:1"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), ENV: "libuv"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (3, "")  # a usage error of `check`: UNKNOWN
    assert proc.stderr == (
        "agentctl: invalid MAMORI_EVENT_LOOP='libuv': use auto, uvloop, asyncio"
        " (default: auto, uvloop if installed)\n"
    )


def test_agentctl_run_refuses_a_bad_value_in_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), ENV: "libuv"}
    cmd = [sys.executable, "-m", "agent.cli", "run", "--listen", f"127.0.0.1:{free_port()}"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "agentctl: invalid MAMORI_EVENT_LOOP='libuv': use auto, uvloop, asyncio"
        " (default: auto, uvloop if installed)"
    ]


# --- the same results on both loops -----------------------------------------------------------


class ServerThread:
    """The tests' servers on an asyncio loop of their own in a thread, so the loop under test
    only probes them. `enter(cm)` enters an async context manager there, for the module's life."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="servers", daemon=True)
        self._thread.start()
        self._stack = AsyncExitStack()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def enter(self, cm: AbstractAsyncContextManager[T]) -> T:
        async def enter() -> T:
            return await self._stack.enter_async_context(cm)

        result: T = self._call(enter())
        return result

    def close(self) -> None:
        self._call(self._stack.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class Servers:
    def __init__(self, thread: ServerThread, certs: Certs) -> None:
        self.certs = certs
        self.http = thread.enter(serve_http())
        self.https = thread.enter(serve_http(ssl_context=server_context(certs.valid)))
        self.self_signed = thread.enter(serve_http(ssl_context=server_context(certs.self_signed)))
        self.expired = thread.enter(serve_http(ssl_context=server_context(certs.expired)))
        self.wrong_host = thread.enter(serve_http(ssl_context=server_context(certs.wrong_host)))
        self.banner = thread.enter(serve_tcp(banner(b"SSH-2.0-test\r\n")))
        self.tls_banner = thread.enter(serve_tcp(banner(b"hello\r\n"), server_context(certs.valid)))
        self.closed_port = free_port()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    thread = ServerThread()
    try:
        yield Servers(thread, make_certs(tmp_path_factory.mktemp("certs")))
    finally:
        thread.close()


def _ca(s: Servers) -> dict[str, Any]:
    return {"tls": {"ca_file": str(s.certs.ca_file)}}


def _url(server: Server, path: str, host: str | None = None) -> str:
    return server.url(path, host)


# name -> the check to run against the servers; each is built inside the loop under test.
CASES: dict[str, Callable[[Servers], Any]] = {
    "http ok": lambda s: HttpCheck.from_url(_url(s.http, "/health"), timeout=2.0),
    "http by name (resolver)": lambda s: HttpCheck.from_url(
        _url(s.http, "/health", "localhost"), timeout=2.0
    ),
    "http unresolvable name": lambda s: HttpCheck.from_url("http://no-such-host.invalid/", timeout=2.0),
    "http 503": lambda s: HttpCheck.from_url(_url(s.http, "/status/503"), timeout=2.0),
    "http redirect": lambda s: HttpCheck.from_url(_url(s.http, "/redirect"), timeout=2.0),
    "http big body": lambda s: HttpCheck.from_url(_url(s.http, "/big?bytes=300000"), timeout=2.0),
    "http reset": lambda s: HttpCheck.from_url(_url(s.http, "/reset"), timeout=2.0),
    "http garbage": lambda s: HttpCheck.from_url(_url(s.http, "/garbage"), timeout=2.0),
    "http timeout": lambda s: HttpCheck.from_url(_url(s.http, "/slow?ms=3000"), timeout=0.15),
    "http refused": lambda s: HttpCheck.from_url(f"http://127.0.0.1:{s.closed_port}/", timeout=2.0),
    "https ok": lambda s: HttpCheck.from_url(_url(s.https, "/health"), timeout=2.0, **_ca(s)),
    "https by name (SNI)": lambda s: HttpCheck.from_url(
        _url(s.https, "/health", "localhost"), timeout=2.0, **_ca(s)
    ),
    "https untrusted": lambda s: HttpCheck.from_url(_url(s.self_signed, "/health"), timeout=2.0, **_ca(s)),
    "https expired": lambda s: HttpCheck.from_url(_url(s.expired, "/health"), timeout=2.0, **_ca(s)),
    "https wrong host": lambda s: HttpCheck.from_url(_url(s.wrong_host, "/health"), timeout=2.0, **_ca(s)),
    "tcp banner": lambda s: TcpCheck.from_url(
        f"tcp://127.0.0.1:{s.banner.port}", timeout=2.0, expect="^SSH-"
    ),
    "tcp send/expect": lambda s: TcpCheck.from_url(
        f"tcp://127.0.0.1:{s.banner.port}", timeout=2.0, send="ping\n", expect="ping"
    ),
    "tcp refused": lambda s: TcpCheck.from_url(f"tcp://127.0.0.1:{s.closed_port}", timeout=2.0),
    "tls ok": lambda s: TcpCheck.from_url(
        f"tls://127.0.0.1:{s.tls_banner.port}", timeout=2.0, expect="^hello", **_ca(s)
    ),
    "tls untrusted": lambda s: TcpCheck.from_url(f"tls://127.0.0.1:{s.tls_banner.port}", timeout=2.0),
}


def _comparable(result: CheckResult) -> dict[str, Any]:
    """What must be equal on both loops: everything but how long things took."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
    for s in result.samples:
        timed = s.name.endswith("duration_seconds") or s.name == "probe_dns_lookup_time_seconds"
        samples[(s.name, s.labels)] = (s.value > 0) if timed else s.value
    return {
        "status": result.status,
        "reason": result.reason,
        "message": re.sub(r"\b\d+\.\d+s\b", "<time>", result.message),  # "200 OK, 40 bytes in 0.006s"
        "attempts": result.attempts,
        "samples": samples,
    }


def _run_on(loop_name: str, make: Callable[[], Any]) -> CheckResult:
    async def main() -> CheckResult:
        check = make()
        try:
            return await execute(check)
        finally:
            await check.aclose()

    return choose({ENV: loop_name}).run(main())


@pytest.mark.parametrize("case", list(CASES))
def test_a_check_gives_the_same_result_on_uvloop_as_on_asyncio(servers: Servers, case: str) -> None:
    on_asyncio = _run_on("asyncio", lambda: CASES[case](servers))
    on_uvloop = _run_on("uvloop", lambda: CASES[case](servers))
    assert _comparable(on_uvloop) == _comparable(on_asyncio)
    if case.endswith(" ok"):
        assert (on_uvloop.status, on_uvloop.reason) == (Status.OK, Reason.OK)


@pytest.mark.parametrize("name", ["asyncio", "uvloop"])
def test_a_write_on_a_connection_already_closed_is_an_oserror_on_both_loops(
    servers: Servers, name: str
) -> None:
    """uvloop raises RuntimeError on a write to a closed transport where asyncio's loop drops it:
    checks write through checks.net.write, so a peer that reset first is connection_reset, not a bug."""

    async def main() -> None:
        _, writer = await asyncio.open_connection(servers.http.host, servers.http.port)
        writer.transport.abort()  # what the loop does on seeing the peer's reset
        for _ in range(3):
            await asyncio.sleep(0)
        write(writer, b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises(OSError):
            await writer.drain()

    choose({ENV: name}).run(main())


def test_the_tls_details_read_from_the_ssl_object_are_there_on_uvloop(servers: Servers) -> None:
    result = _run_on("uvloop", lambda: CASES["https ok"](servers))
    values = {(s.name, s.labels): s.value for s in result.samples}
    assert values[("probe_tls_version_info", (("version", "TLS 1.3"),))] == 1
    assert values[("probe_ssl_earliest_cert_expiry", ())] == servers.certs.valid.not_after.timestamp()
    assert values[("probe_http_duration_seconds", (("phase", "tls"),))] > 0
    assert values[("probe_http_duration_seconds", (("phase", "connect"),))] > 0


def test_the_agent_logs_its_loop_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """The line `agentctl run` logs (cmd_run), checked where it is made."""
    from agent import cli

    loops: list[str] = []

    class FakeAgent:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        async def run(self) -> int:
            loops.append(type(asyncio.get_running_loop()).__module__)
            return 0

    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.INFO, "mamori.agent"):
        mp.setattr("agent.runtime.Agent", FakeAgent)
        mp.setattr("agent.logs.setup", lambda *a: None)
        mp.delenv(ENV, raising=False)
        assert cli.main(["run", "--listen", f"127.0.0.1:{free_port()}"]) == 0
    assert loops == ["uvloop"]
    assert [r.getMessage() for r in caplog.records if r.name == "mamori.agent"] == [
        f"event loop: uvloop {UVLOOP_VERSION}"
    ]
