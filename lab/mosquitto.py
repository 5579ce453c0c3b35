"""`Mosquitto`: the real Debian broker on 127.0.0.1, optionally with passwords and a TLS listener.

    broker = Mosquitto(directory, users={"agent": "s3cret"}, tls=certs.valid)
    await broker.start()           # plain MQTT on broker.port, MQTT over TLS on broker.tls_port
    await broker.stop()            # by PID (SIGTERM: the broker saves its state first)
    await broker.start()           # the same ports again: a broker restart
    await broker.aclose()          # stopped; safe twice

The broker runs in the foreground as our child (its PID is ours to signal), with its config,
password file, persistence file and log in `directory`. Listeners bind 127.0.0.1 only. With
`users`, anonymous clients are refused and the password file is made with `mosquitto_passwd -b`;
without, anonymous clients are allowed. With `persistence` (the default), retained messages and
persistent sessions (`clean_session=False` subscribers and their queued QoS 1 messages) survive
a `stop()`/`start()`, as on a production broker with `persistence true`.

Where `setpriv` exists (util-linux), the broker is started with a parent-death signal, so it
cannot outlive the Python process that started it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from lab.certs import Leaf
from lab.ports import accepts, free_port
from lab.process import Child, ChildExited

HOST = "127.0.0.1"
_START_TIMEOUT = 5.0  # the broker listens within ~10 ms; this only bounds a broken start
_STOP_TIMEOUT = 5.0  # SIGTERM: it saves its database and exits at once; SIGKILL after this


class MosquittoError(RuntimeError):
    """The broker did not start (or did not listen); the message ends with its log."""


class Mosquitto:
    """One Mosquitto process, restartable on the same ports (picked at construction when 0)."""

    def __init__(
        self,
        directory: Path,
        *,
        users: Mapping[str, str] | None = None,
        tls: Leaf | None = None,
        ca_file: Path | None = None,
        require_certificate: bool = False,
        persistence: bool = True,
        port: int = 0,
        tls_port: int = 0,
        binary: str = "mosquitto",
    ) -> None:
        """`tls`: the server certificate of a second, TLS-only listener; `ca_file`: the CA of
        client certificates, which `require_certificate` makes mandatory on that listener."""
        self.directory = directory
        self.users = dict(users or {})
        self.tls = tls
        self.ca_file = ca_file
        self.require_certificate = require_certificate
        self.persistence = persistence
        self.port = port or free_port()
        self.tls_port = (tls_port or free_port()) if tls is not None else None
        self.binary = binary
        self.config_file = directory / "mosquitto.conf"
        self.password_file = directory / "passwd"
        self.log_file = directory / "mosquitto.log"
        # Its log is its own `log_dest file`; stdout and stderr say nothing more.
        self._child = Child("mosquitto", grace=_STOP_TIMEOUT)

    @property
    def running(self) -> bool:
        return self._child.running

    @property
    def pid(self) -> int | None:
        return self._child.pid

    def config_text(self) -> str:
        lines = [
            f"pid_file {self.directory / 'mosquitto.pid'}",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
            "autosave_interval 0",  # save on shutdown only (and never while a test runs)
            f"allow_anonymous {'false' if self.users else 'true'}",
        ]
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to the `mosquitto` user, which cannot read a test's
            # directory (pytest's tmp_path is 0700 root).
            lines.append("user root")
        if self.users:
            lines.append(f"password_file {self.password_file}")
        lines += ["", f"listener {self.port} {HOST}"]
        if self.tls is not None and self.tls_port is not None:
            lines += [
                "",
                f"listener {self.tls_port} {HOST}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
            ]
            if self.ca_file is not None:
                lines.append(f"cafile {self.ca_file}")
            if self.require_certificate:
                lines.append("require_certificate true")
        return "\n".join(lines) + "\n"

    async def _write_passwords(self) -> None:
        self.password_file.unlink(missing_ok=True)
        self.password_file.touch(mode=0o600)
        for user, password in self.users.items():
            proc = await asyncio.create_subprocess_exec(
                "mosquitto_passwd",
                "-b",
                str(self.password_file),
                user,
                password,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise MosquittoError(f"mosquitto_passwd failed for user {user!r}: {out.decode().strip()}")

    async def start(self) -> None:
        """Start the broker; return once every listener accepts connections. Does nothing if
        already running. Raises MosquittoError (with the broker's log) if it exits or does not
        listen within 5 s; nothing is left running then, nor after a cancellation."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.users:
            await self._write_passwords()
        self.config_file.write_text(self.config_text())
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._child.start([self.binary, "-c", str(self.config_file)])
        ports = [p for p in (self.port, self.tls_port) if p is not None]

        async def listening() -> bool:
            return all([await accepts(p) for p in ports])

        try:
            try:
                await self._child.wait_ready("mosquitto to listen", listening, _START_TIMEOUT, interval=0.01)
            except ChildExited as exc:
                raise MosquittoError(
                    f"mosquitto exited with status {exc.returncode}: {self._log_since(log_offset)}"
                ) from None
            except TimeoutError:
                raise MosquittoError(
                    f"mosquitto not listening after {_START_TIMEOUT:g} s: {self._log_since(log_offset)}"
                ) from None
        except BaseException:
            await self.stop()
            raise

    def log(self) -> str:
        """The broker's log so far (every start appends to it)."""
        return self._log_since(0)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace").strip()
        except OSError as exc:
            text = f"(cannot read {self.log_file}: {exc})"
        return text or "(log empty)"

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the broker by its PID and wait for it to exit (SIGKILL after 5 s). SIGTERM
        saves retained messages and sessions first; SIGKILL is a crash. Safe to call twice and
        before start(); the ports are closed when this returns."""
        await self._child.stop((sig, _STOP_TIMEOUT))

    async def aclose(self) -> None:
        """Stop the broker. Safe twice."""
        await self.stop()

    async def __aenter__(self) -> Mosquitto:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
