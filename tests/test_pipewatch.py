"""Waking on a job's output without polling its pipe (fasync signals on a signalfd).

The cases that a wake-up scheme which only reports *finished* writes would hang on, the
signal queue overflowing, and the epoll fallback.
"""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import jobworker._reactor
from jobworker import Command, NoCgroups, Worker
from jobworker._pipewatch import PipeSource
from jobworker._reactor import Reactor

from conftest import PY, run_python

BIG = 3 << 20  # three times the pipe


def test_one_write_larger_than_the_pipe(worker: Worker, owner: uuid.UUID) -> None:
    # The writer fills the empty pipe and sleeps inside write(): the worker must be told
    # before that call returns, or both wait for ever.
    code = f"import os\nassert os.write(1, bytes(range(256)) * {BIG // 256}) == {BIG}"
    assert run_python(worker, owner, code) == bytes(range(256)) * (BIG // 256)


def test_sendfile_and_splice_into_the_pipe(worker: Worker, owner: uuid.UUID) -> None:
    code = (
        "import os, tempfile\n"
        "f = tempfile.TemporaryFile()\n"
        f"f.write(bytes(range(256)) * {BIG // 256}); f.flush()\n"
        "fd = f.fileno()\n"
        "done = 0\n"
        f"while done < {BIG}: done += os.sendfile(1, fd, done, {BIG} - done)\n"
        "done = 0\n"
        f"while done < {BIG}: done += os.splice(fd, 1, {BIG} - done, offset_src=done)\n"
    )
    assert run_python(worker, owner, code) == bytes(range(256)) * (BIG // 256) * 2


def test_a_pipe_is_enlarged_only_for_bulk_output(worker: Worker, owner: uuid.UUID) -> None:
    # Quiet jobs keep the kernel's default pipe; one that writes in bulk gets the large
    # pipe that capture speed depends on.
    def pipe_size(job: uuid.UUID) -> int:
        return fcntl.fcntl(worker.jobs.get(job, owner)._pipe.read_fd, fcntl.F_GETPIPE_SZ)

    rest = "print('done', flush=True); import time; time.sleep(30)"
    quiet = worker.start(Command(PY, ["-c", "print('a line')\n" + rest]), owner)
    busy = worker.start(Command(PY, ["-c", f"import os; os.write(1, b'x' * {BIG})\n{rest}"]), owner)
    try:
        for job in (quiet, busy):
            with worker.stream(job, owner) as r:
                data = b""
                for chunk in r:
                    data += chunk
                    if data.endswith(b"done\n"):
                        break
        assert pipe_size(quiet) == 1 << 16
        assert pipe_size(busy) == 1 << 20
    finally:
        worker.stop(quiet, owner, grace=0)
        worker.stop(busy, owner, grace=0)


def test_two_workers_in_one_process_get_only_their_own_signals(
    owner: uuid.UUID, tmp_path: Path
) -> None:
    # Each reactor thread has its pipes' signals directed at itself and reads only its
    # own from its signalfd.
    code = "import os, time\nfor i in range(200):\n    os.write(1, b'%d\\n' % i); time.sleep(0.001)"
    expected = b"".join(b"%d\n" % i for i in range(200))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        Worker(tmp_path / "a", resource_control=NoCgroups("test")) as a,
        Worker(tmp_path / "b", resource_control=NoCgroups("test")) as b,
    ):
        jobs = [(w, w.start(Command(PY, ["-c", code]), owner)) for _ in range(10) for w in (a, b)]
        for w, job in jobs:
            with w.stream(job, owner) as r:
                assert r.read() == expected


@pytest.mark.parametrize("room", [0, 1])
def test_signal_queue_overflow_loses_nothing(owner: uuid.UUID, tmp_path: Path, room: int) -> None:
    # With no room (or room for one: the limit counts every pending signal of the user,
    # in every process), the queue overflows and the kernel sends SIGIO instead, which
    # says only "some pipe".  The watcher's own start-up check must take that as working
    # signals: falling back to epoll here once made this test depend on what else the
    # machine had pending.
    soft, hard = resource.getrlimit(resource.RLIMIT_SIGPENDING)
    resource.setrlimit(resource.RLIMIT_SIGPENDING, (room, hard))
    try:
        with Worker(tmp_path, resource_control=NoCgroups("test")) as w:
            code = (
                "import os, time\n"
                "for i in range(300):\n"
                "    os.write(1, b'%d\\n' % i)\n"
                "    if i % 50 == 0: time.sleep(0.005)\n"
            )
            jobs = [w.start(Command(PY, ["-c", code]), owner) for _ in range(20)]
            expected = b"".join(b"%d\n" % i for i in range(300))
            for job in jobs:
                with w.stream(job, owner) as r:
                    assert r.read() == expected
            watcher = w._reactor._watcher
            assert watcher is not None and watcher.overflows > 0
    finally:
        resource.setrlimit(resource.RLIMIT_SIGPENDING, (soft, hard))


def test_without_signals_pipes_are_polled(
    owner: uuid.UUID,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse() -> None:
        raise OSError("refused by the test")

    monkeypatch.setattr(jobworker._reactor, "PipeWatcher", refuse)
    with (
        caplog.at_level(logging.WARNING, logger="jobworker"),
        Worker(tmp_path, resource_control=NoCgroups("test")) as w,
    ):
        assert run_python(w, owner, f"import os\nos.write(1, b'y' * {BIG})") == b"y" * BIG
        assert run_python(w, owner, "print('small')") == b"small\n"
    assert "polling them with epoll" in caplog.text


class Collector:
    """An ``on_ready`` that reads its pipe once, as a job does, and keeps the bytes."""

    def __init__(self, reactor: Reactor, fd: int) -> None:
        self.reactor = reactor
        self.source = PipeSource(fd, self.on_ready)
        self.data = bytearray()
        self.got = threading.Event()
        self.eof = threading.Event()

    def on_ready(self) -> int:
        try:
            chunk = os.read(self.source.fd, 1 << 20)
        except BlockingIOError:
            return 0
        if not chunk:
            self.reactor.remove_pipe(self.source)
            self.eof.set()
        self.data += chunk
        self.got.set()
        return len(chunk)


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    r = Reactor()
    yield r
    r.close()


def test_output_written_before_the_arming_is_read(reactor: Reactor) -> None:
    # Written before the pipe was armed, so no signal: the arming looks (FIONREAD).
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        os.write(w, b"early")
        c = Collector(reactor, r)
        reactor.add_pipe(c.source)
        assert c.got.wait(5)  # with no write or close after the arming
        assert bytes(c.data) == b"early"
        os.close(w)
        w = -1
        assert c.eof.wait(5)
        assert bytes(c.data) == b"early"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_writers_gone_before_the_arming_need_a_poke(reactor: Reactor) -> None:
    # Nobody signals the end of writers that left before the arming; a job's exit
    # handler pokes the pipe, and the poke must find the end.
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        os.close(w)
        c = Collector(reactor, r)
        reactor.add_pipe(c.source)
        assert not c.eof.wait(0.2)
        reactor.call_soon(lambda: reactor.poke_pipe(c.source))
        assert c.eof.wait(5)
        assert bytes(c.data) == b""
    finally:
        os.close(r)
