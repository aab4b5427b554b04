"""Limit validation, the same for every cgroup version.

``check_limits`` turns ``Limits`` into ``CheckedLimits``, in the units the kernel files
take, within the bounds below (the kernel's own, or a unit mistake's); ``block_device``
finds the disk an io limit applies to; ``write_limit`` writes one limit file and turns
the kernel's refusal into a ``LimitError``.  Whether this machine can enforce a limit
(controllers, interface files) is each implementation's own check.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .._errors import LimitError
from .._model import Limits
from ._cgroupfs import read_text, write_file

__all__ = [
    "CPU_PERIOD_US",
    "MAX_BPS",
    "MAX_CPU_QUOTA_US",
    "MAX_MEMORY",
    "MAX_PIDS",
    "MIN_CPU_QUOTA_US",
    "MIN_MEMORY",
    "CheckedLimits",
    "block_device",
    "check_limits",
    "write_limit",
]

CPU_PERIOD_US = 100_000
# The kernel refuses a CFS quota below 1 ms, and above max_cfs_runtime (2^44 - 1 us).
MIN_CPU_QUOTA_US = 1_000
MAX_CPU_QUOTA_US = 2**44 - 1
# Below about 1 MiB a job cannot even exec a program before the OOM killer takes it, so a
# smaller memory limit is certainly a unit mistake (bytes are expected), not a wish.
MIN_MEMORY = 1 << 20
MAX_MEMORY = 2**63 - 1
# pids.max refuses values >= PIDS_MAX (PID_MAX_LIMIT + 1, PID_MAX_LIMIT being 2^22).
MAX_PIDS = 1 << 22
MAX_BPS = 2**63 - 1


@dataclass(frozen=True)
class CheckedLimits:
    """``Limits`` after validation, in the units the kernel files take."""

    cpu_quota_us: int | None = None
    memory: int | None = None
    io_device: tuple[int, int] | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    pids: int | None = None

    @property
    def has_io(self) -> bool:
        return self.io_device is not None


def _check_int(name: str, value: object, minimum: int, maximum: int, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitError(f"{name} must be an integer{unit}, not {value!r}")
    if value < minimum:
        raise LimitError(f"{name} must be at least {minimum}{unit}, not {value}")
    if value > maximum:
        raise LimitError(f"{name} must be at most {maximum}{unit}, not {value}")
    return value


def block_device(path: str, sys_root: str = "/sys") -> tuple[int, int]:
    """The whole disk (major, minor) that holds ``path``; throttling applies to disks."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise LimitError(f"io_path {path!r} cannot be used: {e.strerror}") from e
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    if major == 0:
        # Anonymous device numbers: tmpfs, overlay, btrfs subvolumes, network filesystems.
        raise LimitError(f"no block device holds {path}, so io limits cannot apply to it")
    node = os.path.join(sys_root, "dev", "block", f"{major}:{minor}")
    if not os.path.exists(node):
        raise LimitError(f"no block device holds {path} (device {major}:{minor} is unknown)")
    if os.path.exists(os.path.join(node, "partition")):
        # The throttle interfaces take only whole disks; a partition's sysfs directory
        # sits inside its disk's, whose "dev" file names the disk.
        disk_dev = os.path.join(os.path.dirname(os.path.realpath(node)), "dev")
        try:
            text = read_text(disk_dev).strip()
            major_s, minor_s = text.split(":")
            major, minor = int(major_s), int(minor_s)
        except (OSError, ValueError) as e:
            raise LimitError(f"cannot find the disk of partition {major}:{minor}: {e}") from e
    return major, minor


def check_limits(limits: Limits, sys_root: str = "/sys") -> CheckedLimits:
    """Validate the values of ``limits`` (not whether this machine can enforce them).

    Rules: cpu is a finite number of cores whose quota per 100 ms period is at least the
    kernel's 1 ms (so cpu >= 0.01); memory is bytes >= 1 MiB; pids >= 1; io bytes per
    second >= 1, with ``io_path`` naming a file on a block device.  ``io_path`` alone
    (without an io rate) is ignored.
    """
    quota: int | None = None
    if limits.cpu is not None:
        cpu: object = limits.cpu
        if isinstance(cpu, bool) or not isinstance(cpu, int | float):
            raise LimitError(f"cpu must be a number of cores, not {cpu!r}")
        # (An int is not passed to isfinite: one beyond any float would overflow it.)
        if (isinstance(cpu, float) and not math.isfinite(cpu)) or cpu <= 0:
            raise LimitError(f"cpu must be a positive finite number of cores, not {cpu}")
        quota = round(cpu * CPU_PERIOD_US)
        if quota < MIN_CPU_QUOTA_US:
            raise LimitError(
                f"cpu must be at least {MIN_CPU_QUOTA_US / CPU_PERIOD_US} cores "
                f"(the kernel's 1 ms minimum quota per 100 ms period), not {cpu}"
            )
        if quota > MAX_CPU_QUOTA_US:
            raise LimitError(f"cpu must be at most {MAX_CPU_QUOTA_US // CPU_PERIOD_US} cores")
    memory = None
    if limits.memory is not None:
        memory = _check_int("memory", limits.memory, MIN_MEMORY, MAX_MEMORY, " bytes")
    pids = None
    if limits.pids is not None:
        pids = _check_int("pids", limits.pids, 1, MAX_PIDS)
    rbps = wbps = None
    if limits.io_read_bps is not None:
        rbps = _check_int("io_read_bps", limits.io_read_bps, 1, MAX_BPS, " bytes/s")
    if limits.io_write_bps is not None:
        wbps = _check_int("io_write_bps", limits.io_write_bps, 1, MAX_BPS, " bytes/s")
    device = None
    if rbps is not None or wbps is not None:
        io_path: object = limits.io_path
        if isinstance(io_path, os.PathLike):
            io_path = os.fspath(io_path)
        if not io_path:
            raise LimitError("io limits need io_path, a path on the block device to throttle")
        if not isinstance(io_path, str):
            # (os.stat would take an int for a file descriptor of the worker's.)
            raise LimitError(f"io_path must be a str or a path, not {type(io_path).__name__}")
        device = block_device(io_path, sys_root)
    return CheckedLimits(quota, memory, device, rbps, wbps, pids)


def write_limit(path: str, value: str) -> None:
    """Write a limit file, turning the kernel's refusal into a ``LimitError``."""
    try:
        write_file(path, value)
    except OSError as e:
        name = os.path.basename(path)
        raise LimitError(f"the kernel refused {value!r} for {name}: {e.strerror}") from e
