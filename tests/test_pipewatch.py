"""Waking on a job's output without polling its pipe (fasync signals on a signalfd).

The cases that a wake-up scheme which only reports *finished* writes would hang on, the
signal queue overflowing, and the epoll fallback.
"""

from __future__ import annotations

import logging
import resource
import uuid
from pathlib import Path

import pytest

import jobworker._reactor
from jobworker import Command, NoCgroups, State, Worker

from conftest import PY

BIG = 3 << 20  # three times the pipe


def run(worker: Worker, owner: uuid.UUID, code: str) -> bytes:
    job = worker.start(Command(PY, ["-c", code]), owner)
    with worker.stream(job, owner) as r:
        data = r.read()
    info = worker.query(job, owner)
    assert info.status.state is State.EXITED and info.status.exit_code == 0, info.status
    return data


def test_one_write_larger_than_the_pipe(worker: Worker, owner: uuid.UUID) -> None:
    # The writer fills the empty pipe and sleeps inside write(): the worker must be told
    # before that call returns, or both wait for ever.
    code = f"import os\nassert os.write(1, bytes(range(256)) * {BIG // 256}) == {BIG}"
    assert run(worker, owner, code) == bytes(range(256)) * (BIG // 256)


def test_sendfile_and_splice_into_the_pipe(worker: Worker, owner: uuid.UUID) -> None:
    code = (
        "import os, tempfile\n"
        "f = tempfile.TemporaryFile()\n"
        f"f.write(bytes(range(256)) * {BIG // 256}); f.flush()\n"
        "fd = f.fileno()\n"
        f"done = 0\n"
        f"while done < {BIG}: done += os.sendfile(1, fd, done, {BIG} - done)\n"
        f"done = 0\n"
        f"while done < {BIG}: done += os.splice(fd, 1, {BIG} - done, offset_src=done)\n"
    )
    assert run(worker, owner, code) == bytes(range(256)) * (BIG // 256) * 2


def test_signal_queue_overflow_loses_nothing(owner: uuid.UUID, tmp_path: Path) -> None:
    # With room for one queued signal, concurrent jobs overflow the queue at once; the
    # kernel then sends SIGIO, which says only "some pipe".
    soft, hard = resource.getrlimit(resource.RLIMIT_SIGPENDING)
    resource.setrlimit(resource.RLIMIT_SIGPENDING, (1, hard))
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
        assert run(w, owner, f"import os\nos.write(1, b'y' * {BIG})") == b"y" * BIG
        assert run(w, owner, "print('small')") == b"small\n"
    assert "polling them with epoll" in caplog.text
