"""Killing every process of a cgroup, and waiting until the cgroup is empty.

``kill_cgroup`` uses the best means the cgroup offers: ``cgroup.kill`` (cgroup2, kernel
5.14 and later), else its freezer (v1 ``freezer.state`` or v2 ``cgroup.freeze``) so that
nothing forks while the members are signalled, else listing and signalling until it is
empty.  ``wait_empty`` waits on ``cgroup.events`` where the cgroup has one and polls
``cgroup.procs`` where not (v1).  Both work on either cgroup version.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable

from .._fds import above_stdio
from ._cgroupfs import populated_from_events, read_pids, read_text, write_file

__all__ = [
    "KILL_WAIT_TIMEOUT",
    "freeze_and_kill",
    "kill_cgroup",
    "kill_loop",
    "signal_members",
    "wait_empty",
    "wait_until",
]

# How long cleanup waits for a killed cgroup to empty.
KILL_WAIT_TIMEOUT = 2.0


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
        fd = above_stdio(os.open(events, os.O_RDONLY | os.O_CLOEXEC))
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


def signal_members(path: str) -> int:
    """SIGKILL every process listed in ``path``'s cgroup.procs; return how many."""
    procs = os.path.join(path, "cgroup.procs")
    try:
        pids = read_pids(procs)
    except FileNotFoundError:
        return 0
    # A listed process may exit, be reaped and have its pid reused by an unrelated
    # process before the signal: pin each pid with a pidfd, then signal only those the
    # cgroup still lists (a pid names one process at a time).
    pinned: dict[int, int] = {}
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                pinned[pid] = above_stdio(os.pidfd_open(pid))
        try:
            still = set(read_pids(procs))
        except FileNotFoundError:
            still = set()
        for pid, fd in pinned.items():
            if pid in still:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        for fd in pinned.values():
            os.close(fd)
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
