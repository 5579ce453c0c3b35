"""lab/process.py: the one child-process starter and stopper of the lab, on real processes."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from lab.process import Child, ChildExited, command
from lab.wait import wait_until

SHELL = "/bin/sh"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_start_wait_ready_and_stop_twice(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = Child("echo", log_file=log, grace=2.0)
    await child.stop()  # before start: nothing to do
    marker = tmp_path / "ready"
    child.start([SHELL, "-c", f"echo hello; touch {marker}; exec sleep 60"])
    pid = child.pid
    assert pid is not None and child.running
    waited = await child.wait_ready("the marker", marker.exists, 5.0)
    assert waited < 5.0
    assert "hello" in child.log_since_start()
    await child.stop()
    assert not child.running and child.pid is None and gone(pid)
    await child.stop()  # twice: nothing to do


async def test_an_exit_while_waiting_is_child_exited_with_its_status(tmp_path: Path) -> None:
    child = Child("fails", log_file=tmp_path / "fails.log", truncate_log=True)
    child.start([SHELL, "-c", "echo broken config >&2; exit 3"])
    with pytest.raises(ChildExited) as caught:
        await child.wait_ready("never", lambda: False, 5.0)
    assert caught.value.returncode == 3
    assert child.log_since_start() == "broken config"
    child.start([SHELL, "-c", "exit 0"])  # restartable; a truncated log holds this start only
    await child.stop()
    assert child.log_since_start() == "(log empty)"


async def test_a_timeout_names_what_was_awaited_and_leaves_it_running() -> None:
    child = Child("sleeper")
    child.start(["sleep", "60"])
    try:
        with pytest.raises(TimeoutError, match="waiting for the impossible"):
            await child.wait_ready("the impossible", lambda: False, 0.1)
        assert child.running
    finally:
        await child.stop()


async def test_stop_escalates_to_sigkill_of_the_whole_tree() -> None:
    # The shell and its sleep both ignore SIGTERM (an ignored signal survives exec).
    child = Child("stubborn", grace=0.3)
    child.start([SHELL, "-c", "trap '' TERM; sleep 60 & wait"])
    pid = child.pid
    assert pid is not None
    shell = psutil.Process(pid)
    await wait_until("the shell to start sleep", shell.children, 5.0)
    grandchild = shell.children()[0].pid
    began = time.monotonic()
    await child.stop()
    assert 0.3 <= time.monotonic() - began < 5
    assert gone(pid) and gone(grandchild)


async def test_stop_continues_a_frozen_child_first() -> None:
    child = Child("frozen", grace=5.0)
    child.start(["sleep", "60"])
    assert child.frozen is False
    processes = child.freeze()
    assert child.frozen and processes
    began = time.monotonic()
    await child.stop()  # SIGTERM is handled only once continued: no wait for the grace period
    assert time.monotonic() - began < 2
    assert not child.frozen


async def test_custom_stop_steps(tmp_path: Path) -> None:
    script = tmp_path / "int.py"
    script.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: sys.exit(7))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = Child("python", log_file=tmp_path / "py.log")
    child.start([sys.executable, str(script)])
    await child.wait_ready("it to start", lambda: "up" in child.log_since_start(), 10.0)
    proc = child._proc
    assert proc is not None
    await child.stop((signal.SIGINT, 5.0))
    assert proc.returncode == 7


def test_command_prefixes() -> None:
    argv = ["prog", "--flag"]
    plain = command(argv, parent_death=False)
    assert plain == argv
    wrapped = command(argv)
    assert wrapped[-2:] == argv
    if wrapped != argv:  # setpriv is installed
        assert "--pdeathsig" in wrapped
    as_user = command(argv, user="postgres")
    assert as_user[-2:] == argv and any("postgres" in part for part in as_user[:-2])
