"""Retention: which logs and job records go, when, and what becomes of a log that goes.

The policies (``Retention``, one value, given to the ``Worker``):

- age: the log of a job that ended more than ``max_age`` seconds ago is removed;
- disk budget: once this worker's logs take more than ``max_total`` bytes, the logs of
  ended jobs are removed, oldest first, until the rest fit in nine tenths of it (so that
  a worker at its budget purges a batch now and then, not a log for every job);
- per-job cap: a log keeps the first ``max_log_size`` bytes of its job's output and
  counts the rest as lost (``LossCause.CAPPED``); the log store's writer enforces it;
- job records: a job that ended more than ``forget_after`` seconds ago leaves the job
  table, and answers like a job that never existed.

Never touched: a running job's log (only a job's end puts its log in the queue purges
take from); a file jobworker did not create (the store removes a log only while the
file under its name is the one its job's child created); a stream already open (its
descriptor keeps the data to the end, and a file's unlinking shortens nothing).

**How a purge runs.**  Ended jobs queue up in the order they ended, so the oldest are at
the front, and a purge takes from the front for as long as the policy says so: a purge
that removes nothing costs a comparison or two.  Choosing runs on the reactor thread (a
timer every ``interval`` seconds; at once when a write or a job's end leaves the logs
over the budget; on request, ``Worker.purge``), in memory only, at most ``BATCH`` entries
a loop turn, so jobs get their turn in between.  Removing does not: it goes to one thread
(``_Disposer``) that lives while there is something to remove, since unlinking a file
frees its blocks within the call (milliseconds for a few MiB on ext4), and a stalled
reactor stalls every job's output.  A log chosen counts as gone from the budget at once,
and new readers are refused it; the file follows a moment later.

**The seam.**  A purge is a policy (``Retention``: which ended logs go now and why, which
records) and a disposal (``Disposal``: what is done with a log that goes).
``RemoveLogs`` removes it; an archive step (copying it to S3-compatible storage, then
removing it) would be another ``Disposal``, run on the same thread, off the reactor.
"""

from __future__ import annotations

import abc
import collections
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ._errors import InvalidArgument

if TYPE_CHECKING:
    from ._job import Job
    from ._jobtable import JobTable
    from ._logstore import LogFile, LogStore
    from ._reactor import Reactor, Timer

__all__ = [
    "BATCH",
    "Disposal",
    "PurgeResult",
    "PurgedLog",
    "Purger",
    "RemoveLogs",
    "Retention",
]

log = logging.getLogger("jobworker")

DAY = 86400.0
# "auto" budget: a tenth of the log directory's file system, at most this (journald's rule).
AUTO_SHARE = 10
AUTO_MAX = 4 << 30
# Entries a purge takes per reactor turn (each a few attribute updates).
BATCH = 256
# Over the budget, logs go until the rest fit in this share of it.
LOW_WATER = 0.9

Why = Literal["age", "budget"]
_WHY_TEXT = {"age": "retention: its job ended too long ago", "budget": "retention: disk budget"}


def _seconds(what: str, value: object) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value < 0
    ):
        raise InvalidArgument(
            f"retention: {what} must be a number of seconds >= 0 (or None: never), not {value!r}"
        )
    return float(value)


