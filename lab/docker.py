"""`DockerEngine`: a real Docker Engine (Debian's `docker.io`) as a lab part, and its images.

    engine = DockerEngine(directory)
    await engine.start()                   # dockerd as our child: own data root, socket, containerd
    tag = await engine.image("busybox")    # imported once per engine from the machine's cache
    await engine.docker("run", "-d", *engine.labels(), "--network", "host", tag, "sleep", "60")
    await engine.stop()                    # every lab container removed, dockerd and its shims gone

The engine is the real daemon, started the way `../shared/reference/lab-notes.md` found to work
on a machine without a bridge or iptables: `--bridge=none`, `--iptables=false`, so every
container runs with `--network host` on its own 127.0.0.1 port. Storage is overlay2 where it
starts (a container in under a second) and vfs otherwise (lab-notes' choice: it works on any
filesystem, at the price of a full copy of the image per container and per build layer);
MAMORI_LAB_STORAGE_DRIVER=vfs forces it. It reads no machine
configuration (an empty `--config-file`), uses no system containerd's namespace of another
daemon (a containerd namespace of its own) and never touches `/var/run/docker.sock`: clients
reach it through `engine.socket` (`engine.env` sets DOCKER_HOST for the CLI and Compose).

Images cannot be pulled here. `image(kind)` imports a root filesystem built once per machine and
kept in the cache (`MAMORI_LAB_CACHE`, default `~/.cache/mamori-lab`), keyed by its recipe:
- "busybox": `/bin/busybox` from Debian's `busybox-static` and its applet links (~2 MB);
- "python": a Debian bookworm minbase with `python3` and `python3-venv` made by `debootstrap`
  from the mirror apt uses (~2 min the first time on a machine), documentation and apt's
  downloaded packages removed. The agent's Dockerfile takes it as PYTHON_IMAGE.
Building the cache takes a file lock, so a benchmark and a test run started together build it
once. `prepare()` builds it without an engine (`python -m lab.docker prepare`).

Every container and volume the lab creates carries the label `LABEL=<engine id>` (`labels()`;
Compose projects get it through their files); `stop()` removes exactly those, then stops the
daemon by PID (SIGTERM; SIGKILL to what is left after the grace period, shims included) and
unmounts what it left mounted under its directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import psutil

from lab.process import Child, ChildExited

LABEL = "io.mamori.lab"
# The Debian package's binaries, by path: another `docker` earlier in PATH (a newer CLI, a
# wrapper) must not decide what the tests run.
DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"
COMPOSE = "/usr/bin/docker-compose"
DEBS = ("docker.io", "docker-compose", "busybox-static", "debootstrap")

# overlay2 makes a container in well under a second; vfs copies the whole image for each one
# (~2-20 s for the 133 MB Python image on a loaded 2-core machine) but works on any filesystem,
# including an overlayfs /tmp inside a container, where overlay2 cannot start.
_DRIVERS = ("overlay2", "vfs")
_START_TIMEOUT = 60.0  # dockerd answers /_ping within ~1 s; a cold containerd can take longer
_STOP_GRACE = 15.0
_CLI_TIMEOUT = 120.0
_BUSYBOX_APPLETS = (
    "sh",
    "httpd",
    "sleep",
    "cat",
    "echo",
    "wget",
    "ls",
    "mkdir",
    "rm",
    "kill",
    "true",
    "false",
)
_PYTHON_PACKAGES = ("python3", "python3-venv")
_PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
)


class DockerLabError(RuntimeError):
    """The engine or an image could not be made ready: one line (what failed, and the end of what
    the tool said, its line breaks folded), whatever text it is given."""

    def __init__(self, message: str) -> None:
        super().__init__(" / ".join(line.strip() for line in message.splitlines() if line.strip()))


def cache_dir() -> Path:
    """Where the machine's image root filesystems are kept (MAMORI_LAB_CACHE overrides)."""
    configured = os.environ.get("MAMORI_LAB_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mamori-lab"


def missing_binaries() -> list[str]:
    """The engine's binaries (and the image makers) that are not installed."""
    needed = (DOCKERD, DOCKER, COMPOSE, "/bin/busybox", "/usr/sbin/debootstrap")
    return [path for path in needed if not os.access(path, os.X_OK)]


# --- the machine's image cache ----------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror apt already uses (deb822 or one-line sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            match = re.match(r"URIs:\s*(\S+)", line) or re.match(
                r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line
            )
            if match and "security" not in match.group(1) and match.group(1).startswith("http"):
                return match.group(1).rstrip("/")
    return "http://deb.debian.org/debian"


