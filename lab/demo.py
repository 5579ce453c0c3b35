"""`python -m lab.demo`: the whole lab (lab/stack.py) in one terminal, faults from another.

    python -m lab.demo [--dir DIR] [--port PORT] [--no-prometheus]   # runs until Ctrl-C / SIGTERM
    python -m lab.demo fault primary-down                            # from another terminal
    python -m lab.demo faults                                        # the list

Run from a checkout (`make demo` does, after installing what it needs): the lab is not part of
the installed product.

The running demo listens for faults on a loopback TCP port picked at start and writes its
address, with a random token, to a state file only its user can read: `$XDG_RUNTIME_DIR/
mamori-demo.json`, or `/tmp/mamori-demo-UID/demo.json` without XDG_RUNTIME_DIR. `demo fault`
reads it and sends one JSON line `{"token": …, "fault": NAME}`; the demo answers one JSON line
`{"ok": true, "message": …}` or `{"ok": false, "error": …}`. The state file is removed when the
demo stops; a stale one (its PID gone, or nobody listening) means "no demo running".

Exit codes: 0 (stopped by Ctrl-C / SIGTERM, or the fault was injected), 1 (the lab could not
start, a demo is already running, no demo is running, the fault failed), 3 (unknown fault or bad
arguments). A failure is one line on stderr, `lab.demo: …`, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from lab.ports import port_is_free
from lab.stack import AgentStopped, Stack, StackError, lab_stack, prepare_directory

if TYPE_CHECKING:
    from lab.recorder import RecordedNotification

COMMAND = "python -m lab.demo"
PROG = "lab.demo"  # the prefix of its error lines
AGENT_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT = 9630, 9090, 9093  # used when free
FAULT_TIMEOUT = 120.0  # `reset` rebuilding a standby takes ~1 s; a stopped primary's restart a few
EXIT_UNKNOWN_FAULT = 3


class DemoError(Exception):
    """A user-facing failure: one line, exit 1."""


def state_file() -> Path:
    """Where a running demo writes its control address (see the module docstring)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "mamori-demo.json"
    return Path(f"/tmp/mamori-demo-{os.geteuid()}") / "demo.json"


def _private_dir(path: Path) -> None:
    """Create `path` 0700, or check that an existing one is ours and private (not a symlink)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = path.lstat()
        if not path.is_dir() or path.is_symlink() or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise DemoError(f"{path} exists but is not a private directory of ours; remove it") from None


def _read_state() -> dict[str, Any] | None:
    path = state_file()
    try:
        state: dict[str, Any] = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no file, unreadable, or its demo is gone
    return state


# --- demo faults / fault NAME -----------------------------------------------------------------------


def faults_table() -> str:
    width = max(map(len, Stack.FAULTS))
    return "\n".join(f"  {name.ljust(width)}  {what}" for name, what in Stack.FAULTS.items())


def _out(text: str, stream: TextIO | None = None) -> None:
    """One line (or block): `print`, which the lint rules keep to agent/cli.py."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def cmd_faults() -> int:
    _out(f"Faults for `{COMMAND} fault NAME` (the demo must be running):")
    _out(faults_table())
    return 0


def cmd_fault(name: str) -> int:
    if name not in Stack.FAULTS:
        _out(f"{PROG}: unknown fault {name!r}; the faults are:", sys.stderr)
        _out(faults_table(), sys.stderr)
        return EXIT_UNKNOWN_FAULT
    state = _read_state()
    if state is None:
        raise DemoError(f"no demo is running (start one with `{COMMAND}`)")
    try:
        answer = asyncio.run(_send(state, name))
    except (OSError, TimeoutError, ValueError):
        raise DemoError("no demo is running (its control port does not answer)") from None
    if not answer.get("ok"):
        raise DemoError(f"fault {name} failed: {answer.get('error', 'no reason given')}")
    _out(str(answer["message"]))
    return 0


