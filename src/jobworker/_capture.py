"""Output capture: one pipe per job, copied into one log file per job.

stdout and stderr share *one* pipe, so the order of the job's writes across the two is
the order they reach the log (two pipes cannot preserve it).  The reactor copies what the
pipe holds with one ``readv`` into a 1 MiB scratch buffer and one ``write`` to the log:
memory stays bounded whatever the job writes (a 64 MiB line without a newline included),
and a burst of small writes costs one pair of system calls.

Measured on this machine (bench/capture.py, bench/diag_capture.py), and why not the
alternatives:

- ``splice(2)`` pipe-to-file avoids the copy through user space, but it keeps the pipe
  locked while it writes the file, so the job waits on that lock for nearly every small
  write: 100-byte writes ran at 0.28x of a blocking copy loop.
- The kernel redirect (the child writes the log itself) is fastest for 64 KiB writes,
  but each small ``write()`` into an ext4 file costs about 2.6x one into a pipe, and it
  leaves the worker no event to wake readers on.
- How the reactor learns that a pipe has data matters as much as the copy: see
  ``_pipewatch`` (it never polls the pipe, since polling makes every write dearer).
- For large writes any pipe costs two copies where the redirect costs one: the copier
  must put every byte into the page cache, the whole of the redirect's work, after
  taking it out of the pipe.  In C, with either read+write or splice, that caps pipe
  capture at about 0.6x of the redirect for 64 KiB writes on this machine.

The log itself, from its name to its removal, is ``_logstore``'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable

from ._fds import new_pipe

__all__ = ["OutputPipe"]

PIPE_SIZE = 1 << 20
# A read at least this large shows a writer producing in bulk: time for the large pipe.
# (Waiting for a full 64 KiB pipe was too late: with eight busy writers the reactor kept
# the pipes from filling, but the small pipes cost the writers 60% more CPU.)
GROW_AT = 1 << 12
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


# The write ends the worker holds while their jobs start (from the pipe's creation until
# ``close_write``).  A plain fork() in another thread of the host (multiprocessing's
# default start method) copies them into a process that would keep them open, and the
# job's output would reach EOF only when that unrelated process exits: the copy closes
# them at once.  ``os.fork`` takes the lock for the fork itself, so the set is exactly
# what the forked process holds (no start is between creating a pipe and listing it).
# (Those that ``_spawn`` holds in its slot are its own business: see after_fork_child.)
# Reentrant: a signal handler that forks may interrupt this thread while it holds it.
_starting_write_ends: set[int] = set()
_fork_lock = threading.RLock()


def _close_starting_write_ends() -> None:
    # In the new child, where the thread that forked is the only one, holding the lock.
    for fd in _starting_write_ends:
        with contextlib.suppress(OSError):
            os.close(fd)
    _starting_write_ends.clear()
    _fork_lock.release()


os.register_at_fork(
    before=_fork_lock.acquire,
    after_in_parent=_fork_lock.release,
    after_in_child=_close_starting_write_ends,
)


class OutputPipe:
    """The pipe both of a job's output streams write into."""

    def __init__(self) -> None:
        with _fork_lock:
            r, w = new_pipe(os.O_CLOEXEC)
            _starting_write_ends.add(w)
        self.read_fd, self.write_fd = r, w
        self._grown = False
        self._closing = threading.Lock()

    def _grow(self) -> None:
        # A larger pipe lets a burst of small writes go without waking the worker per
        # write, and moves more per copy.  Only once a read shows bulk output: most jobs
        # write a few lines, and an enlarged pipe holds a 256-slot ring in kernel memory
        # for its whole life.  Unprivileged users over their pipe quota are refused; the
        # default size still works.
        self._grown = True
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.read_fd, _F_SETPIPE_SZ, PIPE_SIZE)

    # The starting thread closes the write end while the reactor may close the whole
    # pipe (the EOF that close causes): under a lock, so that no number is closed twice
    # (the second time, perhaps, someone else's file).
    def close_write(self) -> None:
        with self._closing:
            self._close_write()

    def close(self) -> None:
        with self._closing:
            self._close_write()
            if self.read_fd >= 0:
                os.close(self.read_fd)
                self.read_fd = -1

    def _close_write(self) -> None:
        if self.write_fd >= 0:
            # Under the fork lock: a fork must not see the number listed once it is
            # closed (and perhaps reused by someone else), nor closed while listed.
            with _fork_lock:
                _starting_write_ends.discard(self.write_fd)
                os.close(self.write_fd)
            self.write_fd = -1

    def copy_once(
        self, sink: Callable[[memoryview], object], buffer: bytearray
    ) -> tuple[int, bool]:
        """One read of what the pipe holds, handed to ``sink``: (bytes read, writers all
        gone).

        ``(0, False)`` means the pipe is empty now.  ``buffer`` is scratch space owned by
        the calling thread; one read empties the pipe when it is as large as the pipe.
        """
        try:
            n = os.readv(self.read_fd, [buffer])
        except BlockingIOError:
            return 0, False
        if n == 0:
            return 0, True
        if n >= GROW_AT and not self._grown:
            self._grow()
        sink(memoryview(buffer)[:n])
        return n, False
