"""Reaping the orphans a job leaves to the worker when the worker's process is a reaper.

A process whose parent dies is re-parented to the nearest *reaper* above it: usually
init, which reaps it when it exits.  When the worker's own process is that reaper (PID 1
of a pid namespace, a container's entrypoint; or a child subreaper, set with
``prctl(PR_SET_CHILD_SUBREAPER)`` by supervisors), a job's main process's children come
to the worker when it exits, and the leftovers the worker then kills would stay zombies
for ever.  So the worker reaps them, and must never reap a child of the host's own
(``subprocess`` keeps its children's exit statuses; reaping one of them would steal it).

How they are told apart, soundly:

- **The job's session.**  Each job's main process starts a session of its own
  (``setsid`` before exec), whose id S is its pid; every process of the job stays in
  S unless it starts a session itself.  A session cannot be joined, only created, and the
  kernel does not hand out a pid, so cannot create a session S anew, while any process
  (a zombie included) still has S as its pid, process group or session.  So "session ==
  S" is tested only while the worker holds an unreaped zombie in S: the main process
  itself (its exit is handled before it is reaped), or an orphan adopted earlier (see
  below).  While that zombie is held, every process with session S is the job's.
- **The job's cgroup.**  A job's process that started a session of its own (``setsid``)
  is still in the job's cgroup, whose name holds the job's unique id and which no
  process of the host is ever in; a zombie keeps its cgroup2 path (``JobGroup.holds``).
  Without cgroups (or on pure cgroup v1) such a process cannot be told, and is left
  alone.

When: a process is re-parented at its parent's exit, before the parent's pidfd turns
readable.  So the worker looks at its children when a job's main process exits (before
reaping it), and again each time an adopted orphan exits (before reaping that one, which
holds its session meanwhile): the orphan's own children came to the worker just then.
Every adopted orphan is watched through a pidfd, and reaped when it exits.

All of this runs only while the process is a reaper (checked at each job's exit): other
processes never receive a job's orphans, so have nothing to reap.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
from collections.abc import Callable
from dataclasses import dataclass

from ._fds import above_stdio
from ._reactor import Reactor
from ._rescontrol import JobGroup

__all__ = ["Orphans", "is_reaper"]

log = logging.getLogger("jobworker")

_PR_GET_CHILD_SUBREAPER = 37
_libc = ctypes.CDLL(None, use_errno=True)


def is_reaper() -> bool:
    """Whether orphaned descendants of this process are re-parented to it."""
    if os.getpid() == 1:
        return True
    flag = ctypes.c_int(0)
    if _libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
        return False
    return flag.value != 0


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 1 << 16).decode("ascii", "replace")
    finally:
        os.close(fd)


def _children() -> list[int]:
    """This process's children (zombies included), from every thread's list."""
    kids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        try:
            kids += [int(p) for p in _read(f"/proc/self/task/{task}/children").split()]
        except FileNotFoundError:
            continue  # a thread that exited meanwhile
    return kids


def _session(pid: int) -> int | None:
    try:
        stat = _read(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2 (the name) may hold spaces and parentheses: split after its end.
    return int(stat[stat.rindex(")") + 2 :].split()[3])


@dataclass
class _Orphan:
    pid: int
    pidfd: int
    session: int
    group: JobGroup
    retrying: bool = False


class Orphans:
    """The orphans this worker adopted, each watched until it exits, then reaped.

    Everything but ``close`` runs on the reactor thread.  ``mains`` holds the pids of the
    jobs' unreaped main processes (added and removed by each job): they are the worker's
    own children, and a scan need not look at them.
    """

    def __init__(self, reactor: Reactor) -> None:
        self._reactor = reactor
        self.mains: set[int] = set()
        self._adopted: dict[int, _Orphan] = {}

    def adopt(self, session: int | None, group: JobGroup) -> None:
        """Watch every child of this process that is in ``session`` or in ``group``'s
        cgroup, to reap it when it exits.

        The caller holds an unreaped zombie in ``session`` (or passes None), and calls
        this again if it raises (out of descriptors, say): the zombie keeps the session
        until then.
        """
        found = self._find(session, group)
        try:
            while found:
                orphan = found[-1]
                self._reactor.register(orphan.pidfd, select.EPOLLIN, self._exit_handler(orphan))
                self._adopted[orphan.pid] = found.pop()
        finally:
            for orphan in found:  # not watched: found again by the caller's next try
                os.close(orphan.pidfd)

    def _find(self, session: int | None, group: JobGroup) -> list[_Orphan]:
        """The children of this process that are in ``session`` or ``group``, not yet
        adopted, each with a pidfd."""
        found: list[_Orphan] = []
        try:
            for pid in _children():
                if pid in self.mains or pid in self._adopted:
                    continue
                orphan = self._identify(pid, session, group)
                if orphan is not None:
                    found.append(orphan)
        except BaseException:
            for orphan in found:
                os.close(orphan.pidfd)
            raise
        return found

    def _identify(self, pid: int, session: int | None, group: JobGroup) -> _Orphan | None:
        try:
            pidfd = above_stdio(os.pidfd_open(pid))
        except ProcessLookupError:
            return None  # reaped meanwhile
        try:
            sid = _session(pid)
            ours = sid is not None and (sid == session or group.holds(pid))
            # The pidfd was opened before the reads: if the process is still not reaped
            # now, its pid named it all along, so the reads were about it.
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            ours = False  # reaped meanwhile
        except BaseException:
            os.close(pidfd)
            raise
        if not ours or sid is None:
            os.close(pidfd)
            return None
        return _Orphan(pid, pidfd, sid, group)

    def _exit_handler(self, orphan: _Orphan) -> Callable[[int], None]:
        def on_exit(_mask: int) -> None:
            self._on_exit(orphan)

        return on_exit

    def _on_exit(self, orphan: _Orphan) -> None:
        self._reactor.unregister(orphan.pidfd)
        try:
            # Its children came to this process as it exited; unreaped, it holds its
            # session, so they can be told.
            self.adopt(orphan.session, orphan.group)
        except OSError as e:
            if not orphan.retrying:
                log.warning("jobworker: cannot look for orphans (%s); trying again", e)
            orphan.retrying = True
            self._reactor.call_later(0.5, lambda: self._on_exit(orphan))
            return
        self._reap(orphan)

    def _reap(self, orphan: _Orphan) -> None:
        self._adopted.pop(orphan.pid, None)
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PIDFD, orphan.pidfd, os.WEXITED | os.WNOHANG)
        os.close(orphan.pidfd)

    def close(self) -> None:
        """Kill and reap every orphan still adopted (once the reactor has stopped).

        They are what is left of jobs that have ended (without cgroups, processes that
        left the job's process group but not its session); after this no one would reap
        them.
        """
        while self._adopted:
            orphan = next(iter(self._adopted.values()))
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(orphan.pidfd, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, orphan.pidfd, os.WEXITED | os.WNOWAIT)
            try:
                self._adopted.update((o.pid, o) for o in self._find(orphan.session, orphan.group))
            except OSError as e:
                log.warning("jobworker: cannot look for orphans (%s)", e)
            self._reap(orphan)
