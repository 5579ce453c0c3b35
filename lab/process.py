"""`Child`: the one way the lab runs a server binary as its child process, and stops it.

    child = Child("haproxy", log_file=directory / "haproxy.stderr")
    child.start(["haproxy", "-f", cfg, "-db"])          # fork+exec in this thread (~1 ms)
    await child.wait_ready("haproxy to listen", lambda: accepts(port), 5.0)
    await child.stop()                                   # SIGTERM, SIGKILL after the grace period

Every child runs in the foreground (its PID is ours to signal) in a session and process group
of its own, so a Ctrl-C meant for Python does not reach it and we stop it in order. Where
`setpriv` exists (util-linux) it is started with a parent-death SIGKILL, so it cannot outlive
the Python thread that started it (hence `start()` is synchronous: the fork happens in the
caller's thread, an event loop's, never a short-lived worker's). An atexit hook stops whatever
is still running when Python exits normally. Processes are polled, not watched, so a child may
be started under one event loop and stopped under another (a session fixture and a test).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import psutil

from lab.wait import wait_until

SETPRIV = shutil.which("setpriv")
_REAP_POLL = 0.005  # seconds between two looks at a child that was told to stop
_KILL_WAIT = 10.0  # after SIGKILL: a process in uninterruptible sleep may take a moment
_ATEXIT_GRACE = 5.0


class ChildExited(RuntimeError):
    """The child exited while we waited for it to be ready; `returncode` is its status."""

    def __init__(self, name: str, returncode: int | None) -> None:
        super().__init__(f"{name} exited with status {returncode}")
        self.returncode = returncode


def command(argv: Sequence[str], *, user: str | None = None, parent_death: bool = True) -> list[str]:
    """`argv` run as the OS `user` (when given; we must be root) and with a parent-death SIGKILL
    (where setpriv exists), for `Child.start()` and for the short commands the lab runs."""
    if SETPRIV is not None:
        prefix = [SETPRIV]
        if user is not None:
            # setpriv changes user before setting the death signal (a uid change would clear it).
            prefix += [f"--reuid={user}", f"--regid={user}", "--init-groups"]
        if parent_death:
            prefix += ["--pdeathsig", "KILL"]
        return [*prefix, "--", *argv] if len(prefix) > 1 else list(argv)
    if user is not None:
        return ["runuser", "-u", user, "--", *argv]
    return list(argv)


def signal_tree(pid: int, sig: signal.Signals) -> list[psutil.Process]:
    """Send `sig` to `pid` and to all its descendants, whatever their process group (PostgreSQL's
    backends each make their own); return the processes signalled.

    The root first when stopping (so it forks nothing new while its children are listed), the
    children first otherwise (so none is left stopped under a running parent). A root about to
    be killed is stopped first instead: a dead one's children are handed to init at once, and
    could no longer be listed as its own.
    """
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    stopping = sig in (signal.SIGSTOP, signal.SIGKILL)
    if stopping:
        with suppress(psutil.NoSuchProcess):
            root.send_signal(signal.SIGSTOP)
    try:
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.send_signal(sig)
    if sig != signal.SIGSTOP:
        with suppress(psutil.NoSuchProcess):
            root.send_signal(sig)
    return [root, *children]


def stopped(process: psutil.Process) -> bool:
    """Stopped by SIGSTOP, or gone: a process that was exiting as its parent froze stays a
    zombie (the stopped parent cannot reap it)."""
    try:
        return process.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


class Child:
    """One server binary run as our child; restartable (each `start()` is a new process).

    `stop()` signals by PID: `stop_signal`, then SIGKILL to the process group and every
    descendant after `grace` seconds; it is safe twice and before `start()`, and a cancelled
    `stop()` has already sent its signal (the next call finishes the wait). `exit_signal` is what
    the atexit hook sends first (default: `stop_signal`), SIGKILL after 5 s.
    """

    def __init__(
        self,
        name: str,
        *,
        log_file: Path | None = None,
        truncate_log: bool = False,
        stop_signal: signal.Signals = signal.SIGTERM,
        grace: float = 10.0,
        exit_signal: signal.Signals | None = None,
    ) -> None:
        """`log_file` takes the child's stdout and stderr (appended, or rewritten at each start
        with `truncate_log`); without one they go nowhere."""
        self.name = name
        self.log_file = log_file
        self.truncate_log = truncate_log
        self.stop_signal = stop_signal
        self.grace = grace
        self.exit_signal = exit_signal or stop_signal
        self.frozen = False
        self.log_offset = 0  # where this start's output begins in log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the process is alive (a frozen one included)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Its PID while it runs, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        parent_death: bool = True,
    ) -> None:
        """Fork and exec `argv` (see `command()` for `user` and `parent_death`) in a new session.
        Synchronous on purpose: the parent-death signal follows the thread that forked. Raises
        OSError if it cannot be executed, RuntimeError if this child is running already."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        out: Any = subprocess.DEVNULL
        if self.log_file is not None:
            self.log_offset = 0
            if not self.truncate_log and self.log_file.exists():
                self.log_offset = self.log_file.stat().st_size
            out = self.log_file.open("wb" if self.truncate_log else "ab")
        try:
            self._proc = subprocess.Popen(  # fork+exec, ~1 ms, in this thread
                command(argv, user=user, parent_death=parent_death),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.frozen = False
        _track(self)

    async def wait_ready(
        self, what: str, ready: Callable[[], Any], timeout: float, *, interval: float = 0.02
    ) -> float:
        """Poll `ready` (sync or async; an OSError counts as "not yet") with `lab.wait` until it
        is true; return the seconds waited. Raises ChildExited as soon as the process exits,
        TimeoutError naming `what` after `timeout`. Leaves the process running either way."""
        try:
            return await wait_until(what, ready, timeout, interval=interval, alive=lambda: self.running)
        except RuntimeError:
            if self.running:
                raise  # the predicate's own error
            raise ChildExited(self.name, self.returncode) from None

    def log_since_start(self, limit: int = 4000) -> str:
        """What this start wrote to `log_file` (its last `limit` characters), or why not."""
        return self.log_since(self.log_offset, limit)

    def log_since(self, offset: int, limit: int = 4000) -> str:
        """What `log_file` holds from `offset` on (its last `limit` characters), or why not."""
        if self.log_file is None:
            return "(no log)"
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace").strip()
        except OSError as exc:
            return f"(cannot read {self.log_file}: {exc})"
        return text[-limit:] or "(log empty)"

    def send(self, sig: signal.Signals) -> None:
        """`sig` to the process itself (nothing if it has exited)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.send_signal(sig)

    def freeze(self) -> list[psutil.Process]:
        """SIGSTOP the process and every descendant; return them (see `stopped()`)."""
        pid = self.pid
        if pid is None:
            return []
        self.frozen = True
        return signal_tree(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT the process and every descendant."""
        pid = self.pid
        if pid is not None:
            signal_tree(pid, signal.SIGCONT)
        self.frozen = False

    async def stop(self, *steps: tuple[signal.Signals, float]) -> None:
        """Stop by PID and wait until the process has exited: each (signal, seconds) of `steps` in
        turn (default: `stop_signal` for `grace` s) while it runs, then SIGKILL to its process
        group and every descendant. A frozen process is thawed first (it handles no signal but
        SIGKILL). Safe twice and before start(); never raises."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if self.frozen:
                self.thaw()
            for sig, seconds in steps or ((self.stop_signal, self.grace),):
                self.send(sig)
                if await _exited(proc, seconds):
                    break
            else:
                self._kill(proc)
                await _exited(proc, _KILL_WAIT)
        self.frozen = False
        self._proc = None
        _LIVE.discard(self)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the whole tree (nobody is left to stop the descendants) and the process group."""
        signal_tree(proc.pid, signal.SIGKILL)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


async def _exited(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait (polling, without a child watcher, so any event loop works) for `proc` to exit."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(_REAP_POLL)
    return True


# --- what must not outlive Python -------------------------------------------------------------------

_LIVE: set[Child] = set()
_ATEXIT_REGISTERED = False


def _track(child: Child) -> None:
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        atexit.register(_stop_leftovers)
        _ATEXIT_REGISTERED = True
    _LIVE.add(child)


def _stop_leftovers() -> None:
    """At interpreter exit: send every child still running (its owner forgot to stop it) its
    `exit_signal`, then SIGKILL what has not exited after 5 s."""
    procs = []
    for child in _LIVE:
        proc = child._proc
        if proc is None or proc.poll() is not None:
            continue
        if child.frozen:
            child.thaw()  # a frozen server handles nothing until continued
        child.send(child.exit_signal)
        procs.append(proc)
    deadline = time.monotonic() + _ATEXIT_GRACE
    for proc in procs:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
        if proc.poll() is None:
            Child._kill(proc)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(_KILL_WAIT)
    _LIVE.clear()
