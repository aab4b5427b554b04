"""cgroup v1 resource control, optionally with a controller-less cgroup2 mount.

Each v1 controller is its own hierarchy (or a few are co-mounted, such as
``cpu,cpuacct``), found from /proc/self/mountinfo.  In every hierarchy the worker's
cgroup is the one its own line of /proc/self/cgroup names; it differs between
hierarchies (``/`` in most, ``/process_api/<id>`` in memory on some machines).  The
per-worker parent and the job cgroups are made below that, per hierarchy.

A cgroup2 mount without controllers (``/sys/fs/cgroup/unified``) is still worth a lot:
``cgroup.kill`` kills a whole job atomically and ``cgroup.events`` tells when it is empty,
with a notification.  Without it, kill goes through the freezer and emptiness is polled.

To keep start cheap, a job gets only the hierarchies it needs: the unified one (if any),
memory, cpu, blkio and pids only for their limits, cpuacct only for CPU time when there
is no unified hierarchy, and the freezer only when the unified hierarchy cannot kill.
Without a unified hierarchy memory is always joined too, as the one hierarchy every
such machine has to hold a job's processes.  So with a unified hierarchy, a job without
a memory limit has no peak memory or OOM count in its usage (None): a memory cgroup
cost every start a v1 migration and the worker a memcg made and removed (see
docs/DESIGN.md).

What v2 shares with this (files, names, killing, limit checks, base classes) lives in
``_cgroupfs``, ``_kill``, ``_limits`` and ``_base``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from .._errors import LimitError
from .._model import Limits, Usage
from . import JobGroup
from ._base import CgroupBase, CgroupJobGroup, PoolKey
from ._cgroupfs import (
    cgroup_dir,
    parse_mountinfo,
    parse_proc_cgroup,
    populated_from_events,
    read_int_or_none,
    read_key_or_none,
    read_pids,
    read_text,
    rmdir_retry,
)
from ._kill import kill_cgroup
from ._limits import CPU_PERIOD_US, CheckedLimits, check_limits, write_limit

__all__ = ["CgroupV1", "Hierarchy", "V1JobGroup"]

UNIFIED = "unified"
# Roles a hierarchy can play for a job, in the order the child joins them: the unified
# one first, so that from its first join on, the child is killable and counted.
_ROLES = (UNIFIED, "memory", "cpu", "cpuacct", "blkio", "pids", "freezer")


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy and the worker's cgroup directory in it."""

    controllers: frozenset[str]  # empty for the cgroup2 mount
    base: str


def find_hierarchies(
    mountinfo_text: str, proc_cgroup_text: str
) -> tuple[dict[str, Hierarchy], Hierarchy | None]:
    """Map each v1 controller to its hierarchy; also return the cgroup2 one, if mounted."""
    mounts = parse_mountinfo(mountinfo_text)
    by_controller: dict[str, Hierarchy] = {}
    unified = None
    for hid, ctrls, path in parse_proc_cgroup(proc_cgroup_text):
        if hid == 0:
            for m in mounts:
                if m.fstype == "cgroup2":
                    d = cgroup_dir(m.mountpoint, m.root, path)
                    if d is not None:
                        unified = Hierarchy(frozenset(), d)
                        break
            continue
        # Named hierarchies (name=systemd) carry no controller.
        real = frozenset(c for c in ctrls if not c.startswith("name="))
        if not real:
            continue
        for m in mounts:
            if m.fstype == "cgroup" and real <= m.options:
                d = cgroup_dir(m.mountpoint, m.root, path)
                if d is not None:
                    h = Hierarchy(real, d)
                    for c in real:
                        by_controller[c] = h
                    break
    return by_controller, unified