def _recipe(kind: str) -> str:
    if kind == "busybox":
        return f"busybox {os.stat('/bin/busybox').st_size} {' '.join(_BUSYBOX_APPLETS)}"
    if kind == "python":
        return f"debootstrap minbase bookworm {' '.join(_PYTHON_PACKAGES)} prune {' '.join(_PRUNE)}"
    raise ValueError(f"unknown lab image {kind!r} (busybox or python)")


def rootfs_tarball(kind: str) -> Path:
    """The cached root filesystem tarball of image `kind`, built first if missing (blocking: up
    to ~2 min for "python" on a fresh machine). Raises DockerLabError."""
    digest = hashlib.sha256(_recipe(kind).encode()).hexdigest()[:12]
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{kind}-{digest}.tar"
    if tarball.exists():
        return tarball
    with (cache / f"{kind}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if tarball.exists():
            return tarball
        for stale in cache.glob(f"{kind}-*"):  # an earlier build killed half-way (we hold the lock)
            if stale.is_dir():
                _unmount_under(stale)
                shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=cache))
        rootfs = work / "rootfs"
        try:
            if kind == "busybox":
                _busybox_rootfs(rootfs)
            else:
                _debian_rootfs(rootfs, work / "debootstrap.log")
            partial = work / "rootfs.tar"
            _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], f"tar of {kind}")
            partial.replace(tarball)
        finally:
            _unmount_under(work)
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def _busybox_rootfs(rootfs: Path) -> None:
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "tmp").mkdir(mode=0o1777)
    shutil.copy2("/bin/busybox", rootfs / "bin/busybox")
    for applet in _BUSYBOX_APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")


def _debian_rootfs(rootfs: Path, log: Path) -> None:
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(_PYTHON_PACKAGES)}",
        "bookworm",
        str(rootfs),
        debian_mirror(),
    ]
    with log.open("wb") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise DockerLabError(f"debootstrap exited with {done.returncode}: {' / '.join(tail)}")
    _unmount_under(rootfs)
    for relative in _PRUNE:
        target = rootfs / relative
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir()


def prepare(kinds: Sequence[str] = ("busybox", "python")) -> dict[str, Path]:
    """Build the cached root filesystems (no engine needed)."""
    return {kind: rootfs_tarball(kind) for kind in kinds}


def prepare_in_background(kinds: Sequence[str] = ("busybox", "python")) -> threading.Thread:
    """Start building the cache in a daemon thread: a head start for a test session whose Docker
    tests come last. `image()` waits for it through the cache's file lock; a failure here is
    raised again, in its own words, by the `image()` that needs the tarball."""
    thread = threading.Thread(
        target=_prepare_quietly, args=(tuple(kinds),), name="lab-docker-prepare", daemon=True
    )
    thread.start()
    return thread


def _prepare_quietly(kinds: tuple[str, ...]) -> None:
    with contextlib.suppress(Exception):
        prepare(kinds)


def _run(argv: Sequence[str], what: str, *, timeout: float = 600.0) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise DockerLabError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-300:]}")


def _unmount_under(path: Path) -> None:
    """Lazily unmount every mount point below `path`, deepest first (debootstrap mounts /proc)."""
    prefix = str(path.resolve()) + "/"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    points = [m.split()[1].replace("\\040", " ") for m in mounts if len(m.split()) > 1]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


# --- the engine -------------------------------------------------------------------------------------


