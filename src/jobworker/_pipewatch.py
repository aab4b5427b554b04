"""Learning that a job's pipe has data without ever polling the pipe.

Why not simply epoll: once anything has polled a pipe (poll, select, epoll), the kernel's
``pipe_write`` wakes the pipe's reader wait queue on *every* write for the rest of the
pipe's life (``pipe->poll_usage``), not only when the pipe was empty.  For a job making
small writes that is a large part of the cost of each write: 256 MiB in 100-byte writes
cost the job 0.87 s of CPU under an epoll copier against 0.59 s under a blocked reader
(and 0.71 s even if the pipe leaves the epoll set whenever the copier is busy).  An event
loop cannot block in ``read`` on a thousand pipes, and a thread per job is too many.

What the reactor does instead, per pipe:

1. the pipe starts *armed*: ``O_ASYNC`` on its read end makes the kernel send a signal
   (``fasync``) when a writer adds data, when a writer has to wait for room, and when
   the last writer goes.  The signal is directed at the reactor thread
   (``F_SETOWN_EX``), blocked there and read from a ``signalfd`` that epoll watches, so
   it is never delivered; it carries the pipe's fd (``F_SETSIG``).  Arming happens in
   the thread that starts the job (``FIONREAD`` catches output written before it);
2. one signal (a line, say): one read, and the pipe stays armed;
3. several signals since the last look (a busy writer, each of whose writes now costs
   it a signal), or a read that filled the buffer: disarm, and read the pipe once per
   loop turn, so that every busy pipe gets its turn, until a read finds it empty; then
   arm it again and read once more, since a write between that read and the arming
   sent nothing.

So a busy writer pays for a few signals per burst and nothing per write while the
reactor copies: the same 256 MiB cost the job 0.57-0.65 s, as under a blocked reader
(bench/diag_capture.py).  inotify (one-shot ``IN_MODIFY``) costs the same for small
writes but hangs on a single ``write`` larger than the pipe: it reports a write when
the call returns, and that call waits for a reader that waits for the report.  fasync
is told before the writer sleeps.

If the signal queue overflows, the kernel sends SIGIO instead, which says only "some
pipe": every armed pipe is read.  Where any of this is refused, pipes fall back to
epoll.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import struct
import sys
import termios
import threading
from collections.abc import Callable

from . import _signalfd
from ._fds import above_stdio, new_pipe

__all__ = ["SIGNAL", "PipeSource", "PipeWatcher"]

log = logging.getLogger("jobworker")

# A real-time signal, so that each one is queued with the fd it is about; it is only ever
# directed at (and blocked in) a reactor thread.  Python and glibc use none above SIGRTMIN.
SIGNAL = signal.SIGRTMIN + 9
_F_SETOWN_EX = 15
_F_OWNER_TID = 0
# struct signalfd_siginfo: ssi_signo first, ssi_fd further in, the rest skipped.
_SIGINFO = struct.Struct(
    f"I{_signalfd.FD_OFFSET - 4}xi{_signalfd.SIGINFO_SIZE - _signalfd.FD_OFFSET - 4}x"
)


class PipeSource:
    """One pipe the reactor copies from; ``on_ready`` reads it once.

    ``on_ready`` returns how many bytes the read got (0: the pipe was empty).  At EOF it
    calls ``Reactor.remove_pipe`` itself.  The reactor makes the read end nonblocking.
    """

    __slots__ = ("armed", "closed", "fd", "on_ready", "polled", "queued")

    def __init__(self, fd: int, on_ready: Callable[[], int]) -> None:
        self.fd = fd
        self.on_ready = on_ready
        self.armed = False
        self.queued = False  # in the reactor's run queue
        self.polled = False  # fell back to epoll
        self.closed = False


class PipeWatcher:
    """The reactor thread's signalfd, and which pipe is armed.

    Created on the reactor thread: the signal mask is per thread.
    """

    def __init__(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {SIGNAL, signal.SIGIO})
        self._owner = struct.pack("ii", _F_OWNER_TID, threading.get_native_id())
        self.fd = above_stdio(
            _signalfd.signalfd(
                [SIGNAL, signal.SIGIO], _signalfd.SFD_NONBLOCK | _signalfd.SFD_CLOEXEC
            )
        )
        self._armed: dict[int, PipeSource] = {}  # by fd
        self.overflows = 0  # times the signal queue overflowed (SIGIO came instead)
        try:
            self._check()
        except BaseException:
            os.close(self.fd)
            raise

    def _check(self) -> None:
        """Refuse a kernel (or sandbox) where an armed pipe's write sends nothing: jobs
        would hang silently."""
        r, w = new_pipe(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            source = PipeSource(r, lambda: 0)
            self.add(source)
            self.arm(source)
            os.write(w, b"x")
            # SIGIO instead of our signal still proves fasync works: the signal queue
            # is counted per user across the whole machine and may be full right now.
            if not any(s is source for s, _ in self.ready()):
                raise OSError("an armed pipe sent no signal")
        finally:
            self._armed.pop(r, None)
            self.overflows = 0
            os.close(r)
            os.close(w)

    def close(self) -> None:
        os.close(self.fd)

    def add(self, source: PipeSource) -> None:
        """Make ``source``'s signals come to this thread, carrying its fd."""
        fcntl.fcntl(source.fd, _F_SETOWN_EX, self._owner)
        fcntl.fcntl(source.fd, fcntl.F_SETSIG, SIGNAL)

    # F_SETFL sets only the status flags a pipe has (O_NONBLOCK, O_ASYNC, O_DIRECT...),
    # so these two values are the whole of them: the reactor's pipes are nonblocking and
    # not O_DIRECT.
    def arm(self, source: PipeSource) -> None:
        """Signal on ``source``'s next write (or writers' end)."""
        fcntl.fcntl(source.fd, fcntl.F_SETFL, os.O_NONBLOCK | os.O_ASYNC)
        source.armed = True
        self._armed[source.fd] = source

    def armed_sources(self) -> list[PipeSource]:
        return list(self._armed.values())

    def pending(self, source: PipeSource) -> bool:
        """Whether ``source``'s pipe holds data (``FIONREAD``: it does not poll)."""
        buf = bytearray(4)
        fcntl.ioctl(source.fd, termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder) > 0

    def disarm(self, source: PipeSource) -> None:
        """No more signals: while the reactor copies a busy pipe, each write would send
        one."""
        if source.armed:
            source.armed = False
            self._armed.pop(source.fd, None)
            # EBADF cannot happen (the caller closes after), but a dying pipe must not
            # make the reactor fail.
            with contextlib.suppress(OSError):
                fcntl.fcntl(source.fd, fcntl.F_SETFL, os.O_NONBLOCK)

    def ready(self) -> list[tuple[PipeSource, int]]:
        """Read the queued signals: the armed pipes that got writes (or lost writers),
        each with how many signals it sent.

        A pipe that sent more than one has a busy writer, each of whose writes queues
        another signal while the pipe is armed: it is disarmed here, at once, so that
        the queue stops growing and this loop ends.
        """
        counts: dict[PipeSource, int] = {}
        full = _signalfd.SIGINFO_SIZE * 64
        while True:
            try:
                data = os.read(self.fd, full)
            except BlockingIOError:
                break
            for signo, fd in _SIGINFO.iter_unpack(data):
                if signo == signal.SIGIO:
                    # The signal queue overflowed: any armed pipe may have data, and is
                    # treated as busy.  (A copy: other threads arm pipes meanwhile.)
                    self.overflows += 1
                    sources, weight = list(self._armed.values()), 2
                else:
                    found = self._armed.get(fd)
                    sources, weight = ([] if found is None else [found]), 1
                for source in sources:
                    counts[source] = counts.get(source, 0) + weight
                    if counts[source] > 1:
                        self.disarm(source)  # stops its signals: this loop will end
            if len(data) < full:
                break
        return list(counts.items())
