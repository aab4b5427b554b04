"""The server's index of the jobs it started: whose each one is, and how many of each
owner's are running (the quota).

The library answers for one owner at a time; this index is what lets an admin reach any
job (by its owner) and list every owner's.  It lives in memory; with durable job records
it becomes a view of the store.

It forgets ended jobs as the worker's retention does, so that it stays bounded too: the
ones a purge names (``forget``), and, for the purges of the worker's own timer, which
the service does not see, those ended ``forget_after`` plus one purge interval ago (by
then the worker's timer has forgotten them).  Either way, an admin asking after a job
the worker forgot gets the same ``JobNotFound`` as for a job that never existed.
"""

from __future__ import annotations

import collections
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from jobworker import QuotaExceeded

__all__ = ["Jobs"]


class Jobs:
    def __init__(self, max_running: int, forget_after: float | None = None) -> None:
        self.max_running = max_running
        self.forget_after = forget_after
        """Seconds after its end (as the index learns of it) that a job leaves the
        index; None: never."""
        self._owners: dict[uuid.UUID, uuid.UUID] = {}  # job -> owner
        self._running: dict[uuid.UUID, set[uuid.UUID]] = {}  # owner -> its running jobs
        self._starting: Counter[uuid.UUID] = Counter()
        self._ended: collections.deque[tuple[float, uuid.UUID]] = collections.deque()

    @contextmanager
    def reserve(self, owner: uuid.UUID) -> Iterator[None]:
        """A slot for one more running job of ``owner`` while it starts; raises
        ``QuotaExceeded`` if there is none.  Called on the event loop, so the count and the
        reservation cannot be split by another start."""
        running = len(self._running.get(owner, ())) + self._starting[owner]
        if running >= self.max_running:
            raise QuotaExceeded(
                f"this owner already has {self.max_running} running jobs, the most allowed"
            )
        self._starting[owner] += 1
        try:
            yield
        finally:
            self._starting[owner] -= 1
            if not self._starting[owner]:
                del self._starting[owner]

    def started(self, job: uuid.UUID, owner: uuid.UUID) -> None:
        self._expire()
        self._owners[job] = owner
        self._running.setdefault(owner, set()).add(job)

    def ended(self, job: uuid.UUID) -> None:
        owner = self._owners[job]
        running = self._running[owner]
        running.discard(job)
        if not running:
            del self._running[owner]
        if self.forget_after is not None:
            self._ended.append((time.monotonic() + self.forget_after, job))

    def forget(self, jobs: Iterable[uuid.UUID]) -> None:
        """Drop ended jobs the worker has forgotten."""
        for job in jobs:
            owner = self._owners.get(job)
            # (Its end may not have reached the index yet: ``ended`` needs its owner.)
            if owner is not None and job not in self._running.get(owner, ()):
                del self._owners[job]

    def _expire(self) -> None:
        # (Amortized: each job is looked at once, when it expires.)
        now = time.monotonic()
        while self._ended and self._ended[0][0] <= now:
            self._owners.pop(self._ended.popleft()[1], None)

    def owner_of(self, job: uuid.UUID) -> uuid.UUID | None:
        return self._owners.get(job)

    def owners(self) -> set[uuid.UUID]:
        return set(self._owners.values())

    def running(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """(job, owner) of every running job."""
        return [(job, owner) for owner, jobs in self._running.items() for job in jobs]
