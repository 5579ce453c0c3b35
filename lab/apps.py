"""`AppServer`: one stand-in for a Next.js container behind the lab's load balancer.

    app = AppServer("app-1")                 # or ssl_context=server_context(certs.named)
    await app.start()                        # 127.0.0.1:<free port>, kept for the server's life
    app.slow(300); app.error(503); app.hang(); app.db_down(); app.healthy()
    await app.down(); await app.up()         # connections refused, then listening on the same port
    await app.stop()

Routes (every method is answered the same way):
    /api/health   200 {"status": "ok", "db": {"status": "up"}, "instance": NAME, "version": V}
    /             200, a small HTML page naming the instance
    anything else 404 {"status": "not found"}
Every response carries `X-Instance: NAME` and `X-Version: V`, so a client behind the load
balancer can tell which instance (and which release) answered. The fault switches apply to every
path.

In a container (lab/docker_apps.py) the same server runs as a process:
`python3 -m lab.apps --name app-1 --port 8081 [--version 2] [--mode error:500] [--control-port
9081] [--cert F --key F]`. `--mode` is the mode it starts in (`healthy`, `slow:MS`, `error:STATUS`,
`hang`, `db_down`, `exit:CODE` to exit at once, `memory` to allocate until killed); the control
port (127.0.0.1) takes `PUT /mode` with the same words as its body, so a test flips a running
container's behaviour like an in-process one's.

The behaviour switches take effect at the next request and are kept across `down()`/`up()`: a
container that restarts with the same bug still has it. They are plain methods so a test, a
benchmark or `python -m lab.demo` flips them from the same event loop without restarting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
from typing import Literal

from aiohttp import web

HOST = "127.0.0.1"
# HAProxy's health checks send this User-Agent (see lab/haproxy.py), so they are counted
# apart from the traffic a test sends: `requests` then says exactly which instance the LB chose.
HEALTH_CHECK_AGENT = "mamori-lab-health-check"
# How long stop()/down() let a request in progress finish before cancelling it. Short, because
# only a hung or slow request is ever still running, and a container that dies does not wait.
_SHUTDOWN_GRACE = 0.05

Mode = Literal["healthy", "slow", "error", "hang", "db_down"]


class AppServer:
    """An aiohttp server on 127.0.0.1 answering like one Next.js instance, with fault switches.

    `port=0` (the default) binds a free port at the first `start()`; every later `up()`/`start()`
    binds that same port again, so the load balancer's configuration stays valid. Use it from one
    event loop only.

    Counters (never reset): `requests` counts every request received except HAProxy's health
    checks, including requests that then hang or fail; `health_checks` counts those checks.
    """

    def __init__(
        self, name: str, port: int = 0, ssl_context: ssl.SSLContext | None = None, version: str = "1"
    ) -> None:
        self.name = name
        self.version = version
        self.port = port
        self.ssl_context = ssl_context
        self.requests = 0
        self.health_checks = 0
        self._mode: Mode = "healthy"
        self._delay = 0.0
        self._status = 200
        # Set when a hang ends (another switch was chosen), releasing the requests held by it.
        self._hang_over = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._runner is not None

    @property
    def url(self) -> str:
        """`http(s)://127.0.0.1:PORT` (the port is 0 until the first start)."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{HOST}:{self.port}"

    async def start(self) -> None:
        """Listen on 127.0.0.1:port (a free port the first time when port is 0).

        Does nothing if already listening. Raises OSError if the port was taken meanwhile.
        """
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # access_log=None: one log line per request (health checks every 500 ms) is noise here.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE)
        await runner.setup()
        site = web.TCPSite(runner, HOST, self.port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and close every connection; a request still running after a short grace
        (a hung one) is cancelled and its connection closed without an answer.

        Safe to call twice and before `start()`. The behaviour switch and the counters are kept.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def down(self) -> None:
        """The container died: new connections are refused, open ones are closed. Same as stop()."""
        await self.stop()

    async def up(self) -> None:
        """The container is back, on the same port. Same as start()."""
        await self.start()

    # --- behaviour switches -----------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    def healthy(self) -> None:
        """Answer at once, 200, database up. Releases hung requests, which then answer too."""
        self._switch("healthy")

    def slow(self, ms: float) -> None:
        """Answer healthily after `ms` milliseconds. HAProxy's check timeout is 1 s: well above
        1000 ms the load balancer marks this instance DOWN."""
        self._switch("slow", delay=ms / 1000)

    def error(self, status: int = 503) -> None:
        """Answer `status` with {"status": "error"} on every path, health included."""
        self._switch("error", status=status)

    def hang(self) -> None:
        """Accept connections and read requests, never answer (until another switch or stop())."""
        if self._mode != "hang":
            self._switch("hang")
            self._hang_over = asyncio.Event()

    def db_down(self) -> None:
        """Health says 200 but `db.status` is "down": only a check that reads the body sees it."""
        self._switch("db_down")

    def _switch(self, mode: Mode, delay: float = 0.0, status: int = 200) -> None:
        self._mode, self._delay, self._status = mode, delay, status
        # The mode is changed first: released requests then see the new one and do not wait again.
        self._hang_over.set()

    # --- serving ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("User-Agent") == HEALTH_CHECK_AGENT:
            self.health_checks += 1
        else:
            self.requests += 1
        while self._mode == "hang":
            await self._hang_over.wait()  # cancelled by stop()/down() after the grace
        if self._delay:
            await asyncio.sleep(self._delay)
        headers = {"X-Instance": self.name, "X-Version": self.version, "Cache-Control": "no-store"}
        if self._mode == "error":
            return web.json_response({"status": "error"}, status=self._status, headers=headers)
        if request.path == "/api/health":
            db = "down" if self._mode == "db_down" else "up"
            body = {"status": "ok", "db": {"status": db}, "instance": self.name, "version": self.version}
            return web.json_response(body, headers=headers)
        if request.path == "/":
            page = f"<!doctype html><title>{self.name}</title><h1>Mamori lab: {self.name}</h1>\n"
            return web.Response(text=page, content_type="text/html", headers=headers)
        return web.json_response({"status": "not found"}, status=404, headers=headers)


# --- as a process (in a container) ------------------------------------------------------------------


def apply_mode(app: AppServer, words: str) -> None:
    """Switch `app` to the mode `words` names (`healthy`, `slow:MS`, `error:STATUS`, `hang`,
    `db_down`); `exit:CODE` exits the process, `memory` allocates until the kernel kills it.
    Raises ValueError for anything else."""
    name, _, arg = words.strip().partition(":")
    if name == "healthy" and not arg:
        app.healthy()
    elif name == "slow" and arg:
        app.slow(float(arg))
    elif name == "error":
        app.error(int(arg or 503))
    elif name == "hang" and not arg:
        app.hang()
    elif name == "db_down" and not arg:
        app.db_down()
    elif name == "exit":
        os._exit(int(arg or 1))
    elif name == "memory" and not arg:
        hog = []
        while True:  # the container's memory limit ends this (OOM kill)
            hog.append(bytearray(1 << 20))
    else:
        raise ValueError(f"unknown mode {words!r}")


async def _serve(args: argparse.Namespace) -> None:
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    app = AppServer(args.name, args.port, ssl_context=context, version=args.version)
    apply_mode(app, args.mode)
    await app.start()
    control = None
    if args.control_port:

        async def put_mode(request: web.Request) -> web.Response:
            try:
                apply_mode(app, await request.text())
            except ValueError as exc:
                return web.Response(status=400, text=f"{exc}\n")
            return web.Response(text=f"{app.mode}\n")

        control_app = web.Application()
        control_app.router.add_put("/mode", put_mode)
        control = web.AppRunner(control_app, access_log=None)
        await control.setup()
        await web.TCPSite(control, HOST, args.control_port).start()
    sys.stdout.write(f"{args.name} {args.version} listening on {app.url}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if control is not None:
        await control.cleanup()
    await app.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.apps", description="one lab app server")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", default=os.environ.get("LAB_APP_VERSION", "1"))
    parser.add_argument("--mode", default=os.environ.get("LAB_APP_MODE", "healthy"))
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
