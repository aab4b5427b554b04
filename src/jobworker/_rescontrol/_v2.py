"""Pure cgroup v2 resource control, plus the pieces the v1 implementation shares.

Layout: ``<worker's cgroup>/jobworker-<pid>-<starttime>-<n>/job-<uuid hex>``.  The job
cgroups are leaves; the per-worker parent only ever holds job cgroups, so enabling
controllers in it is always allowed.  The worker's own cgroup is another matter: it holds
the worker itself, and cgroup v2 refuses to enable controllers in a cgroup with processes
(the "no internal processes" rule; only the root cgroup is exempt).  This module never
moves a process to get around that: a limit that needs a controller it cannot enable is
a ``LimitError``, while a job without limits still gets ``cgroup.kill``/``cgroup.events``,
which need no controller.

The shared helpers (limit checks, block-device lookup, parent naming and stale-parent
cleanup, file and rmdir helpers) live here too, because ``_v1`` needs exactly the same.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import os
import posixpath
import re
import select
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .._errors import LimitError
from .._model import Limits, Usage
from . import JobGroup, ResourceControl

__all__ = ["CgroupV2", "V2JobGroup"]

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

# How long cleanup waits for a killed cgroup to empty, and how long rmdir keeps retrying
# EBUSY (see rmdir_retry).
KILL_WAIT_TIMEOUT = 2.0
RMDIR_BUSY_TIMEOUT = 1.0

PARENT_PREFIX = "jobworker-"
JOB_PREFIX = "job-"
_PARENT_RE = re.compile(r"jobworker-(\d+)-(\d+)(?:-\d+)?")

# Shared by every implementation so that two ResourceControl instances in one process
# (tests, or a worker re-created after close) never pick the same parent name.
_SEQUENCE = itertools.count()


# ---------------------------------------------------------------------------------------
# Files


def write_file(path: str, data: str) -> None:
    """Write ``data`` to a cgroup interface file in one ``write``.

    The kernel parses each ``write`` call as one complete value, so the value must go in a
    single call.  No ``O_CREAT``: an interface file that is missing means the kernel lacks
    the feature, which must surface as an error, not as a new regular file.  ``O_TRUNC``
    is what a shell's ``>`` passes too; kernfs ignores it, and it keeps a regular file
    (the temp-dir layout of the tests) holding exactly the last value written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def read_keyed(path: str) -> dict[str, int]:
    """Parse a flat-keyed file (``key value`` lines) such as cpu.stat or memory.events."""
    out: dict[str, int] = {}
    for line in read_text(path).splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def read_key_or_none(path: str, key: str) -> int | None:
    try:
        return read_keyed(path).get(key)
    except OSError:
        return None


