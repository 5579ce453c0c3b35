"""The host check, through the harness: real readings of this machine, and a synthetic procfs
and root filesystem with known numbers that prove the procfs/rootfs indirection."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import ValidationError

import checks.host.procfs
from agent import config as agent_config
from agent.catalog import CHECK_METRICS
from agent.model import CheckResult, Reason, Sample, Status
from agent.runner import execute
from checks.base import CheckConfig
from checks.host.check import FIRST_CPU_INTERVAL, HostCheck
from checks.host.config import HostConfig


@pytest.fixture(autouse=True)
def restore_procfs_path() -> Iterator[None]:
    """psutil.PROCFS_PATH is process-global: whatever a test does, the next one starts clean."""
    saved = psutil.PROCFS_PATH
    try:
        yield
    finally:
        psutil.PROCFS_PATH = saved


def make(**values: Any) -> HostCheck:
    return HostCheck(HostConfig.model_validate({"name": "host", "interval": 30, "timeout": 5, **values}))


def find(result: CheckResult, name: str, **labels: str) -> float:
    matches = [s.value for s in result.samples if s.name == name and dict(s.labels) == labels]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples in {result.samples}"
    return matches[0]


def labels_of(result: CheckResult, name: str, key: str) -> set[str]:
    return {dict(s.labels)[key] for s in result.samples if s.name == name}


def root_usage() -> float:
    st = os.statvfs("/")
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return used / (used + st.f_bavail * st.f_frsize)


def real_mount_fstype(mountpoint: str) -> str:
    fstype = ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if parts[1] == mountpoint:
            fstype = parts[2]  # the last entry is the one on top
    return fstype


def proc_stat_cpus() -> int:
    return sum(1 for ln in Path("/proc/stat").read_text().splitlines() if re.match(r"cpu\d", ln))


def proc_meminfo_total() -> int:
    line = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal:"))
    return int(line.split()[1]) * 1024


def assert_matches_catalog(samples: tuple[Sample, ...]) -> None:
    for s in samples:
        spec = CHECK_METRICS.get(s.name)
        assert spec is not None, f"{s.name} is not in agent/catalog.py"
        assert spec.source == "host", s.name
        assert {k for k, _ in s.labels} == set(spec.labels), s


# --- this machine -------------------------------------------------------------------------


async def test_real_readings_are_sane() -> None:
    check = make()
    first = await execute(check)
    assert first.status in (Status.OK, Status.WARNING, Status.CRITICAL), first.message
    assert first.target == "localhost"
    assert first.duration >= FIRST_CPU_INTERVAL  # no previous CPU reading: it waited for one

    total = find(first, "mamori_host_memory_total_bytes")
    assert total > 0
    assert 0 < find(first, "mamori_host_memory_available_bytes") <= total
    assert find(first, "mamori_host_cpus") == proc_stat_cpus()
    for name in ("cpu_usage_ratio", "memory_usage_ratio", "swap_usage_ratio"):
        assert 0.0 <= find(first, f"mamori_host_{name}") <= 1.0, name
    assert find(first, "mamori_host_load1") >= 0

    root = {"mountpoint": "/", "fstype": real_mount_fstype("/")}
    assert find(first, "mamori_host_filesystem_size_bytes", **root) == pytest.approx(
        os.statvfs("/").f_blocks * os.statvfs("/").f_frsize
    )
    assert 0.0 <= find(first, "mamori_host_filesystem_usage_ratio", **root) <= 1.0
    assert not labels_of(first, "mamori_host_filesystem_size_bytes", "fstype") & {"proc", "sysfs", "cgroup"}
    assert "lo" not in labels_of(first, "mamori_host_network_received_bytes_total", "interface")

    uptime = find(first, "mamori_host_uptime_seconds")
    assert uptime > 0
    # btime is whole seconds and the clock may have been stepped since boot: a loose match.
    assert find(first, "mamori_host_boot_time_seconds") + uptime == pytest.approx(time.time(), abs=5)
    assert find(first, "mamori_host_processes") >= 1
    assert_matches_catalog(first.samples)

    second = await execute(check)
    assert 0.0 <= find(second, "mamori_host_cpu_usage_ratio") <= 1.0
    assert psutil.PROCFS_PATH == "/proc"


def thresholds_around_root() -> tuple[float, float]:
    """(warning, critical) with the root filesystem's usage strictly between them."""
    usage = root_usage()
    warn, crit = round(usage / 2, 2), round((usage + 1) / 2, 2)
    if not 0 < warn < usage < crit < 1:
        pytest.skip(f"root filesystem usage {usage:.3f} leaves no room for thresholds around it")
    return warn, crit


