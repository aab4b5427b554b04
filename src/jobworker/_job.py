"""One job's life, from spawn to the moment it counts as ended.

A job *ends* when all of these hold, in this order of events:

1. its main process has exited (pidfd readable);
2. whatever it left behind has been killed: its process group while the leader is still
   an unreaped zombie (so the group id cannot have been reused), and its cgroup, which
   also reaches processes that left the group; orphans re-parented to the worker (when
   it is a reaper, see ``_orphans``) are adopted; then the main process is reaped;
3. the output pipe reported EOF, i.e. every process that could write has gone, and
   every byte it wrote is in the log;
4. the job's cgroup is empty (``cgroup.events``), and then released (removed, by the
   resource control's background thread where it has one).

Only then are status and ``ended_at`` set and readers told, so a reader that sees the
end has seen every byte.  All of this runs on the reactor thread; ``lock`` guards only
what other threads read (status, waiters); the byte count is the log's (``_logstore``).

Steps 2 and 4 open files (``cgroup.kill``, ``cgroup.events``, ``/proc``), which fails
while the process is out of descriptors.  Such a step is tried again on a timer until it
succeeds: the job ends late, but it ends, and the reactor never retries in a loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import threading
import time
import uuid
from collections.abc import Callable

from ._capture import OutputPipe
from ._errors import InvalidArgument, JobNotRunning
from ._fds import above_stdio
from ._logstore import LogFile
from ._model import Command, JobInfo, Limits, RunAs, Status, StopType
from ._orphans import Orphans, is_reaper
from ._pipewatch import PipeSource
from ._process import Process
from ._reactor import Reactor, Timer
from ._rescontrol import JobGroup

__all__ = ["Job", "check_grace"]

log = logging.getLogger("jobworker")

# How long a job's leftovers may keep its output pipe open after its main process
# exited and they were killed.  Only processes that escaped both the process group and
# the cgroup (or any process, without cgroups) can hold it that long.
ORPHAN_GRACE = 2.0

# A step of a job's end that failed (out of descriptors, say) is tried again after this
# long, doubling up to RETRY_MAX.
RETRY_FIRST = 0.05
RETRY_MAX = 1.0

Waiter = Callable[[], None]


def check_grace(grace: object) -> float:
    """``grace`` in seconds (``math.inf``: never SIGKILL); ``InvalidArgument`` unless it
    is a number >= 0."""
    # True is an int, but stop(grace=True) is a mistake, not one second.  NaN compares
    # false both ways: it would neither signal now nor set a timer.
    if (
        isinstance(grace, bool)
        or not isinstance(grace, int | float)
        or (isinstance(grace, float) and math.isnan(grace))
        or grace < 0
    ):
        raise InvalidArgument(
            f"grace must be a number of seconds >= 0 (inf: never SIGKILL), not {grace!r}"
        )
    try:
        return float(grace)
    except OverflowError:  # an int beyond any float: longer than anyone waits
        return math.inf


class Job:
    def __init__(
        self,
        job_id: uuid.UUID,
        owner_id: uuid.UUID,
        command: Command,
        limits: Limits,
        process: Process,
        pipe: OutputPipe,
        logfile: LogFile,
        group: JobGroup,
        reactor: Reactor,
        orphans: Orphans,
        run_as: RunAs | None = None,
    ) -> None:
        self.id = job_id
        self.owner_id = owner_id
        self.command = command
        self.limits = limits
        self.run_as = run_as
        self.pid = process.pid
        self.log = logfile
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.status = Status.running()
        self.lock = threading.Lock()
        self.ended = threading.Event()
        self._waiters: list[Waiter] = []  # one-shot: called on the next bytes or the end
        self._end_waiters: list[Waiter] = []
        self._process = process
        self._pipe = pipe
        self._group = group
        self._reactor = reactor
        self._orphans = orphans
        orphans.mains.add(self.pid)
        self._stop: StopType | None = None  # set once a stop was requested
        self._kill_timer: Timer | None = None
        self._orphan_timer: Timer | None = None
        self._exited = False  # the main process has exited
        self._lost = False  # ... and was reaped by someone else: its status is lost
        self._group_killed = False  # its leftovers were killed (after its exit)
        self._group_empty = False  # its cgroup was seen empty after its exit: for good
        self._settled = False  # ... and orphans adopted, and the main process reaped
        self._exit: int | None = None  # its code, or -signal; None if unknown
        self._retries: dict[Callable[[], None], Timer] = {}  # failed steps, by step
        self._retry_delay = RETRY_FIRST
        self._events_fd = -1
        self._pipe_open = True
        self._pipe_source = PipeSource(pipe.read_fd, self._on_output)

    # -- wiring ------------------------------------------------------------------------

    def attach(self) -> None:
        """Start watching the job's pidfd and pipe (from any thread).

        If that fails (epoll refusing another fd, say), the job is taken down, and
        every trace of it removed, before the exception goes on.
        """
        try:
            # The pipe first: the exit handler reads it once armed (see _on_exit).
            self._reactor.add_pipe(self._pipe_source)
            self._reactor.register(self._process.pidfd, select.EPOLLIN, self._on_exit)
            # Only now the worker's own write end goes: until here it kept the pipe
            # from reaching EOF, so the reactor could not close the read end (and free
            # its number) while this thread was still arming it.  If the job's writers
            # are all gone, this close is the last one, and signals so.
            self._pipe.close_write()
        except BaseException:
            # On the reactor thread, which may already be copying from the pipe.
            done = threading.Event()

            def abort() -> None:
                try:
                    self._abort()
                finally:
                    done.set()

            self._reactor.call_soon(abort)
            done.wait()
            raise

    def _abort(self) -> None:
        self._reactor.remove_pipe(self._pipe_source)
        self._reactor.unregister(self._process.pidfd)
        self._kill_everything()
        self._process.reap_killed()
        self._orphans.mains.discard(self.pid)
        self._pipe.close()
        self.log.discard()
        try:
            self._group.remove()
        except OSError:
            log.exception("jobworker: job %s: cannot remove its cgroup", self.id)

    # -- reader side (any thread) -------------------------------------------------------

    def wait_for_more(self, seen: int, waiter: Waiter) -> bool:
        """Register ``waiter`` unless bytes beyond ``seen``, a cut log or the end already
        came.

        Returns True if the waiter was registered (the caller must wait for it).
        """
        with self.lock:
            # The log's fields change before its waiters are taken (under this lock),
            # so what is read here is either seen or followed by a wake-up.
            log = self.log
            if log.limit > seen or log.ended_short or self.ended.is_set():
                return False
            self._waiters.append(waiter)
            return True

    def wait_for_check(self, since: int, waiter: Waiter) -> bool:
        """Register ``waiter`` unless the log's writes up to number ``since`` have all
        been checked (``_logstore``); each write's check wakes waiters.

        Returns True if the waiter was registered (the caller must wait for it).
        """
        with self.lock:
            if self.log.checked >= since:
                return False
            self._waiters.append(waiter)
            return True

    def log_found_short(self, size: int) -> None:
        """A reader found the log ``size`` bytes long, short of what it should hold."""
        if self.log.note_short(size):
            _wake_all(self._take_waiters())

    def forget(self, waiter: Waiter) -> None:
        with self.lock, contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def when_ended(self, waiter: Waiter) -> None:
        """Call ``waiter`` (on the reactor thread, or now) once the job has ended."""
        with self.lock:
            if not self.ended.is_set():
                self._end_waiters.append(waiter)
                return
        waiter()

    def forget_ended(self, waiter: Waiter) -> None:
        with self.lock, contextlib.suppress(ValueError):
            self._end_waiters.remove(waiter)

    def info(self) -> JobInfo:
        with self.lock:
            status, ended_at = self.status, self.ended_at
        return JobInfo(
            id=self.id,
            command=self.command,
            pid=self.pid,
            owner_id=self.owner_id,
            status=status,
            log_path=self.log.path,
            started_at=self.started_at,
            ended_at=ended_at,
            limits=self.limits,
            usage=self._group.usage(),
            run_as=self.run_as,
            log_loss=self.log.loss(),
        )

    # -- stop ---------------------------------------------------------------------------

    def request_stop(self, grace: object) -> None:
        """Ask for a stop (from any thread); ``JobNotRunning`` once the job has ended.

        A job whose main process has exited but which has not ended (output draining,
        leftovers dying) is not refused: what remains of it is killed, and its status
        stays its main process's own.
        """
        seconds = check_grace(grace)
        if self.ended.is_set():
            raise JobNotRunning(self.id)
        self._reactor.call_soon(lambda: self._begin_stop(seconds))

    def _begin_stop(self, grace: float) -> None:
        if self.ended.is_set():
            return
        if self._exited:
            # Exited on its own (perhaps meanwhile): its natural status stands.  Its
            # leftovers were killed at its exit, and are again, in case any survived (a
            # freezer-less cgroup v1 kills by listing).  A failure here is retried by
            # the exit's own steps.
            if self._group_killed:
                with contextlib.suppress(OSError):
                    self._group.kill()
            return
        if self._stop is None:
            self._stop = StopType.TERM
            if grace > 0:
                self._process.send(signal.SIGTERM, group=True)
                # A stopped process (SIGSTOP, a tty stop) would hold the SIGTERM pending
                # until the grace ran out; systemd sends SIGCONT after it too.
                self._process.send(signal.SIGCONT, group=True)
                if grace != math.inf:  # inf: SIGTERM only, however long it takes
                    self._kill_timer = self._reactor.call_later(grace, self._escalate)
                return
        if self._stop is StopType.TERM and grace <= 0:
            self._escalate()

    def _escalate(self) -> None:
        if self._exited:
            return
        self._stop = StopType.KILL
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._kill_everything()

    def _kill_everything(self) -> None:
        self._process.send(signal.SIGKILL, group=True)
        # Out of descriptors, cgroup.kill cannot be opened: the main process is killed
        # anyway (it cannot leave its process group, being a session leader), and its
        # exit kills the cgroup, retrying until it can.
        with contextlib.suppress(OSError):
            self._group.kill()

    def _retry(self, step: Callable[[], None], error: OSError) -> None:
        """Run ``step`` again later: it failed for want of a resource (descriptors)."""
        if step in self._retries:
            return
        if self._retry_delay == RETRY_FIRST:
            log.warning(
                "jobworker: job %s: cannot finish it yet (%s); trying again until it can",
                self.id,
                error,
            )

        def again() -> None:
            del self._retries[step]
            step()

        self._retries[step] = self._reactor.call_later(self._retry_delay, again)
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    # -- reactor callbacks --------------------------------------------------------------

    def _on_output(self) -> int:
        """Copy one read's worth of output into the log; return the bytes read."""
        if not self._pipe_open:
            return 0
        # A log that takes no more (disk full, cut) only counts what it is handed: the
        # pipe is drained all the same, so the job never blocks on it.
        got, eof = self._pipe.copy_once(self.log.append, self._reactor.scratch)
        if got:
            _wake_all(self._take_waiters())
        if eof:
            self._close_pipe()
            self._maybe_finish()
        return got

    def _take_waiters(self) -> list[Waiter]:
        with self.lock:
            waiters, self._waiters = self._waiters, []
        return waiters

    def _on_exit(self, _mask: int) -> None:
        if self._exited:
            return
        try:
            waited = os.waitid(
                os.P_PIDFD, self._process.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT
            )
        except ChildProcessError:
            # Reaped behind the worker's back (SIGCHLD ignored, or someone's wait()):
            # the pid is free and may already be another process's, so nothing is
            # signalled by pid from here on; the cgroup still reaches what is left.
            self._lost = True
        else:
            if waited is None:
                return  # spurious
        # The pidfd stays readable: unwatched first, so that no failure below can have
        # it call this again and again.
        self._reactor.unregister(self._process.pidfd)
        if self._lost:
            self._process.forget()
            self._orphans.mains.discard(self.pid)
        else:
            # Still a zombie here: the group id is pinned, so killing the group is safe.
            self._process.send(signal.SIGKILL, group=True)
        with self.lock:
            self._exited = True
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._settle()

    def _settle(self) -> None:
        """After the main process's exit: kill its cgroup, adopt its orphans, reap it;
        then see whether the job can end.  Retried until it succeeds."""
        try:
            if not self._group_killed:
                # Most jobs leave nothing behind: their cgroup is empty by the time the
                # pidfd turns readable (a task leaves its cgroup before it notifies its
                # parent), and an empty cgroup cannot be entered again, so one read of
                # cgroup.events spares the kill.
                if self._group_populated():
                    self._group.kill()
                self._group_killed = True
            if not self._process.reaped:
                if is_reaper():
                    # Before the reap: the zombie holds the job's session (_orphans).
                    self._orphans.adopt(self.pid, self._group)
                self._exit = self._process.reap()
                self._orphans.mains.discard(self.pid)
            self._settled = True
            # If every writer was gone before the pipe was armed, nothing will say so.
            if self._pipe_open:
                self._reactor.poke_pipe(self._pipe_source)
                if self.ended.is_set():
                    return
            if self._orphan_timer is None and (self._pipe_open or self._group_populated()):
                self._orphan_timer = self._reactor.call_later(ORPHAN_GRACE, self._abandon_orphans)
        except OSError as e:
            self._retry(self._settle, e)
            return
        self._maybe_finish()

    def _group_populated(self) -> bool:
        """Whether the job's cgroup still holds processes (after the main process's
        exit); arms the wait for its emptiness when it does."""
        if self._group_empty:
            return False
        if not self._group.populated():
            self._group_empty = True
            return False
        if self._events_fd < 0 and self._group.events_file is not None:
            # Reading the file arms it: the next change makes it EPOLLPRI-ready.
            fd = above_stdio(os.open(self._group.events_file, os.O_RDONLY | os.O_CLOEXEC))
            try:
                os.read(fd, 4096)
                self._reactor.register(fd, select.EPOLLPRI, self._on_group_event)
            except BaseException:
                os.close(fd)
                raise
            self._events_fd = fd
        if not self._group.populated():
            self._group_empty = True
            return False
        return True

    def _on_group_event(self, _mask: int) -> None:
        with contextlib.suppress(OSError):
            os.pread(self._events_fd, 4096, 0)
        self._maybe_finish()

    def _abandon_orphans(self) -> None:
        try:
            populated = self._group.populated()
        except OSError:
            populated = True  # cannot tell: leave the cgroup to the worker's close()
        if self._pipe_open and not self._group.procs_files:
            why = "processes outside its process group (and it has no cgroup) hold its output"
        elif self._pipe_open and populated:
            why = "processes in its cgroup that did not die (stuck in the kernel?) hold its output"
        elif self._pipe_open:
            why = "processes that escaped its cgroup hold its output"
        else:
            why = "its cgroup is still not empty (processes that cannot die?)"
        log.warning(
            "jobworker: job %s: %.0f s after its main process exited, %s; ending it anyway",
            self.id,
            ORPHAN_GRACE,
            why,
        )
        if self._pipe_open:
            # Whatever they wrote until now still counts (a pipe's worth, or a few reads
            # if they keep writing).
            for _ in range(4):
                if not self._on_output():
                    break
            self._close_pipe()
        # Processes that did not die (stuck in the kernel, say) keep the cgroup busy:
        # removing it would retry on this thread, stalling every job.  The worker's
        # close() removes it.
        self._finish(remove_group=not populated)

    def _close_pipe(self) -> None:
        if self._pipe_open:
            self._pipe_open = False
            self._reactor.remove_pipe(self._pipe_source)
            self._pipe.close()

    def _maybe_finish(self) -> None:
        if not self._settled or self._pipe_open or self.ended.is_set():
            return
        try:
            populated = self._group_populated()
        except OSError as e:
            self._retry(self._maybe_finish, e)
            return
        if populated:
            if self._group.events_file is None:
                # Pure cgroup v1 has no emptiness event, and a task closes its files
                # (our pipe EOF) a moment before it leaves its cgroup: look again soon.
                self._reactor.call_later(0.005, self._maybe_finish)
            return
        self._finish()

    def _finish(self, remove_group: bool = True) -> None:
        if self.ended.is_set():
            return
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
        for timer in self._retries.values():
            timer.cancel()
        self._retries.clear()
        if self._events_fd >= 0:
            self._reactor.unregister(self._events_fd)
            os.close(self._events_fd)
            self._events_fd = -1
        # A cut found here needs no wake-up of its own: the end wakes every reader.
        self.log.finish()
        status = self._final_status()
        if remove_group:
            try:
                self._group.release()
            except OSError:
                log.exception("jobworker: job %s: cannot remove its cgroup", self.id)
        with self.lock:
            self.status = status
            self.ended_at = time.time()
            self.ended.set()
            waiters = self._waiters + self._end_waiters
            self._waiters, self._end_waiters = [], []
        _wake_all(waiters)

    def _final_status(self) -> Status:
        code = self._exit
        if self._stop is not None:
            return Status.stopped(self._stop)
        if code is None:
            return Status.exited(None)
        if code < 0:
            # The OOM killer sends SIGKILL; the cgroup's count also covers the job's
            # other processes, so a main process dead of another signal was not it.
            oom = -code == signal.SIGKILL and self._group.oom_killed()
            return Status.signaled(-code, oom_killed=oom)
        return Status.exited(code)


def _wake_all(waiters: list[Waiter]) -> None:
    # One waiter that fails must not leave the others asleep for ever.
    for w in waiters:
        try:
            w()
        except Exception:
            log.exception("jobworker: a reader's wake-up failed")
