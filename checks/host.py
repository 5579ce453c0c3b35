"""The host check: CPU, load, memory, swap, filesystems, disk and network counters, via psutil.

One run reads everything procfs offers in a single worker thread, then stats the filesystems
(each in its own worker thread, under a deadline), then grades the readings against the
configured thresholds. The worst breach decides the status (reason `threshold`); every breach
is listed in the message.

Reading another host's procfs (a container watching its host): `procfs` points psutil at the
host's /proc and `rootfs` at the host's root filesystem. psutil's `PROCFS_PATH` is
process-global, so it is set only while a sample is taken, under a lock, and restored after:
host checks never see each other's procfs, but anything else in the process that uses psutil
during a sample would see the host's. One agent is meant to read one host.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import os
import posixpath
import re
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import psutil
from pydantic import AfterValidator, field_validator, model_validator

from agent.model import CheckResult, Reason, Sample, Status
from agent.types import Model
from checks.base import Check, CheckConfig, Outcome, PerfDatum

DEFAULT_PROCFS = Path("/proc")
DEFAULT_ROOTFS = Path("/")

# Pseudo, virtual and image filesystems: never "full" in a way anyone can act on, and in a
# container host they come and go with every container, which would make the label set unbounded.
DEFAULT_EXCLUDE_FSTYPES: tuple[str, ...] = (
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "efivarfs", "fusectl", "fuse.gvfsd-fuse", "fuse.lxcfs", "fuse.portal",
    "fuse.snapfuse", "hugetlbfs", "iso9660", "mqueue", "nsfs", "overlay", "aufs", "proc",
    "pstore", "ramfs", "rootfs", "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs",
    "tmpfs", "tracefs", "nfsd",
)  # fmt: skip

# Virtual interfaces: one per container/pod/VM on a busy host, so they would make the label set
# unbounded, and their traffic is already counted on the physical interface.
DEFAULT_NETWORK_INTERFACES_EXCLUDE: tuple[str, ...] = (
    "lo", "veth*", "docker*", "br-*", "virbr*", "vnet*", "cni*", "flannel*", "cali*",
    "cilium_*", "lxc*", "kube-*", "tunl*", "ifb*", "dummy*",
)  # fmt: skip

# Loop and RAM disks are not storage. Partitions are excluded because the kernel already
# counts their I/O in the whole disk: keeping both would double every sum over `device`.
DEFAULT_DISK_DEVICES_EXCLUDE: tuple[str, ...] = (
    "loop*", "ram*", "zram*", "fd*", "sr*",
    "sd*[0-9]", "hd*[0-9]", "vd*[0-9]", "xvd*[0-9]", "nvme*p[0-9]*", "mmcblk*p[0-9]*",
)  # fmt: skip

# On the first run there is no previous CPU reading to compare with.
FIRST_CPU_INTERVAL = 0.2
# statfs on a dead network mount blocks in the kernel, uninterruptibly; never wait longer than this.
MAX_STATFS_WAIT = 5.0

# Sample names (agent/catalog.py).
CPU_USAGE = "mamori_host_cpu_usage_ratio"
CPU_COUNT = "mamori_host_cpu_count"
LOAD1 = "mamori_host_load1"
LOAD5 = "mamori_host_load5"
LOAD15 = "mamori_host_load15"
MEMORY_TOTAL = "mamori_host_memory_total_bytes"
MEMORY_AVAILABLE = "mamori_host_memory_available_bytes"
MEMORY_USAGE = "mamori_host_memory_usage_ratio"
SWAP_TOTAL = "mamori_host_swap_total_bytes"
SWAP_USED = "mamori_host_swap_used_bytes"
SWAP_USAGE = "mamori_host_swap_usage_ratio"
FS_SIZE = "mamori_host_filesystem_size_bytes"
FS_AVAIL = "mamori_host_filesystem_avail_bytes"
FS_USAGE = "mamori_host_filesystem_usage_ratio"
DISK_READ = "mamori_host_disk_read_bytes_total"
DISK_WRITTEN = "mamori_host_disk_written_bytes_total"
NET_RECEIVED = "mamori_host_network_received_bytes_total"
NET_TRANSMITTED = "mamori_host_network_transmitted_bytes_total"
NET_ERRORS = "mamori_host_network_errors_total"
PROCESSES = "mamori_host_processes"
BOOT_TIME = "mamori_host_boot_time_seconds"
UPTIME = "mamori_host_uptime_seconds"


def _ratio(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{value:g} is not a ratio between 0 and 1 (write 0.9 for 90%)")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"{value:g} must be above 0")
    return value


Ratio = Annotated[float, AfterValidator(_ratio)]
LoadPerCpu = Annotated[float, AfterValidator(_positive)]


def _mountpoint(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"mountpoint {value!r} must be an absolute path, as the host's mount table shows it")
    return posixpath.normpath(value)


def _pair_error(
    warn_key: str,
    warn: float | None,
    crit_key: str,
    crit: float | None,
    warn_note: str = "",
    crit_note: str = "",
) -> str | None:
    if warn is not None and crit is not None and warn >= crit:
        return f"{warn_key} ({warn:g}{warn_note}) must be below {crit_key} ({crit:g}{crit_note})"
    return None


class DiskThreshold(Model):
    """Per-mountpoint disk limits. A key left out inherits `disk_warning`/`disk_critical`;
    a key set to null turns that level off for this mountpoint."""

    warning: Ratio | None = None
    critical: Ratio | None = None


class HostConfig(CheckConfig):
    type: Literal["host"] = "host"
    procfs: Path = DEFAULT_PROCFS
    rootfs: Path = DEFAULT_ROOTFS
    cpu_warning: Ratio | None = None
    cpu_critical: Ratio | None = None
    memory_warning: Ratio | None = 0.90
    memory_critical: Ratio | None = 0.95
    swap_warning: Ratio | None = None
    swap_critical: Ratio | None = None
    load_per_cpu_warning: LoadPerCpu | None = None
    load_per_cpu_critical: LoadPerCpu | None = None
    disk_warning: Ratio | None = 0.80
    disk_critical: Ratio | None = 0.90
    mountpoints: tuple[str, ...] | None = None
    exclude_fstypes: tuple[str, ...] = DEFAULT_EXCLUDE_FSTYPES
    disk_thresholds: dict[str, DiskThreshold] = {}
    network_interfaces_exclude: tuple[str, ...] = DEFAULT_NETWORK_INTERFACES_EXCLUDE
    disk_devices_exclude: tuple[str, ...] = DEFAULT_DISK_DEVICES_EXCLUDE

    @field_validator("procfs")
    @classmethod
    def _procfs_readable(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path")
        stat_file = value / "stat"
        try:
            with stat_file.open("rb") as f:
                first = f.readline()
        except OSError as exc:
            hint = "" if value == DEFAULT_PROCFS else " (in a container, mount the host's /proc there)"
            reason = exc.strerror or exc
            raise ValueError(f"cannot read {stat_file}: {reason}{hint}") from None
        if not first.startswith(b"cpu"):
            raise ValueError(f"{stat_file} does not look like /proc/stat")
        return value

    @field_validator("rootfs")
    @classmethod
    def _rootfs_dir(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path")
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory (in a container, mount the host's / there)")
        return value

    @field_validator("mountpoints")
    @classmethod
    def _mountpoints(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        return tuple(dict.fromkeys(_mountpoint(v) for v in value))

    @field_validator("disk_thresholds")
    @classmethod
    def _disk_threshold_keys(cls, value: dict[str, DiskThreshold]) -> dict[str, DiskThreshold]:
        return {_mountpoint(k): v for k, v in value.items()}

    @model_validator(mode="after")
    def _warning_below_critical(self) -> HostConfig:
        def note(key: str) -> str:
            return "" if key in self.model_fields_set else ", its default"

        errors = []
        for what in ("cpu", "memory", "swap", "load_per_cpu", "disk"):
            w, c = f"{what}_warning", f"{what}_critical"
            errors.append(_pair_error(w, getattr(self, w), c, getattr(self, c), crit_note=note(c)))
        for mp, limits in self.disk_thresholds.items():
            warn, crit = self.disk_limits(mp)
            w_note = "" if "warning" in limits.model_fields_set else ", from disk_warning"
            c_note = "" if "critical" in limits.model_fields_set else ", from disk_critical"
            errors.append(
                _pair_error(f"disk_thresholds[{mp!r}]: warning", warn, "critical", crit, w_note, c_note)
            )
            if self.mountpoints is not None and mp not in self.mountpoints:
                errors.append(f"disk_thresholds[{mp!r}]: {mp} is not in mountpoints")
        problems = [e for e in errors if e]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def disk_limits(self, mountpoint: str) -> tuple[float | None, float | None]:
        """(warning, critical) for a mountpoint, per-mount overrides applied."""
        limits = self.disk_thresholds.get(mountpoint)
        if limits is None:
            return self.disk_warning, self.disk_critical
        fields = limits.model_fields_set
        return (
            limits.warning if "warning" in fields else self.disk_warning,
            limits.critical if "critical" in fields else self.disk_critical,
        )

    @property
    def reads_other_host(self) -> bool:
        """True when the mount table and filesystems are the host's seen from a container."""
        return self.procfs != DEFAULT_PROCFS or self.rootfs != DEFAULT_ROOTFS


