"""The worker's jobs, each visible to its owner only; the one place jobs are looked up.

Both faces (``Worker`` and ``AsyncWorker``) find a job here, so that ownership is checked
in one place: ``get`` answers a job of another owner exactly as it answers an unknown id
(the same ``JobNotFound``, the same message), and ``owned_by`` lists an owner's own
jobs only.  So no operation can tell another owner's job from a job that does not exist.

The table also says whether the worker is open: once ``close`` has begun, every lookup
raises ``WorkerClosed``, and ``close`` waits for the starts already under way to add
their jobs, so that none is left behind running.  ``forget`` drops an ended job
(retention, ``_retention``); a forgotten job answers like one that never existed: the
same ``JobNotFound``, with the same message, as an id never seen.  (A distinct "expired"
answer was considered: it would tell anyone holding an id that the id was real, and
whoever asks for another owner's job must get no such hint, so it would have to say
"unknown" there anyway.)
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterable, Iterator

from ._errors import InvalidArgument, JobNotFound, WorkerClosed
from ._job import Job

__all__ = ["JobTable", "check_id"]


def check_id(what: str, value: object) -> uuid.UUID:
    """``value`` if it is a ``uuid.UUID``; ``InvalidArgument`` if not.

    Ids are not parsed from strings: an owner given as ``"7f3c..."`` would silently be a
    different owner from ``UUID("7f3c...")``, and never see its own jobs.
    """
    if not isinstance(value, uuid.UUID):
        raise InvalidArgument(f"{what} must be a uuid.UUID, not {type(value).__name__}")
    return value


class JobTable:
    """Jobs by id, owner-checked; thread-safe."""

    def __init__(self) -> None:
        self._jobs: dict[uuid.UUID, Job] = {}
        self._lock = threading.Condition()
        self._starting = 0  # starts under way, which close() waits for
        self._closed = False

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Around one start: raises ``WorkerClosed`` once closed; ``close`` waits for
        the start to finish (and ``add`` its job) before it collects the jobs."""
        with self._lock:
            self._check_open()
            self._starting += 1
        try:
            yield
        finally:
            with self._lock:
                self._starting -= 1
                self._lock.notify_all()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def get(self, job_id: uuid.UUID, owner_id: uuid.UUID) -> Job:
        """The job ``job_id`` if ``owner_id`` owns it; ``JobNotFound`` otherwise."""
        check_id("job id", job_id)
        check_id("owner id", owner_id)
        with self._lock:
            self._check_open()
            job = self._jobs.get(job_id)
        if job is None or job.owner_id != owner_id:
            raise JobNotFound(job_id)
        return job

    def owned_by(self, owner_id: uuid.UUID) -> list[Job]:
        check_id("owner id", owner_id)
        with self._lock:
            self._check_open()
            return [j for j in self._jobs.values() if j.owner_id == owner_id]

    def forget(self, job_ids: Iterable[uuid.UUID]) -> None:
        """Drop jobs (the caller forgets only jobs that have ended)."""
        with self._lock:
            for job_id in job_ids:
                self._jobs.pop(job_id, None)

    def check_open(self) -> None:
        """``WorkerClosed`` once ``close`` has begun."""
        with self._lock:
            self._check_open()

    def close(self) -> list[Job]:
        """Refuse every lookup and start from now on; wait for the starts under way;
        return every job."""
        with self._lock:
            self._closed = True
            self._lock.wait_for(lambda: self._starting == 0)
            return list(self._jobs.values())

    def _check_open(self) -> None:
        if self._closed:
            raise WorkerClosed("the worker is closed")