class DockerEngine:
    """One dockerd of our own, on a socket in a short temporary directory.

    `directory` holds the daemon's log and config; the data root and exec root live in a
    directory of their own under /tmp (containerd's socket paths must stay short), removed by
    `stop()`. Use `start()`/`stop()` or `async with`.
    """

    def __init__(self, directory: Path, storage_driver: str | None = None) -> None:
        """`storage_driver` (or MAMORI_LAB_STORAGE_DRIVER) forces one; by default overlay2 is
        tried first and vfs is the fallback. `storage_driver` says which one runs."""
        self.directory = Path(directory)
        self.requested_driver = storage_driver or os.environ.get("MAMORI_LAB_STORAGE_DRIVER") or None
        self.storage_driver: str | None = None
        self.id = f"{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.root: Path | None = None
        self._child = Child("dockerd", log_file=self.directory / "dockerd.log", grace=_STOP_GRACE)
        self._images: dict[str, str] = {}
        self._image_lock = asyncio.Lock()

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        if self.root is None:
            raise RuntimeError("the engine is not started")
        return self.root / "docker.sock"

    @property
    def env(self) -> dict[str, str]:
        """The environment for `docker` and `docker-compose`: ours, with DOCKER_HOST set."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        env["DOCKER_CONFIG"] = str(self.directory / "docker-cli")  # no ~/.docker of the machine
        # BuildKit (built into dockerd): a metadata-only instruction costs nothing, where the
        # classic builder commits a container for it, a full copy of the image on vfs (~15 s).
        env["DOCKER_BUILDKIT"] = "1"
        env["COMPOSE_DOCKER_CLI_BUILD"] = "1"
        return env

    def labels(self, **extra: str) -> list[str]:
        """`--label` arguments marking a container (or volume) as this lab's."""
        args = ["--label", f"{LABEL}={self.id}"]
        for key, value in extra.items():
            args += ["--label", f"{key}={value}"]
        return args

    async def start(self) -> None:
        """Start dockerd and wait until it answers: with overlay2 where the kernel and the
        filesystem under /tmp allow it, else vfs (or the driver asked for). Raises
        DockerLabError with the daemon's log."""
        missing = missing_binaries()
        if missing:
            raise DockerLabError(f"not installed: {', '.join(missing)} (Debian packages {' '.join(DEBS)})")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "docker-cli").mkdir(exist_ok=True)
        failures = []
        for driver in (self.requested_driver,) if self.requested_driver else _DRIVERS:
            try:
                await self._start_with(driver)
            except DockerLabError as exc:
                failures.append(f"{driver}: {exc}")
                await self.stop()
                continue
            self.storage_driver = driver
            return
        raise DockerLabError("dockerd did not start with " + "; with ".join(failures))

    async def _start_with(self, driver: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
        config = self.directory / "daemon.json"
        config.write_text("{}\n")
        argv = [
            DOCKERD,
            "--config-file", str(config),
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "docker.pid"),
            "-H", f"unix://{self.socket}",
            "--containerd-namespace", f"mamori-lab-{self.id}",
            "--containerd-plugins-namespace", f"mamori-lab-{self.id}-plugins",
            "--storage-driver", driver,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--userland-proxy=false",
            "--log-level", "warn",
        ]  # fmt: skip
        self._child.start(argv)
        try:
            await self._child.wait_ready("dockerd to answer", self._answers, _START_TIMEOUT, interval=0.1)
        except (ChildExited, TimeoutError) as exc:
            raise DockerLabError(f"{exc}: {self._child.log_since_start(400)}") from None

    async def _answers(self) -> bool:
        done = await self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=5)
        return done.returncode == 0

    async def stop(self) -> None:
        """Remove the lab's containers and volumes, stop dockerd by PID, remove its directories.
        Safe twice and before start(); never raises."""
        if self.root is None:
            return
        if self._child.running:
            with contextlib.suppress(Exception):
                await self.remove_lab_objects()
        await self._child.stop()
        _kill_leftovers(str(self.root))
        _unmount_under(self.root)
        await asyncio.to_thread(shutil.rmtree, self.root, True)
        self.root = None
        self._images.clear()

    async def __aenter__(self) -> DockerEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def remove_lab_objects(self) -> None:
        """Remove every container and volume labelled as this lab's (teardown, or between tests)."""
        found = await self.docker("ps", "-aq", "--filter", f"label={LABEL}={self.id}", check=False)
        ids = found.stdout.split()
        if ids:
            await self.docker("rm", "-f", "-v", *ids, check=False, timeout=60)
        volumes = await self.docker("volume", "ls", "-q", "--filter", f"label={LABEL}={self.id}", check=False)
        if volumes.stdout.split():
            await self.docker("volume", "rm", "-f", *volumes.stdout.split(), check=False)

    # --- faults -------------------------------------------------------------------------------

    def freeze(self) -> None:
        """SIGSTOP dockerd and its descendants (containerd): the socket still accepts
        connections, nothing answers. `thaw()` undoes it; `stop()` thaws first."""
        self._child.freeze()

    def thaw(self) -> None:
        self._child.thaw()

    async def crash(self) -> None:
        """SIGKILL dockerd and its descendants, as a crash would: its socket file stays and
        refuses connections. `stop()` still removes everything."""
        await self._child.stop((signal.SIGKILL, 5.0))

    # --- the CLI ------------------------------------------------------------------------------

    async def docker(
        self, *args: str, check: bool = True, timeout: float = _CLI_TIMEOUT, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run Debian's `docker` CLI against this engine; raise DockerLabError if `check` and it
        fails (its stderr in the message) or times out."""
        return await self._cli([DOCKER, *args], check=check, timeout=timeout, input=input)

    async def compose(
        self, *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None,
        check: bool = True, timeout: float = _CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run `docker-compose` (1.29) against this engine, in `cwd`, with `env` added."""
        return await self._cli([COMPOSE, *args], check=check, timeout=timeout, cwd=cwd, extra_env=env)

    async def _cli(
        self, argv: list[str], *, check: bool, timeout: float, input: bytes | None = None,
        cwd: Path | None = None, extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        env = self.env | dict(extra_env or {})
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate(input)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise DockerLabError(f"{' '.join(argv[:3])} … did not finish within {timeout:g} s") from None
        code = proc.returncode or 0
        done = subprocess.CompletedProcess(
            argv, code, out.decode(errors="replace"), err.decode(errors="replace")
        )
        if check and done.returncode != 0:
            what = " ".join(Path(argv[0]).name.split() + list(argv[1:3]))
            raise DockerLabError(f"{what} … exited with {done.returncode}: {done.stderr.strip()[-400:]}")
        return done

    async def inspect(self, name: str) -> dict[str, object]:
        """`docker inspect NAME` as a dict."""
        done = await self.docker("inspect", name)
        data = json.loads(done.stdout)
        return dict(data[0])

    # --- images -------------------------------------------------------------------------------

    async def image(self, kind: str) -> str:
        """The tag of lab image `kind` ("busybox" or "python") in this engine, imported from the
        machine's cache (built first if missing, in a worker thread)."""
        async with self._image_lock:
            if kind in self._images:
                return self._images[kind]
            tarball = await asyncio.to_thread(rootfs_tarball, kind)
            tag = f"mamori-lab/{kind}:{tarball.stem.rsplit('-', 1)[-1]}"
            with tarball.open("rb") as source:
                await self._import(source, tag)
            self._images[kind] = tag
            return tag

    async def _import(self, source: BinaryIO, tag: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            DOCKER, "import", "-", tag,
            stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
        )  # fmt: skip
        async with asyncio.timeout(_CLI_TIMEOUT * 3):
            _, err = await proc.communicate()
        if proc.returncode != 0:
            raise DockerLabError(f"docker import {tag} failed: {err.decode(errors='replace').strip()[-300:]}")


def _kill_leftovers(root: str) -> None:
    """SIGKILL any process (containerd shims, container processes) whose command line names the
    engine's private directory: they are not dockerd's descendants once the shims detach."""
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if proc.info["pid"] != me and root in cmdline:
                proc.send_signal(signal.SIGKILL)


def main(argv: Sequence[str]) -> int:
    """`python -m lab.docker prepare`: build the machine's image cache."""
    if list(argv) != ["prepare"]:
        sys.stderr.write("usage: python -m lab.docker prepare\n")
        return 2
    try:
        for kind, path in prepare().items():
            sys.stdout.write(f"{kind}: {path} ({path.stat().st_size // 2**20} MiB)\n")
    except (DockerLabError, OSError) as exc:
        sys.stderr.write(f"lab.docker: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
