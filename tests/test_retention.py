"""Retention: logs removed by age and by disk budget, logs capped per job, job records
forgotten; never a running job's log, an open stream or a file jobworker did not make."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from jobworker import (
    AsyncWorker,
    Command,
    InvalidArgument,
    JobNotFound,
    LogLoss,
    LogUnavailable,
    LossCause,
    PurgedLog,
    PurgeResult,
    ResourceControl,
    Retention,
    Status,
    Worker,
    WorkerClosed,
)
from jobworker._logstore import LogFile
from jobworker._retention import Disposal, Why

from conftest import PY, small_tmpfs

DAY = 86400.0
# Only the rule a test is about: everything else kept.
KEEP = Retention.keep_all()


def output(n: int) -> bytes:
    """What ``writes(n)`` writes: n bytes no two runs of which look alike at an offset."""
    return bytes(i % 251 for i in range(n))


def writes(n: int) -> Command:
    return Command(
        PY, ["-c", f"import sys; sys.stdout.buffer.write(bytes(i % 251 for i in range({n})))"]
    )


def run(w: Worker, owner: uuid.UUID, n: int) -> uuid.UUID:
    job = w.start(writes(n), owner)
    info = w.wait(job, owner, timeout=30)
    assert info.status == Status.exited(0)
    assert info.log_loss is None
    return job


def at(w: Worker, t: float) -> None:
    """Make it ``t`` (a ``time.time()``) for ``w``'s retention."""
    w.purger.clock = lambda: t


def ended_at(w: Worker, job: uuid.UUID, owner: uuid.UUID) -> float:
    t = w.query(job, owner).ended_at
    assert t is not None
    return t


# -- age -----------------------------------------------------------------------------------


def test_logs_go_once_their_job_ended_max_age_ago(
    make_worker: Callable[..., Worker], owner: uuid.UUID
) -> None:
    w = make_worker(retention=Retention(max_age=DAY, max_total=None, forget_after=None))
    first = run(w, owner, 1000)
    second = run(w, owner, 2000)
    t1, t2 = ended_at(w, first, owner), ended_at(w, second, owner)
    assert t1 < t2
    path1, path2 = (w.query(j, owner).log_path for j in (first, second))

    at(w, t1 + DAY - 1)
    assert w.purge() == PurgeResult()
    assert path1.exists() and path2.exists()

    at(w, t1 + DAY)
    assert w.purge() == PurgeResult(removed=(PurgedLog(first, path1, 1000, "age"),), freed=1000)
    assert not path1.exists() and path2.exists()
    # The job is still known; its log is not, and says why.
    assert w.query(first, owner).status == Status.exited(0)
    with pytest.raises(LogUnavailable, match="removed"):
        w.stream(first, owner)
    with w.stream(second, owner) as r:
        assert r.read() == output(2000)

    at(w, t2 + DAY)
    assert w.purge().removed == (PurgedLog(second, path2, 2000, "age"),)
    assert w.purge() == PurgeResult()  # nothing is removed twice


def test_the_timer_purges_by_itself(make_worker: Callable[..., Worker], owner: uuid.UUID) -> None:
    w = make_worker(retention=Retention(max_age=0, max_total=None, interval=0.05))
    job = run(w, owner, 10)
    path = w.query(job, owner).log_path
    deadline = time.monotonic() + 30
    while path.exists():
        assert time.monotonic() < deadline, "the timer never purged"
        time.sleep(0.02)