async def test_root_filesystem_between_thresholds_is_warning() -> None:
    warn, crit = thresholds_around_root()
    check = make(
        mountpoints=["/"], disk_warning=warn, disk_critical=crit, memory_warning=None, memory_critical=None
    )
    result = await execute(check)
    assert (result.status, result.reason) == (Status.WARNING, Reason.THRESHOLD)
    assert re.fullmatch(rf"disk / \d+% ≥ {warn * 100:g}%", result.message), result.message


async def test_below_every_threshold_is_ok() -> None:
    _, crit = thresholds_around_root()
    check = make(
        mountpoints=["/"], disk_warning=crit, disk_critical=None, memory_warning=None, memory_critical=None
    )
    result = await execute(check)
    assert (result.status, result.reason) == (Status.OK, Reason.OK)
    assert re.fullmatch(r"cpu \d+%, mem \d+%, disk / \d+%, load \d+\.\d\d", result.message), result.message


async def test_worst_breach_wins_and_every_breach_is_listed() -> None:
    warn, crit = thresholds_around_root()
    check = make(
        mountpoints=["/"], disk_warning=warn, disk_critical=crit, memory_warning=None, memory_critical=0.0001
    )
    result = await execute(check)
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.THRESHOLD)
    # the critical breach first, then the warning
    assert re.fullmatch(rf"memory \d+\.\d\d% ≥ 0\.01%; disk / \d+% ≥ {warn * 100:g}%", result.message), (
        result.message
    )


# --- a synthetic host ----------------------------------------------------------------------

STAT = """\
cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0
cpu0 500 0 250 4000 250 0 0 0 0 0
cpu1 500 0 250 4000 250 0 0 0 0 0
intr 0
ctxt 0
btime 1700000000
processes 10
procs_running 1
procs_blocked 0
"""

MEMINFO = """\
MemTotal:        8000000 kB
MemFree:         1000000 kB
MemAvailable:    2000000 kB
Buffers:          100000 kB
Cached:           800000 kB
SwapCached:            0 kB
Active:          3000000 kB
Inactive:        2000000 kB
SwapTotal:       1000000 kB
SwapFree:         250000 kB
Shmem:             10000 kB
Slab:             200000 kB
SReclaimable:     100000 kB
"""


def diskstats_line(major: int, minor: int, name: str, read_sectors: int, written_sectors: int) -> str:
    # Linux 5.5+ layout: 3 + 17 fields; sectors are always 512 bytes in diskstats.
    values = [10, 0, read_sectors, 0, 20, 0, written_sectors, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    return f"{major:4d} {minor:7d} {name} " + " ".join(map(str, values))


def net_dev(rows: dict[str, tuple[int, int, int, int]]) -> str:
    head = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo"
        " colls carrier compressed\n"
    )
    body = "".join(
        f"{name:>6}: {rx} 10 {rx_err} 0 0 0 0 0 {tx} 20 {tx_err} 0 0 0 0 0\n"
        for name, (rx, tx, rx_err, tx_err) in rows.items()
    )
    return head + body


@dataclass
class FakeHost:
    procfs: Path
    rootfs: Path

    def write_cpu(self, user: int, system: int, idle: int, iowait: int) -> None:
        text = STAT.format(user=user, system=system, idle=idle, iowait=iowait)
        (self.procfs / "stat").write_text(text)


DATA_MOUNT = "/mamori-test-data"  # exists under the fake rootfs only, never on this machine


