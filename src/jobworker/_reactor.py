"""The worker's one event loop: a single thread waiting in ``epoll``.

Every job's exit (its pidfd), output (its pipe) and cgroup emptiness (``cgroup.events``)
are file descriptors, so one thread can supervise thousands of jobs without polling and
without a thread per job.  Callbacks run on that thread, one at a time; that is what
makes sending a signal and reaping the same pid mutually exclusive without locks.

Other threads hand work over with ``call_soon`` (woken through an eventfd) and may
``register``/``unregister`` directly: ``epoll_ctl`` is safe to call while another
thread sits in ``epoll_wait``.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections.abc import Callable

__all__ = ["Reactor", "Timer"]

log = logging.getLogger("jobworker")

Callback = Callable[[], None]
SCRATCH_SIZE = 1 << 20


class Timer:
    __slots__ = ("_callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callback) -> None:
        self.deadline = deadline
        self._callback: Callback | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self._callback = None

    def _run(self) -> None:
        cb, self._callback = self._callback, None
        if cb is not None and not self.cancelled:
            cb()


class Reactor:
    def __init__(self, name: str = "jobworker-reactor") -> None:
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._ready: collections.deque[Callback] = collections.deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._closing = False
        # Scratch space for callbacks: they run one at a time on this thread, so one
        # buffer serves every job's output copy.
        self.scratch = bytearray(SCRATCH_SIZE)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def in_reactor(self) -> bool:
        return threading.current_thread() is self._thread

    def register(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        # The handler must be in place before epoll can report the fd.
        self._handlers[fd] = handler
        self._epoll.register(fd, events)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``; the caller closes it afterwards."""
        self._handlers.pop(fd, None)
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)

    def call_soon(self, callback: Callback) -> None:
        """Run ``callback`` on the reactor thread (thread-safe)."""
        self._ready.append(callback)
        if not self.in_reactor:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake_fd, 1)

    def call_later(self, delay: float, callback: Callback) -> Timer:
        """Run ``callback`` on the reactor thread after ``delay`` seconds.

        Only from the reactor thread: timers are the reactor's private heap.
        """
        assert self.in_reactor
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._seq), timer))
        return timer

    def close(self) -> None:
        """Stop the loop and release its descriptors (not from a callback)."""
        if self._closing:
            return
        self._closing = True
        self.call_soon(lambda: None)
        self._thread.join()
        self._epoll.close()
        os.close(self._wake_fd)

    def _timeout(self) -> float:
        if self._ready:
            return 0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return -1
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run(self) -> None:
        handlers = self._handlers
        while not self._closing:
            try:
                events = self._epoll.poll(self._timeout())
            except InterruptedError:
                continue
            for fd, mask in events:
                if fd == self._wake_fd:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake_fd)
                    continue
                handler = handlers.get(fd)
                if handler is not None:
                    self._guard(handler, mask)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                self._guard(heapq.heappop(self._timers)[2]._run)
            # Only what is queued now: a callback that queues another yields to epoll.
            for _ in range(len(self._ready)):
                self._guard(self._ready.popleft())

    @staticmethod
    def _guard(fn: Callable[..., None], *args: int) -> None:
        try:
            fn(*args)
        except Exception:
            # One job's failure must not stop the supervision of all the others.
            log.exception("jobworker: internal error in the reactor")
