"""`HAProxy`: the real haproxy binary as the lab's HTTPS load balancer, with fault switches.

    lb = HAProxy(directory, [Backend("app-1", 8001), ...], certs.valid)
    await lb.start()                 # TLS on 127.0.0.1:lb.port, stats on lb.stats_port,
                                     # the runtime API on lb.runtime_port (all 127.0.0.1)
    await lb.backend_states()        # {"app-1": "UP", ...} from the stats CSV
    await lb.break_route(); await lb.fix_route()
    await lb.slow_health_checks(); await lb.fast_health_checks()
    await lb.set_persistence("off")  # or "ignored"; "cookie" (the default) pins sessions
    await lb.stop()

HAProxy runs in the foreground (`-db`) as our child process, so its PID is ours to signal and
its alerts go to `DIRECTORY/haproxy.stderr` (the config has no `log` line). The config, the
certificate bundle and that file live in `directory`. The fault switches rewrite the config and
restart HAProxy on the same ports, carrying its view of the servers over the restart the way a
production reload does (`server-state-file`), so a switch never changes which servers are UP.
`stop()` then `start()` is a crash and a cold start instead: every server starts as "UP 1/2" and
its first failed check marks it DOWN.

Where `setpriv` exists (util-linux), HAProxy is started with a parent-death signal, so it cannot
outlive the Python process that started it (a test run killed with SIGKILL, for instance).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lab.apps import HEALTH_CHECK_AGENT
from lab.certs import DEFAULT_DNS_NAME, Leaf
from lab.ports import accepts, free_port
from lab.process import Child, ChildExited
from lab.wait import wait_until

HOST = "127.0.0.1"
BACKEND = "app"  # the backend every request goes to while the route is intact
FAST_CHECK_INTERVAL_MS = 500
SLOW_CHECK_INTERVAL_MS = 10_000
_START_TIMEOUT = 5.0  # HAProxy listens within ~20 ms; this only bounds a broken start
_STOP_TIMEOUT = 2.0  # SIGTERM stops HAProxy at once; SIGKILL after this
COOKIE = "SERVERID"  # the persistence cookie; its value is the server's name

# "cookie": sessions are pinned by COOKIE (the seed's setup); "off": no cookie at all;
# "ignored": the cookie is still set, but the frontend strips it from requests, so HAProxy
# balances every request.
Persistence = Literal["cookie", "off", "ignored"]


class HAProxyError(RuntimeError):
    """HAProxy did not start (or did not listen); the message ends with its stderr."""


@dataclass(frozen=True)
class Backend:
    """One server of the `app` backend: its name (also its persistence cookie) and its port."""

    name: str
    port: int


class HAProxy:
    """One HAProxy process terminating TLS for `backends`, restartable on the same ports.

    `port`/`stats_port` 0 (the default) pick free ports now, so `url` is known before `start()`;
    if one is taken by the time HAProxy binds, the first start picks others (up to three tries).
    Later starts always reuse the ports of the first successful one.
    """

    def __init__(
        self,
        directory: Path,
        backends: Sequence[Backend],
        tls: Leaf,
        *,
        backend_tls: bool = False,
        public_name: str = DEFAULT_DNS_NAME,
        port: int = 0,
        stats_port: int = 0,
        binary: str = "haproxy",
    ) -> None:
        self.directory = directory
        self.backends = tuple(backends)
        self.tls = tls
        self.backend_tls = backend_tls
        self.public_name = public_name
        self.binary = binary
        self._auto_ports = port == 0 or stats_port == 0
        self.port, self.stats_port, self.runtime_port = self._pick_ports(port, stats_port)
        self.config_file = directory / "haproxy.cfg"
        self.pem_file = directory / "frontend.pem"
        self.stderr_file = directory / "haproxy.stderr"
        self.state_file = directory / "servers.state"
        self.route_broken = False
        self.check_interval_ms = FAST_CHECK_INTERVAL_MS
        self.persistence: Persistence = "cookie"
        self._child = Child("haproxy", log_file=self.stderr_file, truncate_log=True, grace=_STOP_TIMEOUT)
        self._started_once = False
        self._load_state = False

    @staticmethod
    def _pick_ports(port: int, stats_port: int) -> tuple[int, int, int]:
        """The frontend, stats and runtime API ports: the given ones, free ones for 0s, distinct."""
        chosen: list[int] = []
        for wanted in (port, stats_port, 0):
            while wanted in (0, *chosen):
                wanted = free_port()
            chosen.append(wanted)
        return chosen[0], chosen[1], chosen[2]

    # --- addresses ---------------------------------------------------------------------------------

    def url(self, path: str = "/") -> str:
        """`https://127.0.0.1:PORT{path}` — the load balancer as clients reach it."""
        return f"https://{HOST}:{self.port}{path}"

    @property
    def stats_url(self) -> str:
        """The HTML stats page; append `;csv` for CSV."""
        return f"http://{HOST}:{self.stats_port}/stats"

    @property
    def running(self) -> bool:
        return self._child.running

    @property
    def pid(self) -> int | None:
        return self._child.pid

    # --- the config ---------------------------------------------------------------------------------

    def config_text(self) -> str:
        """The configuration for the current switches (what start() writes to `config_file`)."""
        # Health checks reuse the server's TLS when it has `ssl`; verify none because the lab's
        # backends present a certificate for the public name, not for 127.0.0.1.
        server_tls = " ssl verify none" if self.backend_tls else ""
        pinned = self.persistence != "off"
        servers = "\n".join(
            f"    server {b.name} {HOST}:{b.port} check{f' cookie {b.name}' if pinned else ''}{server_tls}"
            for b in self.backends
        )
        persistence = f"\n    cookie {COOKIE} insert indirect nocache" if pinned else ""
        # A rule that strips request cookies before the backend reads them (seen in the wild to
        # make responses cacheable) leaves HAProxy balancing every request and setting a new cookie.
        strip = "\n    http-request del-header Cookie" if self.persistence == "ignored" else ""
        # A broken route sends everything to a backend without servers: HAProxy itself answers
        # 503, while the app backend keeps its servers and health checks (stats still show them).
        default_backend = "no_servers" if self.route_broken else BACKEND
        state_file, load_state = "", ""
        if self._load_state:
            state_file = f"\n    server-state-file {self.state_file}"
            load_state = "\n    load-server-state-from-file global"
        return f"""\
