"""The worker's one event loop: a single thread waiting in ``epoll``.

Every job's exit (its pidfd), output (its pipe) and cgroup emptiness (``cgroup.events``)
are file descriptors, so one thread can supervise thousands of jobs without polling and
without a thread per job.  Pipes are the exception to "register and wait": epoll would
make every write into them dearer, so the reactor learns of their data through a signal
read from a signalfd instead (``_pipewatch``) and keeps a pipe in its run queue, one
read per loop turn, for as long as it has data.

Callbacks run on that thread, one at a time; that is what makes sending a signal and
reaping the same pid mutually exclusive without locks.

Other threads hand work over with ``call_soon`` (woken through an eventfd) and may
``register``/``unregister`` directly: ``epoll_ctl`` is safe to call while another
thread sits in ``epoll_wait``.

A callback that raises is logged, and never left armed: epoll is level-triggered, so a
handler that failed on a ready fd would be called again at once, and fail again, for
ever (a job whose exit handler could not open a file, out of descriptors, once spun the
thread at full CPU).  So an fd whose handler raised is unwatched (its owner still closes
it), and a failed pipe watcher leaves every pipe to epoll.  Owners whose work can fail
for a while (out of descriptors) retry it on a timer themselves.
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

from ._fds import above_stdio, new_epoll
from ._pipewatch import PipeSource, PipeWatcher

__all__ = ["Reactor", "Timer"]

log = logging.getLogger("jobworker")

Callback = Callable[[], None]
SCRATCH_SIZE = 1 << 20
MAX_WAIT = 86400.0


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
        self._epoll = new_epoll()
        self._wake_fd = above_stdio(os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK))
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._table_lock = threading.Lock()  # handlers and the epoll set change together
        self._ready: collections.deque[Callback] = collections.deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._closing = False
        self._closed = False  # the eventfd is closed: call_soon drops callbacks
        self._close_lock = threading.Lock()
        self._runnable: collections.deque[PipeSource] = collections.deque()
        self._watcher: PipeWatcher | None = None  # set up on the thread: see _setup
        self._watcher_fd = -1
        # Scratch space for callbacks: they run one at a time on this thread, so one
        # buffer serves every job's output copy.
        self.scratch = bytearray(SCRATCH_SIZE)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._set_up = threading.Event()
        self._thread.start()
        self._set_up.wait()

    def _setup(self) -> None:
        # The pipe watcher blocks its signals in, and has them sent to, this thread.
        try:
            self._watcher = PipeWatcher()
        except OSError as e:
            log.warning("jobworker: no signals for pipes (%s); polling them with epoll", e)
        else:
            self._epoll.register(self._watcher.fd, select.EPOLLIN)
            self._watcher_fd = self._watcher.fd
        self._set_up.set()

    @property
    def in_reactor(self) -> bool:
        return threading.current_thread() is self._thread

    def register(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        with self._table_lock:
            # The handler must be in place before epoll can report the fd.
            self._handlers[fd] = handler
            self._epoll.register(fd, events)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``; the caller closes it afterwards."""
        with self._table_lock:
            self._handlers.pop(fd, None)
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def _unregister_failed(self, fd: int, handler: Callable[[int], None]) -> None:
        # Only if the failed handler is still the fd's: it may have closed its fd before
        # failing, and another thread registered a new file under the same number.
        with self._table_lock:
            if self._handlers.get(fd) is handler:
                del self._handlers[fd]
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)

    def add_pipe(self, source: PipeSource) -> None:
        """Call ``source.on_ready`` on the reactor thread whenever its pipe may have data.

        ``on_ready`` reads once (at most ``SCRATCH_SIZE`` bytes) and returns how many
        bytes it got; at EOF it calls ``remove_pipe``.  Thread-safe, and it arms the
        pipe in the caller's thread, so starting a job does not wake the reactor.

        The last writer closing *before* the arming sends nothing: whoever knows the
        writers are gone (the job, from its pidfd) calls ``poke_pipe``.
        """
        watcher = self._watcher
        if watcher is None:
            self._poll_pipe(source)
            return
        try:
            watcher.add(source)
            watcher.arm(source)
        except OSError as e:
            log.warning("jobworker: cannot arm pipe fd %d (%s); polling it", source.fd, e)
            self._poll_pipe(source)
            return
        if self._watcher is None:
            # The watcher failed while this thread armed the pipe: it may have missed it.
            watcher.disarm(source)
            self.call_soon(lambda: self._poll_pipe(source))
        elif watcher.pending(source):
            # Data written before the arming sent no signal.
            self.call_soon(lambda: self._on_signals(source, 2))

    def poke_pipe(self, source: PipeSource) -> None:
        """Read ``source`` now, as if it had signalled (reactor thread)."""
        if not (source.closed or source.queued or source.polled):
            self._read_armed(source)

    def remove_pipe(self, source: PipeSource) -> None:
        """Stop reading ``source`` (reactor thread); the caller closes its fd afterwards."""
        assert self.in_reactor
        if source.closed:
            return
        source.closed = True
        if source.polled:
            self.unregister(source.fd)
        elif self._watcher is not None:
            self._watcher.disarm(source)

    def _poll_pipe(self, source: PipeSource) -> None:
        # The fallback: level-triggered epoll calls on_ready while the pipe has data.
        if source.closed or source.polled:
            return
        if self._watcher is not None:
            self._watcher.disarm(source)
        source.polled = True
        os.set_blocking(source.fd, False)

        def on_event(_mask: int) -> None:
            source.on_ready()

        self.register(source.fd, select.EPOLLIN, on_event)

    def _watcher_failed(self) -> None:
        """The signalfd could not be read: left in epoll it would stay ready, and its
        failure repeat for ever.  Every pipe goes to epoll instead."""
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        log.error("jobworker: the pipe watcher failed; polling every pipe with epoll")
        self._watcher_fd = -1
        with contextlib.suppress(OSError):
            self._epoll.unregister(watcher.fd)
        for source in watcher.armed_sources():
            watcher.disarm(source)
            self._guard(self._poll_pipe, source)
        # Pipes being read unarmed (queued) go to epoll when their turn ends.
        watcher.close()

    def _service(self, source: PipeSource) -> None:
        """A turn of a busy pipe: read; once a read finds it empty, arm it."""
        if source.closed or source.polled:
            return
        if source.on_ready():
            self._queue(source)
            return
        if source.closed:
            return
        if self._watcher is None:
            self._poll_pipe(source)
            return
        self._watcher.arm(source)
        # A write made between the empty read and the arming sent no signal.  If there
        # was one, the writer is still busy: back to reading it unarmed.
        if source.on_ready() and not source.closed:
            self._watcher.disarm(source)
            self._queue(source)

    def _on_watcher(self) -> None:
        assert self._watcher is not None
        for source, count in self._watcher.ready():
            self._guard(self._on_signals, source, count)

    def _on_signals(self, source: PipeSource, count: int) -> None:
        if source.closed or source.queued:
            return
        if count > 1:
            # A busy writer: each of its writes costs it a signal while the pipe is
            # armed.  Disarm (the watcher did already), and read until it is empty.
            if self._watcher is not None:
                self._watcher.disarm(source)
            self._queue(source)
        elif source.armed:
            # One write (a line, say): read it and stay armed, which costs no system
            # call; a write after this read signals again.
            self._read_armed(source)

    def _read_armed(self, source: PipeSource) -> None:
        if source.on_ready() >= SCRATCH_SIZE and not source.closed:
            if self._watcher is not None:
                self._watcher.disarm(source)
            self._queue(source)

    def _queue(self, source: PipeSource) -> None:
        if not source.queued:
            source.queued = True
            self._runnable.append(source)

    def call_soon(self, callback: Callback) -> None:
        """Run ``callback`` on the reactor thread (thread-safe); once the reactor is
        closed, it is dropped."""
        if self.in_reactor:
            self._ready.append(callback)
            return
        # Under the lock, so that close() cannot close the eventfd in between and let
        # its number be reused: the write would land in someone else's file.
        with self._close_lock:
            if self._closed:
                return
            self._ready.append(callback)
            with contextlib.suppress(BlockingIOError):  # the counter is full: it will wake
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
        with self._close_lock:
            self._closed = True
            self._epoll.close()
            os.close(self._wake_fd)
        if self._watcher is not None:
            self._watcher.close()

    def _timeout(self) -> float:
        if self._ready or self._runnable:
            return 0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return -1
        # epoll's timeout is an int of milliseconds: a far deadline (a stop grace of
        # years) just means waking once a day to look again.
        return min(MAX_WAIT, max(0.0, self._timers[0][0] - time.monotonic()))

    def _run(self) -> None:
        self._setup()
        handlers = self._handlers
        runnable = self._runnable
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
                if fd == self._watcher_fd:
                    if not self._guard(self._on_watcher):
                        self._watcher_failed()
                    continue
                handler = handlers.get(fd)
                if handler is not None and not self._guard(handler, mask):
                    self._unregister_failed(fd, handler)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                self._guard(heapq.heappop(self._timers)[2]._run)
            # Only what is queued now: a callback that queues another yields to epoll.
            for _ in range(len(self._ready)):
                self._guard(self._ready.popleft())
            # One read per busy pipe per turn, so that every job's output gets its turn.
            for _ in range(len(runnable)):
                source = runnable.popleft()
                source.queued = False
                self._guard(self._service, source)

    @staticmethod
    def _guard(fn: Callable[..., object], *args: object) -> bool:
        """Run a callback; False if it raised (logged)."""
        try:
            fn(*args)
        except Exception:
            # One job's failure must not stop the supervision of all the others.
            log.exception("jobworker: internal error in the reactor")
            return False
        return True
