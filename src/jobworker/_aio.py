"""The asyncio face of the Worker: the same core, awaited instead of blocked on.

Nothing here supervises anything.  Each coroutine calls into the same ``Worker`` and
looks jobs up in its owner-checked table (``Worker.jobs``); where the blocking API would
wait (``stop`` until the job ends, a reader at EOF), this
face hands the reactor a callback that resolves a future on the caller's event loop.
``start`` runs on a thread of the loop's default executor: a start is usually well
under a millisecond, but it can wait for the kernel (joining a v1 cgroup waits for an
RCU grace period, milliseconds), for a file system (creating the log) or for a lock
another start holds, and the loop must not wait with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid

from ._errors import JobNotRunning, WorkerClosed
from ._follow import AsyncLogReader, resolve_soon
from ._job import Job
from ._model import Command, JobInfo, Limits, RunAs
from ._retention import PurgeResult
from ._worker import Worker

__all__ = ["AsyncWorker"]


async def _ended(job: Job) -> None:
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def wake() -> None:  # on the reactor thread
        resolve_soon(loop, ended)

    job.when_ended(wake)
    try:
        await ended
    finally:
        # Cancelled: the job must not call into this loop later, perhaps once closed.
        job.forget_ended(wake)


class AsyncWorker:
    """``async with AsyncWorker(Worker(...)) as w: await w.start(...)``."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def start(
        self,
        command: Command,
        owner_id: uuid.UUID,
        *,
        limits: Limits | None = None,
        run_as: RunAs | None = None,
    ) -> uuid.UUID:
        """As ``Worker.start``, on a thread: the event loop never waits for a start.

        Cancelled while the start runs, the job it started (if any) is killed at once:
        nobody would know its id.
        """
        loop = asyncio.get_running_loop()
        started = loop.run_in_executor(
            None,
            functools.partial(self.worker.start, command, owner_id, limits=limits, run_as=run_as),
        )
        try:
            # Shielded: cancelling the wait must not drop the id of a job that starts.
            return await asyncio.shield(started)
        except asyncio.CancelledError:
            started.add_done_callback(functools.partial(self._kill_unwanted, owner_id))
            raise

    def _kill_unwanted(self, owner_id: uuid.UUID, started: asyncio.Future[uuid.UUID]) -> None:
        if started.cancelled() or started.exception() is not None:
            return
        with contextlib.suppress(JobNotRunning):
            self.worker.jobs.get(started.result(), owner_id).request_stop(0)

    async def stop(
        self, job_id: uuid.UUID, owner_id: uuid.UUID, grace: float | None = None
    ) -> None:
        """As ``Worker.stop``: returns once the job has ended."""
        job = self.worker.jobs.get(job_id, owner_id)
        job.request_stop(self.worker.grace if grace is None else grace)
        await _ended(job)

    async def wait(self, job_id: uuid.UUID, owner_id: uuid.UUID) -> JobInfo:
        """Wait until the job has ended (every byte in its log); return its final info."""
        job = self.worker.jobs.get(job_id, owner_id)
        await _ended(job)
        return job.info()

    async def query(self, job_id: uuid.UUID, owner_id: uuid.UUID) -> JobInfo:
        return self.worker.query(job_id, owner_id)

    async def list(self, owner_id: uuid.UUID) -> list[JobInfo]:
        return self.worker.list(owner_id)

    def stream(self, job_id: uuid.UUID, owner_id: uuid.UUID, offset: int = 0) -> AsyncLogReader:
        """An async reader of the job's output from byte ``offset`` (call from a running
        event loop)."""
        return AsyncLogReader(self.worker.jobs.get(job_id, owner_id), offset)

    async def purge(self) -> PurgeResult:
        """As ``Worker.purge``: apply the retention policy now; the logs are removed off
        this event loop."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[PurgeResult | None] = loop.create_future()

        def done(result: PurgeResult | None) -> None:  # on one of the worker's threads
            def resolve() -> None:
                if not finished.done():
                    finished.set_result(result)

            with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
                loop.call_soon_threadsafe(resolve)

        self.worker.jobs.check_open()
        self.worker.purger.request(done)
        result = await finished
        if result is None:
            raise WorkerClosed("the worker is closed")
        return result

    async def close(self) -> None:
        await asyncio.to_thread(self.worker.close)

    async def __aenter__(self) -> AsyncWorker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
