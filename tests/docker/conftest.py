"""The real Docker Engine, one per test session (lab/docker.py); its tests run last."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from lab.docker import DockerEngine


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
