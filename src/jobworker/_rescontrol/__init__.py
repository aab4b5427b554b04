"""Resource control: one interface, one implementation per cgroup layout.

The contract, stated once here.  Beside this file: the implementations (``_v2``, ``_v1``,
``_none``) and what the two cgroup ones share (``_base``: base classes; ``_cgroupfs``:
interface files, mounts, names; ``_kill``: killing and waiting for empty; ``_limits``:
limit validation).

- ``detect()`` inspects ``/proc/self/cgroup`` and the cgroup mounts and returns the
  ``ResourceControl`` that fits this machine: ``cgroup2`` (pure v2, what most users run),
  ``cgroup1`` (v1 controllers, optionally with a controller-less cgroup2 mount such as
  ``/sys/fs/cgroup/unified`` that supplies ``cgroup.kill`` and ``cgroup.events``), or
  ``none`` where no cgroup can be written (not root, no delegation).
- Job cgroups live under a per-worker parent cgroup created *below the cgroup this
  process already belongs to*, never by moving a process.  A parent whose worker is gone
  (it crashed) is killed and removed by the next worker: by its background thread once
  ``start_housekeeping()`` was called (the Worker calls it), else at the first ``create``.
- ``ResourceControl.start_housekeeping()`` starts the control's background thread, which
  from then on makes the parents, cleans up after dead workers, keeps job cgroups ready
  ahead of need and removes released ones, so that neither a start nor a job's end
  waits for that work (``_housekeeper``).  Without it, all of it happens inline.
- ``ResourceControl.create(job_id, limits)`` makes (or takes a ready) job cgroup(s) and
  writes the limits.  It raises ``LimitError`` for a limit this machine cannot enforce,
  and leaves nothing behind when it raises.  A ready cgroup was never used by a job:
  cgroups are not reused (a job running as the worker's user can change any knob of its
  own cgroup, which the next job would inherit).
- ``JobGroup.procs_files`` are absolute paths of ``cgroup.procs`` files.  The spawned
  child writes ``"0"`` (itself) into each, in order, *before* it executes the user's
  program; so the program's first instruction already runs inside every cgroup.
  ``JobGroup.cgroup2_dir``, if not None, is the cgroup2 directory of the first of them:
  the child is started inside it (``clone3`` with ``CLONE_INTO_CGROUP``) where the
  kernel allows, and then joins only the others.
- ``JobGroup.kill()`` sends SIGKILL to every process in the job's cgroup, including ones
  that left the process group (``setsid``, double fork).  It is idempotent.
- ``JobGroup.populated()`` is True while any process is left in the cgroup;
  ``JobGroup.events_file`` (if not None) is a file that becomes ``EPOLLPRI``-ready when
  that may have changed, so the caller can wait without polling.
- ``JobGroup.remove()`` removes every directory ``create`` made; the caller calls it only
  after ``populated()`` turned False.  It is idempotent.  ``JobGroup.release()`` is the
  same for a job that has ended: it keeps the usage, and leaves the removal to the
  background thread if there is one.
- ``JobGroup.holds(pid)`` is True if the process ``pid`` (alive, or a zombie: the kernel
  keeps a dead task's cgroup, even once removed) is or was in the job's cgroup; False
  where that cannot be told.  It is how the worker recognizes a job's orphans among its
  own children (``_orphans``).
- ``ResourceControl.close()`` stops the background thread (after its queued removals)
  and removes the ready cgroups and the worker's parent cgroup(s).
"""

from __future__ import annotations

import abc
import os
import uuid
from collections.abc import Sequence

from .._model import Limits, Usage
from . import _cgroupfs

__all__ = ["CgroupV1", "CgroupV2", "JobGroup", "NoCgroups", "ResourceControl", "detect"]


