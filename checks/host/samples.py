"""The samples of a `host` run."""

from __future__ import annotations

from agent.model import Sample
from checks.host.procfs import Filesystem, ProcfsReading

# Sample names (agent/catalog.py).
CPU_USAGE = "mamori_host_cpu_usage_ratio"
CPUS = "mamori_host_cpus"
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


def samples_of(
    r: ProcfsReading, cpu_ratio: float, memory_usage: float, swap_usage: float, filesystems: list[Filesystem]
) -> list[Sample]:
    """The samples of one run (names: agent/catalog.py)."""
    load1, load5, load15 = r.load
    samples = [
        Sample(CPU_USAGE, cpu_ratio),
        Sample(CPUS, float(r.cpu_count)),
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
    return samples
