"""The `host` check's config: where procfs and the root filesystem are, what to leave out, and
the thresholds."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, field_validator, model_validator

from agent.fields import Model
from agent.files import skip
from checks.base import CheckConfig

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
        if skip(f"procfs {value}"):
            return value
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
        if skip(f"rootfs {value}"):
            return value
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