@pytest.fixture
def fake_host(tmp_path: Path) -> FakeHost:
    procfs, rootfs = tmp_path / "proc", tmp_path / "root"
    host = FakeHost(procfs, rootfs)
    for pid in ("1", "42", "4242"):
        (procfs / pid).mkdir(parents=True)
    (procfs / "net").mkdir()
    (procfs / "1" / "net").mkdir()
    host.write_cpu(user=1000, system=500, idle=8000, iowait=500)
    (procfs / "meminfo").write_text(MEMINFO)
    (procfs / "vmstat").write_text("pswpin 0\npswpout 0\n")
    (procfs / "loadavg").write_text("1.50 0.75 0.25 2/300 12345\n")
    (procfs / "uptime").write_text("12345.67 20000.00\n")
    (procfs / "diskstats").write_text(
        "\n".join(
            [
                diskstats_line(8, 0, "sda", 2000, 4000),
                diskstats_line(8, 1, "sda1", 1000, 2000),
                diskstats_line(7, 0, "loop0", 50, 0),
                diskstats_line(253, 0, "dm-0", 300, 600),
            ]
        )
        + "\n"
    )
    # The host's namespace (PID 1) and the reader's own differ: only PID 1's may be used.
    (procfs / "1" / "net" / "dev").write_text(
        net_dev(
            {
                "lo": (100, 100, 0, 0),
                "eth0": (5000, 7000, 3, 4),
                "veth12ab": (1, 1, 0, 0),
                "docker0": (2, 2, 0, 0),
            }
        )
    )
    (procfs / "net" / "dev").write_text(net_dev({"eth0": (1, 1, 1, 1)}))
    (procfs / "1" / "mounts").write_text(
        "/dev/sda1 / ext4 rw,relatime 0 0\n"
        f"/dev/sdb1 {DATA_MOUNT} xfs rw,relatime 0 0\n"
        "/dev/sdc1 /mnt/with\\040space ext4 rw 0 0\n"
        "/dev/sdd1 /mnt/gone ext4 rw 0 0\n"
        "/dev/sda1 /var/lib/kubelet/pods/p1/volume-subpaths/v ext4 rw 0 0\n"
        "tmpfs /run tmpfs rw,nosuid 0 0\n"
        "proc /proc proc rw 0 0\n"
        "overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0\n"
    )
    for d in (
        DATA_MOUNT.lstrip("/"),
        "mnt/with space",
        "run",
        "proc",
        "var/lib/kubelet/pods/p1/volume-subpaths/v",
    ):
        (rootfs / d).mkdir(parents=True)
    return host


def make_fake(host: FakeHost, **values: Any) -> HostCheck:
    return make(procfs=str(host.procfs), rootfs=str(host.rootfs), **values)


