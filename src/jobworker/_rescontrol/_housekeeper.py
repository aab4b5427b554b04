"""The background thread of a cgroup resource control: what no start and no job's end
should wait for.

A job's cgroups cost a ``mkdir`` per hierarchy before it starts and an ``rmdir`` per
hierarchy after it ends, and a worker's first start used to clean up after a dead
worker first (kill its jobs, wait for them to die, remove its cgroups: milliseconds to
seconds).  None of it needs a caller, so one thread per control does it:

1. cleans up the parents of dead workers (``CgroupBase.clean_stale``), holding no lock
   a start needs, ``CLEANUP_DELAY`` after the worker was made (its first starts come
   first; this worker's own parents and a first pool are made before the thread starts,
   by ``CgroupBase.start_housekeeping`` in the Worker's constructor);
2. keeps a small pool of ready job cgroups for each set of hierarchies a job asked for
   (``CgroupBase.fill_pool_once``), so that ``create`` only takes one;
3. removes the cgroups of ended jobs (``CgroupJobGroup.release`` queues them), so the
   reactor thread only queues.

Pools are refilled and removals done in batches, each one system call after another
with the GIL released once (``_dirs``).  Removals come before refills: they free what
refills make.  ``stop`` (from the control's ``close``) finishes the cleanup under way
and every queued removal before it returns.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._base import CgroupBase, CgroupJobGroup

__all__ = ["CLEANUP_DELAY", "REMOVE_BATCH", "REMOVE_DELAY", "Housekeeper"]

# Removals are done in batches: waking this thread for each one cost more (thread
# switches, the GIL passed around) than the rmdir itself.
REMOVE_BATCH = 16
REMOVE_DELAY = 0.05
# How long after the worker is made the cleanup after dead workers begins.
CLEANUP_DELAY = 0.1

log = logging.getLogger("jobworker")


class Housekeeper:
    def __init__(self, rc: CgroupBase) -> None:
        self._rc = rc
        self._cond = threading.Condition()
        self._removals: collections.deque[CgroupJobGroup] = collections.deque()
        self._refill = 1  # > 0: the pool may be below its size (counts requests)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="jobworker-cgroups", daemon=True)
        self.stale_cleaned = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def remove_later(self, group: CgroupJobGroup) -> None:
        """Queue ``group.remove()``; once stopping, remove it now instead."""
        with self._cond:
            if not self._stopping:
                self._removals.append(group)
                if len(self._removals) >= REMOVE_BATCH:
                    self._cond.notify()
                return
        group.remove()

    def refill(self) -> None:
        with self._cond:
            self._refill += 1
            self._cond.notify()

    def stop(self) -> None:
        """Finish every queued removal, then end the thread (from any other thread)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.ident is not None:  # started
            self._thread.join()
        self._remove_queued()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _run(self) -> None:
        with self._cond:
            # A new worker's first starts come first: on a machine with few cores the
            # cleanup (killing a dead worker's jobs, removing cgroups) would compete with
            # them for the CPU and the kernel's cgroup lock.  A close() does not wait.
            self._cond.wait_for(lambda: self._stopping, CLEANUP_DELAY)
        try:
            # Not cut short by stop(): a dead worker's jobs must not outlive this one.
            self._rc.clean_stale_parents()
        except Exception:
            log.exception("jobworker: cleaning up after dead workers failed")
        finally:
            self.stale_cleaned.set()
        while True:
            with self._cond:
                while not (len(self._removals) >= REMOVE_BATCH or self._refill or self._stopping):
                    # A few removals wait for company, or for REMOVE_DELAY.
                    if not self._cond.wait(REMOVE_DELAY if self._removals else None):
                        break
                if self._stopping:
                    return
                requests = self._refill
            if self._removals:
                self._remove_queued()
                continue
            try:
                made = self._rc.fill_pool_once()
            except Exception:
                log.debug("jobworker: cannot fill the cgroup pool", exc_info=True)
                made = False
            if not made:
                with self._cond:
                    # Full (or failing): sleep, unless a start took one meanwhile.
                    if self._refill == requests:
                        self._refill = 0

    def _remove_queued(self) -> None:
        with self._cond:
            groups = list(self._removals)
            self._removals.clear()
        if groups:
            self._rc.remove_groups(groups)