def read_int_or_none(path: str) -> int | None:
    try:
        return int(read_text(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_pids(procs_file: str) -> list[int]:
    return [int(x) for x in read_text(procs_file).split()]


def subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [e.path for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def rmdir_retry(rmdir: Callable[[str], None], path: str) -> None:
    """rmdir ``path`` (gone already is fine), retrying EBUSY for a bounded time.

    Right after the last task of a cgroup exits, rmdir can fail with EBUSY for a short
    while although ``cgroup.procs`` is already empty: a task leaves the procs list before
    it drops its last reference on the cgroup (reported for v1 hierarchies; a 6.18 kernel
    did not show it in 100 tries).  There is no event for "removable", hence this one
    short bounded retry loop.
    """
    deadline = time.monotonic() + RMDIR_BUSY_TIMEOUT
    delay = 0.002
    while True:
        try:
            rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def wait_until(done: Callable[[], bool], timeout: float) -> bool:
    """Poll ``done`` for kernel state that has no notification, for at most ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


def populated_from_events(events_file: str) -> bool:
    """``populated`` of a v2 ``cgroup.events``; a cgroup that is gone is not populated."""
    try:
        return read_keyed(events_file).get("populated", 0) != 0
    except FileNotFoundError:
        return False


def wait_empty(path: str, timeout: float = KILL_WAIT_TIMEOUT) -> bool:
    """Wait until the cgroup at ``path`` has no process left (or is gone)."""
    events = os.path.join(path, "cgroup.events")
    procs = os.path.join(path, "cgroup.procs")
    if not os.path.exists(events):
        # v1 has no population event: poll cgroup.procs.
        def empty() -> bool:
            try:
                return not read_pids(procs)
            except FileNotFoundError:
                return True

        return wait_until(empty, timeout)
    deadline = time.monotonic() + timeout
    try:
        fd = os.open(events, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while True:
            # kernfs notes the event count at open and on reads through ``fd``: opened
            # before this read, a change right after it still wakes the poll below.
            if not populated_from_events(events):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            poller.poll(remaining * 1000)
            os.lseek(fd, 0, os.SEEK_SET)
            os.read(fd, 4096)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# Killing


def signal_members(path: str) -> int:
    """SIGKILL every process listed in ``path``'s cgroup.procs; return how many."""
    try:
        pids = read_pids(os.path.join(path, "cgroup.procs"))
    except FileNotFoundError:
        return 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def kill_loop(path: str) -> None:
    """Kill by listing, for cgroups without cgroup.kill and without a freezer.

    A process can fork between the listing and the signal, so list again until the cgroup
    is empty (bounded: a fork bomb could outrun this, which is why the frozen variants
    are preferred).
    """
    for _ in range(100):
        if signal_members(path) == 0:
            return
        wait_empty(path, 0.01)


def freeze_and_kill(path: str) -> None:
    """Kill all processes of a cgroup using its freezer, so none can fork meanwhile.

    Works with the v1 freezer (``freezer.state``) and the v2 one (``cgroup.freeze``, for
    v2 kernels older than 5.14, which lack cgroup.kill).  SIGKILL is delivered once the
    cgroup is thawed (v1) or immediately (v2 lets fatal signals through a freeze).
    """
    state = os.path.join(path, "freezer.state")
    if os.path.exists(state):

        def frozen() -> bool:
            return read_text(state).strip() == "FROZEN"

        write_file(state, "FROZEN")
        try:
            # FREEZING can last while a task sleeps uninterruptibly; kill what is listed
            # anyway after the bounded wait, new children of a freezing cgroup are frozen.
            wait_until(frozen, 1.0)
            signal_members(path)
        finally:
            write_file(state, "THAWED")
        return
    freeze = os.path.join(path, "cgroup.freeze")
    if os.path.exists(freeze):
        write_file(freeze, "1")
        try:
            signal_members(path)
        finally:
            write_file(freeze, "0")
        return
    kill_loop(path)


def kill_cgroup(path: str) -> None:
    """SIGKILL everything in the cgroup at ``path`` with the best means it offers."""
    try:
        write_file(os.path.join(path, "cgroup.kill"), "1")
        return
    except FileNotFoundError:
        if not os.path.isdir(path):
            return  # already removed: nothing to kill
    try:
        freeze_and_kill(path)
    except FileNotFoundError:
        if os.path.isdir(path):
            raise


# ---------------------------------------------------------------------------------------
# Limits


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
        if not math.isfinite(cpu) or cpu <= 0:
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
        if not limits.io_path:
            raise LimitError("io limits need io_path, a path on the block device to throttle")
        device = block_device(limits.io_path, sys_root)
    return CheckedLimits(quota, memory, device, rbps, wbps, pids)


def write_limit(path: str, value: str) -> None:
    """Write a limit file, turning the kernel's refusal into a ``LimitError``."""
    try:
        write_file(path, value)
    except OSError as e:
        name = os.path.basename(path)
        raise LimitError(f"the kernel refused {value!r} for {name}: {e.strerror}") from e


# ---------------------------------------------------------------------------------------
# /proc and parents


def proc_starttime(pid: int, proc: str = "/proc") -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None."""
    try:
        data = read_text(f"{proc}/{pid}/stat")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its end.
    rest = data[data.rindex(")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def parent_is_stale(name: str) -> bool:
    """Whether a ``jobworker-<pid>-<starttime>[-<n>]`` directory's worker is gone.

    The start time makes this safe against pid reuse: a new process with the dead
    worker's pid has a different start time.
    """
    m = _PARENT_RE.fullmatch(name)
    if m is None:
        return False
    return proc_starttime(int(m[1])) != int(m[2])


def new_parent_name() -> str:
    pid = os.getpid()
    return f"{PARENT_PREFIX}{pid}-{proc_starttime(pid)}-{next(_SEQUENCE)}"


def job_dir_name(job_id: uuid.UUID) -> str:
    return f"{JOB_PREFIX}{job_id.hex}"


@dataclass(frozen=True)
class Mount:
    root: str
    mountpoint: str
    fstype: str
    options: frozenset[str]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        try:
            sep = parts.index("-", 6)
        except ValueError:
            continue
        if len(parts) < sep + 2:
            continue
        opts = parts[sep + 3] if len(parts) > sep + 3 else ""
        mounts.append(
            Mount(
                root=_unescape(parts[3]),
                mountpoint=_unescape(parts[4]),
                fstype=parts[sep + 1],
                options=frozenset(opts.split(",")),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> list[tuple[int, list[str], str]]:
    """Lines of /proc/<pid>/cgroup as (hierarchy id, controllers, path)."""
    out = []
    for line in text.splitlines():
        hid, sep1, rest = line.partition(":")
        ctrls, sep2, path = rest.partition(":")
        if not sep1 or not sep2:
            continue
        out.append((int(hid), [c for c in ctrls.split(",") if c], path))
    return out


def cgroup_dir(mountpoint: str, mount_root: str, cgroup_path: str) -> str | None:
    """The directory of ``cgroup_path`` in a mount of the hierarchy rooted at ``mount_root``.

    None when the cgroup is not visible through that mount (outside its root, or outside
    this process's cgroup namespace, which /proc shows as a path starting with "/..").
    """
    if ".." in cgroup_path.split("/"):
        return None  # normpath would silently turn "/../x" into "/x"
    rel = posixpath.relpath(posixpath.normpath(cgroup_path), mount_root)
    if rel == ".." or rel.startswith("../"):
        return None
    return mountpoint if rel == "." else os.path.join(mountpoint, rel)


def v2_cgroup_path(proc_cgroup_text: str) -> str | None:
    for hid, ctrls, path in parse_proc_cgroup(proc_cgroup_text):
        if hid == 0 and not ctrls:
            return path
    return None


# ---------------------------------------------------------------------------------------
# The shared base


class CgroupBase(ResourceControl):
    """Parent naming, stale-parent cleanup and the mkdir/rmdir seam shared by v1 and v2.

    ``_mkdir``/``_rmdir`` are the only operations that behave differently on cgroupfs
    (where mkdir makes the interface files and rmdir removes a directory that still lists
    them), so tests that lay out a cgroup tree in a temporary directory override just
    these two.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.parent_name = new_parent_name()

    def _mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def _rmdir(self, path: str) -> None:
        os.rmdir(path)

    def rmdir_tree(self, path: str) -> None:
        """Remove a cgroup and any cgroups a (root) job made below it, deepest first."""
        if not os.path.isdir(path):
            return
        for dirpath, _, _ in os.walk(path, topdown=False):
            rmdir_retry(self._rmdir, dirpath)

    def clean_stale(self, base: str) -> None:
        """Kill and remove ``jobworker-*`` siblings in ``base`` whose worker is gone.

        Best effort: a stale parent that cannot be removed must not stop this worker.
        """
        try:
            names = os.listdir(base)
        except OSError:
            return
        for name in names:
            if not parent_is_stale(name):
                continue
            parent = os.path.join(base, name)
            try:
                self.kill_and_remove_children(parent)
                self.rmdir_tree(parent)
            except OSError:
                pass

    def kill_and_remove_children(self, parent: str) -> None:
        for child in subdirs(parent):
            kill_cgroup(child)
            wait_empty(child)
            self.rmdir_tree(child)


# ---------------------------------------------------------------------------------------
# cgroup v2


def _controllers_for(c: CheckedLimits) -> set[str]:
    needed = set()
    if c.cpu_quota_us is not None:
        needed.add("cpu")
    if c.memory is not None:
        needed.add("memory")
    if c.has_io:
        needed.add("io")
    if c.pids is not None:
        needed.add("pids")
    return needed


class V2JobGroup(JobGroup):
    """A job's single cgroup on the v2 hierarchy."""

    def __init__(self, rc: CgroupBase, path: str) -> None:
        self.path = path
        self._rc = rc
        self._lock = threading.Lock()
        self._final: Usage | None = None
        self._removed = False

    @property
    def procs_files(self) -> Sequence[str]:
        return (os.path.join(self.path, "cgroup.procs"),)

    @property
    def events_file(self) -> str | None:
        return os.path.join(self.path, "cgroup.events")

    def populated(self) -> bool:
        return populated_from_events(os.path.join(self.path, "cgroup.events"))

    def kill(self) -> None:
        kill_cgroup(self.path)

    def usage(self) -> Usage:
        final = self._final
        if final is not None:
            return final
        return self._read_usage()

    def _read_usage(self) -> Usage:
        cpu = os.path.join(self.path, "cpu.stat")
        usec = read_key_or_none(cpu, "usage_usec")
        return Usage(
            cpu_seconds=None if usec is None else usec / 1e6,
            memory_peak=read_int_or_none(os.path.join(self.path, "memory.peak")),
            cpu_throttled=read_key_or_none(cpu, "nr_throttled"),
            oom_kills=read_key_or_none(os.path.join(self.path, "memory.events"), "oom_kill"),
            pids_limit_hits=read_key_or_none(os.path.join(self.path, "pids.events"), "max"),
        )

    def oom_killed(self) -> bool:
        return bool(self.usage().oom_kills)

    def remove(self) -> None:
        with self._lock:
            if self._removed:
                return
            if self._final is None and os.path.isdir(self.path):
                # The files go with the directory: keep the last values for usage().
                self._final = self._read_usage()
            self._rc.rmdir_tree(self.path)
            self._removed = True


class CgroupV2(CgroupBase):
    """Resource control on a pure cgroup v2 hierarchy.

    ``mount`` is the cgroup2 mount point, ``mount_root`` the cgroup it shows (the 4th field
    of its mountinfo line; not "/" when a container got a subtree mounted without a
    cgroup namespace) and ``proc_self_cgroup`` the file whose ``0::`` line names this
    process's cgroup; they exist so tests can point this at a temporary directory laid out
    like cgroupfs.
    """

    name = "cgroup2"
    contains = True

    def __init__(
        self,
        mount: str = "/sys/fs/cgroup",
        proc_self_cgroup: str = "/proc/self/cgroup",
        mount_root: str = "/",
    ) -> None:
        super().__init__()
        rel = v2_cgroup_path(read_text(proc_self_cgroup))
        worker = None if rel is None else cgroup_dir(mount, mount_root, rel)
        if worker is None:
            raise ValueError(f"{proc_self_cgroup} names no cgroup v2 path under {mount}")
        self.mount = mount
        self.worker_cgroup = worker
        self.parent_cgroup = os.path.join(worker, self.parent_name)
        self._parent_made = False
        self._parent_enabled: set[str] = set()

    # -- checks

    def _worker_can_enable(self) -> bool:
        """Whether cgroup v2 lets us enable controllers in the worker's own cgroup.

        The root cgroup is exempt from the no-internal-processes rule; it is the one
        cgroup without a ``cgroup.type`` file.  Any other cgroup must have no processes.
        """
        w = self.worker_cgroup
        if not os.path.exists(os.path.join(w, "cgroup.type")):
            return True
        try:
            return not read_text(os.path.join(w, "cgroup.procs")).split()
        except OSError:
            return False

    def _plan(self, limits: Limits) -> tuple[CheckedLimits, set[str], set[str]]:
        """Validate; return the checked limits, required and merely useful controllers."""
        checked = check_limits(limits)
        needed = _controllers_for(checked)
        w = self.worker_cgroup
        try:
            available = set(read_text(os.path.join(w, "cgroup.controllers")).split())
            enabled = set(read_text(os.path.join(w, "cgroup.subtree_control")).split())
        except OSError as e:
            if needed:
                raise LimitError(f"cannot read the controllers of {w}: {e.strerror}") from e
            return checked, needed, set()
        missing = needed - available
        if missing:
            names = ", ".join(sorted(missing))
            raise LimitError(
                f"the requested limits need the cgroup v2 controller(s) {names}, which "
                f"the worker's cgroup {w} does not have (not in its cgroup.controllers)"
            )
        can_enable = self._worker_can_enable()
        if needed - enabled and not can_enable:
            names = ", ".join(sorted(needed - enabled))
            raise LimitError(
                f"cannot enable the cgroup v2 controller(s) {names} for jobs, because the "
                f"worker's own cgroup {w} holds processes and cgroup v2 forbids "
                f"controllers in a cgroup with processes (run the worker in a cgroup "
                f"whose subtree_control already enables them)"
            )
        # Memory accounting gives usage() its peak; take it when it is free to enable.
        useful = set()
        if "memory" in available and ("memory" in enabled or can_enable):
            useful.add("memory")
        return checked, needed, useful - needed

    def validate(self, limits: Limits) -> None:
        self._plan(limits)

    # -- parent and controllers

    def _ensure_parent(self) -> None:
        if self._parent_made:
            return
        self.clean_stale(self.worker_cgroup)
        with contextlib.suppress(FileExistsError):
            self._mkdir(self.parent_cgroup)
        self._parent_made = True
        self._parent_enabled = set()

    def _enable(self, cgroup: str, controllers: Iterable[str]) -> None:
        value = " ".join(f"+{c}" for c in sorted(controllers))
        try:
            write_file(os.path.join(cgroup, "cgroup.subtree_control"), value)
        except OSError as e:
            why = ""
            if e.errno == errno.EBUSY:
                why = " (cgroup v2 forbids controllers in a cgroup with processes)"
            raise LimitError(
                f"cannot write {value!r} to {cgroup}/cgroup.subtree_control: {e.strerror}{why}"
            ) from e

    def _enable_controllers(self, needed: set[str], useful: set[str]) -> None:
        w = self.worker_cgroup
        if not needed and not useful:
            return
        enabled = set(read_text(os.path.join(w, "cgroup.subtree_control")).split())
        wanted = needed | useful
        if wanted - enabled:
            try:
                self._enable(w, wanted - enabled)
                enabled |= wanted
            except LimitError:
                # Retry without the merely useful ones; if only those were missing, only
                # accounting is lost and a job without limits must still start.
                if needed - enabled:
                    self._enable(w, needed - enabled)
                    enabled |= needed
        missing = (wanted & enabled) - self._parent_enabled
        if missing:
            self._enable(self.parent_cgroup, missing)
            self._parent_enabled |= missing

    # -- the contract

    def create(self, job_id: uuid.UUID, limits: Limits) -> JobGroup:
        checked, needed, useful = self._plan(limits)
        with self._lock:
            self._ensure_parent()
            self._enable_controllers(needed, useful)
        path = os.path.join(self.parent_cgroup, job_dir_name(job_id))
        self._mkdir(path)
        try:
            self._write_limits(path, checked)
        except BaseException:
            # The original error matters more; close() retries the parent.
            with contextlib.suppress(OSError):
                self.rmdir_tree(path)
            raise
        return V2JobGroup(self, path)

    def _write_limits(self, path: str, c: CheckedLimits) -> None:
        if c.cpu_quota_us is not None:
            write_limit(os.path.join(path, "cpu.max"), f"{c.cpu_quota_us} {CPU_PERIOD_US}")
        if c.memory is not None:
            write_limit(os.path.join(path, "memory.max"), str(c.memory))
            swap = os.path.join(path, "memory.swap.max")
            if os.path.exists(swap):
                # memory.max covers RAM only; without this the job would swap past its
                # limit instead of being OOM-killed (v1's memsw limit does the same).
                write_limit(swap, "0")
        if c.io_device is not None:
            major, minor = c.io_device
            value = f"{major}:{minor}"
            if c.io_read_bps is not None:
                value += f" rbps={c.io_read_bps}"
            if c.io_write_bps is not None:
                value += f" wbps={c.io_write_bps}"
            write_limit(os.path.join(path, "io.max"), value)
        if c.pids is not None:
            write_limit(os.path.join(path, "pids.max"), str(c.pids))

    def close(self) -> None:
        with self._lock:
            if not self._parent_made:
                return
            self.kill_and_remove_children(self.parent_cgroup)
            self.rmdir_tree(self.parent_cgroup)
            self._parent_made = False
            self._parent_enabled = set()
