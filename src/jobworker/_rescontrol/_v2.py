"""Pure cgroup v2 resource control.

Layout: ``<worker's cgroup>/jobworker-<pid>-<starttime>-<n>/job-<random hex>``.  The job
cgroups are leaves; the per-worker parent only ever holds job cgroups, so enabling
controllers in it is always allowed.  The worker's own cgroup is another matter: it holds
the worker itself, and cgroup v2 refuses to enable controllers in a cgroup with processes
(the "no internal processes" rule; only the root cgroup is exempt).  This module never
moves a process to get around that: a limit that needs a controller it cannot enable is
a ``LimitError``, while a job without limits still gets ``cgroup.kill``/``cgroup.events``,
which need no controller.

What v1 shares with this (files, names, killing, limit checks, base classes) lives in
``_cgroupfs``, ``_kill``, ``_limits`` and ``_base``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import uuid
from collections.abc import Iterable, Sequence

from .._errors import LimitError
from .._model import Limits, Usage
from . import JobGroup
from ._base import CgroupBase, CgroupJobGroup, PoolKey
from ._cgroupfs import (
    cgroup_dir,
    populated_from_events,
    read_int_or_none,
    read_key_or_none,
    read_text,
    v2_cgroup_path,
    write_file,
)
from ._kill import kill_cgroup
from ._limits import CPU_PERIOD_US, CheckedLimits, check_limits, write_limit

__all__ = ["CgroupV2", "V2JobGroup"]

_KEY: PoolKey = ()  # one kind of job cgroup: limits are files in it


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


class V2JobGroup(CgroupJobGroup):
    """A job's single cgroup on the v2 hierarchy."""

    def __init__(self, rc: CgroupBase, path: str) -> None:
        super().__init__(rc, (path,))
        self.path = path

    @property
    def procs_files(self) -> Sequence[str]:
        return (os.path.join(self.path, "cgroup.procs"),)

    @property
    def events_file(self) -> str | None:
        return os.path.join(self.path, "cgroup.events")

    @property
    def cgroup2_dir(self) -> str | None:
        return self.path

    def populated(self) -> bool:
        return populated_from_events(os.path.join(self.path, "cgroup.events"))

    def kill(self) -> None:
        kill_cgroup(self.path)

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
                f"controllers in a cgroup with processes, except at the root; jobs run "
                f"without limits here"
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
        """Make the parent (cleaning stale ones first, unless the housekeeper does);
        under the lock."""
        if self._parent_made:
            return
        if self.housekeeper is None:
            self.clean_stale(self.worker_cgroup)
        self.make_parent(self.parent_cgroup)
        self._parent_made = True
        self._parent_enabled = set()

    def stale_bases(self) -> list[str]:
        return [self.worker_cgroup]

    def make_parents(self) -> None:
        with self._lock:
            self._ensure_parent()
            self._pool.setdefault(_KEY, collections.deque())

    def _ensure_parents(self, key: PoolKey) -> None:
        self._ensure_parent()

    def _job_dirs(self, key: PoolKey, name: str) -> list[str]:
        return [os.path.join(self.parent_cgroup, name)]

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
            # Before a ready cgroup is taken: enabling a controller in the parent gives
            # every child its files, ready ones included.
            self._enable_controllers(needed, useful)
        path = os.path.join(self.parent_cgroup, self._take(_KEY))
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
        self._stop_housekeeping()
        with self._lock:
            if not self._parent_made:
                return
            self.remove_parent(self.parent_cgroup)
            self._parent_made = False
            self._parent_enabled = set()
