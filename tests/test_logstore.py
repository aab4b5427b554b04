"""The log store: reopening a job's log safely (a FIFO at its name, a moved directory),
and removing it only while it is the file the job's child created."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from jobworker import AsyncWorker, Command, LogUnavailable, Worker
from jobworker._logstore import LogStore


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
        os.write(log.fd, b"x\n")
        log.close()
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
