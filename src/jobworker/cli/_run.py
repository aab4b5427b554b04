"""``jobworker run``: one job, run by a worker in this process, its output on stdout live.

No service and no certificates.  The job's output (stdout and stderr, interleaved as the
job wrote them) is copied to this process's stdout a chunk at a time, as it arrives,
bytes untouched; jobworker's own words go to stderr.  The exit code is the job's
(``_exitcodes.status_exit_code``).  With ``--server`` the same through the service:
``_run_remote``.

The log: in a private temporary directory removed at exit (like ``docker run --rm``),
or kept in ``--log-dir``.

Signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the job (SIGTERM to its process group,
SIGKILL after the grace); a second one kills it at once; then the CLI exits 128 + the
first signal's number (130 for Ctrl-C).  The job runs in a session of its own, so the
terminal's Ctrl-C never reaches it directly: jobworker passes it on (``_Interrupts``),
and a closed terminal (SIGHUP) does not leave it running.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from jobworker import Command, JobInfo, JobworkerError, Limits

from ._connection import Connection
from ._exitcodes import CliError, ExitCode, status_exit_code
from ._options import (
    command_options,
    grace_option,
    json_option,
    limit_options,
    run_connection_options,
)
from ._output import STDOUT, oom_message, write_all

if TYPE_CHECKING:
    from jobworker import Worker

__all__ = ["STOP_SIGNALS", "run", "say", "stopping_message"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(message: str) -> None:
    click.echo(f"jobworker: {message}", err=True)


def stopping_message(grace: float | None) -> str:
    """What a stop on a signal says: ``grace`` None is the service's own."""
    if grace == 0:
        return "killing the job (SIGKILL)"
    if grace is None:
        after = "after the service's grace"
    else:
        after = "never" if math.isinf(grace) else f"after {grace:g} s"
    return f"stopping the job: SIGTERM, SIGKILL {after}; interrupt again to kill it now"


class _Interrupts:
    """Turns SIGINT, SIGTERM and SIGHUP into stops of the job.

    From creation to ``close()`` these signals are blocked in every thread of the process
    (threads inherit the mask of the thread that starts them, and all of them start
    after this), and one thread takes them with ``sigwaitinfo``.  No handler runs:
    Python runs handlers only in the main thread, between bytecodes, so a signal landing
    just before the main thread goes back to sleep on the job's output would wait there
    unseen until the job's next byte, or its end.  A blocked signal instead stays pending
    until that thread takes it, whenever it arrives.

    A stop runs in a thread of its own, since ``Worker.stop`` returns only once the job
    has ended, and a second signal must still get through meanwhile.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._lock = threading.Lock()
        self._target: tuple[Worker, uuid.UUID, uuid.UUID, float] | None = None
        self._ended = False
        self._done = 0  # 1: stopping (TERM, then KILL after the grace); 2: killed
        self._stops: list[threading.Thread] = []
        self._closing = False
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        self._thread: threading.Thread | None = threading.Thread(
            target=self._take_signals, name="jobworker-signals"
        )
        self._thread.start()

    def _take_signals(self) -> None:
        me = os.getpid()
        while True:
            info = signal.sigwaitinfo(STOP_SIGNALS)
            if self._closing and info.si_pid == me:
                return  # close()'s wake-up call
            with self._lock:
                self.received.append(info.si_signo)
                self._act()

    def attach(self, worker: Worker, owner: uuid.UUID, job: uuid.UUID) -> None:
        """The job has started: stop it on a signal (at once, if one came already)."""
        with self._lock:
            self._target = (worker, owner, job, worker.grace)
            self._act()

    def job_ended(self) -> None:
        with self._lock:
            self._ended = True

    def _act(self) -> None:
        wanted = min(len(self.received), 2)
        if self._target is None or self._ended or wanted <= self._done:
            return
        self._done = wanted
        worker, owner, job, grace = self._target
        if wanted == 2:
            grace = 0
        say(stopping_message(grace))
        stop = threading.Thread(target=_stop, args=(worker, job, owner, grace))
        stop.start()
        self._stops.append(stop)

    def close(self) -> None:
        """Stop taking signals; those that come from now on act as they would have.
        Idempotent."""
        if self._thread is None:
            return
        self._closing = True
        signal.pthread_kill(self._thread.ident or 0, signal.SIGINT)
        self._thread.join()
        self._thread = None
        for stop in self._stops:
            stop.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)


def _stop(worker: Worker, job: uuid.UUID, owner: uuid.UUID, grace: float) -> None:
    with contextlib.suppress(JobworkerError):  # it ended, or the worker closed, meanwhile
        worker.stop(job, owner, grace)


@contextlib.contextmanager
def _log_directory(keep_in: Path | None) -> Iterator[Path]:
    if keep_in is not None:
        yield keep_in
        return
    path = Path(tempfile.mkdtemp(prefix="jobworker-run-"))  # mode 0700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _copy_output(worker: Worker, job: uuid.UUID, owner: uuid.UUID) -> bool:
    """Copy the job's output to stdout until its end; False if stdout went away."""
    with worker.stream(job, owner) as reader:
        try:
            for chunk in reader:
                write_all(STDOUT, chunk)
        except BrokenPipeError:
            return False
    return True


