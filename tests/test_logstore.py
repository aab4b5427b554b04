"""The log store: a log cut short (full disk, copytruncate), reopening it safely (a FIFO at
its name, a moved directory), and naming what was lost."""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType

import pytest

from jobworker import (
    AsyncWorker,
    Command,
    LogLoss,
    LogUnavailable,
    LossCause,
    ResourceControl,
    Retention,
    Status,
    Worker,
)
from jobworker._logstore import LogFile, LogStore

from conftest import PY, small_tmpfs

# A job that writes what its parent (the test) sends it through a fifo, one line at a
# time; "q" ends it.
ECHO = (
    "import os, sys\n"
    "f = open(sys.argv[1], 'rb')\n"
    "for line in f:\n"
    "    if line == b'q\\n':\n"
    "        break\n"
    "    os.write(1, line[:-1])\n"
)


def read_until_unavailable(read: Callable[[int], bytes]) -> bytes:
    """Every byte a reader delivers before it raises ``LogUnavailable`` (which it must)."""
    got = bytearray()
    with pytest.raises(LogUnavailable, match="cut short"):
        while chunk := read(1 << 16):
            got += chunk
    return bytes(got)


async def read_until_unavailable_async(read: Callable[[int], Awaitable[bytes]]) -> bytes:
    got = bytearray()
    with pytest.raises(LogUnavailable, match="cut short"):
        while chunk := await read(1 << 16):
            got += chunk
    return bytes(got)


def test_full_disk_cuts_the_log_visibly_and_never_blocks_the_job(
    tmp_path: Path, owner: uuid.UUID, control: ResourceControl
) -> None:
    # Without retention, whose budget would remove the ended log at once (see
    # test_retention for the disk filling with retention on).
    with (
        small_tmpfs(tmp_path / "small", "size=1m") as small,
        Worker(small, resource_control=control, retention=Retention.keep_all()) as w,
    ):
        # 4 MiB into a 1 MiB filesystem: the job must still run to its end.
        code = "import os\nfor _ in range(64): os.write(1, b'x' * 65536)\nprint('done')"
        job = w.start(Command(PY, ["-c", code]), owner)
        with w.stream(job, owner) as r:
            live = read_until_unavailable(r.read)
        info = w.wait(job, owner, timeout=30)
        assert info.status == Status.exited(0)  # the job's own status is the job's
        logged = info.log_path.read_bytes()
        assert 0 < len(logged) <= 1 << 20 and set(logged) == {ord("x")}
        # Every reader, live or late, sync or async, gets what the log holds, then the error.
        assert live == logged
        with w.stream(job, owner) as r:
            assert read_until_unavailable(r.read) == logged

        async def late() -> bytes:
            async with AsyncWorker(w).stream(job, owner) as r:
                return await read_until_unavailable_async(r.read)

        assert asyncio.run(late()) == logged
        assert info.log_loss is not None
        assert info.log_loss.cause is LossCause.WRITE_FAILED
        assert info.log_loss.held == len(logged)
        assert info.log_loss.lost == 64 * 65536 + len("done\n") - len(logged)
        assert "No space left on device" in info.log_loss.detail
        # Once there is room again, the next job's log is whole.
        info.log_path.unlink()
        job = w.start(Command("echo", ["fits"]), owner)
        with w.stream(job, owner) as r:
            assert r.read() == b"fits\n"
        assert w.query(job, owner).log_loss is None


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = str(tmp_path / "steps")
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("cut_to", [0, 4])
def test_a_log_truncated_by_someone_else_never_reads_back_wrong_bytes(
    worker: Worker, owner: uuid.UUID, fifo: str, cut_to: int
) -> None:
    # What logrotate's copytruncate does to a log, while its job runs.
    job = worker.start(Command(PY, ["-c", ECHO, fifo]), owner)
    with open(fifo, "wb", buffering=0) as steps, worker.stream(job, owner) as r:
        steps.write(b"0123456789\n")
        assert r.read(100) == b"0123456789"
        os.truncate(worker.query(job, owner).log_path, cut_to)
        steps.write(b"abc\n")
        # The reader, at byte 10, must not get "abc" (the job's bytes 10-12, but the file
        # no longer holds 0-9 in front of them) nor wait for ever.
        with pytest.raises(LogUnavailable, match="cut short"):
            r.read(100)
        # A new reader gets exactly what is left of the job's own bytes: never NULs, never
        # "abc" at byte `cut_to`.
        with worker.stream(job, owner) as again:
            assert read_until_unavailable(again.read) == b"0123456789"[:cut_to]
        steps.write(b"q\n")
    info = worker.wait(job, owner, timeout=10)
    assert info.status == Status.exited(0)
    assert info.log_loss is not None
    assert (info.log_loss.cause, info.log_loss.held, info.log_loss.lost) == (
        LossCause.TRUNCATED,
        cut_to,
        13 - cut_to,
    )


