"""Following: live, late and concurrent readers; EOF only at the real end."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import uuid
from types import FrameType

import pytest

from jobworker import AsyncWorker, Command, LogUnavailable, Worker, _follow

from conftest import PY, open_fds

# A job that prints a line whenever its parent (the test) writes a byte into a fifo.
STEP = (
    "import os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "while (b := os.read(fd, 1)) and b != b'q':\n"
    "    os.write(1, b'line ' + b + b'\\n')\n"
)


@pytest.fixture
def fifo(tmp_path: os.PathLike[str]) -> str:
    path = os.path.join(tmp_path, "steps")
    os.mkfifo(path)
    return path


def test_reader_follows_live_and_wakes_on_each_write(
    worker: Worker, owner: uuid.UUID, fifo: str
) -> None:
    job = worker.start(Command(PY, ["-c", STEP, fifo]), owner)
    with worker.stream(job, owner) as r, open(fifo, "wb", buffering=0) as steps:
        for c in b"abc":
            steps.write(bytes([c]))
            assert r.read(100) == b"line %c\n" % c
        steps.write(b"q")
        assert r.read(100) == b""
    assert worker.query(job, owner).status.exit_code == 0


def test_late_reader_after_end_gets_everything(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("seq", ["1", "10000"]), owner)
    with worker.stream(job, owner) as r:
        first = r.read()
    with worker.stream(job, owner) as r:
        assert r.read() == first
    assert first == b"".join(b"%d\n" % i for i in range(1, 10001))


def test_reader_from_an_offset_resumes_exactly_there(
    worker: Worker, owner: uuid.UUID, fifo: str
) -> None:
    job = worker.start(Command(PY, ["-c", STEP, fifo]), owner)
    with open(fifo, "wb", buffering=0) as steps:
        steps.write(b"a")
        with worker.stream(job, owner) as r:
            assert r.read(100) == b"line a\n"
        # Past the end of a running job's output: waits until the output gets there.
        with worker.stream(job, owner, offset=12) as r:
            steps.write(b"b")
            assert r.read(100) == b"b\n"
            assert r.offset == 14
        steps.write(b"q")
    worker.wait(job, owner, timeout=10)
    with worker.stream(job, owner, offset=3) as r:
        assert r.read() == b"e a\nline b\n"
    with worker.stream(job, owner, offset=1000) as r:
        assert r.read() == b""
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="offset"):
            worker.stream(job, owner, offset=bad)  # type: ignore[arg-type]


def test_concurrent_readers_joining_at_different_times_get_identical_output(
    worker: Worker, owner: uuid.UUID, fifo: str
) -> None:
    job = worker.start(Command(PY, ["-c", STEP, fifo]), owner)
    results: list[bytes] = []

    def follow() -> None:
        with worker.stream(job, owner) as r:
            results.append(b"".join(r))

    threads = []
    with open(fifo, "wb", buffering=0) as steps:
        for c in b"abcdefgh":
            t = threading.Thread(target=follow)
            t.start()
            threads.append(t)
            steps.write(bytes([c]))
        steps.write(b"q")
    for t in threads:
        t.join()
    expected = b"".join(b"line %c\n" % c for c in b"abcdefgh")
    assert results == [expected] * 8


def test_abandoned_reader_does_not_block_job_or_others(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("head", ["-c", str(16 << 20), "/dev/zero"]), owner)
    stalled = worker.stream(job, owner)
    assert stalled.read(1) == b"\0"
    with worker.stream(job, owner) as r:
        total = sum(len(c) for c in r)
    assert total == 16 << 20
    stalled.close()
    assert stalled.closed


def test_close_releases_fd_and_wakes_nothing(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sleep", ["1000"]), owner)
    before = set(os.listdir("/proc/self/fd"))
    r = worker.stream(job, owner)
    r.close()
    assert set(os.listdir("/proc/self/fd")) == before
    with pytest.raises(ValueError):
        r.read(1)
    worker.stop(job, owner, grace=0)


def test_blocked_reader_sees_end_when_job_is_stopped(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sh", ["-c", "echo started; exec sleep 1000"]), owner)
    with worker.stream(job, owner) as r:
        assert r.read(100) == b"started\n"
        t = threading.Thread(target=worker.stop, args=(job, owner, 0))
        t.start()
        assert r.read(100) == b""
        t.join()


def test_deleted_log_is_a_clear_error(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("echo", ["x"]), owner)
    with worker.stream(job, owner) as r:
        r.read()
    worker.query(job, owner).log_path.unlink()
    with pytest.raises(LogUnavailable):
        worker.stream(job, owner)


def test_truncated_log_is_a_clear_error_not_an_early_end(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sh", ["-c", "printf 0123456789; exec sleep 1000"]), owner)
    with worker.stream(job, owner) as r:
        assert r.read(4) == b"0123"
        os.truncate(worker.query(job, owner).log_path, 0)
        with pytest.raises(LogUnavailable, match="truncated"):
            r.read()
    worker.stop(job, owner, grace=0)


def test_cancelled_async_waits_leave_the_reactor_alone(
    worker: Worker, owner: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    # A wait (or a read) cancelled on a loop that is then closed: when the job ends, the
    # reactor must not call into that loop.
    job = worker.start(Command("sh", ["-c", "printf x; exec sleep 1000"]), owner)

    async def give_up() -> None:
        aw = AsyncWorker(worker)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(aw.wait(job, owner), 0.05)
        async with aw.stream(job, owner) as r:
            assert await r.read() == b"x"
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r.read(), 0.05)

    with caplog.at_level(logging.ERROR, logger="jobworker"):
        asyncio.run(give_up())
        worker.stop(job, owner, grace=0)
        # The end's callbacks run on the reactor after stop() returns; the reactor is
        # done with them once it has seen another job end.
        worker.wait(worker.start(Command("true"), owner), owner)
    assert "internal error" not in caplog.text


def test_a_failing_wake_up_leaves_other_readers_awake(
    worker: Worker, owner: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    job = worker.start(Command("sh", ["-c", "sleep 0.3; printf b; exec sleep 1000"]), owner)

    def fail() -> None:
        raise RuntimeError("a broken waiter")

    assert worker.jobs.get(job, owner).wait_for_more(0, fail)  # first in line for the next bytes
    got: list[bytes] = []
    with worker.stream(job, owner) as r:
        t = threading.Thread(target=lambda: got.append(r.read(1)))
        with caplog.at_level(logging.ERROR, logger="jobworker"):
            t.start()
            t.join(10)
    worker.stop(job, owner, grace=0)
    assert got == [b"b"]
    assert "a broken waiter" in caplog.text


def test_async_face_streams_the_same_bytes(worker: Worker, owner: uuid.UUID) -> None:
    async def main() -> tuple[bytes, bytes]:
        aw = AsyncWorker(worker)
        job = await aw.start(Command("seq", ["1", "50000"]), owner)
        readers = [aw.stream(job, owner) for _ in range(5)]

        async def drain(r: object) -> bytes:
            from jobworker import AsyncLogReader

            assert isinstance(r, AsyncLogReader)
            async with r:
                return b"".join([c async for c in r])

        outs = await asyncio.gather(*(drain(r) for r in readers))
        assert len(set(outs)) == 1
        assert (await aw.wait(job, owner)).status.exit_code == 0
        sleeper = await aw.start(Command("sleep", ["1000"]), owner)
        async with aw.stream(sleeper, owner) as r:
            waiting = asyncio.ensure_future(r.read())
            await aw.stop(sleeper, owner, grace=0)
            assert await waiting == b""
        return outs[0], (await aw.query(job, owner)).log_path.read_bytes()

    out, logged = asyncio.run(main())
    assert out == logged == b"".join(b"%d\n" % i for i in range(1, 50001))


def test_hundreds_of_jobs_and_readers_share_one_reactor_thread(
    worker: Worker, owner: uuid.UUID
) -> None:
    async def main() -> None:
        aw = AsyncWorker(worker)
        threads = threading.active_count()
        jobs = [await aw.start(Command("seq", ["1", str(1000 + i)]), owner) for i in range(200)]
        # Starts run on the loop's default executor: its few threads, not one per job.
        assert threading.active_count() <= threads + min(32, (os.cpu_count() or 1) + 4)
        threads = threading.active_count()

        async def drain(job: uuid.UUID) -> bytes:
            async with aw.stream(job, owner) as r:
                return b"".join([c async for c in r])

        outs = await asyncio.gather(*(drain(j) for j in jobs))
        assert threading.active_count() == threads  # no thread per job or per reader
        for i, out in enumerate(outs):
            assert out == b"".join(b"%d\n" % k for k in range(1, 1001 + i))

    asyncio.run(main())


def _close_at_line(worker: Worker, owner: uuid.UUID, job: uuid.UUID, k: int) -> bool:
    """Start a read() that must wait, stop its thread at its k-th line event in the
    reader's module, close the reader from this thread there, and check that the read
    ends (with the closed reader's error) within a bounded wait.  Returns whether the
    read got as far as its k-th line before blocking."""
    r = worker.stream(job, owner, offset=1)
    paused, resume = threading.Event(), threading.Event()
    lines = 0
    outcome: list[BaseException | bytes] = []

    def tracer(frame: FrameType, event: str, arg: object) -> object:
        nonlocal lines
        if frame.f_code.co_filename == _follow.__file__ and event == "line":
            lines += 1
            if lines == k:
                paused.set()
                resume.wait()
        elif event == "call" and frame.f_code.co_name == "wait":
            paused.set()  # about to block: every line before it was tried
        return tracer

    def read() -> None:
        sys.settrace(tracer)  # type: ignore[arg-type]
        try:
            outcome.append(r.read(1))
        except BaseException as e:
            outcome.append(e)
        finally:
            sys.settrace(None)

    t = threading.Thread(target=read)
    t.start()
    assert paused.wait(10)
    reached = lines >= k
    if r._io.locked():
        # Stopped holding the reader's own lock, which close() waits for.
        resume.set()
    r.close()
    resume.set()
    t.join(5)
    assert not t.is_alive(), f"close() at line event {k} of read() was lost"
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError), outcome
    return reached


def test_close_from_another_thread_is_never_lost(worker: Worker, owner: uuid.UUID) -> None:
    # A close() that lands anywhere in a read() waiting for more must end that read.
    # Rather than hoping two threads collide at the right instant, the reading thread
    # stops at each line of the reader's code in turn and the closing thread runs
    # close() in full there.  The sweep ends once a read blocks before its k-th line.
    job = worker.start(Command("sh", ["-c", "printf x; exec sleep 1000"]), owner)
    try:
        for _ in range(3):
            k = 1
            while _close_at_line(worker, owner, job, k):
                k += 1
            assert k > 5  # the sweep went through read(), not stopped at once
    finally:
        worker.stop(job, owner, grace=0)


def test_iterating_a_stream_to_its_end_releases_it(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("seq", ["1", "1000"]), owner)
    worker.wait(job, owner, timeout=10)
    expected = b"".join(b"%d\n" % i for i in range(1, 1001))
    before = open_fds()
    # The README's patterns, without a with block: nothing may stay open.
    assert b"".join(worker.stream(job, owner)) == expected
    assert open_fds() == before

    async def main() -> bytes:
        return b"".join([c async for c in AsyncWorker(worker).stream(job, owner)])

    assert asyncio.run(main()) == expected
    assert open_fds() == before
    # Iteration that ends in an error releases the reader too.
    worker.query(job, owner).log_path.write_bytes(b"12")  # the same file, cut short
    with pytest.raises(LogUnavailable):
        for _ in worker.stream(job, owner):
            pass
    assert open_fds() == before


def test_an_unclosed_reader_is_released_when_collected(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sh", ["-c", "printf x; exec sleep 1000"]), owner)
    before = open_fds()
    r = worker.stream(job, owner)
    assert r.read(1) == b"x"
    with pytest.warns(ResourceWarning, match="unclosed"):
        del r
        gc.collect()
    assert open_fds() == before

    async def main() -> None:
        aw = AsyncWorker(worker)
        async for chunk in aw.stream(job, owner):
            assert chunk == b"x"
            break  # abandoned, never closed
        with pytest.warns(ResourceWarning, match="unclosed"):
            # asyncio finalizes the abandoned iterator on a later turn of the loop.
            for _ in range(10):
                await asyncio.sleep(0)
            gc.collect()

    asyncio.run(main())
    assert open_fds() == before
    worker.stop(job, owner, grace=0)


def test_an_async_reader_resumes_from_an_offset(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("seq", ["1", "1000"]), owner)
    worker.wait(job, owner, timeout=10)
    expected = b"".join(b"%d\n" % i for i in range(1, 1001))

    async def main() -> bytes:
        async with AsyncWorker(worker).stream(job, owner, offset=1000) as r:
            assert r.offset == 1000
            return b"".join([c async for c in r])

    assert asyncio.run(main()) == expected[1000:]