class V1JobGroup(CgroupJobGroup):
    """A job's cgroups, one per hierarchy it needed (``dirs``: role -> directory)."""

    def __init__(self, rc: CgroupV1, dirs: dict[str, str], unified_kills: bool) -> None:
        # Co-mounted controllers share a directory: each directory once, in role order.
        super().__init__(rc, list(dict.fromkeys(dirs[r] for r in _ROLES if r in dirs)))
        self.dirs = dirs
        self._unified_kills = unified_kills

    @property
    def procs_files(self) -> Sequence[str]:
        return tuple(os.path.join(p, "cgroup.procs") for p in self.paths)

    @property
    def events_file(self) -> str | None:
        if UNIFIED in self.dirs:
            return os.path.join(self.dirs[UNIFIED], "cgroup.events")
        return None

    @property
    def cgroup2_dir(self) -> str | None:
        return self.dirs.get(UNIFIED)  # the first of procs_files, if there

    def populated(self) -> bool:
        if UNIFIED in self.dirs:
            return populated_from_events(os.path.join(self.dirs[UNIFIED], "cgroup.events"))
        # Every process of the job is in every one of its cgroups: any of them will do.
        try:
            return bool(read_pids(os.path.join(self.paths[0], "cgroup.procs")))
        except FileNotFoundError:
            return False

    def kill(self) -> None:
        if self._unified_kills and UNIFIED in self.dirs:
            kill_cgroup(self.dirs[UNIFIED])
        elif "freezer" in self.dirs:
            kill_cgroup(self.dirs["freezer"])
        else:
            kill_cgroup(self.paths[0])

    def _file(self, role: str, name: str) -> str | None:
        d = self.dirs.get(role)
        return None if d is None else os.path.join(d, name)

    def _read_usage(self) -> Usage:
        cpu_seconds: float | None = None
        if (f := self._file(UNIFIED, "cpu.stat")) is not None:
            usec = read_key_or_none(f, "usage_usec")
            cpu_seconds = None if usec is None else usec / 1e6
        elif (f := self._file("cpuacct", "cpuacct.usage")) is not None:
            nsec = read_int_or_none(f)
            cpu_seconds = None if nsec is None else nsec / 1e9
        peak = oom = throttled = pid_hits = None
        if (f := self._file("memory", "memory.max_usage_in_bytes")) is not None:
            peak = read_int_or_none(f)
        if (f := self._file("memory", "memory.oom_control")) is not None:
            oom = read_key_or_none(f, "oom_kill")
        if (f := self._file("cpu", "cpu.stat")) is not None:
            throttled = read_key_or_none(f, "nr_throttled")
        if (f := self._file("pids", "pids.events")) is not None:
            pid_hits = read_key_or_none(f, "max")
        return Usage(cpu_seconds, peak, throttled, oom, pid_hits)