# Written by lab/haproxy.py; the lab's fault switches rewrite it and restart HAProxy.
global
    nbthread 1
    maxconn 4096
    stats socket ipv4@{HOST}:{self.runtime_port} level admin{state_file}

defaults
    mode http
    # One retry, after HAProxy's 1 s turnaround: a request sent to a dead server that is still
    # UP in HAProxy's view fails with 503 in ~1 s instead of ~3 s. No `option redispatch`, so
    # that case stays visible to clients, as it is in production.
    retries 1
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    timeout check 1s

frontend web
    bind {HOST}:{self.port} ssl crt {self.pem_file} alpn h2,http/1.1
    default_backend {default_backend}{strip}

backend {BACKEND}
    balance roundrobin{load_state}{persistence}
    option httpchk GET /api/health HTTP/1.1
    http-check send hdr Host {self.public_name} hdr User-Agent {HEALTH_CHECK_AGENT}
    http-check expect status 200
    default-server inter {self.check_interval_ms}ms fall 2 rise 2
{servers}

backend no_servers

listen stats
    bind {HOST}:{self.stats_port}
    stats enable
    stats uri /stats
"""

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Write the config and start HAProxy; return once its stats answer and its frontend
        accepts connections (~50 ms).

        Does nothing if already running. Raises HAProxyError (with HAProxy's stderr) if it exits
        or does not listen within 5 s; nothing is left running then, nor after a cancellation.
        """
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # HAProxy wants the certificate and its key in one file.
        self.pem_file.write_bytes(self.tls.cert_file.read_bytes() + self.tls.key_file.read_bytes())
        for attempt in range(3):
            try:
                await self._spawn()
            except HAProxyError as exc:
                retry = not self._started_once and self._auto_ports and attempt < 2
                if not (retry and "cannot bind socket" in str(exc)):
                    raise
                self.port, self.stats_port, self.runtime_port = self._pick_ports(0, 0)
            else:
                self._started_once = True
                return

    async def _spawn(self) -> None:
        self.config_file.write_text(self.config_text())
        self._child.start([self.binary, "-f", str(self.config_file), "-db"])

        async def listening() -> bool:
            # Ready when the stats answer as HAProxy's do: HAProxy binds every listener before it
            # serves any, so this also proves the frontend port is HAProxy's, not another process's.
            return await self._stats_answer() and await accepts(self.port)

        try:
            try:
                await self._child.wait_ready("haproxy to listen", listening, _START_TIMEOUT, interval=0.005)
            except ChildExited as exc:
                raise HAProxyError(f"haproxy exited with status {exc.returncode}: {self._stderr()}") from None
            except TimeoutError:
                raise HAProxyError(
                    f"haproxy not listening after {_START_TIMEOUT:g} s: {self._stderr()}"
                ) from None
        except BaseException:  # cancelled too: a start that did not finish leaves nothing running
            await self.stop()
            raise

    async def _stats_answer(self) -> bool:
        try:
            await self.backend_states()
        except OSError:
            return False
        return True

    def _stderr(self) -> str:
        try:
            text = self.stderr_file.read_text(errors="replace").strip()
        except OSError as exc:
            text = f"(cannot read {self.stderr_file}: {exc})"
        return text or "(stderr empty)"

    async def stop(self) -> None:
        """Terminate HAProxy by its PID and wait for it to exit (SIGKILL after 2 s).

        Safe to call twice and before start(). The signal is sent before the first await, so even
        a cancelled stop() ends HAProxy. Its ports are closed when this returns.
        """
        await self._child.stop()

    async def _reconfigure(self) -> None:
        # A restart rather than a seamless reload (simpler; the lab has no long-lived connections
        # to keep), but with the servers' state carried over as a reload would: without it every
        # server would restart as "UP 1/2", and a dead one would be routed to until checked.
        # If HAProxy is stopped, the next start() uses the new config, cold.
        if not self.running:
            self.config_file.write_text(self.config_text())
            return
        try:
            self.state_file.write_text(await self.runtime("show servers state"))
            self._load_state = True
        except OSError:
            pass  # HAProxy not answering: restart cold rather than not at all
        try:
            await self.stop()
            await self.start()
        finally:
            self._load_state = False
            self.state_file.unlink(missing_ok=True)

    async def runtime(self, command: str) -> str:
        """One command on HAProxy's runtime API (admin level), e.g. "disable server app/app-1";
        returns its answer. Raises OSError when HAProxy does not answer in 2 s."""
        async with asyncio.timeout(2.0):
            reader, writer = await asyncio.open_connection(HOST, self.runtime_port)
            try:
                writer.write(command.encode() + b"\n")
                answer = await reader.read()  # without "prompt" mode HAProxy closes after one
            finally:
                writer.close()
                with suppress(OSError):
                    await writer.wait_closed()
        return answer.decode()

    # --- fault switches --------------------------------------------------------------------------

    async def break_route(self) -> None:
        """The load balancer answers 503 (no server available) to everything; backends untouched."""
        self.route_broken = True
        await self._reconfigure()

    async def fix_route(self) -> None:
        """Route to the app backend again."""
        self.route_broken = False
        await self._reconfigure()

    async def slow_health_checks(self) -> None:
        """Check every 10 s: a backend that dies stays UP in HAProxy's view for ~20 s (two failed
        checks), and requests routed to it get 503 after HAProxy's retry."""
        self.check_interval_ms = SLOW_CHECK_INTERVAL_MS
        await self._reconfigure()

    async def set_persistence(self, mode: Persistence) -> None:
        """Pin sessions by cookie ("cookie", the default), not at all ("off"), or set the cookie
        but balance every request anyway ("ignored")."""
        self.persistence = mode
        await self._reconfigure()

    async def fast_health_checks(self) -> None:
        """Back to checks every 500 ms (a dead backend is DOWN within about 1 s)."""
        self.check_interval_ms = FAST_CHECK_INTERVAL_MS
        await self._reconfigure()

    # --- HAProxy's view ---------------------------------------------------------------------------

    async def backend_states(self) -> dict[str, str]:
        """Each app server's status column from the stats CSV: "UP", "DOWN", "UP 1/2" (going
        down), "DOWN 1/2" (going up), "MAINT", "no check".

        Raises OSError (TimeoutError included) when the stats listener does not answer in 2 s.
        """
        async with asyncio.timeout(2.0):
            reader, writer = await asyncio.open_connection(HOST, self.stats_port)
            try:
                writer.write(b"GET /stats;csv HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                raw = await reader.read()
            finally:
                writer.close()
                with suppress(OSError):
                    await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        if status_line.split(b" ")[1:2] != [b"200"]:
            raise OSError(f"HAProxy stats answered {status_line!r}")
        if b"transfer-encoding: chunked" in head.lower():  # HAProxy chunks even for HTTP/1.0
            body = _dechunk(body)
        rows = csv.DictReader(io.StringIO(body.decode().removeprefix("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    async def wait_until_sees(self, states: Mapping[str, str], timeout: float = 5.0) -> float:
        """Poll the stats until every named server has the given status; return the seconds waited.

        Raises TimeoutError naming what HAProxy saw last. Servers not named are not looked at.
        """
        last = "nothing"

        async def sees() -> bool:
            nonlocal last
            try:
                seen = await self.backend_states()
            except OSError as exc:
                last = f"no stats ({exc!r})"  # HAProxy restarting or stopped: keep waiting
                return False
            last = str(seen)
            return all(seen.get(name) == want for name, want in states.items())

        try:
            return await wait_until(f"HAProxy to see {dict(states)}", sees, timeout)
        except TimeoutError:
            raise TimeoutError(f"after {timeout:g} s HAProxy sees {last}, not {dict(states)}") from None


def _dechunk(data: bytes) -> bytes:
    """The payload of a complete chunked body. Raises OSError if it is not one."""
    out = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0], 16)
        except ValueError:
            raise OSError(f"bad chunk size line {size_line[:40]!r} in HAProxy's stats") from None
        if size == 0:
            return bytes(out)
        if len(data) < size + 2:
            raise OSError("HAProxy's stats ended inside a chunk")
        out += data[:size]
        data = data[size + 2 :]