# --- sampling (runs in worker threads) -------------------------------------------------------

_PROCFS_LOCK = threading.Lock()


class _ProcfsBusy(Exception):
    """Another host check's sample held psutil's global procfs for too long."""


class _Mount(NamedTuple):
    device: str
    mountpoint: str  # as the host sees it: the label
    fstype: str


class _Filesystem(NamedTuple):
    mountpoint: str
    fstype: str
    size: int
    avail: int
    usage: float


class _NetCounters(NamedTuple):
    rx_bytes: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int


@dataclass
class _ProcfsReading:
    cpu: Any  # psutil's scputimes: its fields depend on the kernel
    cpu_count: int
    load: tuple[float, float, float]
    memory_total: int
    memory_available: int
    swap_total: int
    swap_used: int
    mounts: list[_Mount]
    disks: dict[str, tuple[int, int]]
    networks: dict[str, _NetCounters]
    processes: int
    boot_time: float
    uptime: float
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _using_procfs(procfs: Path, wait: float) -> Iterator[None]:
    if not _PROCFS_LOCK.acquire(timeout=wait):
        raise _ProcfsBusy(f"psutil's procfs was busy for {wait:g}s (another host check still sampling)")
    previous = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = str(procfs)
    try:
        yield
    finally:
        psutil.PROCFS_PATH = previous
        _PROCFS_LOCK.release()


