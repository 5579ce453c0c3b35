"""App containers: the lab's app server (lab/apps.py) in real containers of a real engine.

    tag = await app_image(engine, "2")                        # mamori-lab/app:2, built in ~1 s
    bad = await app_image(engine, "3", mode="error:500")      # a release that answers 500
    app = await run_app(engine, "app-1", tag, port=free_port(), labels={"com.example.service": "web"})
    await app.set_mode("hang")                                # at run time, over its control port
    await engine.docker("rm", "-f", app.name)

An app image is the lab's "python" image plus metadata only (ENV, HEALTHCHECK, CMD; no file
layer, so it costs nothing on vfs): its version and the mode it starts in are baked in, which is
what makes "a new image version" of the app. The code comes from the checkout, bind-mounted
read-only (`lab/` and the venv's site-packages for aiohttp: the host's Python and the image's are
both Debian bookworm's 3.11), so no image has to be rebuilt when the lab's code changes.

Every container runs with `--network host` on its own 127.0.0.1 port (no bridge here), carries
the engine's lab label (removed by `engine.stop()`) and the labels given. Its HEALTHCHECK asks
`/api/health` every `health_interval` seconds: a release that answers 500 or hangs becomes
`unhealthy` after `health_retries` failures, as a real one does.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from lab import REPO
from lab.certs import Leaf
from lab.docker import DockerEngine
from lab.ports import free_port

HOST = "127.0.0.1"
_LAB_IN_CONTAINER = "/opt/lab"
_SITE_IN_CONTAINER = "/opt/site"
_CERTS_IN_CONTAINER = "/opt/certs"

# The HEALTHCHECK: plain Python (the image has no curl), https without verification (the app's
# own certificate), 2 s per try.
_PROBE = (
    "import os,ssl,sys,urllib.request as u;"
    "s='https' if os.environ.get('LAB_APP_TLS') else 'http';"
    "c=ssl._create_unverified_context();"
    "r=u.urlopen(s+'://127.0.0.1:'+os.environ['LAB_APP_PORT']+'/api/health',timeout=2,context=c);"
    "sys.exit(0 if r.status==200 else 1)"
)


@dataclass(frozen=True)
class AppContainer:
    """One running app container: its name, image, port (and control port) on 127.0.0.1."""

    name: str
    image: str
    port: int
    control_port: int
    tls: bool

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    async def set_mode(self, words: str) -> None:
        """Switch the running server's behaviour (lab/apps.py `apply_mode` words)."""
        async with (
            aiohttp.ClientSession() as session,
            session.put(f"http://{HOST}:{self.control_port}/mode", data=words) as response,
        ):
            if response.status != 200:
                raise ValueError(f"{self.name}: mode {words!r} refused: {await response.text()}")


async def app_image(
    engine: DockerEngine,
    version: str,
    *,
    mode: str = "healthy",
    health_interval: float = 1.0,
    health_retries: int = 2,
    start_period: float = 0.0,
) -> str:
    """Build (once per engine and arguments) `mamori-lab/app:VERSION` and return its tag."""
    base = await engine.image("python")
    tag = f"mamori-lab/app:{version}"
    dockerfile = "\n".join(
        [
            f"FROM {base}",
            f"LABEL io.mamori.lab.app-version={version}",
            f"ENV LAB_APP_VERSION={version} LAB_APP_MODE={mode}",
            f"ENV PYTHONPATH={_LAB_IN_CONTAINER}:{_SITE_IN_CONTAINER}",
            f"HEALTHCHECK --interval={health_interval}s --timeout=3s --retries={health_retries}"
            + (f" --start-period={start_period}s" if start_period else "")
            + f' CMD ["python3", "-c", "{_PROBE}"]',
            'ENTRYPOINT ["python3", "-m", "lab.apps"]',
            "",
        ]
    )
    await engine.docker("build", "-q", "-t", tag, "-", input=dockerfile.encode(), timeout=300)
    return tag


async def run_app(
    engine: DockerEngine,
    name: str,
    image: str,
    *,
    port: int = 0,
    control_port: int = 0,
    labels: dict[str, str] | None = None,
    tls: Leaf | None = None,
    extra: list[str] | None = None,
) -> AppContainer:
    """Start container `name` of app `image` on 127.0.0.1:`port` (a free port if 0)."""
    port = port or free_port()
    control_port = control_port or free_port()
    site = sysconfig.get_paths()["purelib"]
    argv = [
        "run", "-d", "--name", name, "--network", "host",
        *engine.labels(**(labels or {})),
        "-v", f"{REPO / 'lab'}:{_LAB_IN_CONTAINER}/lab:ro",
        "-v", f"{site}:{_SITE_IN_CONTAINER}:ro",
        "-e", f"LAB_APP_PORT={port}",
    ]  # fmt: skip
    command = ["--name", name, "--port", str(port), "--control-port", str(control_port)]
    if tls is not None:
        certs = Path(tls.cert_file).parent
        argv += ["-v", f"{certs}:{_CERTS_IN_CONTAINER}:ro", "-e", "LAB_APP_TLS=1"]
        command += [
            "--cert", f"{_CERTS_IN_CONTAINER}/{Path(tls.cert_file).name}",
            "--key", f"{_CERTS_IN_CONTAINER}/{Path(tls.key_file).name}",
        ]  # fmt: skip
    await engine.docker(*argv, *(extra or []), image, *command)
    return AppContainer(name, image, port, control_port, tls is not None)
