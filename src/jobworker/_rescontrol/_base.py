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
import os
import threading
from collections.abc import Sequence

from .._model import Usage
from . import JobGroup, ResourceControl
from ._cgroupfs import new_parent_name, parent_is_stale, rmdir_retry, subdirs
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
            if not parent_is_stale(name):
                continue
            parent = os.path.join(base, name)
            with contextlib.suppress(OSError):
                self.remove_parent(parent)

    def remove_parent(self, parent: str) -> None:
        """Kill and remove every job cgroup in ``parent``, then ``parent`` itself."""
        self.kill_and_remove_children(parent)
        self.rmdir_tree(parent)

    def kill_and_remove_children(self, parent: str) -> None:
        for child in subdirs(parent):
            kill_cgroup(child)
            wait_empty(child)
            self.rmdir_tree(child)


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