def _size(what: str, value: object, *, auto: bool = False) -> None:
    if value is None or (auto and value == "auto"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        extra = ', "auto"' if auto else ""
        raise InvalidArgument(
            f"retention: {what} must be a number of bytes >= 0{extra} (or None: no limit),"
            f" not {value!r}"
        )


@dataclass(frozen=True)
class Retention:
    """How long a worker keeps its logs and its ended jobs, and how large a log grows.

    - ``max_age``: seconds after its job ended that a log is removed (default: a day).
    - ``max_total``: the disk budget, in bytes, of this worker's logs (each counted in
      whole blocks of its file system); past it, the logs of ended jobs go, oldest
      first, until the rest fit in nine tenths of it.  ``"auto"`` (the default): a
      tenth of the file system that holds the log directory, at most 4 GiB.  A running
      job's log is never removed, even if it alone exceeds the budget.
    - ``max_log_size``: the most one log holds (default: 1 GiB).  A job that writes more
      runs on; its log keeps the *first* ``max_log_size`` bytes, and the rest is read
      and counted, not kept: ``JobInfo.log_loss`` says so (``LossCause.CAPPED``), and a
      reader gets ``LogUnavailable`` after the last byte kept.
    - ``forget_after``: seconds after its end that a job leaves the worker's memory
      (default: a day); from then on it answers like a job that never existed
      (``JobNotFound``).
    - ``interval``: seconds between two purges on the timer (default: 60).  The budget
      is also kept at once, whenever a write or a job's end goes past it.

    ``None`` turns a rule off; ``Retention.keep_all()`` turns them all off (the
    behaviour of a worker before retention).  Raises ``InvalidArgument`` for a value
    that is not a number >= 0 (sizes: an int).
    """

    max_age: float | None = DAY
    max_total: int | Literal["auto"] | None = "auto"
    max_log_size: int | None = 1 << 30
    forget_after: float | None = DAY
    interval: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_age", _seconds("max_age", self.max_age))
        object.__setattr__(self, "forget_after", _seconds("forget_after", self.forget_after))
        _size("max_total", self.max_total, auto=True)
        _size("max_log_size", self.max_log_size)
        interval = _seconds("interval", self.interval)
        if interval is None or interval <= 0 or interval == math.inf:
            raise InvalidArgument(
                f"retention: interval must be a finite number of seconds > 0, not {self.interval!r}"
            )
        object.__setattr__(self, "interval", interval)

    @classmethod
    def keep_all(cls) -> Retention:
        """Keep every log and every job for the worker's lifetime, logs uncapped."""
        return cls(max_age=None, max_total=None, max_log_size=None, forget_after=None)

    # -- the policy, as a purge asks it ---------------------------------------------------

    def budget(self, capacity: int) -> int | None:
        """The disk budget in bytes, on a file system of ``capacity`` bytes."""
        if self.max_total == "auto":
            return min(capacity // AUTO_SHARE, AUTO_MAX)
        return self.max_total

    def log_goes(self, ended_at: float, now: float, total: int, budget: int | None) -> Why | None:
        """Why the log of a job that ended at ``ended_at`` goes now, if it does: its
        age, or the budget (``total``: what the logs take now; ``budget``: what they
        must come down to, ``low_water`` of the budget once over it)."""
        if self.max_age is not None and now - ended_at >= self.max_age:
            return "age"
        if budget is not None and total > budget:
            return "budget"
        return None

    @staticmethod
    def low_water(budget: int) -> int:
        """What the logs are brought down to once over ``budget``."""
        return int(budget * LOW_WATER)

    def record_goes(self, ended_at: float, now: float) -> bool:
        """Whether a job that ended at ``ended_at`` is forgotten now."""
        return self.forget_after is not None and now - ended_at >= self.forget_after


@dataclass(frozen=True)
class PurgedLog:
    """A log a purge removed: whose, where, how large, and why (``"age"``, ``"budget"``)."""

    job_id: uuid.UUID
    path: Path
    size: int
    reason: Why


@dataclass(frozen=True)
class PurgeResult:
    """What one purge did: the logs it removed, the bytes they held (``freed``), and the
    ids of the jobs it forgot."""

    removed: tuple[PurgedLog, ...] = ()
    freed: int = 0
    forgotten: tuple[uuid.UUID, ...] = ()


class Disposal(abc.ABC):
    """What becomes of a log that goes.

    ``dispose`` is called off the reactor thread (in the purge's own thread), one log at
    a time, in the order the purge chose them; it may take its time (an upload, say),
    but each purge waits for it.  The log's job has ended and the log no longer counts
    against the budget; new readers are refused it, open ones read on.  Returns the
    bytes freed, or None if the file under the log's name is not the one its job's
    child created (or is gone), in which case nothing may be done to it.
    """

    @abc.abstractmethod
    def dispose(self, logfile: LogFile, reason: Why) -> int | None: ...


class RemoveLogs(Disposal):
    """Remove the log (``LogStore.remove``: only the file its job's child created)."""

    def __init__(self, store: LogStore) -> None:
        self._store = store

    def dispose(self, logfile: LogFile, reason: Why) -> int | None:
        return self._store.remove(logfile)


Done = Callable[[PurgeResult | None], None]


@dataclass(eq=False)
class _Purge:
    cause: str  # timer, budget, request
    done: Done | None
    removed: list[PurgedLog] = field(default_factory=list)
    forgotten: list[uuid.UUID] = field(default_factory=list)
    freed: int = 0
    left: int = 0  # logs whose name now holds someone else's file: left alone
    sent: bool = False  # a batch went to the disposer
    over_budget: bool = False  # found over it: logs go down to the low water


class _Disposer:
    """One thread, alive while there are logs to dispose of; batches in order."""

    def __init__(self, purger: Purger) -> None:
        self._purger = purger
        self._queue: collections.deque[tuple[_Purge, list[tuple[LogFile, Why]], bool]] = (
            collections.deque()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Every thread started and perhaps not yet gone: one that found the queue empty
        # may still be returning when the next one starts.
        self._threads: list[threading.Thread] = []
        self.cpu = 0.0  # of the threads that ended

    def put(self, purge: _Purge, batch: list[tuple[LogFile, Why]], last: bool) -> None:
        purge.sent = True
        with self._lock:
            self._queue.append((purge, batch, last))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="jobworker-purge", daemon=True
                )
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(self._thread)
                self._thread.start()

    def _run(self) -> None:
        # The thread does nothing else, so all its CPU time is the purge's.
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    self.cpu += time.thread_time()
                    self._purger.cpu_removing = self.cpu
                    return
                purge, batch, last = self._queue.popleft()
            disposal = self._purger.disposal
            for logfile, why in batch:
                try:
                    size = disposal.dispose(logfile, why)
                except Exception:
                    log.exception("jobworker: cannot dispose of %s", logfile.path)
                    size = None
                if size is None:
                    purge.left += 1
                else:
                    purge.removed.append(PurgedLog(logfile.job_id, logfile.path, size, why))
                    purge.freed += size
            self._purger.cpu_removing = self.cpu + time.thread_time()
            if last:
                self._purger.finish(purge)

    def join(self) -> None:
        """Wait for every batch handed over so far (none may come meanwhile)."""
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()


class Purger:
    """Runs ``retention`` over a worker's job table and log store, on its reactor.

    ``ended`` (reactor thread) is told of every job's end; ``request`` asks for a purge
    now (any thread); ``close`` (once the reactor is closed) waits for the removals
    under way and answers the requests that will never run.
    """

    def __init__(
        self,
        retention: Retention,
        store: LogStore,
        table: JobTable,
        reactor: Reactor,
        disposal: Disposal | None = None,
    ) -> None:
        self.retention = retention
        self.budget = retention.budget(store.capacity)
        self.clock: Callable[[], float] = time.time
        """What "now" is (``time.time``; ended times are ``time.time()`` too)."""
        self.disposal = disposal or RemoveLogs(store)
        """What becomes of a log that goes (an archive step would replace it)."""
        self.cpu_choosing = 0.0
        """CPU time spent so far choosing what goes (on the reactor thread)."""
        self.cpu_removing = 0.0
        """CPU time spent so far by the purge's own thread (all of it: disposing of logs)."""
        self._store = store
        self._table = table
        self._reactor = reactor
        # Ended jobs, in the order they ended (so, oldest first): their logs, their records.
        self._tracks_logs = retention.max_age is not None or self.budget is not None
        self._tracks_records = retention.forget_after is not None
        self._logs: collections.deque[tuple[float, LogFile]] = collections.deque()
        self._records: collections.deque[tuple[float, Job]] = collections.deque()
        self._kicked = False
        self._timer: Timer | None = None
        self._lock = threading.Lock()  # requests
        self._requests: set[Done] = set()
        self._closed = False
        self._disposer = _Disposer(self)
        store.watch(self.budget, self._over_budget)

    def start(self) -> None:
        """Arm the timer (from any thread)."""
        if self._tracks_logs or self._tracks_records:
            self._reactor.call_soon(self._arm)

    def _arm(self) -> None:
        self._timer = self._reactor.call_later(self.retention.interval, self._tick)

    def _tick(self) -> None:
        self._purge("timer", None)
        self._arm()

    # -- reactor thread ------------------------------------------------------------------

    def ended(self, job: Job) -> None:
        """``job`` has ended: its log and its record may go from now on."""
        assert job.ended_at is not None
        if self._tracks_records:
            self._records.append((job.ended_at, job))
        if self._tracks_logs:
            self._logs.append((job.ended_at, job.log))
            if self.budget is not None and self._store.total > self.budget:
                self._over_budget()

    def _over_budget(self) -> None:
        # Only if something can go: a running log alone over the budget must not make
        # every write of it ask for a purge.
        if self._logs and not self._kicked:
            self._kicked = True
            self._reactor.call_soon(self._budget_purge)

    def _budget_purge(self) -> None:
        self._kicked = False
        self._purge("budget", None)

    def _purge(self, cause: str, done: Done | None) -> None:
        self._choose(_Purge(cause, done))

    def _choose(self, purge: _Purge) -> None:
        t0 = time.thread_time()
        try:
            self._choose_some(purge)
        finally:
            self.cpu_choosing += time.thread_time() - t0

    def _choose_some(self, purge: _Purge) -> None:
        now = self.clock()
        rules, store, budget = self.retention, self._store, self.budget
        if budget is not None and (purge.over_budget or store.total > budget):
            purge.over_budget = True
            budget = rules.low_water(budget)
        taken = 0
        records, logs = self._records, self._logs
        forgotten: list[uuid.UUID] = []
        while records and taken < BATCH and rules.record_goes(records[0][0], now):
            forgotten.append(records.popleft()[1].id)
            taken += 1
        if forgotten:
            self._table.forget(forgotten)  # (one lock for all)
            purge.forgotten += forgotten
        batch: list[tuple[LogFile, Why]] = []
        while logs and taken < BATCH:
            why = rules.log_goes(logs[0][0], now, store.total, budget)
            if why is None:
                break
            logfile = logs.popleft()[1]
            logfile.removed = _WHY_TEXT[why]
            store.release(logfile)
            batch.append((logfile, why))
            taken += 1
        more = taken >= BATCH
        if more:
            if batch:
                self._disposer.put(purge, batch, last=False)
            self._reactor.call_soon(lambda: self._choose(purge))
        elif batch or purge.sent or purge.done is not None:
            # (A requested purge ends after the removals chosen before it, too.)
            self._disposer.put(purge, batch, last=True)
        else:
            self.finish(purge)

    # -- any thread ------------------------------------------------------------------------

    def request(self, done: Done) -> None:
        """Purge now; ``done`` gets the result (on the purge's thread) once every log
        chosen by then is gone, or None if the worker closed first."""
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                self._requests.add(done)
        if closed:
            done(None)
            return
        self._reactor.call_soon(lambda: self._purge("request", done))

    def finish(self, purge: _Purge) -> None:
        """(Reactor or disposer thread.)"""
        with self._lock:
            if purge.done is not None:
                self._requests.discard(purge.done)
        if purge.removed or purge.forgotten or purge.left:
            _report(purge)
        if purge.done is not None:
            purge.done(PurgeResult(tuple(purge.removed), purge.freed, tuple(purge.forgotten)))

    def close(self) -> None:
        """Once the reactor has stopped: finish the removals under way; requests that
        never ran get None."""
        self._disposer.join()
        with self._lock:
            self._closed = True
            pending, self._requests = self._requests, set()
        for done in pending:
            done(None)


def _report(purge: _Purge) -> None:
    reasons = collections.Counter(p.reason for p in purge.removed)
    names = [p.path.name for p in purge.removed[:10]]
    if len(purge.removed) > len(names):
        names.append(f"and {len(purge.removed) - len(names)} more")
    log.info(
        "jobworker: purge (%s): removed %d logs (%s), freed %d bytes%s; forgot %d jobs%s",
        purge.cause,
        len(purge.removed),
        ", ".join(f"{n} by {why}" for why, n in sorted(reasons.items())) or "none",
        purge.freed,
        f": {', '.join(names)}" if names else "",
        len(purge.forgotten),
        f"; left {purge.left} alone (the file under the name was not the log, or was gone)"
        if purge.left
        else "",
    )
    for p in purge.removed:
        log.debug("jobworker: purge: removed %s (%d bytes, %s)", p.path, p.size, p.reason)
