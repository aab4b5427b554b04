"""``AsyncWorker.start`` never blocks the event loop.

A start used to run on the loop's thread: a clone, a log, a cgroup made and joined, and
the first one after a worker was made also cleaned up after a dead worker (killing its
jobs, waiting for them to die: milliseconds to seconds).  Now the start runs on an
executor thread and the cleanup on the resource control's own thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobworker import (
    AsyncWorker,
    Command,
    CommandNotFound,
    JobGroup,
    Limits,
    NoCgroups,
    ResourceControl,
    Status,
    StopType,
    Worker,
    detect,
)
from jobworker._rescontrol import CgroupV1, CgroupV2

from conftest import live_children

BLOCK_LIMIT = 0.001  # seconds


def _runqueue_waits() -> dict[str, float]:
    """Seconds each thread of this process has spent runnable, waiting for a CPU."""
    waits = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                waits[tid] = int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            pass
    return waits


class LoopWatch:
    """Times every callback the event loop runs (``Handle._run``), as asyncio's debug
    mode does for ``slow_callback_duration``, while ``active``, less what a busy machine
    adds: the time the loop's thread waited for a CPU, and the time the other threads of
    this process did (one that holds the GIL while it waits for a CPU makes the loop
    wait for the GIL).  What remains is the callback's own work and its own waits."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.worst = 0.0
        self.worst_what = ""
        self.callbacks = 0
        self.active = False
        original: Callable[[asyncio.Handle], None] = asyncio.Handle._run
        watch = self

        def timed(handle: asyncio.Handle) -> None:
            if not watch.active:
                original(handle)
                return
            me = str(threading.get_native_id())
            q0 = _runqueue_waits()
            t0 = time.perf_counter()
            try:
                original(handle)
            finally:
                wall = time.perf_counter() - t0
                q1 = _runqueue_waits()
                waited = {t: q1[t] - q0.get(t, 0.0) for t in q1}
                own = waited.pop(me, 0.0)
                blocked = wall - own - sum(waited.values())
                watch.callbacks += 1
                if blocked > watch.worst:
                    watch.worst, watch.worst_what = blocked, repr(handle)

        monkeypatch.setattr(asyncio.Handle, "_run", timed)


def plant_stale_parent(rc: ResourceControl) -> tuple[subprocess.Popen[bytes], list[str]]:
    """A dead worker's parent cgroup, with a job holding a live process in it."""
    if isinstance(rc, CgroupV1):
        bases = [h.base for h in (rc.unified, rc.hierarchies.get("memory")) if h]
    else:
        assert isinstance(rc, CgroupV2)
        bases = [rc.worker_cgroup]
    stale = [os.path.join(b, f"jobworker-99999999-{uuid.uuid4().int % 10**6}-0") for b in bases]
    job = f"job-{uuid.uuid4().hex}"
    for d in stale:
        os.makedirs(os.path.join(d, job))
    p = subprocess.Popen(["sleep", "1000"])
    for d in stale:
        Path(d, job, "cgroup.procs").write_text(str(p.pid))
    return p, stale


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopWatch]:
    # Another thread busy in Python (the reactor, a start) holds the GIL until it is
    # asked for it, 5 ms later by default: the loop's thread would wait that long inside
    # a callback that only made a system call.  That is the interpreter's doing, not a
    # blocking start; a short switch interval keeps it well under the limit.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0001)
    try:
        yield LoopWatch(monkeypatch)
    finally:
        sys.setswitchinterval(interval)


def test_starts_never_block_the_loop(
    log_dir: Path, owner: uuid.UUID, watch: LoopWatch, control: ResourceControl
) -> None:
    # Against the real cgroups (each start makes and joins one; the first finds a dead
    # worker's parent to clean), and without.
    planted = None
    if control.name != "none":
        planted, stale = plant_stale_parent(control)
    try:

        async def main(worker: Worker) -> list[Status]:
            watch.active = True
            async with AsyncWorker(worker) as aw:
                jobs = []
                for i in range(30):
                    limits = Limits(pids=50) if i % 3 == 2 and control.name != "none" else None
                    jobs.append(await aw.start(Command("true"), owner, limits=limits))
                jobs += await asyncio.gather(*(aw.start(Command("true"), owner) for _ in range(10)))
                statuses = [(await aw.wait(j, owner)).status for j in jobs]
                watch.active = False
                return statuses

        worker = Worker(log_dir, resource_control=control)
        statuses = asyncio.run(main(worker))
        assert statuses == [Status.exited(0)] * 40
        if planted is not None:
            # Cleaned up, by the worker's own thread.
            assert planted.wait(timeout=10) == -signal.SIGKILL
            assert not any(os.path.exists(d) for d in stale)
    finally:
        if planted is not None:
            planted.kill()
            planted.wait()
    assert watch.callbacks > 40
    assert watch.worst < BLOCK_LIMIT, (watch.worst, watch.worst_what)
    assert live_children() == []


class GatedGroups(ResourceControl):
    """No cgroups; ``create`` waits until the test opens the gate: a start that takes as
    long as the test likes."""

    name = "gated"
    contains = False
    reason = "a test's"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self._none = NoCgroups("a test's")

    def validate(self, limits: Limits) -> None:
        pass

    def create(self, job_id: uuid.UUID, limits: Limits) -> JobGroup:
        self.entered.set()
        assert self.gate.wait(10), "the gate was never opened"
        return self._none.create(job_id, limits)

    def close(self) -> None:
        pass


@pytest.fixture
def gated(log_dir: Path) -> Iterator[tuple[Worker, GatedGroups]]:
    threads = threading.active_count()
    rc = GatedGroups()
    w = Worker(log_dir, resource_control=rc)
    try:
        yield w, rc
    finally:
        rc.gate.set()
        w.close()
    assert live_children() == []
    assert threading.active_count() == threads


def test_the_loop_runs_while_a_start_waits(
    gated: tuple[Worker, GatedGroups], owner: uuid.UUID
) -> None:
    # If the start ran on the loop, the loop could not open the gate: it would wait 10 s.
    w, rc = gated

    async def main() -> Status:
        aw = AsyncWorker(w)
        start = asyncio.create_task(aw.start(Command("true"), owner))
        while not rc.entered.is_set():
            await asyncio.sleep(0.001)
        assert not start.done()
        rc.gate.set()
        job = await start
        return (await aw.wait(job, owner)).status

    assert asyncio.run(main()) == Status.exited(0)


def test_a_cancelled_start_leaves_no_job_running(
    gated: tuple[Worker, GatedGroups], owner: uuid.UUID
) -> None:
    w, rc = gated

    async def main() -> None:
        aw = AsyncWorker(w)
        start = asyncio.create_task(aw.start(Command("sleep", ["1000"]), owner))
        while not rc.entered.is_set():
            await asyncio.sleep(0.001)
        start.cancel()
        rc.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await start
        # The start went on in its thread; the job it made is killed.
        deadline = time.monotonic() + 10
        while not w.list(owner):
            assert time.monotonic() < deadline, "the start never finished"
            await asyncio.sleep(0.001)
        (info,) = w.list(owner)
        info = await aw.wait(info.id, owner)
        assert info.status == Status.stopped(StopType.KILL)

    asyncio.run(main())


def test_a_start_that_fails_raises_on_the_loop(log_dir: Path, owner: uuid.UUID) -> None:
    async def main() -> None:
        async with AsyncWorker(Worker(log_dir, resource_control=detect())) as aw:
            with pytest.raises(CommandNotFound):
                await aw.start(Command("no-such-command-here"), owner)
            assert await aw.list(owner) == []

    asyncio.run(main())
