"""The lab's Docker Engine itself: it starts, runs labelled containers, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import psutil
import pytest

from lab.docker import LABEL, DockerEngine, DockerLabError
from lab.docker_apps import app_image, run_app
from lab.ports import free_port
from lab.wait import wait_until


async def test_a_busybox_container_on_the_host_network_answers(engine: DockerEngine, tmp_path: Path) -> None:
    image = await engine.image("busybox")
    port = free_port()
    await engine.docker(
        "run", "-d", "--name", "bb", "--network", "host", *engine.labels(), image,
        "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/bin",
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:

        async def answers() -> bool:
            async with session.get(f"http://127.0.0.1:{port}/busybox") as response:
                return response.status == 200

        await wait_until("busybox httpd to answer", answers, 10)
    listed = await engine.docker("ps", "-q", "--filter", f"label={LABEL}={engine.id}")
    assert len(listed.stdout.split()) == 1
    await engine.remove_lab_objects()
    assert not (await engine.docker("ps", "-aq")).stdout.split()


async def test_an_app_container_becomes_healthy_and_switches_mode(engine: DockerEngine) -> None:
    app = await run_app(engine, "app-1", await app_image(engine, "1"))

    async def health() -> str:
        data = json.loads((await engine.docker("inspect", app.name)).stdout)[0]
        return str(data["State"]["Health"]["Status"])

    await wait_until("app-1 to be healthy", lambda: _is(health, "healthy"), 30)
    await app.set_mode("error:500")
    await wait_until("app-1 to be unhealthy", lambda: _is(health, "unhealthy"), 30)


async def _is(probe: Callable[[], Awaitable[str]], wanted: str) -> bool:
    return await probe() == wanted


async def test_stop_leaves_no_process_mount_or_directory(tmp_path: Path) -> None:
    """On vfs, the driver lab-notes found to work anywhere (the session engine prefers overlay2)."""
    engine = DockerEngine(tmp_path, storage_driver="vfs")
    await engine.start()
    assert engine.storage_driver == "vfs"
    info = await engine.docker("info", "--format", "{{.Driver}}")
    assert info.stdout.strip() == "vfs"
    root = engine.root
    assert root is not None
    image = await engine.image("busybox")
    await engine.docker("run", "-d", "--network", "host", *engine.labels(), image, "sleep", "600")
    await engine.stop()
    assert not root.exists()
    mounts = await asyncio.to_thread(Path("/proc/self/mounts").read_text)
    assert str(root) not in mounts
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if str(root) in " ".join(p.info["cmdline"] or ())
    ]
    assert not leftovers
    await engine.stop()  # safe twice


async def test_a_driver_that_cannot_start_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    engine = DockerEngine(tmp_path, storage_driver="no-such-driver")
    with pytest.raises(DockerLabError) as caught:
        await engine.start()
    message = str(caught.value)
    assert message.startswith("dockerd did not start with no-such-driver: "), message
    assert "\n" not in message, message  # dockerd's multi-line log, folded into the one line
    assert engine.root is None and not engine._child.running