def test_a_log_cut_after_its_last_write_shows_in_its_info(
    worker: Worker, owner: uuid.UUID, fifo: str
) -> None:
    job = worker.start(Command(PY, ["-c", ECHO, fifo]), owner)
    with open(fifo, "wb", buffering=0) as steps:
        steps.write(b"0123456789\n")
        with worker.stream(job, owner) as r:
            assert r.read(100) == b"0123456789"
        os.truncate(worker.query(job, owner).log_path, 3)
        steps.write(b"q\n")
    # No write follows the cut: the job's end finds it.
    info = worker.wait(job, owner, timeout=10)
    assert info.log_loss == LogLoss(LossCause.TRUNCATED, held=3, lost=7, detail=_detail(info))
    with worker.stream(job, owner) as r:
        assert read_until_unavailable(r.read) == b"012"
    with worker.stream(job, owner, offset=5) as r, pytest.raises(LogUnavailable, match="cut"):
        r.read()


def _detail(info: object) -> str:
    loss = getattr(info, "log_loss", None)
    assert isinstance(loss, LogLoss)
    return loss.detail


def test_a_reader_finding_the_log_cut_says_so_in_the_jobs_info(
    worker: Worker, owner: uuid.UUID
) -> None:
    job = worker.start(Command("sh", ["-c", "printf 0123456789; exec sleep 1000"]), owner)
    with worker.stream(job, owner) as r:
        assert r.read(4) == b"0123"
        os.truncate(worker.query(job, owner).log_path, 6)
        assert read_until_unavailable(r.read) == b"45"
    loss = worker.query(job, owner).log_loss
    assert loss is not None and (loss.cause, loss.held, loss.lost) == (LossCause.TRUNCATED, 6, 4)
    worker.stop(job, owner, grace=0)


