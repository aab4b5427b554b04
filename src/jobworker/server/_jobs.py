"""The server's index of the jobs it started: whose each one is, and how many of each
owner's are running (the quota).

The library answers for one owner at a time; this index is what lets an admin reach any
job (by its owner) and list every owner's.  It lives in memory; with durable job records
it becomes a view of the store.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from jobworker import QuotaExceeded

__all__ = ["Jobs"]


class Jobs:
    def __init__(self, max_running: int) -> None:
        self.max_running = max_running
        self._owners: dict[uuid.UUID, uuid.UUID] = {}  # job -> owner
        self._running: dict[uuid.UUID, set[uuid.UUID]] = {}  # owner -> its running jobs
        self._starting: Counter[uuid.UUID] = Counter()

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
        self._owners[job] = owner
        self._running.setdefault(owner, set()).add(job)

    def ended(self, job: uuid.UUID) -> None:
        owner = self._owners[job]
        running = self._running[owner]
        running.discard(job)
        if not running:
            del self._running[owner]

    def owner_of(self, job: uuid.UUID) -> uuid.UUID | None:
        return self._owners.get(job)

    def owners(self) -> set[uuid.UUID]:
        return set(self._owners.values())

    def running(self) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """(job, owner) of every running job."""
        return [(job, owner) for owner, jobs in self._running.items() for job in jobs]
