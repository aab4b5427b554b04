"""The Worker: starts, stops, queries and streams jobs for several owners.

Its jobs are in a ``JobTable`` (``_jobtable``), where every lookup checks ownership; the
asyncio face (``_aio``) looks jobs up in the same table, so both faces share this one
core without reaching into each other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import threading
import uuid
from collections.abc import Mapping, Sequence

from ._capture import OutputPipe
from ._errors import (
    InvalidArgument,
    InvalidCommand,
    JobNotRunning,
    LimitError,
    StartError,
    WorkerClosed,
)
from ._follow import LogReader
from ._job import Job, check_grace
from ._jobtable import JobTable, check_id
from ._logstore import LogStore
from ._model import Command, JobInfo, Limits, RunAs
from ._orphans import Orphans
from ._process import Process, encode_env, prepare
from ._reactor import Reactor
from ._rescontrol import ResourceControl, detect
from ._retention import Purger, PurgeResult, Retention

__all__ = ["DEFAULT_GRACE", "Worker"]

log = logging.getLogger("jobworker")

DEFAULT_GRACE = 10.0


# The soft fd limit this process had before a worker first raised it: the one jobs get.
_host_nofile: int | None = None
_nofile_lock = threading.Lock()


def _raise_fd_limit() -> int:
    """Raise this process's soft fd limit to the hard one; return the soft limit jobs
    get instead (-1: the same as the worker's).

    Each running job holds three descriptors (pidfd, pipe, log); 1,000s of jobs need
    more than the usual soft limit of 1,024.  Jobs keep the host's: shells and systemd
    give 1,024 on purpose, since ``select()`` cannot watch an fd above 1,023.
    """
    global _host_nofile
    with _nofile_lock:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if _host_nofile is None:
            _host_nofile = soft
        if hard == resource.RLIM_INFINITY or soft < hard:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if _host_nofile in (now, resource.RLIM_INFINITY):
            return -1
        return _host_nofile


class Worker:
    """Runs jobs; thread-safe.  Use as a context manager, or call ``close()``.

    ``log_dir`` holds the logs (default ``/tmp``); it is opened once, so moving it later
    changes nothing for the worker's streams.  ``resource_control`` picks how jobs
    are limited and contained; by default the best this machine offers (``detect()``).
    ``grace`` is the default time ``stop`` gives a job between SIGTERM and SIGKILL.
    ``env`` is the environment jobs inherit (default: this process's, as it is now).
    ``retention`` says how long logs and ended jobs are kept, and how large a log grows
    (see ``Retention``: by default a day, a tenth of the disk, 1 GiB a log).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = "/tmp",
        *,
        resource_control: ResourceControl | None = None,
        grace: float = DEFAULT_GRACE,
        env: Mapping[str, str] | None = None,
        retention: Retention = Retention(),  # noqa: B008 (immutable)
    ) -> None:
        self.grace = check_grace(grace)
        if not isinstance(retention, Retention):
            raise InvalidArgument(
                f"retention must be a jobworker.Retention, not {type(retention).__name__}"
            )
        self._env = dict(os.environ if env is None else env)
        self._envp = encode_env(self._env)  # raises ValueError on a bad name or a NUL
        self.jobs = JobTable()
        """The owner-checked table of this worker's jobs (both faces look jobs up in it)."""
        # Held for the whole of close(): a second close() waits for the first to finish.
        self._closing = threading.Lock()
        self._closed = False
        self._job_nofile = _raise_fd_limit()
        self._logs = LogStore(log_dir, max_log_size=retention.max_log_size)
        self.log_dir = self._logs.path
        try:
            self.resource_control = resource_control if resource_control is not None else detect()
            try:
                self._reactor = Reactor()
                self._orphans = Orphans(self._reactor)
                self.purger = Purger(retention, self._logs, self.jobs, self._reactor)
                """Retention over this worker's logs and jobs (both faces ask it to purge)."""
                self.purger.start()
            except BaseException:
                if resource_control is None:
                    self.resource_control.close()
                raise
            # Cleaning up after a dead worker, making cgroups ahead of need, removing
            # those of ended jobs: on the control's own thread, where no caller waits.
            self.resource_control.start_housekeeping()
        except BaseException:
            self._logs.close()
            raise
        if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
            log.warning(
                "jobworker: SIGCHLD is ignored in this process, so the kernel reaps jobs"
                " itself: their exit statuses are lost (exited(None))"
            )
        if not self.resource_control.contains:
            log.warning(
                "jobworker: %s; jobs are contained by their process group only",
                getattr(self.resource_control, "reason", "no cgroups"),
            )

    # -- the seed's four operations, plus list --------------------------------------------

    def start(
        self,
        command: Command,
        owner_id: uuid.UUID,
        *,
        limits: Limits | None = None,
        run_as: RunAs | None = None,
    ) -> uuid.UUID:
        """Start ``command`` as a new job of ``owner_id``; return the job's id.

        ``run_as``: the user the job runs as (see ``RunAs``; None: the worker's own).
        Raises ``InvalidCommand``, ``StartError`` (``CommandNotFound``), ``LimitError``
        or ``InvalidArgument`` (an owner id that is not a ``uuid.UUID``); when it raises,
        nothing was started and nothing is left behind.
        """
        check_id("owner id", owner_id)
        if limits is None:
            limits = Limits()
        elif not isinstance(limits, Limits):
            raise LimitError(f"limits must be a jobworker.Limits, not {type(limits).__name__}")
        if run_as is not None and not isinstance(run_as, RunAs):
            raise InvalidCommand(f"run_as must be a RunAs or None, not {run_as!r}")
        paths, argv, envp = prepare(command, self._env, self._envp)
        with self.jobs.starting():  # close() waits for this start to add its job
            job_id, job = self._start(command, owner_id, limits, run_as, paths, argv, envp)
            # Before attach: until then the job cannot end, so its end reaches retention
            # on the reactor thread, in the order jobs end.
            job.when_ended(lambda: self.purger.ended(job))
            try:
                job.attach()
            except OSError as e:
                raise StartError(e.errno, f"cannot start {command.name}: {e.strerror}") from e
            self.jobs.add(job)
        return job_id

    def _start(
        self,
        command: Command,
        owner_id: uuid.UUID,
        limits: Limits,
        run_as: RunAs | None,
        paths: list[str],
        argv: list[str],
        envp: Sequence[str | bytes],
    ) -> tuple[uuid.UUID, Job]:
        job_id = uuid.uuid4()
        group = None
        pipe = None
        process = None
        logfile = None
        try:
            group = self.resource_control.create(job_id, limits)
            pipe = OutputPipe()
            process, log_fd, log_name = Process.spawn(
                command,
                paths,
                argv,
                envp,
                pipe.write_fd,
                group.procs_files,
                self._logs,
                run_as,
                self._job_nofile,
                group.cgroup2_dir,
            )
            logfile = self._logs.adopt(log_fd, log_name, job_id)
        except BaseException as e:
            if process is not None:
                # Started but not set up: take it down before saying so.
                process.send(signal.SIGKILL, group=True)
                if group is not None:
                    group.kill()
                process.reap_killed()
            if logfile is not None:  # (only an interrupt lands after its creation)
                self._logs.discard(logfile)
            if pipe is not None:
                pipe.close()
            if group is not None:
                group.remove()
            if isinstance(e, OSError) and not isinstance(e, StartError):
                raise StartError(e.errno, f"cannot start {command.name}: {e.strerror}") from e
            raise
        job = Job(
            job_id,
            owner_id,
            command,
            limits,
            process,
            pipe,
            logfile,
            group,
            self._reactor,
            self._orphans,
            run_as,
        )
        return job_id, job

    def stop(self, job_id: uuid.UUID, owner_id: uuid.UUID, grace: float | None = None) -> None:
        """SIGTERM the job's process group, SIGKILL everything after ``grace`` seconds.

        Returns once the job has ended.  ``grace=0`` kills at once, ``math.inf`` never
        (SIGTERM only).  A job whose main process has exited but which has not ended yet
        (its output is draining, its leftovers are being killed) can still be stopped:
        what remains is killed at once, and its status stays the main process's own.
        Raises ``JobNotRunning`` once the job has ended, ``InvalidArgument`` for a grace
        that is not a number of seconds >= 0.
        """
        job = self.jobs.get(job_id, owner_id)
        job.request_stop(self.grace if grace is None else grace)
        job.ended.wait()

    def wait(self, job_id: uuid.UUID, owner_id: uuid.UUID, timeout: float | None = None) -> JobInfo:
        """Block until the job has ended (every byte in its log); return its final info.

        Raises ``TimeoutError`` if it has not ended within ``timeout`` seconds.
        """
        job = self.jobs.get(job_id, owner_id)
        if not job.ended.wait(timeout):
            raise TimeoutError(f"job {job_id} has not ended within {timeout} s")
        return job.info()

    def query(self, job_id: uuid.UUID, owner_id: uuid.UUID) -> JobInfo:
        return self.jobs.get(job_id, owner_id).info()

    def stream(self, job_id: uuid.UUID, owner_id: uuid.UUID, offset: int = 0) -> LogReader:
        """A reader of the job's output from byte ``offset`` (0: the first), following it
        live until the job has ended and every byte is read."""
        return LogReader(self.jobs.get(job_id, owner_id), offset)

    def list(self, owner_id: uuid.UUID) -> list[JobInfo]:
        return [j.info() for j in self.jobs.owned_by(owner_id)]

    # -- retention -------------------------------------------------------------------------

    @property
    def retention(self) -> Retention:
        return self.purger.retention

    def purge(self) -> PurgeResult:
        """Apply the retention policy now, as its timer would; return what was removed
        and forgotten, once the logs are gone.  It covers every owner's jobs, so a
        service offers it to admins only.  Raises ``WorkerClosed`` once closed."""
        done = threading.Event()
        result: list[PurgeResult | None] = []

        def finished(r: PurgeResult | None) -> None:
            result.append(r)
            done.set()

        self.jobs.check_open()
        self.purger.request(finished)
        done.wait()
        if result[0] is None:
            raise WorkerClosed("the worker is closed")
        return result[0]

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every running job, wait for each to end, release all resources.

        Any number of threads may call it; each call returns only once the worker is
        fully closed (a second call waits for the first).
        """
        with self._closing:
            if self._closed:
                return
            jobs = self.jobs.close()
            for job in jobs:
                with contextlib.suppress(JobNotRunning):
                    job.request_stop(0)
            for job in jobs:
                job.ended.wait()
            try:
                self._reactor.close()
                self.purger.close()
                self._orphans.close()
                self.resource_control.close()
            finally:
                self._closed = True
                self._logs.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
