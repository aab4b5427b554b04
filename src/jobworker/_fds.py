"""Every descriptor the worker holds lives above stderr.

A host that closed its stdin, stdout or stderr (as daemons do) leaves those numbers
free, and the kernel hands out the lowest free number.  A job's log that landed at fd 1
would receive the host's own ``print()``: an owner would read the host's data, and the
job's real output would be cut short, since the worker counts only the bytes it wrote
itself.  So each fd the worker opens goes through ``above_stdio`` (the job's child does
the same, in C, for the log and the pidfd it creates in ``_spawn.c``).
"""

from __future__ import annotations

import fcntl
import os
import select

__all__ = ["above_stdio", "new_epoll", "new_pipe"]


def above_stdio(fd: int) -> int:
    """``fd`` if it is above 2; else a close-on-exec copy above 2, and ``fd`` closed."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def new_epoll() -> select.epoll:
    """A new epoll instance whose fd is above 2."""
    ep = select.epoll()
    if ep.fileno() > 2:
        return ep
    try:
        fd = fcntl.fcntl(ep.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        ep.close()
    return select.epoll.fromfd(fd)


def new_pipe(flags: int) -> tuple[int, int]:
    """``os.pipe2(flags)``, both ends above 2."""
    r, w = os.pipe2(flags)
    try:
        r = above_stdio(r)
    except BaseException:
        os.close(w)
        raise
    try:
        w = above_stdio(w)
    except BaseException:
        os.close(r)
        raise
    return r, w