class JobGroup(abc.ABC):
    """One job's cgroup(s)."""

    @property
    @abc.abstractmethod
    def procs_files(self) -> Sequence[str]:
        """``cgroup.procs`` files the child joins (writes "0" into) before exec."""

    @property
    @abc.abstractmethod
    def events_file(self) -> str | None:
        """A file that turns EPOLLPRI-ready when ``populated()`` may have changed."""

    @property
    def cgroup2_dir(self) -> str | None:
        """The cgroup2 directory of ``procs_files[0]``, to start the child inside."""
        return None

    @abc.abstractmethod
    def populated(self) -> bool:
        """Whether any process is left in the job's cgroup."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL every process in the cgroup (idempotent)."""

    @abc.abstractmethod
    def usage(self) -> Usage:
        """CPU time, peak memory and limit hits, as the kernel accounts them."""

    @abc.abstractmethod
    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this job."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Remove the job's cgroup directories (idempotent; only once unpopulated)."""

    def release(self) -> None:
        """The job has ended and its cgroup is empty: keep the usage, remove the
        directories now or on a background thread."""
        self.remove()

    def holds(self, pid: int) -> bool:
        """Whether process ``pid`` (alive or a zombie) is in the job's cgroup; False
        where this cannot be told."""
        return False


class ResourceControl(abc.ABC):
    """How this machine limits and contains jobs."""

    name: str
    """``"cgroup2"``, ``"cgroup1"`` or ``"none"``."""

    contains: bool
    """Whether ``JobGroup.kill`` reaches processes that left the job's process group."""

    @abc.abstractmethod
    def validate(self, limits: Limits) -> None:
        """Raise ``LimitError`` if ``limits`` is malformed or cannot be enforced here."""

    @abc.abstractmethod
    def create(self, job_id: uuid.UUID, limits: Limits) -> JobGroup:
        """Make the job's cgroup(s) with ``limits`` written; nothing is left on error."""

    def start_housekeeping(self) -> None:  # noqa: B027 (optional: nothing to do by default)
        """Start the background thread that does what no caller should wait for."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the background thread; remove this worker's parent cgroup(s) (every
        job group is released already)."""


def detect(
    *,
    mountinfo: str = "/proc/self/mountinfo",
    proc_self_cgroup: str = "/proc/self/cgroup",
    v2_mountpoint: str = "/sys/fs/cgroup",
) -> ResourceControl:
    """The ``ResourceControl`` for this machine.

    - ``CgroupV2`` if ``v2_mountpoint`` is a cgroup2 mount and the worker's cgroup in it
      is writable;
    - else ``CgroupV1`` if v1 hierarchies are mounted and the worker's cgroups in the
      ones every job uses (the cgroup2 mount if any, else memory and the freezer) are
      writable;
    - else ``NoCgroups``, whose ``reason`` says why.
    """
    try:
        mounts = _cgroupfs.parse_mountinfo(_cgroupfs.read_text(mountinfo))
        proc_cgroup = _cgroupfs.read_text(proc_self_cgroup)
    except OSError as e:
        return NoCgroups(f"cannot read {e.filename}: {e.strerror}")
    reasons = []
    v2 = [m for m in mounts if m.mountpoint == v2_mountpoint and m.fstype == "cgroup2"]
    if v2:
        rel = _cgroupfs.v2_cgroup_path(proc_cgroup)
        worker = None if rel is None else _cgroupfs.cgroup_dir(v2[-1].mountpoint, v2[-1].root, rel)
        if worker is None:
            reasons.append(f"this process's cgroup is not visible under {v2_mountpoint}")
        elif not os.access(worker, os.W_OK):
            reasons.append(f"{worker} is not writable")
        else:
            return CgroupV2(v2[-1].mountpoint, proc_self_cgroup, v2[-1].root)
    if any(m.fstype == "cgroup" for m in mounts):
        v1 = CgroupV1(mountinfo, proc_self_cgroup)
        reason = v1.unusable_reason()
        if reason is None:
            return v1
        reasons.append(reason)
    if not reasons:
        reasons.append("no cgroup filesystem is mounted")
    return NoCgroups("; ".join(reasons))


# The implementations subclass the classes above, so they are imported after them.
from ._none import NoCgroups  # noqa: E402
from ._v1 import CgroupV1  # noqa: E402
from ._v2 import CgroupV2  # noqa: E402
