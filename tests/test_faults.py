"""Faults of the host around the worker: failing callbacks."""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import uuid
from pathlib import Path

import pytest

from jobworker import Command, Status, Worker
from jobworker._reactor import Reactor


def turns(reactor: Reactor, n: int = 5) -> None:
    """Let the reactor go round its loop ``n`` times."""
    for _ in range(n):
        done = threading.Event()
        reactor.call_soon(done.set)
        assert done.wait(10)


def test_a_handler_that_raises_is_not_called_again(caplog: pytest.LogCaptureFixture) -> None:
    # An eventfd with a count stays readable: level-triggered epoll reports it on every
    # turn, so a handler that fails and stays registered runs (and fails) for ever.
    reactor = Reactor()
    fd = os.eventfd(1, os.EFD_CLOEXEC)
    calls: list[int] = []

    def handler(mask: int) -> None:
        calls.append(mask)
        raise OSError(errno.EMFILE, "Too many open files")

    try:
        with caplog.at_level(logging.ERROR, logger="jobworker"):
            reactor.register(fd, select.EPOLLIN, handler)
            turns(reactor)
        assert len(calls) == 1
        assert caplog.text.count("internal error in the reactor") == 1
    finally:
        reactor.close()
        os.close(fd)


def test_a_failing_pipe_watcher_leaves_the_pipes_to_epoll(
    worker: Worker, owner: uuid.UUID, log_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reactor = worker._reactor
    watcher = reactor._watcher
    if watcher is None:
        pytest.skip("this machine refuses the pipe watcher's signals already")
    go = log_dir.parent / "go"
    os.mkfifo(go)
    before = worker.start(Command("sh", ["-c", f"read _ < {go}; echo before"]), owner)

    def broken() -> list[object]:
        raise OSError(errno.EBADF, "Bad file descriptor")

    with caplog.at_level(logging.ERROR, logger="jobworker"):
        watcher.ready = broken  # type: ignore[method-assign, assignment]
        job = worker.start(Command("echo", ["hello"]), owner)
        assert worker.wait(job, owner, timeout=10).status == Status.exited(0)
        with worker.stream(job, owner) as r:
            assert r.read() == b"hello\n"
        # A job started afterwards, and one armed before, are read through epoll.
        later = worker.start(Command("sh", ["-c", "echo one; sleep 0.1; echo two"]), owner)
        with worker.stream(later, owner) as r:
            assert r.read() == b"one\ntwo\n"
        go.write_text("go\n")  # the job armed before the failure writes now
        with worker.stream(before, owner) as r:
            assert r.read() == b"before\n"
        assert worker.query(before, owner).status == Status.exited(0)
    assert caplog.text.count("internal error in the reactor") == 1
    assert caplog.text.count("the pipe watcher failed") == 1
