"""Shared fixtures. Everything a test starts listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from checks import REGISTRY
from lab.docker import DockerEngine

pytest_plugins = ["tests.lanes"]  # the markers unit / service / e2e / deploy


@pytest.fixture
def fake_checks() -> Iterator[None]:
    """Register the test-only check types of tests/agent/fakes.py for the duration of a test."""
    extra = {
        "sleep": "tests.agent.fakes:SleepCheck",
        "boom": "tests.agent.fakes:BoomCheck",
        "flaky": "tests.agent.fakes:FlakyCheck",
    }
    REGISTRY.update(extra)
    try:
        yield
    finally:
        for key in extra:
            REGISTRY.pop(key, None)


class SmallFs:
    """A small tmpfs of its own (a real file system, so "full" is the kernel's ENOSPC and
    "read-only" its EROFS, for root as for anyone): `fill()` takes every free byte with a filler
    file, `free()` gives them back; `read_only()`/`writable()` remount it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / ".filler"

    def fill(self) -> None:
        """Write the filler until the file system has not one byte left."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = 1 << 20
            while chunk:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self) -> None:
        self._mount("remount,ro")

    def writable(self) -> None:
        self._mount("remount,rw")

    def _mount(self, options: str) -> None:
        subprocess.run(["mount", "-o", options, str(self.path)], check=True, capture_output=True, timeout=10)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallFs]:
    """A 4 MiB tmpfs at `tmp_path/fs`, unmounted at the end whatever happened. Needs root (or
    CAP_SYS_ADMIN), as in CI: a test that needs a full disk fails, it does not skip, without it."""
    path = tmp_path / "fs"
    path.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except FileNotFoundError:
        pytest.fail("small_fs: no mount(8) here: these tests need a real small file system (tmpfs)")
    if mounted.returncode != 0:
        pytest.fail(
            f"small_fs: cannot mount a tmpfs at {path} ({mounted.stderr.strip()}): "
            "run these tests as root (or with CAP_SYS_ADMIN), as CI does"
        )
    try:
        yield SmallFs(path)
    finally:
        # -l: a process the test started may still hold a file open; the mount goes when it exits.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


# --- the real Docker Engine: one per test session (lab/docker.py); its tests run last ----------


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    """dockerd of our own, started in the main thread (its parent-death signal follows it)."""
    engine = DockerEngine(tmp_path_factory.mktemp("docker"))
    asyncio.run(engine.start())
    try:
        yield engine
    finally:
        asyncio.run(engine.stop())


@pytest.fixture
async def engine(docker_engine: DockerEngine) -> AsyncIterator[DockerEngine]:
    """The session's engine, with whatever a test made removed after it."""
    yield docker_engine
    await docker_engine.remove_lab_objects()