def test_a_purge_says_what_it_removed_and_freed(
    make_worker: Callable[..., Worker], owner: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    w = make_worker(retention=Retention(max_age=DAY, max_total=None, forget_after=DAY))
    jobs = [run(w, owner, 100 * (i + 1)) for i in range(3)]
    names = [w.query(j, owner).log_path.name for j in jobs]
    at(w, time.time() + DAY)
    with caplog.at_level(logging.INFO, logger="jobworker"):
        result = w.purge()
    assert result.freed == 600 and len(result.removed) == 3
    assert set(result.forgotten) == set(jobs)
    [line] = [r.getMessage() for r in caplog.records if "purge" in r.getMessage()]
    assert "removed 3 logs (3 by age), freed 600 bytes" in line
    assert all(name in line for name in names)
    assert "forgot 3 jobs" in line


class HeldUp(Disposal):
    """A disposal that waits for the test before doing what the worker's own does (as
    an archive step, uploading, would take its time)."""

    def __init__(self, inner: Disposal) -> None:
        self.inner = inner
        self.go = threading.Event()
        self.threads: set[str] = set()

    def dispose(self, logfile: LogFile, reason: Why) -> int | None:
        self.threads.add(threading.current_thread().name)
        assert self.go.wait(30)
        return self.inner.dispose(logfile, reason)


def test_a_slow_disposal_never_holds_up_jobs(
    make_worker: Callable[..., Worker], owner: uuid.UUID
) -> None:
    w = make_worker(retention=Retention(max_age=0, max_total=None, forget_after=None))
    held = HeldUp(w.purger.disposal)
    w.purger.disposal = held
    old = run(w, owner, 10)
    path = w.query(old, owner).log_path
    purging = threading.Thread(target=w.purge)
    purging.start()
    # While the removal waits, jobs start, write, end and are read: the reactor is free.
    for _ in range(5):
        job = run(w, owner, 1000)
        with w.stream(job, owner) as r:
            assert r.read() == output(1000)
    assert path.exists() and purging.is_alive()
    with pytest.raises(LogUnavailable, match="removed"):  # chosen: no new readers
        w.stream(old, owner)
    held.go.set()
    purging.join(30)
    assert not path.exists()
    assert held.threads == {"jobworker-purge"}


# -- budget --------------------------------------------------------------------------------


def test_over_budget_the_oldest_ended_logs_go_until_the_rest_fit(
    make_worker: Callable[..., Worker], owner: uuid.UUID, log_dir: Path
) -> None:
    # Each log takes three blocks; the budget holds three logs.
    block = os.statvfs(log_dir).f_frsize
    size = 2 * block + 1
    w = make_worker(retention=Retention(max_age=None, max_total=9 * block))
    jobs = [run(w, owner, size) for _ in range(5)]
    w.purge()  # (the budget is kept at once: this waits for the removals under way)
    paths = [w.query(j, owner).log_path for j in jobs]
    assert [p.exists() for p in paths] == [False, False, True, True, True]
    for job in jobs[2:]:
        with w.stream(job, owner) as r:
            assert r.read() == output(size)
    for job in jobs[:2]:
        with pytest.raises(LogUnavailable, match="disk budget"):
            w.stream(job, owner)


def test_over_budget_logs_go_in_batches_not_one_per_job(
    make_worker: Callable[..., Worker], owner: uuid.UUID, log_dir: Path
) -> None:
    # A log a block; the budget holds ten.  Going over it brings the logs down to nine
    # tenths of it (nine), so the next job fits without a purge of its own.
    block = os.statvfs(log_dir).f_frsize
    w = make_worker(retention=Retention(max_age=None, max_total=10 * block))
    jobs = [run(w, owner, 100) for _ in range(11)]
    w.purge()
    assert [w.query(j, owner).log_path.exists() for j in jobs] == [False] * 2 + [True] * 9
    jobs.append(run(w, owner, 100))
    assert w.purge() == PurgeResult()
    assert sum(w.query(j, owner).log_path.exists() for j in jobs) == 10


def test_a_running_jobs_log_is_never_removed_even_alone_over_budget(
    make_worker: Callable[..., Worker], owner: uuid.UUID, tmp_path: Path
) -> None:
    w = make_worker(retention=Retention(max_age=None, max_total=4096))
    old = run(w, owner, 100)  # one block: the budget, not over it
    old_path = w.query(old, owner).log_path
    assert w.purge() == PurgeResult() and old_path.exists()
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    # 64 KiB, then it waits, running, until the test lets it end.
    code = (
        "import sys; sys.stdout.buffer.write(bytes(i % 251 for i in range(65536)));"
        f" sys.stdout.flush(); open({str(fifo)!r}).read()"
    )
    job = w.start(Command(PY, ["-c", code]), owner)
    with w.stream(job, owner) as r:
        got = b""
        while len(got) < 65536:
            got += r.read(65536)
        assert got == output(65536)
        # Its writes took the logs over the budget: the ended log went at once, with no
        # timer (a purge now waits for that removal) ...
        assert w.purge() == PurgeResult()
        assert not old_path.exists()
        # ... and the running one stays, whole.
        assert w.query(job, owner).log_path.stat().st_size == 65536
        with w.stream(job, owner) as again:
            assert again.read(1 << 20) == output(65536)
        with open(fifo, "w"):
            pass
        assert r.read() == b""  # the end, with every byte
    assert w.wait(job, owner, timeout=10).log_loss is None


# -- what is never touched -----------------------------------------------------------------


def test_an_open_stream_reads_to_the_end_after_its_log_is_purged(
    make_worker: Callable[..., Worker], owner: uuid.UUID
) -> None:
    w = make_worker(retention=Retention(max_age=DAY, max_total=None, forget_after=None))
    n = 300_000
    job = run(w, owner, n)
    path = w.query(job, owner).log_path

    async def read_async(aw: AsyncWorker) -> tuple[bytes, bytes]:
        async with aw.stream(job, owner) as r:
            head = await r.read(1000)
            result = await aw.purge()
            assert [p.job_id for p in result.removed] == [job]
            assert not path.exists()
            rest = b""
            while chunk := await r.read():
                rest += chunk
            return head, rest

    with w.stream(job, owner) as sync_reader:
        head = sync_reader.read(1000)
        at(w, ended_at(w, job, owner) + DAY)
        head_a, rest_a = asyncio.run(read_async(AsyncWorker(w)))
        # Both readers, opened before the purge, read every byte, then a clean end.
        assert head + sync_reader.read() == output(n)
        assert sync_reader.read() == b""
    assert head_a + rest_a == output(n)
    assert w.query(job, owner).log_loss is None
    with pytest.raises(LogUnavailable, match="removed"):
        w.stream(job, owner)


def test_files_jobworker_did_not_create_are_never_touched(
    make_worker: Callable[..., Worker], owner: uuid.UUID, log_dir: Path
) -> None:
    (log_dir / "notes.txt").write_bytes(b"mine")
    (log_dir / "echo_1.log").write_bytes(b"looks like a log, is not ours")
    os.mkfifo(log_dir / "a_fifo")
    w = make_worker(retention=Retention(max_age=DAY, max_total=None, forget_after=None))
    replaced, kept = run(w, owner, 10), run(w, owner, 20)
    replaced_path = w.query(replaced, owner).log_path
    kept_path = w.query(kept, owner).log_path
    # Someone else's file where a log was, before the purge ...
    replaced_path.unlink()
    replaced_path.write_bytes(b"planted before")
    at(w, time.time() + DAY)
    result = w.purge()
    assert [p.job_id for p in result.removed] == [kept]
    assert replaced_path.read_bytes() == b"planted before"
    # ... and after it, under the name of a log it removed.
    kept_path.write_bytes(b"planted after")
    run(w, owner, 30)
    at(w, time.time() + 2 * DAY)
    assert len(w.purge().removed) == 1
    assert kept_path.read_bytes() == b"planted after"
    assert (log_dir / "notes.txt").read_bytes() == b"mine"
    assert (log_dir / "echo_1.log").read_bytes() == b"looks like a log, is not ours"
    assert (log_dir / "a_fifo").exists()
    assert sorted(p.name for p in log_dir.iterdir()) == sorted(
        ["notes.txt", "echo_1.log", "a_fifo", replaced_path.name, kept_path.name]
    )


# -- the per-job cap -----------------------------------------------------------------------


def test_a_capped_log_keeps_the_head_and_says_so(
    make_worker: Callable[..., Worker], owner: uuid.UUID
) -> None:
    w = make_worker(retention=Retention(max_log_size=1000))
    job = w.start(writes(5000), owner)
    with w.stream(job, owner) as r:
        got = b""
        with pytest.raises(LogUnavailable, match=r"cut short: .* first 1000 bytes .*cap of 1000"):
            while chunk := r.read(300):
                got += chunk
        assert got == output(1000)
    info = w.wait(job, owner, timeout=30)
    assert info.status == Status.exited(0)  # the job ran to its end
    assert info.log_loss == LogLoss(
        LossCause.CAPPED, held=1000, lost=4000, detail="the log reached its cap of 1000 bytes"
    )
    assert info.log_path.read_bytes() == output(1000)

    async def late() -> bytes:
        got = b""
        async with AsyncWorker(w).stream(job, owner) as r:
            with pytest.raises(LogUnavailable, match="cap of 1000"):
                while chunk := await r.read():
                    got += chunk
        return got

    assert asyncio.run(late()) == output(1000)
    # Exactly the cap is no loss.
    assert w.wait(run(w, owner, 1000), owner).log_loss is None


# -- job records ---------------------------------------------------------------------------


def test_forgotten_jobs_answer_like_unknown_ones_through_both_faces(
    make_worker: Callable[..., Worker], owner: uuid.UUID
) -> None:
    w = make_worker(retention=Retention(max_age=None, max_total=None, forget_after=DAY))
    old, recent = run(w, owner, 10), run(w, owner, 10)
    path = w.query(old, owner).log_path
    at(w, ended_at(w, old, owner) + DAY)
    assert w.purge() == PurgeResult(forgotten=(old,))
    never = uuid.uuid4()
    for job in (old, never):
        for call in (w.query, w.wait, w.stream, w.stop):
            with pytest.raises(JobNotFound) as e:
                call(job, owner)
            assert str(e.value) == str(JobNotFound(job))
    assert [i.id for i in w.list(owner)] == [recent]

    async def through_async() -> None:
        aw = AsyncWorker(w)
        for call in (aw.query, aw.wait, aw.stop):
            with pytest.raises(JobNotFound) as e:
                await call(old, owner)
            assert str(e.value) == str(JobNotFound(old))
        with pytest.raises(JobNotFound):
            aw.stream(old, owner)
        assert [i.id for i in await aw.list(owner)] == [recent]

    asyncio.run(through_async())
    # Its log is its own rule's business: still there (max_age=None).
    assert path.exists()


def test_a_forgotten_jobs_log_still_goes_by_its_own_rule(
    make_worker: Callable[..., Worker], owner: uuid.UUID
) -> None:
    w = make_worker(retention=Retention(max_age=2 * DAY, max_total=None, forget_after=DAY))
    job = run(w, owner, 10)
    path = w.query(job, owner).log_path
    t = ended_at(w, job, owner)
    at(w, t + DAY)
    assert w.purge() == PurgeResult(forgotten=(job,))
    assert path.exists()
    at(w, t + 2 * DAY)
    assert w.purge() == PurgeResult(removed=(PurgedLog(job, path, 10, "age"),), freed=10)


# -- a full disk ---------------------------------------------------------------------------


def test_with_a_budget_the_disk_never_fills(
    tmp_path: Path, owner: uuid.UUID, control: ResourceControl
) -> None:
    # 20 logs of 100 KiB through a 1 MiB file system: without retention the 10th fills it.
    with (
        small_tmpfs(tmp_path / "small", "size=1m") as small,
        Worker(small, resource_control=control, retention=Retention(max_total=256 << 10)) as w,
    ):
        for _ in range(20):
            job = w.start(writes(100 << 10), owner)
            with w.stream(job, owner) as r:
                assert r.read() == output(100 << 10)
            assert w.wait(job, owner, timeout=30).log_loss is None


def test_a_full_disk_then_a_purge_and_the_next_jobs_work(
    tmp_path: Path, owner: uuid.UUID, control: ResourceControl
) -> None:
    with (
        small_tmpfs(tmp_path / "small", "size=1m") as small,
        Worker(
            small,
            resource_control=control,
            retention=Retention(max_age=DAY, max_total=None, forget_after=None),
        ) as w,
    ):
        big = w.start(writes(2 << 20), owner)
        info = w.wait(big, owner, timeout=30)
        # The job's writes failed as for any program; the status tells the user.
        assert info.status == Status.exited(0)
        assert info.log_loss is not None and info.log_loss.cause is LossCause.WRITE_FAILED
        assert info.log_loss.held + info.log_loss.lost == 2 << 20
        at(w, ended_at(w, big, owner) + DAY)
        assert w.purge().freed == info.log_loss.held
        job = run(w, owner, 500 << 10)
        with w.stream(job, owner) as r:
            assert r.read() == output(500 << 10)
        # The job cut short is still known, and still says what it lost.
        assert w.query(big, owner).log_loss == info.log_loss


# -- the API -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"max_age": -1},
        {"max_age": float("nan")},
        {"max_age": "1d"},
        {"forget_after": True},
        {"max_total": 1.5},
        {"max_total": "big"},
        {"max_log_size": -1},
        {"interval": 0},
        {"interval": float("inf")},
    ],
)
def test_malformed_retention_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="retention"):
        Retention(**bad)  # type: ignore[arg-type]


def test_purge_after_close_raises(make_worker: Callable[..., Worker]) -> None:
    w = make_worker()
    w.close()
    with pytest.raises(WorkerClosed):
        w.purge()

    async def main() -> None:
        with pytest.raises(WorkerClosed):
            await AsyncWorker(w).purge()

    asyncio.run(main())


def test_the_budget_auto_is_a_tenth_of_the_disk_at_most_4_gib() -> None:
    assert Retention().budget(100 << 20) == 10 << 20
    assert Retention().budget(1 << 40) == 4 << 30
    assert Retention(max_total=123).budget(1 << 40) == 123