def _read_cpu_times(procfs: Path, wait: float) -> Any:
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


def _read_mounts(config: HostConfig) -> list[_Mount]:
    if not config.reads_other_host:
        return [_Mount(p.device, p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)]
    # PID 1's mount table is the host's mount namespace; {procfs}/self would be the agent's own.
    out = []
    with (config.procfs / "1" / "mounts").open(encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out.append(_Mount(_unescape_mount_field(parts[0]), _unescape_mount_field(parts[1]), parts[2]))
    return out


def _read_net_dev(path: Path) -> dict[str, _NetCounters]:
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[2:]:
        name, sep, rest = line.partition(":")
        values = rest.split()
        if not sep or len(values) < 11:
            continue
        # receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets errs ...
        out[name.strip()] = _NetCounters(int(values[0]), int(values[8]), int(values[2]), int(values[10]))
    return out


def _excluded(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _read_procfs(config: HostConfig, wait: float) -> _ProcfsReading:
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
                if not _excluded(name, config.disk_devices_exclude):
                    disks[name] = (io.read_bytes, io.write_bytes)
        except (OSError, ValueError, NotImplementedError) as exc:
            notes.append(f"disk counters unavailable: {exc}")
    # /proc/loadavg and /proc/uptime are read directly: psutil uses syscalls for these, which would
    # ignore `procfs` (harmless on a real host, wrong for a procfs served by lxcfs or a test).
    load1, load5, load15 = _first_floats(procfs / "loadavg", 3)
    (uptime,) = _first_floats(procfs / "uptime", 1)
    # /proc/net is the reader's network namespace; PID 1's is the host's.
    net_dev = procfs / "1" / "net" / "dev" if config.reads_other_host else procfs / "net" / "dev"
    networks: dict[str, _NetCounters] = {}
    try:
        networks = {
            name: counters
            for name, counters in _read_net_dev(net_dev).items()
            if not _excluded(name, config.network_interfaces_exclude)
        }
    except (OSError, ValueError) as exc:
        notes.append(f"network counters unavailable: {exc}")
    return _ProcfsReading(
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


def _one_per_block_device(mounts: Iterable[_Mount]) -> list[_Mount]:
    """Bind mounts of one block device (kubelet volume subpaths, btrfs subvolumes) all report the
    same filesystem: keep the shortest mountpoint, so the label set stays one per filesystem."""
    best: dict[str, _Mount] = {}
    out = []
    for m in mounts:
        if not m.device.startswith("/dev/"):
            out.append(m)  # NFS, ZFS and the like name each filesystem distinctly
        else:
            kept = best.get(m.device)
            if kept is None or (len(m.mountpoint), m.mountpoint) < (len(kept.mountpoint), kept.mountpoint):
                best[m.device] = m
    return out + list(best.values())


def _statfs(path: str) -> os.statvfs_result | None:
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


# --- grading ---------------------------------------------------------------------------------


def _breach_text(
    what: str, value: float, threshold: float, scale: float = 100.0, unit: str = "%", min_decimals: int = 0
) -> str:
    # The value gets at least the threshold's precision, so a breach never reads "89% ≥ 89.5%".
    limit = f"{threshold * scale:.10g}"
    decimals = max(min_decimals, len(limit.partition(".")[2]))
    return f"{what} {value * scale:.{decimals}f}{unit} ≥ {limit}{unit}"


def _grade(value: float, warn: float | None, crit: float | None) -> tuple[Status, float | None]:
    if crit is not None and value >= crit:
        return Status.CRITICAL, crit
    if warn is not None and value >= warn:
        return Status.WARNING, warn
    return Status.OK, None


@dataclass
class _Grades:
    breaches: list[tuple[Status, str]] = field(default_factory=list)

    def add(self, what: str, value: float, warn: float | None, crit: float | None, **fmt: Any) -> None:
        status, threshold = _grade(value, warn, crit)
        if threshold is not None:
            self.breaches.append((status, _breach_text(what, value, threshold, **fmt)))

    @property
    def status(self) -> Status:
        return max((s for s, _ in self.breaches), default=Status.OK)

    def message(self) -> str:
        # Criticals first: the first words of a page should be the worst news.
        ordered = [t for s, t in self.breaches if s is Status.CRITICAL] + [
            t for s, t in self.breaches if s is Status.WARNING
        ]
        return "; ".join(ordered)


def _pct_datum(label: str, ratio: float, warn: float | None, crit: float | None) -> PerfDatum:
    def pct(v: float | None) -> float | None:
        return None if v is None else v * 100

    return PerfDatum(label, ratio * 100, "%", pct(warn), pct(crit), 0, 100)


# --- the check -------------------------------------------------------------------------------


class HostCheck(Check[HostConfig]):
    """Host resources against thresholds. Keeps the previous CPU reading between runs (the CPU
    ratio is "since the previous run"), and the set of mountpoints whose statfs is stuck in the
    kernel, so a dead network mount costs one worker thread, not one per run."""

    type_name = "host"
    config_model = HostConfig

    def __init__(self, config: HostConfig) -> None:
        super().__init__(config)
        self._previous_cpu: Any = None
        self._stuck_mounts: set[str] = set()

    @property
    def target(self) -> str:
        return "localhost" if self.config.procfs == DEFAULT_PROCFS else str(self.config.procfs)

    async def run(self) -> Outcome:
        """Never raises for a missing or malformed procfs: that is UNKNOWN with the path in the message."""
        c = self.config
        # Leave room inside the timeout for the filesystem stats that follow.
        lock_wait = max(0.1, c.timeout / 2)
        try:
            if self._previous_cpu is None:
                self._previous_cpu = await asyncio.to_thread(_read_cpu_times, c.procfs, lock_wait)
                await asyncio.sleep(FIRST_CPU_INTERVAL)
            reading = await asyncio.to_thread(_read_procfs, c, lock_wait)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            return self._unknown(f"{exc.strerror or exc}{where}")
        except (ValueError, RuntimeError, _ProcfsBusy) as exc:
            return self._unknown(str(exc))
        cpu_ratio = cpu_usage(self._previous_cpu, reading.cpu)
        self._previous_cpu = reading.cpu
        filesystems, fs_notes = await self._filesystems(reading.mounts)
        return self._outcome(reading, cpu_ratio, filesystems, reading.notes + fs_notes)

    def _unknown(self, detail: str) -> Outcome:
        message = f"cannot read host metrics from {self.config.procfs}: {detail}"
        return Outcome(Status.UNKNOWN, Reason.UNAVAILABLE, message)

    def _unstick(self, mountpoint: str, _future: asyncio.Future[Any]) -> None:
        self._stuck_mounts.discard(mountpoint)

    def _select_mounts(self, mounts: list[_Mount]) -> tuple[list[tuple[_Mount, bool]], list[str]]:
        """(mount, named explicitly) pairs to stat, and notes for named mountpoints not mounted."""
        c = self.config
        # The last entry for a mountpoint is the one on top, the one statfs will see.
        table = {m.mountpoint: m for m in mounts}
        if c.mountpoints is not None:
            named = list(c.mountpoints)
            chosen = []
        else:
            named = list(c.disk_thresholds)
            real = [m for m in table.values() if not _excluded(m.fstype, c.exclude_fstypes)]
            chosen = [(m, False) for m in _one_per_block_device(real)]
        chosen_mps = {m.mountpoint for m, _ in chosen}
        notes = []
        for mp in named:
            if mp not in table:
                notes.append(f"{mp}: not mounted")
            elif mp not in chosen_mps:
                chosen.append((table[mp], True))
        return chosen, notes

    async def _filesystems(self, mounts: list[_Mount]) -> tuple[list[_Filesystem], list[str]]:
        c = self.config
        selected, notes = self._select_mounts(mounts)
        loop = asyncio.get_running_loop()
        pending: list[tuple[_Mount, bool, asyncio.Future[os.statvfs_result | None]]] = []
        for mount, named in selected:
            if mount.mountpoint in self._stuck_mounts:
                notes.append(f"{mount.mountpoint}: skipped, an earlier statfs has not returned")
                continue
            path = str(c.rootfs / mount.mountpoint.lstrip("/")) if c.reads_other_host else mount.mountpoint
            future = loop.run_in_executor(None, _statfs, path)
            future.add_done_callback(_retrieve)
            pending.append((mount, named, future))
        try:
            if pending:
                await asyncio.wait([f for _, _, f in pending], timeout=min(MAX_STATFS_WAIT, c.timeout / 2))
        finally:
            # Also when the harness cancels this run: the threads go on either way.
            for mount, _, future in pending:
                if not future.done():
                    self._stuck_mounts.add(mount.mountpoint)
                    future.add_done_callback(functools.partial(self._unstick, mount.mountpoint))
        out = []
        for mount, named, future in pending:
            mp = mount.mountpoint
            if not future.done():
                notes.append(f"{mp}: statfs did not return (skipped until it does)")
                continue
            exc = future.exception()
            if isinstance(exc, OSError):
                notes.append(f"{mp}: cannot stat: {exc.strerror or exc}")
                continue
            if exc is not None:
                raise exc
            st = future.result()
            if st is None:
                if named:
                    notes.append(f"{mp}: not a directory")
                continue
            size = st.f_blocks * st.f_frsize
            if size == 0 and not named:
                continue  # a pseudo filesystem that slipped past exclude_fstypes
            avail = st.f_bavail * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            # As df computes Use%: space reserved for root counts as neither used nor available.
            usage = used / (used + avail) if used + avail > 0 else 0.0
            out.append(_Filesystem(mp, mount.fstype, size, avail, usage))
        out.sort(key=lambda f: f.mountpoint)
        return out, notes

    def _outcome(
        self, r: _ProcfsReading, cpu_ratio: float, filesystems: list[_Filesystem], notes: list[str]
    ) -> Outcome:
        c = self.config
        memory_usage = 1 - r.memory_available / r.memory_total if r.memory_total > 0 else 0.0
        swap_usage = r.swap_used / r.swap_total if r.swap_total > 0 else 0.0
        load1, load5, load15 = r.load
        samples = [
            Sample(CPU_USAGE, cpu_ratio),
            Sample(CPU_COUNT, float(r.cpu_count)),
            Sample(LOAD1, load1),
            Sample(LOAD5, load5),
            Sample(LOAD15, load15),
            Sample(MEMORY_TOTAL, float(r.memory_total)),
            Sample(MEMORY_AVAILABLE, float(r.memory_available)),
            Sample(MEMORY_USAGE, memory_usage),
            Sample(SWAP_TOTAL, float(r.swap_total)),
            Sample(SWAP_USED, float(r.swap_used)),
            Sample(SWAP_USAGE, swap_usage),
        ]
        for fs in filesystems:
            labels = (("mountpoint", fs.mountpoint), ("fstype", fs.fstype))
            samples += [
                Sample(FS_SIZE, float(fs.size), labels),
                Sample(FS_AVAIL, float(fs.avail), labels),
                Sample(FS_USAGE, fs.usage, labels),
            ]
        for device, (read, written) in sorted(r.disks.items()):
            dev = (("device", device),)
            samples += [Sample(DISK_READ, float(read), dev), Sample(DISK_WRITTEN, float(written), dev)]
        for name, net in sorted(r.networks.items()):
            nic = (("interface", name),)
            samples += [
                Sample(NET_RECEIVED, float(net.rx_bytes), nic),
                Sample(NET_TRANSMITTED, float(net.tx_bytes), nic),
                Sample(NET_ERRORS, float(net.rx_errors), (*nic, ("direction", "rx"))),
                Sample(NET_ERRORS, float(net.tx_errors), (*nic, ("direction", "tx"))),
            ]
        samples += [
            Sample(PROCESSES, float(r.processes)),
            Sample(BOOT_TIME, r.boot_time),
            Sample(UPTIME, r.uptime),
        ]

        grades = _Grades()
        grades.add("cpu", cpu_ratio, c.cpu_warning, c.cpu_critical)
        grades.add("memory", memory_usage, c.memory_warning, c.memory_critical)
        grades.add("swap", swap_usage, c.swap_warning, c.swap_critical)
        grades.add(
            f"load1 {load1:.2f} per cpu",
            load1 / r.cpu_count,
            c.load_per_cpu_warning,
            c.load_per_cpu_critical,
            scale=1.0,
            unit="",
            min_decimals=2,
        )
        for fs in filesystems:
            grades.add(f"disk {fs.mountpoint}", fs.usage, *c.disk_limits(fs.mountpoint))

        status = grades.status
        if status is Status.OK:
            parts = [f"cpu {cpu_ratio * 100:.0f}%", f"mem {memory_usage * 100:.0f}%"]
            if filesystems:
                fullest = max(filesystems, key=lambda f: f.usage)
                parts.append(f"disk {fullest.mountpoint} {fullest.usage * 100:.0f}%")
            parts.append(f"load {load1:.2f}")
            message = ", ".join(parts)
        else:
            message = grades.message()
        if notes:
            message = "; ".join([message, *notes])
        reason = Reason.OK if status is Status.OK else Reason.THRESHOLD
        return Outcome(status, reason, message, tuple(samples))

    def perfdata(self, result: CheckResult) -> list[PerfDatum]:
        """time, then cpu/mem/swap/load1 and one 'disk_<mountpoint>' per filesystem (percent)."""
        c = self.config
        data = [PerfDatum("time", result.duration, "s", min=0)]
        values = {s.name: s.value for s in result.samples if not s.labels}
        if CPU_USAGE in values:
            data.append(_pct_datum("cpu", values[CPU_USAGE], c.cpu_warning, c.cpu_critical))
        if MEMORY_USAGE in values:
            data.append(_pct_datum("mem", values[MEMORY_USAGE], c.memory_warning, c.memory_critical))
        if SWAP_USAGE in values:
            data.append(_pct_datum("swap", values[SWAP_USAGE], c.swap_warning, c.swap_critical))
        if LOAD1 in values:
            cpus = values.get(CPU_COUNT, 1.0)

            def absolute(per_cpu: float | None) -> float | None:
                return None if per_cpu is None else per_cpu * cpus

            warn, crit = absolute(c.load_per_cpu_warning), absolute(c.load_per_cpu_critical)
            data.append(PerfDatum("load1", values[LOAD1], "", warn, crit, 0))
        for s in result.samples:
            if s.name == FS_USAGE:
                mp = dict(s.labels)["mountpoint"]
                data.append(_pct_datum(f"disk_{mp}", s.value, *c.disk_limits(mp)))
        return data


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Mark a late statfs failure as seen, so asyncio does not log "exception was never retrieved"
    # for a mount we already reported (or for a run the harness cancelled).
    if not future.cancelled():
        future.exception()
