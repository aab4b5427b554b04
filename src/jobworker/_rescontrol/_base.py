"""The base classes of the v1 and v2 implementations.

``CgroupBase`` is the ``ResourceControl`` side: the worker's parent name, stale-parent
cleanup, removing parents and cgroup trees, and the ``_mkdir``/``_rmdir`` seam.
``CgroupJobGroup`` is the ``JobGroup`` side: usage that outlives the job's directories,
and removing them once.  Each implementation adds only what differs: which hierarchies
and files, and how limits are written.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Sequence

from .._fds import above_stdio
from .._model import Usage
from . import JobGroup, ResourceControl
from ._cgroupfs import (
    new_parent_name,
    parent_is_stale,
    parse_proc_cgroup,
    read_text,
    rmdir_retry,
    subdirs,
)
from ._kill import kill_cgroup, wait_empty

__all__ = ["CgroupBase", "CgroupJobGroup"]


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
        name = os.path.basename(self.paths[0])
        for _, _, path in parse_proc_cgroup(text):
            if name in path.removesuffix(" (deleted)").split("/"):
                return True
        return False

    def remove(self) -> None:
        with self._lock:
            if self._removed:
                return
            if self._final is None and any(os.path.isdir(p) for p in self.paths):
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