def bounded(call: Callable[[], object], release: str) -> BaseException | None:
    """Run ``call`` in a thread; fail unless it returns or raises within 10 s.  What it
    raised is returned.  If it hangs on opening the fifo ``release``, open the fifo's
    other end so the thread ends."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    if t.is_alive():
        os.close(os.open(release, os.O_WRONLY | os.O_NONBLOCK))
        t.join()
        pytest.fail("opening the log blocked")
    return outcome[0]


def test_a_fifo_at_the_log_path_is_refused_at_once(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("echo", ["x"]), owner)
    path = worker.wait(job, owner, timeout=10).log_path
    path.unlink()
    os.mkfifo(path, 0o600)
    error = bounded(lambda: worker.stream(job, owner).close(), str(path))
    assert isinstance(error, LogUnavailable), error
    assert "replaced" in str(error)

    async def from_the_loop() -> None:
        # The loop must not freeze: the open happens on it.
        AsyncWorker(worker).stream(job, owner)

    error = bounded(lambda: asyncio.run(from_the_loop()), str(path))
    assert isinstance(error, LogUnavailable), error


def test_another_file_at_the_log_path_is_not_read(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("echo", ["x"]), owner)
    path = worker.wait(job, owner, timeout=10).log_path
    path.unlink()
    path.write_bytes(b"not the job's\n")
    with pytest.raises(LogUnavailable, match="replaced"):
        worker.stream(job, owner)
    path.unlink()
    os.symlink("/etc/hostname", path)
    with pytest.raises(LogUnavailable, match="replaced"):
        worker.stream(job, owner)


def test_streams_survive_the_log_directory_being_moved(
    worker: Worker, owner: uuid.UUID, log_dir: Path, tmp_path: Path
) -> None:
    before = worker.start(Command("echo", ["before"]), owner)
    worker.wait(before, owner, timeout=10)
    # Moved away, and a new, empty directory put in its place.
    log_dir.rename(tmp_path / "moved")
    log_dir.mkdir()
    after = worker.start(Command("echo", ["after"]), owner)
    worker.wait(after, owner, timeout=10)
    for job, out in ((before, b"before\n"), (after, b"after\n")):
        with worker.stream(job, owner) as r:
            assert r.read() == out
    assert list(log_dir.iterdir()) == []
    # The path in JobInfo is where the log was created.
    assert worker.query(after, owner).log_path.parent == log_dir


def test_the_store_removes_and_measures_a_log_only_while_it_is_the_one_created(
    tmp_path: Path,
) -> None:
    store = LogStore(tmp_path)
    try:
        name = store.base_name("/usr/bin/my tool") + "_1.log"
        assert name == "my_tool_1.log"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=store.dir_fd)
        log = store.adopt(fd, name, uuid.uuid4())
        assert log.path == tmp_path / name
        log.append(memoryview(b"x\n"))
        log.finish()
        assert store.size(log) == 2
        # Replaced by another file under the same name: not the store's to remove.
        log.path.unlink()
        log.path.write_bytes(b"someone else's")
        assert store.size(log) is None
        store.discard(log)
        assert log.path.read_bytes() == b"someone else's"
        log.path.unlink()
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=store.dir_fd)
        log = store.adopt(fd, name, uuid.uuid4())
        store.discard(log)  # open or ended, the same
        assert not log.path.exists()
        assert log.fd == -1
    finally:
        store.close()


def test_bytes_a_write_put_at_the_wrong_offset_are_never_read(
    log_dir: Path, owner: uuid.UUID, control: ResourceControl, fifo: str
) -> None:
    # The window between a log write that landed at the wrong offset (the file was cut)
    # and the writer's look at where it landed: the reactor thread is stopped right
    # there while readers read, and must neither deliver those bytes nor (async) block
    # their event loop waiting for the writer.
    source, first = inspect.getsourcelines(LogFile.append)
    stop_at = first + next(i for i, line in enumerate(source) if "os.lseek" in line)
    armed, paused, go = threading.Event(), threading.Event(), threading.Event()

    def in_append(frame: FrameType, event: str, arg: object) -> object:
        if event == "line" and frame.f_lineno == stop_at and armed.is_set():
            armed.clear()
            paused.set()
            go.wait()
        return in_append

    def reactor_tracer(frame: FrameType, event: str, arg: object) -> object:
        return in_append if frame.f_code is LogFile.append.__code__ else None

    threading.settrace(reactor_tracer)  # type: ignore[arg-type]
    try:
        w = Worker(log_dir, resource_control=control)  # its reactor thread is traced
    finally:
        threading.settrace(None)
    watchdog = threading.Timer(10, go.set)  # (if a reader blocked, the test still ends)
    try:
        job = w.start(Command(PY, ["-c", ECHO, fifo]), owner)
        with open(fifo, "wb", buffering=0) as steps:
            steps.write(b"0123456789\n")
            with w.stream(job, owner) as r:
                assert r.read(100) == b"0123456789"
            os.truncate(w.query(job, owner).log_path, 0)
            armed.set()
            steps.write(b"ABCDEFGHIJKLMNOPQRST\n")  # lands at byte 0, not 10
            assert paused.wait(10)
            watchdog.start()
            blocking: list[bytes] = []

            def read_blocking() -> None:
                with w.stream(job, owner) as r:
                    blocking.append(read_until_unavailable(r.read))

            sync = threading.Thread(target=read_blocking)
            sync.start()

            async def follow() -> bytes:
                async with AsyncWorker(w).stream(job, owner) as r:
                    reading = asyncio.ensure_future(read_until_unavailable_async(r.read))
                    for _ in range(10):
                        await asyncio.sleep(0)  # the loop goes on meanwhile
                    assert not reading.done()
                    go.set()
                    return await reading

            assert asyncio.run(follow()) == b""
            assert watchdog.is_alive(), "the async reader blocked its event loop"
            sync.join(10)
            assert blocking == [b""]
            steps.write(b"q\n")
        loss = w.wait(job, owner, timeout=10).log_loss
        assert loss is not None and (loss.cause, loss.held) == (LossCause.TRUNCATED, 0)
    finally:
        go.set()
        watchdog.cancel()
        w.close()
