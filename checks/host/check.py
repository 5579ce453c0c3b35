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
import functools
import os
from dataclasses import dataclass, field
from typing import Any

from agent.model import CheckResult, Reason, Status
from checks.base import Check, CheckOutcome, PerfDatum
from checks.host import procfs
from checks.host.config import DEFAULT_PROCFS, HostConfig
from checks.host.procfs import (
    Filesystem,
    Mount,
    ProcfsBusy,
    ProcfsReading,
    cpu_usage,
    excluded,
    one_per_block_device,
    read_cpu_times,
    read_procfs,
)
from checks.host.samples import CPU_USAGE, CPUS, FS_USAGE, LOAD1, MEMORY_USAGE, SWAP_USAGE, samples_of

# On the first run there is no previous CPU reading to compare with.
FIRST_CPU_INTERVAL = 0.2
# statfs on a dead network mount blocks in the kernel, uninterruptibly; never wait longer than this.
MAX_STATFS_WAIT = 5.0


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

    async def run(self) -> CheckOutcome:
        """Never raises for a missing or malformed procfs: that is UNKNOWN with the path in the message."""
        c = self.config
        # Leave room inside the timeout for the filesystem stats that follow.
        lock_wait = max(0.1, c.timeout / 2)
        try:
            if self._previous_cpu is None:
                self._previous_cpu = await asyncio.to_thread(read_cpu_times, c.procfs, lock_wait)
                await asyncio.sleep(FIRST_CPU_INTERVAL)
            reading = await asyncio.to_thread(read_procfs, c, lock_wait)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            return self._unknown(f"{exc.strerror or exc}{where}")
        except (ValueError, RuntimeError, ProcfsBusy) as exc:
            return self._unknown(str(exc))
        cpu_ratio = cpu_usage(self._previous_cpu, reading.cpu)
        self._previous_cpu = reading.cpu
        filesystems, fs_notes = await self._filesystems(reading.mounts)
        return self._outcome(reading, cpu_ratio, filesystems, reading.notes + fs_notes)

    def _unknown(self, detail: str) -> CheckOutcome:
        message = f"cannot read host metrics from {self.config.procfs}: {detail}"
        return CheckOutcome(Status.UNKNOWN, Reason.UNAVAILABLE, message)

    def _unstick(self, mountpoint: str, _future: asyncio.Future[Any]) -> None:
        self._stuck_mounts.discard(mountpoint)

    def _select_mounts(self, mounts: list[Mount]) -> tuple[list[tuple[Mount, bool]], list[str]]:
        """(mount, named explicitly) pairs to stat, and notes for named mountpoints not mounted."""
        c = self.config
        # The last entry for a mountpoint is the one on top, the one statfs will see.
        table = {m.mountpoint: m for m in mounts}
        if c.mountpoints is not None:
            named = list(c.mountpoints)
            chosen = []
        else:
            named = list(c.disk_thresholds)
            real = [m for m in table.values() if not excluded(m.fstype, c.exclude_fstypes)]
            chosen = [(m, False) for m in one_per_block_device(real)]
        chosen_mps = {m.mountpoint for m, _ in chosen}
        notes = []
        for mp in named:
            if mp not in table:
                notes.append(f"{mp}: not mounted")
            elif mp not in chosen_mps:
                chosen.append((table[mp], True))
        return chosen, notes

    async def _filesystems(self, mounts: list[Mount]) -> tuple[list[Filesystem], list[str]]:
        c = self.config
        selected, notes = self._select_mounts(mounts)
        loop = asyncio.get_running_loop()
        pending: list[tuple[Mount, bool, asyncio.Future[os.statvfs_result | None]]] = []
        for mount, named in selected:
            if mount.mountpoint in self._stuck_mounts:
                notes.append(f"{mount.mountpoint}: skipped, an earlier statfs has not returned")
                continue
            path = str(c.rootfs / mount.mountpoint.lstrip("/")) if c.reads_other_host else mount.mountpoint
            future = loop.run_in_executor(None, procfs.statfs, path)
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
            out.append(Filesystem(mp, mount.fstype, size, avail, usage))
        out.sort(key=lambda f: f.mountpoint)
        return out, notes

    def _outcome(
        self, r: ProcfsReading, cpu_ratio: float, filesystems: list[Filesystem], notes: list[str]
    ) -> CheckOutcome:
        c = self.config
        memory_usage = 1 - r.memory_available / r.memory_total if r.memory_total > 0 else 0.0
        swap_usage = r.swap_used / r.swap_total if r.swap_total > 0 else 0.0
        load1 = r.load[0]
        samples = samples_of(r, cpu_ratio, memory_usage, swap_usage, filesystems)

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
        return CheckOutcome(status, reason, message, tuple(samples))

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
            cpus = values.get(CPUS, 1.0)

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
