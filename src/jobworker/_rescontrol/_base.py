"""The base classes of the v1 and v2 implementations.

``CgroupBase`` is the ``ResourceControl`` side: the worker's parent name, stale-parent
cleanup, the pool of job cgroups made ahead of need and the background thread that
keeps it (``_housekeeper``), removing parents and cgroup trees, and the
``_mkdir``/``_rmdir`` seam.  ``CgroupJobGroup`` is the ``JobGroup`` side: usage that
outlives the job's directories, and removing them once, now or on the background
thread.  Each implementation adds only what differs: which hierarchies and files, and
how limits are written.

Job cgroups are named ``job-<32 random hex digits>``, not after their job: a pooled
one is made before its job exists.  The name is unique all the same, which is what
``holds`` needs.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import errno
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence

from .._fds import above_stdio
from .._model import Usage
from . import JobGroup, ResourceControl, _dirs
from ._cgroupfs import (
    JOB_PREFIX,
    new_parent_name,
    parent_is_stale,
    parse_proc_cgroup,
    read_text,
    rmdir_retry,
    subdirs,
)
from ._housekeeper import Housekeeper
from ._kill import kill_cgroup, wait_empty

__all__ = ["MAX_POOLS", "POOL_SIZE", "CgroupBase", "CgroupJobGroup", "PoolKey"]

# Ready job cgroups kept per set of hierarchies (a pool), and how many such sets are
# pooled: jobs without limits use one set, and each combination of limits (on v1) one
# more.  A ready cgroup costs the kernel a few KiB; a burst of starts drains the pool
# only if it outruns the background thread's mkdirs.
POOL_SIZE = 8
MAX_POOLS = 4

log = logging.getLogger("jobworker")

PoolKey = tuple[str, ...]
"""What a job cgroup is made of besides its name (v1: its hierarchies' roles)."""


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
        self._held: dict[str, int] = {}  # parent directory -> fd holding its flock
        self._pool: dict[PoolKey, collections.deque[str]] = {}  # ready job cgroup names
        self.housekeeper: Housekeeper | None = None

    # -- what each implementation supplies

    @abc.abstractmethod
    def _job_dirs(self, key: PoolKey, name: str) -> list[str]:
        """The directories of job cgroup ``name`` (its parents exist), each once."""

    @abc.abstractmethod
    def _ensure_parents(self, key: PoolKey) -> None:
        """Make the parents the job cgroups of ``key`` go in (called under the lock)."""

    @abc.abstractmethod
    def make_parents(self) -> None:
        """Make this worker's parent cgroups for jobs without limits (thread-safe)."""

    @abc.abstractmethod
    def stale_bases(self) -> list[str]:
        """Where a dead worker's parents may be, the one that kills them first."""

    # -- housekeeping (see _housekeeper)

    def start_housekeeping(self) -> None:
        with self._lock:
            if self.housekeeper is not None:
                return
            hk = self.housekeeper = Housekeeper(self)
        # The parents and a first pool now, on the caller's thread (the Worker's
        # constructor): no start waits for them, and the first starts do not meet the
        # thread's first mkdirs; stale parents are left to the thread.
        try:
            self.make_parents()
            self.fill_pool_once()
        except OSError:
            # A start makes them, and says what failed.
            log.debug("jobworker: cannot make the parent cgroups ahead", exc_info=True)
        hk.start()

    def _stop_housekeeping(self) -> None:
        """Stop the background thread (its queued removals done), remove the pool."""
        with self._lock:
            hk, self.housekeeper = self.housekeeper, None
        if hk is not None:
            hk.stop()
        with self._lock:
            ready = [(key, name) for key, names in self._pool.items() for name in names]
            self._pool.clear()
        for key, name in ready:
            for d in reversed(self._job_dirs(key, name)):
                with contextlib.suppress(OSError):  # close() removes the parent anyway
                    rmdir_retry(self._rmdir, d)

    def clean_stale_parents(self) -> None:
        """Clean every base of ``stale_bases`` (see ``clean_stale``)."""
        for base in self.stale_bases():
            self.clean_stale(base)

    def _take(self, key: PoolKey) -> str:
        """The name of a job cgroup of ``key`` whose directories exist: a ready one, else
        one made now.  The caller holds no lock, and its parents exist."""
        name = None
        with self._lock:
            pool = self._pool.get(key)
            if pool is None and self.housekeeper is not None and len(self._pool) < MAX_POOLS:
                pool = self._pool[key] = collections.deque()
            if pool:
                name = pool.popleft()
            # Refilled by halves: one wake-up of the thread per few starts.
            hk = self.housekeeper if pool is not None and len(pool) <= POOL_SIZE // 2 else None
        if hk is not None:
            hk.refill()
        if name is None:
            name = _new_job_name()
            self._make_job(key, name)
        return name

    def fill_pool_once(self) -> bool:
        """Fill one pool that is short, in one batch; False if none is."""
        with self._lock:
            key = next((k for k, names in self._pool.items() if len(names) < POOL_SIZE), None)
            if key is None:
                return False
            self._ensure_parents(key)
            wanted = POOL_SIZE - len(self._pool[key])
        names = [_new_job_name() for _ in range(wanted)]
        paths = [[*self._job_dirs(key, name)] for name in names]
        errors = self._mkdirs([d for dirs in paths for d in dirs])
        made, failed, at = [], None, 0
        for name, dirs in zip(names, paths, strict=True):
            mine = errors[at : at + len(dirs)]
            at += len(dirs)
            if not any(mine):
                made.append(name)
                continue
            failed = failed or next(e for e in mine if e)
            self._rmdirs([d for d, e in zip(dirs, mine, strict=True) if not e][::-1])
        with self._lock:
            if self.housekeeper is not None and key in self._pool:
                self._pool[key].extend(made)
                made = []
        # Stopped meanwhile: nothing will take these.
        self._rmdirs([d for name in made for d in reversed(self._job_dirs(key, name))])
        if failed:
            raise OSError(failed, os.strerror(failed))
        return True

    def remove_groups(self, groups: Sequence[CgroupJobGroup]) -> None:
        """``remove()`` each of ``groups``, in one batch for those that are leaves."""
        todo = []
        for g in groups:
            with g._lock:
                if g._removed:
                    continue
                if g._final is None:
                    g._final = g._read_usage()
            todo.append(g)
        errors = self._rmdirs([p for g in todo for p in g.paths])
        at = 0
        for g in todo:
            mine = errors[at : at + len(g.paths)]
            at += len(g.paths)
            if all(e in (0, errno.ENOENT) for e in mine):
                with g._lock:
                    g._removed = True
            else:
                # Not a leaf (a root job made cgroups in it), or not yet removable
                # (EBUSY): the careful way, one by one.
                try:
                    g.remove()
                except OSError:
                    log.exception("jobworker: cannot remove a job's cgroup")

    def _mkdirs(self, paths: Sequence[str]) -> list[int]:
        """mkdir each path: errno or 0 each.  Without the GIL, unless a test replaced the
        seam."""
        if type(self)._mkdir is CgroupBase._mkdir:
            return _dirs.mkdirs(paths)
        return [_errno_of(self._mkdir, p) for p in paths]

    def _rmdirs(self, paths: Sequence[str]) -> list[int]:
        """rmdir each path: errno or 0 each (see ``_mkdirs``)."""
        if type(self)._rmdir is CgroupBase._rmdir:
            return _dirs.rmdirs(paths)
        return [_errno_of(self._rmdir, p) for p in paths]

    def _make_job(self, key: PoolKey, name: str) -> None:
        """mkdir each directory of job cgroup ``name``; on error, none is left."""
        made: list[str] = []
        try:
            for d in self._job_dirs(key, name):
                self._mkdir(d)
                made.append(d)
        except BaseException:
            for d in reversed(made):
                # The original error matters more; close() retries the parent.
                with contextlib.suppress(OSError):
                    rmdir_retry(self._rmdir, d)
            raise

    def make_parent(self, path: str) -> None:
        """Create this worker's parent cgroup ``path``, and hold a lock on it for the
        worker's life.

        The lock is what tells other workers this one is alive: the pid in the name
        means nothing to a worker in another pid namespace (or time namespace), which
        would otherwise take a live worker's parent for a dead one's and kill its jobs.
        """
        with contextlib.suppress(FileExistsError):
            self._mkdir(path)
        if path not in self._held:
            self._held[path] = _lock_dir(path)

    def _release(self, path: str) -> None:
        fd = self._held.pop(path, None)
        if fd is not None:
            os.close(fd)

    def _mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def _rmdir(self, path: str) -> None:
        os.rmdir(path)

    def rmdir_tree(self, path: str) -> None:
        """Remove a cgroup and any cgroups a (root) job made below it, deepest first."""
        try:
            # Nearly always a leaf: one rmdir, without listing its interface files.
            self._rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EBUSY):
                raise
        for child in subdirs(path):  # deepest first
            self.rmdir_tree(child)
        rmdir_retry(self._rmdir, path)

    def clean_stale(self, base: str) -> None:
        """Kill and remove ``jobworker-*`` siblings in ``base`` whose worker is gone.

        Best effort: a stale parent that cannot be removed must not stop this worker.
        Needs no lock: it never touches this worker's own parents (their worker is
        alive).
        """
        try:
            names = [os.path.basename(d) for d in subdirs(base)]
        except OSError:
            return
        for name in names:
            parent = os.path.join(base, name)
            # The name's pid and start time first (in this pid namespace): they also
            # cover the moment between another worker's mkdir and its lock.
            if parent in self._held or not parent_is_stale(name):
                continue
            try:
                fd = _lock_dir(parent)
            except OSError:
                continue  # held: its worker is alive, whatever its name says (or gone)
            try:
                with contextlib.suppress(OSError):
                    self.remove_parent(parent)
            finally:
                os.close(fd)

    def remove_parent(self, parent: str) -> None:
        """Kill and remove every job cgroup in ``parent``, then ``parent`` itself."""
        self.kill_and_remove_children(parent)
        self.rmdir_tree(parent)
        self._release(parent)

    def kill_and_remove_children(self, parent: str) -> None:
        for child in subdirs(parent):
            kill_cgroup(child)
            wait_empty(child)
            self.rmdir_tree(child)


