"""Reading the host: procfs through psutil under one process-wide lock, mounts, network and disk
counters, and statfs. Runs in worker threads."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from checks.host.config import HostConfig

_PROCFS_LOCK = threading.Lock()


class ProcfsBusy(Exception):
    """Another host check's sample held psutil's global procfs for too long."""


class Mount(NamedTuple):
    device: str
    mountpoint: str  # as the host sees it: the label
    fstype: str


class Filesystem(NamedTuple):
    mountpoint: str
    fstype: str
    size: int
    avail: int
    usage: float


class NetCounters(NamedTuple):
    rx_bytes: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int


@dataclass
class ProcfsReading:
    cpu: Any  # psutil's scputimes: its fields depend on the kernel
    cpu_count: int
    load: tuple[float, float, float]
    memory_total: int
    memory_available: int
    swap_total: int
    swap_used: int
    mounts: list[Mount]
    disks: dict[str, tuple[int, int]]
    networks: dict[str, NetCounters]
    processes: int
    boot_time: float
    uptime: float
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _using_procfs(procfs: Path, wait: float) -> Iterator[None]:
    if not _PROCFS_LOCK.acquire(timeout=wait):
        raise ProcfsBusy(f"psutil's procfs was busy for {wait:g}s (another host check still sampling)")
    previous = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = str(procfs)
    try:
        yield
    finally:
        psutil.PROCFS_PATH = previous
        _PROCFS_LOCK.release()


def read_cpu_times(procfs: Path, wait: float) -> Any:
    with _using_procfs(procfs, wait):
        return psutil.cpu_times()


def _first_floats(path: Path, count: int) -> list[float]:
    parts = path.read_text(encoding="ascii").split()
    if len(parts) < count:
        raise ValueError(f"{path}: expected at least {count} numbers, got {len(parts)}")
    return [float(p) for p in parts[:count]]


_MOUNT_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape_mount_field(value: str) -> str:
    # The kernel writes space, tab, newline and backslash in mount paths as octal escapes.
    return _MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), value)


def _read_mounts(config: HostConfig) -> list[Mount]:
    if not config.reads_other_host:
        return [Mount(p.device, p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)]
    # PID 1's mount table is the host's mount namespace; {procfs}/self would be the agent's own.
    out = []
    with (config.procfs / "1" / "mounts").open(encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out.append(Mount(_unescape_mount_field(parts[0]), _unescape_mount_field(parts[1]), parts[2]))
    return out


def _read_net_dev(path: Path) -> dict[str, NetCounters]:
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[2:]:
        name, sep, rest = line.partition(":")
        values = rest.split()
        if not sep or len(values) < 11:
            continue
        # receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets errs ...
        out[name.strip()] = NetCounters(int(values[0]), int(values[8]), int(values[2]), int(values[10]))
    return out


def excluded(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def read_procfs(config: HostConfig, wait: float) -> ProcfsReading:
    """Everything that comes from procfs, in one go. Raises OSError/ValueError/RuntimeError when
    procfs is missing or malformed; the optional parts (disk and network counters) become notes."""
    procfs = config.procfs
    notes: list[str] = []
    with _using_procfs(procfs, wait):
        cpu = psutil.cpu_times()
        # Counted from procfs rather than sysconf so that it is the host's count, like the times.
        cpu_count = len(psutil.cpu_times(percpu=True)) or psutil.cpu_count() or 1
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        processes = len(psutil.pids())
        boot_time = psutil.boot_time()
        mounts = _read_mounts(config)
        disks: dict[str, tuple[int, int]] = {}
        try:
            # nowrap=False: psutil's wrap correction keeps process-global state, which would mix
            # up readings of different procfs trees; Prometheus' rate() handles resets anyway.
            for name, io in psutil.disk_io_counters(perdisk=True, nowrap=False).items():
                if not excluded(name, config.disk_devices_exclude):
                    disks[name] = (io.read_bytes, io.write_bytes)
        except (OSError, ValueError, NotImplementedError) as exc:
            notes.append(f"disk counters unavailable: {exc}")
    # /proc/loadavg and /proc/uptime are read directly: psutil uses syscalls for these, which would
    # ignore `procfs` (harmless on a real host, wrong for a procfs served by lxcfs or a test).
    load1, load5, load15 = _first_floats(procfs / "loadavg", 3)
    (uptime,) = _first_floats(procfs / "uptime", 1)
    # /proc/net is the reader's network namespace; PID 1's is the host's.
    net_dev = procfs / "1" / "net" / "dev" if config.reads_other_host else procfs / "net" / "dev"
    networks: dict[str, NetCounters] = {}
    try:
        networks = {
            name: counters
            for name, counters in _read_net_dev(net_dev).items()
            if not excluded(name, config.network_interfaces_exclude)
        }
    except (OSError, ValueError) as exc:
        notes.append(f"network counters unavailable: {exc}")
    return ProcfsReading(
        cpu=cpu,
        cpu_count=cpu_count,
        load=(load1, load5, load15),
        memory_total=memory.total,
        memory_available=memory.available,
        swap_total=swap.total,
        swap_used=swap.used,
        mounts=mounts,
        disks=disks,
        networks=networks,
        processes=processes,
        boot_time=boot_time,
        uptime=uptime,
        notes=notes,
    )


def one_per_block_device(mounts: Iterable[Mount]) -> list[Mount]:
    """Bind mounts of one block device (kubelet volume subpaths, btrfs subvolumes) all report the
    same filesystem: keep the shortest mountpoint, so the label set stays one per filesystem."""
    best: dict[str, Mount] = {}
    out = []
    for m in mounts:
        if not m.device.startswith("/dev/"):
            out.append(m)  # NFS, ZFS and the like name each filesystem distinctly
        else:
            kept = best.get(m.device)
            if kept is None or (len(m.mountpoint), m.mountpoint) < (len(kept.mountpoint), kept.mountpoint):
                best[m.device] = m
    return out + list(best.values())


def statfs(path: str) -> os.statvfs_result | None:
    """statvfs of a directory; None for a file bind mount (e.g. Docker's /etc/hosts)."""
    if not stat.S_ISDIR(os.stat(path).st_mode):
        return None
    return os.statvfs(path)


def _busy_and_total(times: Any) -> tuple[float, float]:
    values: dict[str, float] = times._asdict()
    # The kernel already counts guest time in user/nice; psutil and top subtract it the same way.
    total = sum(values.values()) - values.get("guest", 0.0) - values.get("guest_nice", 0.0)
    # iowait is idle time: the CPU could run something else, it just has nothing runnable.
    idle = values.get("idle", 0.0) + values.get("iowait", 0.0)
    return total - idle, total


def cpu_usage(previous: Any, current: Any) -> float:
    """Busy share of CPU time between two `psutil.cpu_times()` readings, in [0, 1]. 0 when no
    time passed (or the counters went backwards, e.g. procfs swapped underneath)."""
    busy0, total0 = _busy_and_total(previous)
    busy1, total1 = _busy_and_total(current)
    elapsed = total1 - total0
    if elapsed <= 0:
        return 0.0
    return min(1.0, max(0.0, (busy1 - busy0) / elapsed))