class CgroupV1(CgroupBase):
    """Resource control on v1 hierarchies (plus a controller-less cgroup2 mount, if any).

    ``mountinfo`` and ``proc_self_cgroup`` are the files read to find the hierarchies
    and the worker's cgroup in each.
    """

    name = "cgroup1"
    contains = True  # every job is in a cgroup that lists all its processes

    def __init__(
        self,
        mountinfo: str = "/proc/self/mountinfo",
        proc_self_cgroup: str = "/proc/self/cgroup",
    ) -> None:
        super().__init__()
        self.hierarchies, self.unified = find_hierarchies(
            read_text(mountinfo), read_text(proc_self_cgroup)
        )
        self._parents: dict[str, str] = {}  # hierarchy base -> parent directory made
        self._met: set[tuple[str, tuple[str, ...]]] = set()  # requirements _need found met
        self._stale_cleaned = False
        # Whether the unified hierarchy has cgroup.kill (kernel >= 5.14); only a non-root
        # cgroup shows it, so this is settled once the unified parent exists.
        self._unified_kills = False

    def _hierarchy(self, role: str) -> Hierarchy | None:
        return self.unified if role == UNIFIED else self.hierarchies.get(role)

    def unusable_reason(self) -> str | None:
        """Why this machine's v1 layout cannot serve jobs, or None if it can."""
        if self.unified is not None:
            essential = [self.unified]
        else:
            essential = [h for h in (self.hierarchies.get("memory"),) if h]
            if "freezer" in self.hierarchies:
                essential.append(self.hierarchies["freezer"])
        if not essential:
            return "no cgroup2, memory or freezer hierarchy is mounted"
        for h in essential:
            if not os.access(h.base, os.W_OK):
                return f"{h.base} is not writable"
        return None

    # -- checks

    def _need(self, ctrl: str, what: str, files: Sequence[str] = ()) -> None:
        # Mounts and controller files do not change under a running worker: check each
        # requirement once, not at every start.
        key = (ctrl, tuple(files))
        if key in self._met:
            return
        self._check_need(ctrl, what, files)
        self._met.add(key)

    def _check_need(self, ctrl: str, what: str, files: Sequence[str]) -> None:
        h = self.hierarchies.get(ctrl)
        if h is None:
            raise LimitError(
                f"the {what} limit needs the cgroup v1 {ctrl} controller, "
                "which is not mounted on this machine"
            )
        if not os.access(h.base, os.W_OK):
            raise LimitError(f"the {what} limit needs to write {h.base}, which this worker cannot")
        for name in files:
            if not os.path.exists(os.path.join(h.base, name)):
                raise LimitError(
                    f"the {what} limit needs {name}, which this kernel's {ctrl} controller lacks"
                )

    def _check(self, limits: Limits) -> CheckedLimits:
        c = check_limits(limits)
        if c.cpu_quota_us is not None:
            self._need("cpu", "cpu", ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        if c.memory is not None:
            self._need("memory", "memory", ("memory.limit_in_bytes",))
        if c.io_device is not None:
            files = []
            if c.io_read_bps is not None:
                files.append("blkio.throttle.read_bps_device")
            if c.io_write_bps is not None:
                files.append("blkio.throttle.write_bps_device")
            self._need("blkio", "io", files)
        if c.pids is not None:
            self._need("pids", "pids")
        return c

    def validate(self, limits: Limits) -> None:
        self._check(limits)

    # -- parents

    def stale_bases(self) -> list[str]:
        # The unified (or freezer) hierarchy first: it kills the stale jobs as a whole,
        # after which the other hierarchies only have empty cgroups to remove.
        order = [self._hierarchy(r) for r in (UNIFIED, "freezer", *_ROLES)]
        return list(dict.fromkeys(h.base for h in order if h is not None))

    def _prepare(self) -> None:
        """Clean stale parents (once, unless the housekeeper does), and settle how jobs
        are killed.  Under the lock."""
        if not self._stale_cleaned and self.housekeeper is None:
            self.clean_stale_parents()
        self._stale_cleaned = True
        if self.unified is not None and self.unified.base not in self._parents:
            parent = self._ensure_parent(self.unified)
            self._unified_kills = os.path.exists(os.path.join(parent, "cgroup.kill"))

    def make_parents(self) -> None:
        with self._lock:
            self._prepare()
            key = tuple(self._roles_for(check_limits(Limits())))
            self._ensure_parents(key)
            self._pool.setdefault(key, collections.deque())

    def _ensure_parents(self, key: PoolKey) -> None:
        for r in key:
            h = self._hierarchy(r)
            assert h is not None
            self._ensure_parent(h)

    def _job_dirs(self, key: PoolKey, name: str) -> list[str]:
        dirs = self._dirs(key, name)
        return list(dict.fromkeys(dirs[r] for r in key))

    def _dirs(self, key: PoolKey, name: str) -> dict[str, str]:
        out = {}
        for r in key:
            h = self._hierarchy(r)
            assert h is not None
            out[r] = os.path.join(self._parents[h.base], name)
        return out

    def _ensure_parent(self, h: Hierarchy) -> str:
        parent = self._parents.get(h.base)
        if parent is None:
            parent = os.path.join(h.base, self.parent_name)
            self.make_parent(parent)
            self._parents[h.base] = parent
        return parent

    def _roles_for(self, c: CheckedLimits) -> list[str]:
        wanted = {
            UNIFIED: True,
            "memory": c.memory is not None or self.unified is None,
            "cpu": c.cpu_quota_us is not None,
            "cpuacct": self.unified is None,
            "blkio": c.has_io,
            "pids": c.pids is not None,
            "freezer": not self._unified_kills,
        }
        return [r for r in _ROLES if wanted[r] and self._hierarchy(r) is not None]

    # -- the contract

    def create(self, job_id: uuid.UUID, limits: Limits) -> JobGroup:
        checked = self._check(limits)
        with self._lock:
            self._prepare()
            key = tuple(self._roles_for(checked))
            self._ensure_parents(key)
            unified_kills = self._unified_kills
        name = self._take(key)
        dirs = self._dirs(key, name)
        try:
            self._write_limits(dirs, checked)
        except BaseException:
            for d in reversed(self._job_dirs(key, name)):
                # The original error matters more; close() retries the parent.
                with contextlib.suppress(OSError):
                    rmdir_retry(self._rmdir, d)
            raise
        return V1JobGroup(self, dirs, unified_kills)

    def _write_limits(self, dirs: dict[str, str], c: CheckedLimits) -> None:
        if c.memory is not None:
            d = dirs["memory"]
            write_limit(os.path.join(d, "memory.limit_in_bytes"), str(c.memory))
            memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                # Memory+swap, so swapping cannot dodge the limit.  The kernel demands
                # memsw >= limit_in_bytes at every moment, hence the order.
                write_limit(memsw, str(c.memory))
        if c.cpu_quota_us is not None:
            d = dirs["cpu"]
            write_limit(os.path.join(d, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
            write_limit(os.path.join(d, "cpu.cfs_quota_us"), str(c.cpu_quota_us))
        if c.io_device is not None:
            d = dirs["blkio"]
            major, minor = c.io_device
            if c.io_read_bps is not None:
                write_limit(
                    os.path.join(d, "blkio.throttle.read_bps_device"),
                    f"{major}:{minor} {c.io_read_bps}",
                )
            if c.io_write_bps is not None:
                write_limit(
                    os.path.join(d, "blkio.throttle.write_bps_device"),
                    f"{major}:{minor} {c.io_write_bps}",
                )
        if c.pids is not None:
            write_limit(os.path.join(dirs["pids"], "pids.max"), str(c.pids))

    def close(self) -> None:
        self._stop_housekeeping()
        with self._lock:
            error: OSError | None = None
            # Unified first: a leftover job (a caller bug) is killed there as a whole.
            parents = sorted(self._parents.items(), key=lambda kv: kv[0] != self._base(UNIFIED))
            for base, parent in parents:
                try:
                    self.remove_parent(parent)
                    del self._parents[base]
                except OSError as e:
                    error = error or e
            if error is not None:
                raise error

    def _base(self, role: str) -> str | None:
        h = self._hierarchy(role)
        return None if h is None else h.base