def _errno_of(call: Callable[[str], None], path: str) -> int:
    try:
        call(path)
    except OSError as e:
        return e.errno or errno.EIO
    return 0


def _new_job_name() -> str:
    return f"{JOB_PREFIX}{uuid.uuid4().hex}"


def _lock_dir(path: str) -> int:
    """An fd of the directory ``path`` holding its exclusive flock; raises
    BlockingIOError if another holds it."""
    fd = above_stdio(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


class CgroupJobGroup(JobGroup):
    """A job's cgroup directories (``paths``), removed once, with usage kept past that.

    Subclasses read the usage from their own files (``_read_usage``); the rest of the
    ``JobGroup`` contract they implement themselves.
    """

    def __init__(self, rc: CgroupBase, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self.name = os.path.basename(self.paths[0])
        self._rc = rc
        self._lock = threading.Lock()
        self._final: Usage | None = None
        self._removed = False

    @abc.abstractmethod
    def _read_usage(self) -> Usage:
        """The usage as the job's interface files show it now."""

    def usage(self) -> Usage:
        final = self._final
        if final is not None:
            return final
        return self._read_usage()

    def oom_killed(self) -> bool:
        return bool(self.usage().oom_kills)

    def holds(self, pid: int) -> bool:
        try:
            text = read_text(f"/proc/{pid}/cgroup")
        except (FileNotFoundError, ProcessLookupError):
            return False  # reaped
        # Every directory of the job bears the job's unique name.  A zombie shows it in
        # the cgroup2 line only (v1 lines show "/"), with " (deleted)" once removed; so
        # on pure v1 a dead process cannot be told.
        for _, _, path in parse_proc_cgroup(text):
            if self.name in path.removesuffix(" (deleted)").split("/"):
                return True
        return False

    def release(self) -> None:
        """Keep the final usage, then have the background thread remove the directories
        (or remove them now, without one)."""
        with self._lock:
            if self._final is None and not self._removed:
                self._final = self._read_usage()
        hk = self._rc.housekeeper
        if hk is None:
            self.remove()
        else:
            hk.remove_later(self)

    def remove(self) -> None:
        with self._lock:
            if self._removed:
                return
            if self._final is None:
                # The files go with the directories: keep the last values for usage().
                self._final = self._read_usage()
            error: OSError | None = None
            for p in self.paths:
                try:
                    self._rc.rmdir_tree(p)
                except OSError as e:
                    error = error or e
            if error is not None:
                raise error
            self._removed = True
