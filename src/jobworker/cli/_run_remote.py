"""``jobworker run --server``: ``run``, with the job on the service.

The job is started as ``start`` starts it, its output copied to stdout live as ``logs -f``
copies it (resuming after a dropped connection), and the CLI exits with its exit code as
``wait`` does.  Signals (SIGINT, SIGTERM, SIGHUP) stop it through the service as the local
``run`` stops its own: SIGTERM, SIGKILL after the grace; a second signal kills it at once;
exit 128 + the first signal's number.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid

from jobworker import Command, JobInfo, JobNotRunning, JobworkerError, Limits
from jobworker.client import Client

from ._connection import Connection
from ._exitcodes import ExitCode, status_exit_code
from ._logs import copy_output
from ._remote import call
from ._run import STOP_SIGNALS, say, stopping_message

__all__ = ["run_remote"]


class _Interrupts:
    """Turns SIGINT, SIGTERM and SIGHUP into stops of the job, through the service.

    The handlers run on the event loop (``add_signal_handler``: Python's own handler only
    notes the signal and wakes the loop), which is never held up: the RPCs wait on
    sockets and the writes to stdout run in threads.  A stop is a task of its own,
    because ``Stop`` returns only once the job has ended and a second signal must still
    get through meanwhile; a signal that comes while the job is being started takes
    effect as soon as its id is known.
    """

    def __init__(self, client: Client, grace: float | None) -> None:
        self.received: list[int] = []
        self._client = client
        self._grace = grace
        self._job: uuid.UUID | None = None
        self._ended = False
        self._done = 0  # 1: stopping (TERM, then KILL after the grace); 2: killed
        self._stops: list[asyncio.Task[None]] = []
        self._loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            self._loop.add_signal_handler(sig, self._take, sig)

    def _take(self, sig: int) -> None:
        self.received.append(sig)
        self._act()

    def attach(self, job: uuid.UUID) -> None:
        self._job = job
        self._act()

    def job_ended(self) -> None:
        self._ended = True

    def _act(self) -> None:
        wanted = min(len(self.received), 2)
        if self._job is None or self._ended or wanted <= self._done:
            return
        self._done = wanted
        grace = 0 if wanted == 2 else self._grace
        say(stopping_message(grace))
        self._stops.append(asyncio.ensure_future(self._stop(self._job, grace)))

    async def _stop(self, job: uuid.UUID, grace: float | None) -> None:
        try:
            await self._client.stop(job, grace)
        except JobNotRunning:
            pass  # it ended meanwhile
        except JobworkerError as e:
            say(f"cannot stop the job: {e}")

    async def close(self) -> None:
        """Let the stops under way finish; stop taking signals."""
        try:
            if self._stops:
                await asyncio.gather(*self._stops)
        finally:
            for sig in STOP_SIGNALS:
                self._loop.remove_signal_handler(sig)


async def _run(
    client: Client, command: Command, limits: Limits, grace: float | None
) -> tuple[int, JobInfo]:
    interrupts = _Interrupts(client, grace)
    try:
        job = await client.start(command, limits)
        interrupts.attach(job)
        stdout_open = True
        try:
            await copy_output(client, job, follow=True)
        except BrokenPipeError:
            # Nobody reads the output any more: the job goes, as a shell pipeline's
            # writer would (SIGPIPE).
            stdout_open = False
            with contextlib.suppress(JobNotRunning):
                await client.stop(job, grace)
        info = await client.wait(job)
        interrupts.job_ended()
    finally:
        await interrupts.close()
    if interrupts.received:
        return ExitCode.SIGNAL_BASE + interrupts.received[0], info
    if not stdout_open:
        return ExitCode.SIGNAL_BASE + signal.SIGPIPE, info
    return status_exit_code(info.status), info


def run_remote(
    connection: Connection, command: Command, limits: Limits, grace: float | None
) -> tuple[int, JobInfo]:
    """Run ``command`` as a job of the service at ``connection``; return (exit code,
    final info)."""
    return call(connection, lambda client: _run(client, command, limits, grace))