async def _send(state: dict[str, Any], name: str) -> dict[str, Any]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(str(state["host"]), int(state["port"])), 5
    )
    try:
        writer.write(json.dumps({"token": state["token"], "fault": name}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), FAULT_TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    answer: dict[str, Any] = json.loads(line)
    return answer


# --- the demo --------------------------------------------------------------------------------------


def cmd_demo(directory: Path | None, port: int | None, prometheus: bool) -> int:
    """Run the demo until SIGINT/SIGTERM; 0 when stopped that way."""
    state = _read_state()
    if state is not None:
        raise DemoError(
            f"a demo is already running (pid {state['pid']}, files in {state['directory']}); "
            "stop it first (Ctrl-C in its terminal)"
        )
    if port is not None and not port_is_free(port):
        raise DemoError(f"port {port} is taken; choose another with --port")
    return asyncio.run(_Demo(directory, port, prometheus).run())


def _prefer(port: int) -> int | None:
    """`port` when free, else None (the stack then picks a free one)."""
    return port if port_is_free(port) else None


class _Demo:
    def __init__(self, directory: Path | None, port: int | None, prometheus: bool) -> None:
        self.directory = directory
        self.port = port
        self.prometheus = prometheus
        self.out: TextIO = sys.stdout
        self.stop = asyncio.Event()
        self.token = secrets.token_hex(16)
        self.state_path = state_file()
        self.watchdog_shown = False

    def say(self, text: str = "") -> None:
        _out(text, self.out)

    def event(self, text: str) -> None:
        self.say(f"{time.strftime('%H:%M:%S')}  {text}")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        own = self.directory is None
        try:
            directory = prepare_directory(self.directory)
        except StackError as exc:
            raise DemoError(str(exc)) from None
        handler = _log_to(directory / "demo.log")
        kept = "kept" if not own else "removed at exit; --dir DIR keeps it"
        self.say(f"Starting the Mamori lab in {directory} ({kept}) … about 5-10 s")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            async with lab_stack(
                directory,
                prometheus=self.prometheus,
                alertmanager=self.prometheus,
                listen_port=self.port if self.port is not None else _prefer(AGENT_PORT),
                prometheus_port=_prefer(PROMETHEUS_PORT) if self.prometheus else None,
                alertmanager_port=_prefer(ALERTMANAGER_PORT) if self.prometheus else None,
            ) as stack:
                # The in-process agent installed its own SIGINT/SIGTERM handlers: ours again.
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self.stop.set)
                if not self.prometheus:
                    stack.skipped["prometheus"] = stack.skipped["alertmanager"] = "--no-prometheus"
                if not self.stop.is_set():
                    await self._serve(stack, began)
                self.say("Stopping…")
        except AgentStopped:
            # Ctrl-C while the agent started: its own handler stopped it before ours was back.
            self.say("Interrupted while starting.")
        except StackError as exc:
            raise DemoError(str(exc)) from None
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            handler.close()
            logging.getLogger().removeHandler(handler)
            if own:
                shutil.rmtree(directory, ignore_errors=True)
        self.say("Stopped: every process the demo started is gone.")
        return 0

    async def _serve(self, stack: Stack, began: float) -> None:
        server = await asyncio.start_server(lambda r, w: self._control(stack, r, w), "127.0.0.1", 0)
        try:
            host, port = server.sockets[0].getsockname()[:2]
            self._write_state(stack, host, port)
            try:
                await stack.wait_healthy(timeout=15)
                health = f"{len(stack.expected_checks())} checks, all OK"
            except TimeoutError as exc:
                health = str(exc)
            ui = await _prometheus_ui(stack.prometheus_url)
            self._banner(stack, ui)
            self.say(f"ready in {time.monotonic() - began:.1f} s: {health}. Ctrl-C stops everything.")
            stack.on_notification(self._notified)
            watcher = asyncio.create_task(self._watch(stack))
            agent = stack.agent_task
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.stop.wait())]
            if agent is not None:
                waits.append(agent)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if agent is not None and agent.done() and not self.stop.is_set():
                self.say("The agent stopped; stopping the lab.")
            watcher.cancel()
            for wait in waits:
                if wait is not agent:
                    wait.cancel()
        finally:
            server.close()
            self._remove_state()

    # --- control endpoint ---

    async def _control(
        self, stack: Stack, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            answer = await self._answer(stack, line)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _answer(self, stack: Stack, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            token, name = str(request["token"]), str(request["fault"])
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "bad request"}
        if not hmac.compare_digest(token, self.token):
            return {"ok": False, "error": "bad token (is the state file from another demo?)"}
        try:
            message = await stack.fault(name)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        except (StackError, RuntimeError, OSError, TimeoutError) as exc:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.event(f"fault {name} failed: {text}")
            return {"ok": False, "error": text}
        self.event(f"fault {message}")
        return {"ok": True, "message": message}

    def _write_state(self, stack: Stack, host: str, port: int) -> None:
        path = self.state_path
        if path.parent.name.startswith("mamori-demo-"):
            _private_dir(path.parent)
        state = {
            "pid": os.getpid(),
            "host": host,
            "port": port,
            "token": self.token,
            "directory": str(stack.directory),
            "agent_url": stack.agent_url,
            "prometheus_url": stack.prometheus_url,
            "alertmanager_url": stack.alertmanager_url,
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        tmp.replace(path)

    def _remove_state(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.state_path.read_text()).get("token") == self.token:
                self.state_path.unlink()

    # --- what the terminal shows ---

    def _banner(self, stack: Stack, ui: str) -> None:
        a, d = stack.agent_url, stack.directory
        say = self.say
        say()
        say(f"Mamori demo — everything on 127.0.0.1; files in {d}")
        say()
        say(f"  agent         {a}/metrics")
        say(f"                {a}/api/v1/results")
        say(f"                config {stack.agent_config} (agentctl validate {stack.agent_config})")
        say(f"                log {d / 'demo.log'}")
        say(f"  web           {stack.web.url}  (HAProxy, TLS; CA {stack.web.ca_file})")
        say(f"                apps app-1..app-3 behind it; HAProxy stats {stack.web.haproxy.stats_url}")
        if stack.has_postgres:
            pg = stack.pg
            say(f"  postgres      primary 127.0.0.1:{pg.primary.port}, standby 127.0.0.1:{pg.standby.port}")
            say(f"                user mamori, password in {d / 'secrets' / 'pg-password'}")
        if stack.prometheus_url is not None:
            p = stack.prometheus_url
            say(f"  prometheus    {p}{ui}/alerts  (the shipped rules; also {p}{ui}/targets, {p}{ui}/graph)")
        if stack.alertmanager_url is not None:
            say(f"  alertmanager  {stack.alertmanager_url}  — what it sends is printed here and kept in")
            say(f"                {d / 'notifications.jsonl'}")
        if stack.mqtt is not None:
            sub = f"mosquitto_sub -h 127.0.0.1 -p {stack.mqtt.port} -t '{stack.mqtt_topics}' -v"
            say(f"  mqtt          {sub}")
            if shutil.which("mosquitto_sub") is None:
                say("                (mosquitto_sub: apt install mosquitto-clients)")
        say()
        say(f"Inject faults from another terminal (`{COMMAND} faults` lists them; `reset` heals all):")
        say(f"  {COMMAND} fault " + ("primary-down" if stack.has_postgres else "app-down"))
        if stack.skipped:
            say()
            say("Skipped:")
            for part, why in stack.skipped.items():
                say(f"  {part}: {why}")
        say()

    def _notified(self, note: RecordedNotification) -> None:
        if note.receiver == "deadmans-switch":
            if not self.watchdog_shown:
                self.watchdog_shown = True
                self.event("Alertmanager → dead-man's switch: Watchdog (every minute; not shown again)")
            return
        if note.receiver == "agent":  # the agent's own alerting, not Alertmanager's
            route = note.body.get("route", "?") if isinstance(note.body, dict) else "?"
            self.event(f"agent → {route}: {note.summary}")
            return
        self.event(f"Alertmanager → {note.receiver}: {note.summary}")

    async def _watch(self, stack: Stack) -> None:
        """Print every change of a check's status or reason."""
        seen = {name: (r.status, r.reason) for name, r in stack.results().items()}
        while True:
            await asyncio.sleep(0.5)
            for name, r in sorted(stack.results().items()):
                now = (r.status, r.reason)
                before = seen.get(name)
                if before == now:
                    continue
                seen[name] = now
                was = "—" if before is None else before[0].label.upper()
                message = r.message if len(r.message) <= 120 else r.message[:117] + "…"
                self.event(f"{name}: {was} → {r.status.label.upper()} ({r.reason.value}) {message}")


async def _prometheus_ui(url: str | None) -> str:
    """The path prefix of Prometheus's web UI pages: "" upstream, "/classic" for Debian's build,
    which ships only the classic UI."""
    if url is None:
        return ""
    import aiohttp

    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(f"{url}/alerts", allow_redirects=False) as response,
        ):
            if response.status == 404:
                return "/classic"
    return ""


def _log_to(path: Path) -> logging.Handler:
    """Every log line (the agent's included) to `path`: the terminal is the demo's."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return handler


# --- the command line ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # bad arguments exit 3, like an unknown fault
        self.print_usage(sys.stderr)
        self.exit(EXIT_UNKNOWN_FAULT, f"{PROG}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=COMMAND,
        description="Run the lab and an agent watching it until Ctrl-C; `fault NAME` injects faults.",
    )
    p.add_argument("--dir", metavar="DIR", help="keep configs, logs and data here (default: a temp dir)")
    p.add_argument("--port", type=int, metavar="PORT", help="the agent's port (default 9630, or a free one)")
    p.add_argument("--no-prometheus", action="store_true", help="without Prometheus and Alertmanager")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    s = actions.add_parser("fault", help="inject a fault into the running demo (see `faults`)")
    s.add_argument("fault", metavar="NAME")
    actions.add_parser("faults", help="list the faults")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "faults":
            return cmd_faults()
        if args.action == "fault":
            return cmd_fault(args.fault)
        return cmd_demo(Path(args.dir) if args.dir else None, args.port, not args.no_prometheus)
    except DemoError as exc:
        _out(f"{PROG}: {exc}", sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