def run_local(
    command: Command,
    limits: Limits,
    grace: float | None,
    log_dir: Path | None,
) -> tuple[int, JobInfo | None]:
    """Run ``command`` as a job of a worker in this process; return (exit code, final
    info).

    The info is None when a signal came before the job could start (none was started).
    """
    from jobworker import Retention, Worker

    owner = uuid.uuid4()
    interrupts = _Interrupts()
    try:
        with _log_directory(log_dir) as logs:
            try:
                # One job, its log a pass-through to stdout, kept (--log-dir) or removed
                # with its directory: no cap, no purge.
                keep = Retention.keep_all()
                worker = (
                    Worker(logs, retention=keep)
                    if grace is None
                    else Worker(logs, grace=grace, retention=keep)
                )
            except OSError as e:
                raise CliError(f"cannot use log directory {logs}: {e.strerror}") from e
            with worker:  # on the way out of here, it kills the job if still running
                if interrupts.received:
                    return ExitCode.SIGNAL_BASE + interrupts.received[0], None
                job = worker.start(command, owner, limits=limits)
                interrupts.attach(worker, owner, job)
                if log_dir is not None:
                    say(f"log: {worker.query(job, owner).log_path}")
                stdout_open = _copy_output(worker, job, owner)
                if not stdout_open:
                    # Nobody reads the output any more: the job goes, as a shell
                    # pipeline's writer would (SIGPIPE).
                    with contextlib.suppress(JobworkerError):
                        worker.stop(job, owner)
                info = worker.wait(job, owner)
                interrupts.job_ended()
    finally:
        # Last, after the log directory went: a SIGTERM pending till now may end this
        # process at once, and leaves nothing behind.
        interrupts.close()
    if interrupts.received:
        return ExitCode.SIGNAL_BASE + interrupts.received[0], info
    if not stdout_open:
        return ExitCode.SIGNAL_BASE + signal.SIGPIPE, info
    return status_exit_code(info.status), info


EXAMPLES = """
\b
Examples:
  jobworker run -- sh -c 'echo out; echo err >&2; exit 3'   # exits 3
  jobworker run --memory 256M --cpu 0.5 -- make -j4
  jobworker run --log-dir . --json -- ./build.sh 2>summary.json
  jobworker run --server jobs.example:7443 -- ./build.sh     # on the service
"""


@click.command(
    context_settings={"allow_interspersed_args": False},
    epilog=EXAMPLES,
    short_help="Run a command as a job here and stream its output.",
)
@limit_options
@command_options
@grace_option
@click.option(
    "--log-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="DIR",
    help="Keep the job's log in DIR (as NAME_PID.log); by default it goes to a private"
    " temporary directory removed at exit.  Not with --server: the service keeps its logs.",
)
@click.option(
    "--summary",
    is_flag=True,
    help="When the job has ended, print its status, duration, CPU time and peak memory on stderr.",
)
@functools.partial(
    json_option, help="Print the summary as one line of JSON, the last on stderr (docs/CLI.md)."
)
@run_connection_options
@click.argument(
    "command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS]..."
)
def run(
    limits: Limits,
    env: dict[str, str] | None,
    cwd: str | None,
    grace: float | None,
    log_dir: Path | None,
    summary: bool,
    as_json: bool,
    connection: Connection | None,
    command: tuple[str, ...],
) -> int:
    """Run CMD as a job in this process, with no service: its output (stdout and
    stderr, interleaved) goes to stdout as it comes, byte for byte, and jobworker exits
    with the job's exit code (128+N if it died of signal N).

    Ctrl-C stops the job (SIGTERM, then SIGKILL after --grace); a second Ctrl-C kills it
    at once; jobworker then exits 130.  The job's stdin is /dev/null.

    With --server (or JOBWORKER_SERVER), the same on that service: the job runs there
    (as start would start it), its output comes here live, jobworker exits with its exit
    code, and Ctrl-C stops it through the service.
    """
    job_command = Command(command[0], command[1:], env=env, cwd=cwd)
    info: JobInfo | None
    if connection is not None:
        if log_dir is not None:
            raise click.BadParameter(
                "the service keeps the logs of its jobs (see jobworker logs)",
                click.get_current_context(),
                param_hint="'--log-dir' with --server",
            )
        from ._run_remote import run_remote

        code, info = run_remote(connection, job_command, limits, grace)
        log_kept = True
    else:
        limits = _local_io_path(limits)
        code, info = run_local(job_command, limits, grace, log_dir)
        log_kept = log_dir is not None
    if info is not None and info.status.oom_killed and not as_json:
        say(oom_message(info))
    if info is not None and (summary or as_json):
        from . import _output

        if as_json:
            record = _output.job_record(info, log_kept=log_kept)
            _output.print_json(record, sys.stderr, one_line=True)
        else:
            colour = _output.use_colour(sys.stderr)
            text = _output.job_details(info, colour=colour, log_kept=log_kept)
            click.echo(text, err=True, nl=False, color=colour)
    return code


def _local_io_path(limits: Limits) -> Limits:
    """--io-path on this machine: it must exist; by default the current directory."""
    if limits.io_path is None:
        if limits.io_read_bps or limits.io_write_bps:
            return replace(limits, io_path=os.getcwd())
        return limits
    path = os.fspath(limits.io_path)
    if not os.path.exists(path):
        raise click.BadParameter(
            f"Path {path!r} does not exist.", click.get_current_context(), param_hint="'--io-path'"
        )
    return replace(limits, io_path=os.path.abspath(path))
