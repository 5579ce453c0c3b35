"""`WebLab`: the production web path on 127.0.0.1 — clients → HAProxy (HTTPS) → N app servers.

    async with web_lab(tmp_dir, apps=3) as lab:
        lab.url                       # https://127.0.0.1:PORT/api/health, trusted via lab.ca_file
        await lab.apps[0].down()      # any AppServer switch; await lab.haproxy.break_route(), ...
        await lab.wait_until_haproxy_sees({"app-1": "DOWN"})

Layout of `directory`: `certs/` (the test CA and leaves of lab/certs.py) and `haproxy/`
(config, certificate bundle, HAProxy's stderr). The load balancer presents `certs.valid` (valid
for 127.0.0.1, localhost and the public name); with `backend_tls` the apps present `certs.named`
(the public name only), as containers behind a load balancer usually do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from lab.apps import AppServer
from lab.certs import DEFAULT_DNS_NAME, Certs, make_certs, server_context
from lab.haproxy import Backend, HAProxy

# Startup waits until HAProxy has checked every app once (the first checks are spread over one
# 500 ms interval), so a lab that starts is a lab whose every path works.
_STARTUP_CHECKS_TIMEOUT = 3.0


class WebLab:
    """Certificates, `apps` app servers named app-1…app-N, and HAProxy in front of them.

    `start()` returns once HAProxy sees every app UP; if anything fails on the way, whatever was
    started is stopped before the error propagates. `stop()` is safe twice and before `start()`.
    """

    def __init__(
        self,
        directory: Path,
        apps: int = 3,
        backend_tls: bool = False,
        public_name: str = DEFAULT_DNS_NAME,
    ) -> None:
        if apps < 1:
            raise ValueError(f"a web lab needs at least one app, not {apps}")
        self.directory = directory
        self.backend_tls = backend_tls
        self.public_name = public_name
        (directory / "certs").mkdir(parents=True, exist_ok=True)
        self.certs: Certs = make_certs(directory / "certs", public_name)
        app_tls = server_context(self.certs.named) if backend_tls else None
        self.apps = [AppServer(f"app-{i}", ssl_context=app_tls) for i in range(1, apps + 1)]
        self._haproxy: HAProxy | None = None

    @property
    def haproxy(self) -> HAProxy:
        """The load balancer (exists once start() has started the apps)."""
        if self._haproxy is None:
            raise RuntimeError("the web lab is not started")
        return self._haproxy

    @property
    def ca_file(self) -> Path:
        """The CA that signed every certificate in the lab: trust it and verification passes."""
        return self.certs.ca_file

    @property
    def url(self) -> str:
        """The health endpoint through the load balancer: `https://127.0.0.1:PORT/api/health`."""
        return self.haproxy.url("/api/health")

    def app(self, name: str) -> AppServer:
        """The app server called `name` ("app-1"…). Raises KeyError for an unknown name."""
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)

    async def start(self) -> None:
        """Start the apps, then HAProxy; return once HAProxy sees every app UP (~0.4 s).

        On any failure (cancellation included), stops whatever it started, then raises.
        """
        try:
            # return_exceptions: every start must have finished before stop() runs on a failure,
            # or an app still starting would be left listening.
            results = await asyncio.gather(*(app.start() for app in self.apps), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            if self._haproxy is None:  # created once: its ports must survive a stop()/start()
                self._haproxy = HAProxy(
                    self.directory / "haproxy",
                    [Backend(app.name, app.port) for app in self.apps],
                    self.certs.valid,
                    backend_tls=self.backend_tls,
                    public_name=self.public_name,
                )
            await self._haproxy.start()
            await self.wait_until_haproxy_sees(
                {app.name: "UP" for app in self.apps}, timeout=_STARTUP_CHECKS_TIMEOUT
            )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop HAProxy, then every app (hung requests are cancelled). Safe twice, and unstarted."""
        try:
            if self._haproxy is not None:
                await self._haproxy.stop()
        finally:
            # return_exceptions: one app failing to stop must not leave the others listening.
            results = await asyncio.gather(*(app.stop() for app in self.apps), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def wait_until_haproxy_sees(self, states: Mapping[str, str], timeout: float = 5.0) -> float:
        """Wait until HAProxy reports each named app in the given state ("UP", "DOWN", …); return
        the seconds waited. Raises TimeoutError naming what HAProxy saw last."""
        return await self.haproxy.wait_until_sees(states, timeout)

    async def __aenter__(self) -> WebLab:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def web_lab(directory: Path, apps: int = 3, backend_tls: bool = False) -> WebLab:
    """`async with web_lab(tmp_dir) as lab:` — a started WebLab, stopped at exit even on error."""
    return WebLab(directory, apps=apps, backend_tls=backend_tls)