def statvfs_expectation(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


async def test_synthetic_procfs_and_rootfs_give_exact_values(fake_host: FakeHost) -> None:
    check = make_fake(fake_host, disk_warning=None, disk_critical=None)
    result = await execute(check)
    assert result.target == str(fake_host.procfs)
    assert result.reason in (Reason.OK, Reason.THRESHOLD), result.message

    assert find(result, "mamori_host_memory_total_bytes") == 8_000_000 * 1024
    assert find(result, "mamori_host_memory_available_bytes") == 2_000_000 * 1024
    assert find(result, "mamori_host_memory_usage_ratio") == 0.75
    assert find(result, "mamori_host_swap_total_bytes") == 1_000_000 * 1024
    assert find(result, "mamori_host_swap_used_bytes") == 750_000 * 1024
    assert find(result, "mamori_host_swap_usage_ratio") == 0.75
    assert find(result, "mamori_host_cpus") == 2
    assert (find(result, "mamori_host_load1"), find(result, "mamori_host_load5")) == (1.5, 0.75)
    assert find(result, "mamori_host_load15") == 0.25
    assert find(result, "mamori_host_boot_time_seconds") == 1_700_000_000
    assert find(result, "mamori_host_uptime_seconds") == 12345.67
    assert find(result, "mamori_host_processes") == 3
    # the file did not change between the two first readings
    assert find(result, "mamori_host_cpu_usage_ratio") == 0.0

    # disks: partitions and loop devices excluded by default; sectors are 512 bytes
    assert labels_of(result, "mamori_host_disk_read_bytes_total", "device") == {"sda", "dm-0"}
    assert find(result, "mamori_host_disk_read_bytes_total", device="sda") == 2000 * 512
    assert find(result, "mamori_host_disk_written_bytes_total", device="dm-0") == 600 * 512

    # network: PID 1's namespace, virtual interfaces excluded
    assert labels_of(result, "mamori_host_network_received_bytes_total", "interface") == {"eth0"}
    assert find(result, "mamori_host_network_received_bytes_total", interface="eth0") == 5000
    assert find(result, "mamori_host_network_transmitted_bytes_total", interface="eth0") == 7000
    assert find(result, "mamori_host_network_errors_total", interface="eth0", direction="rx") == 3
    assert find(result, "mamori_host_network_errors_total", interface="eth0", direction="tx") == 4

    # filesystems: the host's mount table, statted under rootfs, labelled with the host's paths;
    # a bind mount of a device already seen is the same filesystem, reported once
    assert labels_of(result, "mamori_host_filesystem_size_bytes", "mountpoint") == {
        "/",
        DATA_MOUNT,
        "/mnt/with space",
    }
    size, avail = statvfs_expectation(fake_host.rootfs / DATA_MOUNT.lstrip("/"))
    data = {"mountpoint": DATA_MOUNT, "fstype": "xfs"}
    assert find(result, "mamori_host_filesystem_size_bytes", **data) == size
    # free space on a shared disk moves while tests run elsewhere; a loose match is all it allows
    assert find(result, "mamori_host_filesystem_avail_bytes", **data) == pytest.approx(avail, abs=64 << 20)
    assert find(result, "mamori_host_filesystem_size_bytes", mountpoint="/", fstype="ext4") == size
    assert result.message.endswith("; /mnt/gone: cannot stat: No such file or directory"), result.message

    assert_matches_catalog(result.samples)
    host_metrics = {name for name, spec in CHECK_METRICS.items() if spec.source == "host"}
    assert {s.name for s in result.samples} == host_metrics
    assert psutil.PROCFS_PATH == "/proc"


async def test_cpu_ratio_is_measured_between_runs(fake_host: FakeHost) -> None:
    check = make_fake(fake_host)
    await execute(check)
    # +30 user, +10 system, +50 idle, +10 iowait: 40 busy out of 100
    fake_host.write_cpu(user=1030, system=510, idle=8050, iowait=510)
    second = await execute(check)
    assert find(second, "mamori_host_cpu_usage_ratio") == pytest.approx(0.4, rel=1e-9)
    assert second.duration < FIRST_CPU_INTERVAL  # the previous reading was kept: no second wait


async def test_counters_are_reported_raw_when_they_go_backwards(fake_host: FakeHost) -> None:
    # psutil's "nowrap" would add the old value to a counter that went down, with state shared by
    # every procfs in the process; a counter reset is left to Prometheus' rate() instead.
    check = make_fake(fake_host)
    await execute(check)
    (fake_host.procfs / "diskstats").write_text(diskstats_line(8, 0, "sda", 10, 20) + "\n")
    second = await execute(check)
    assert find(second, "mamori_host_disk_read_bytes_total", device="sda") == 10 * 512


async def test_synthetic_breaches_are_graded_and_listed(fake_host: FakeHost) -> None:
    check = make_fake(
        fake_host,
        memory_warning=0.7,
        memory_critical=0.8,
        swap_warning=0.5,
        swap_critical=0.74,
        load_per_cpu_warning=0.5,
        load_per_cpu_critical=1.0,
        disk_warning=None,
        disk_critical=None,
        disk_thresholds={DATA_MOUNT: {"warning": 0.0}},
    )
    result = await execute(check)
    assert (result.status, result.reason) == (Status.CRITICAL, Reason.THRESHOLD)
    expected = (
        r"swap 75% ≥ 74%; memory 75% ≥ 70%; load1 1\.50 per cpu 0\.75 ≥ 0\.5; "
        rf"disk {DATA_MOUNT} \d+% ≥ 0%; /mnt/gone: cannot stat: No such file or directory"
    )
    assert re.fullmatch(expected, result.message), result.message

    rendered = {p.label: p.render() for p in check.perfdata(result.with_(duration=0.5))}
    assert rendered["mem"] == "'mem'=75%;70;80;0;100"
    assert rendered["swap"] == "'swap'=75%;50;74;0;100"
    assert rendered["load1"] == "'load1'=1.5;1;2;0"  # per-cpu limits times 2 CPUs
    assert rendered["cpu"] == "'cpu'=0%;;;0;100"
    assert rendered[f"disk_{DATA_MOUNT}"].endswith("%;0;;0;100")  # critical inherited: off
    assert rendered["disk_/"].endswith("%;;;0;100")
    assert set(rendered) == {
        "time",
        "cpu",
        "mem",
        "swap",
        "load1",
        "disk_/",
        f"disk_{DATA_MOUNT}",
        "disk_/mnt/with space",
    }


async def test_explicit_mountpoints(fake_host: FakeHost) -> None:
    # /run is tmpfs, excluded by default, but naming it monitors it anyway
    check = make_fake(fake_host, mountpoints=["/run", "/nowhere/"], disk_warning=None, disk_critical=None)
    result = await execute(check)
    assert labels_of(result, "mamori_host_filesystem_size_bytes", "mountpoint") == {"/run"}
    assert labels_of(result, "mamori_host_filesystem_size_bytes", "fstype") == {"tmpfs"}
    assert result.message.endswith("; /nowhere: not mounted"), result.message


async def test_disk_threshold_for_an_unmounted_path_is_noted(fake_host: FakeHost) -> None:
    check = make_fake(fake_host, disk_thresholds={"/var/lib/postgres": {"critical": 0.95}})
    result = await execute(check)
    assert "; /var/lib/postgres: not mounted" in result.message


async def test_vanished_procfs_is_unknown_not_a_crash(fake_host: FakeHost) -> None:
    check = make_fake(fake_host)
    (fake_host.procfs / "meminfo").unlink()
    result = await execute(check)
    assert (result.status, result.reason) == (Status.UNKNOWN, Reason.UNAVAILABLE)
    procfs = fake_host.procfs
    assert result.message == (
        f"cannot read host metrics from {procfs}: No such file or directory: {procfs}/meminfo"
    )
    assert psutil.PROCFS_PATH == "/proc"


async def test_a_hung_statfs_costs_one_thread_not_one_per_run(
    fake_host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dead NFS mount cannot be made here: stand in for its statfs, which blocks in the kernel.
    release = threading.Event()
    calls: list[str] = []
    real_statfs = checks.host.procfs.statfs
    hung = str(fake_host.rootfs / DATA_MOUNT.lstrip("/"))

    def statfs(path: str) -> os.statvfs_result | None:
        calls.append(path)
        if path == hung:
            release.wait(10)
        return real_statfs(path)

    monkeypatch.setattr(checks.host.procfs, "statfs", statfs)
    check = make_fake(fake_host, timeout=0.4, disk_warning=None, disk_critical=None)
    try:
        first = await execute(check)
        assert first.status is not Status.UNKNOWN, first.message
        assert f"; {DATA_MOUNT}: statfs did not return (skipped until it does)" in first.message
        assert DATA_MOUNT not in labels_of(first, "mamori_host_filesystem_size_bytes", "mountpoint")
        assert "/" in labels_of(first, "mamori_host_filesystem_size_bytes", "mountpoint")

        second = await execute(check)
        assert f"; {DATA_MOUNT}: skipped, an earlier statfs has not returned" in second.message
        assert calls.count(hung) == 1
    finally:
        release.set()
    for _ in range(500):  # the thread returns, then the loop runs the future's callbacks
        if not check._stuck_mounts:
            break
        await asyncio.sleep(0.01)
    third = await execute(check)
    assert DATA_MOUNT in labels_of(third, "mamori_host_filesystem_size_bytes", "mountpoint")


async def test_two_procfs_trees_sampled_at_once_do_not_mix(fake_host: FakeHost) -> None:
    # psutil.PROCFS_PATH is process-global: each sample holds it (under a lock) for its duration.
    real_total = proc_meminfo_total()
    real, fake = make(), make_fake(fake_host)
    for _ in range(5):
        a, b = await asyncio.gather(execute(real), execute(fake))
        assert find(a, "mamori_host_memory_total_bytes") == real_total
        assert find(b, "mamori_host_memory_total_bytes") == 8_000_000 * 1024
    assert psutil.PROCFS_PATH == "/proc"


# --- configuration ------------------------------------------------------------------------


def config_error(**values: Any) -> str:
    with pytest.raises(ValidationError) as info:
        HostConfig.model_validate({"name": "host", "interval": 30, "timeout": 5, **values})
    errors = info.value.errors(include_url=False)
    assert len(errors) == 1, errors
    return str(errors[0]["msg"]).removeprefix("Value error, ")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cpu_warning": 0.9, "cpu_critical": 0.8}, "cpu_warning (0.9) must be below cpu_critical (0.8)"),
        ({"memory_warning": 0.96}, "memory_warning (0.96) must be below memory_critical (0.95, its default)"),
        ({"disk_warning": 0.9, "disk_critical": 0.9}, "disk_warning (0.9) must be below disk_critical (0.9)"),
        (
            {"load_per_cpu_warning": 2, "load_per_cpu_critical": 1.5},
            "load_per_cpu_warning (2) must be below load_per_cpu_critical (1.5)",
        ),
        (
            {"disk_thresholds": {"/data/": {"warning": 0.95}}},
            "disk_thresholds['/data']: warning (0.95) must be below critical (0.9, from disk_critical)",
        ),
        (
            {"disk_thresholds": {"/data": {"critical": 0.75}}},
            "disk_thresholds['/data']: warning (0.8, from disk_warning) must be below critical (0.75)",
        ),
        (
            {"mountpoints": ["/"], "disk_thresholds": {"/data": {"warning": 0.5}}},
            "disk_thresholds['/data']: /data is not in mountpoints",
        ),
        ({"memory_warning": 90}, "90 is not a ratio between 0 and 1 (write 0.9 for 90%)"),
        ({"load_per_cpu_warning": 0}, "0 must be above 0"),
        (
            {"mountpoints": ["data"]},
            "mountpoint 'data' must be an absolute path, as the host's mount table shows it",
        ),
        ({"procfs": "proc"}, "'proc' is not an absolute path"),
        ({"rootfs": "host"}, "'host' is not an absolute path"),
        ({"frobnicate": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_config(values: dict[str, Any], message: str) -> None:
    assert config_error(**values) == message


def test_missing_procfs_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "host" / "proc"
    assert config_error(procfs=str(missing)) == (
        f"cannot read {missing}/stat: No such file or directory"
        " (in a container, mount the host's /proc there)"
    )


def test_procfs_that_is_not_a_procfs_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text("hello\n")
    assert config_error(procfs=str(tmp_path)) == f"{tmp_path}/stat does not look like /proc/stat"


def test_missing_rootfs_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "host"
    assert config_error(rootfs=str(missing)) == (
        f"{missing} is not a directory (in a container, mount the host's / there)"
    )


def test_defaults() -> None:
    config = HostConfig.model_validate({"name": "host", "interval": 30, "timeout": 5})
    assert (config.procfs, config.rootfs) == (Path("/proc"), Path("/"))
    assert (config.memory_warning, config.memory_critical) == (0.90, 0.95)
    assert (config.disk_warning, config.disk_critical) == (0.80, 0.90)
    assert config.cpu_warning is config.swap_critical is config.load_per_cpu_warning is None
    assert not config.reads_other_host


def test_per_mount_limits_inherit_what_they_leave_out() -> None:
    config = HostConfig.model_validate(
        {
            "name": "host",
            "interval": 30,
            "timeout": 5,
            "disk_thresholds": {
                "/a": {"warning": 0.7, "critical": 0.85},
                "/b": {"critical": 0.97},
                "/c": {"warning": None},
            },
        }
    )
    assert config.disk_limits("/a") == (0.7, 0.85)
    assert config.disk_limits("/b") == (0.80, 0.97)
    assert config.disk_limits("/c") == (None, 0.90)
    assert config.disk_limits("/elsewhere") == (0.80, 0.90)


def test_config_file_error_points_at_the_check() -> None:
    text = "checks:\n  - name: host\n    type: host\n    memory_warning: 0.99\n"
    with pytest.raises(agent_config.ConfigError) as info:
        agent_config.parse(text, "agent.yml", env={})
    assert str(info.value) == (
        "agent.yml:4: checks[0].memory_warning: "
        "memory_warning (0.99) must be below memory_critical (0.95, its default)"
    )


def test_every_key_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "checks" / "host.md").read_text()
    own = set(HostConfig.model_fields) - set(CheckConfig.model_fields)
    assert {key for key in own if f"`{key}`" not in doc} == set()
