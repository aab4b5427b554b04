"""Ownership isolation and safe log creation."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from jobworker import Command, JobNotFound, Worker


def test_other_owner_sees_exactly_a_missing_job(worker: Worker, owner: uuid.UUID) -> None:
    other = uuid.uuid4()
    job = worker.start(Command("sleep", ["1000"]), owner)
    missing = uuid.uuid4()
    for op in (worker.query, worker.stop, worker.stream):
        with pytest.raises(JobNotFound) as theirs:
            op(job, other)
        with pytest.raises(JobNotFound) as nobodys:
            op(missing, other)
        assert str(theirs.value) == str(nobodys.value).replace(str(missing), str(job))
    assert worker.list(other) == []
    assert [i.id for i in worker.list(owner)] == [job]
    worker.stop(job, owner, grace=0)


def test_existing_file_at_log_path_is_left_alone(
    worker: Worker, owner: uuid.UUID, log_dir: Path
) -> None:
    # Pre-create the next few pids' log names; we cannot know the pid beforehand,
    # so occupy a range and check that whichever was hit was not written into.
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    planted = {}
    for pid in range(last + 1, last + 50):
        p = log_dir / f"echo_{pid}.log"
        p.write_bytes(b"stale")
        planted[p] = b"stale"
    job = worker.start(Command("echo", ["fresh"]), owner)
    info = worker.query(job, owner)
    with worker.stream(job, owner) as r:
        assert r.read() == b"fresh\n"
    for p, content in planted.items():
        assert p.read_bytes() == content
    if log_dir / f"echo_{info.pid}.log" in planted:
        assert info.log_path == log_dir / f"echo_{info.pid}.1.log"


def test_symlink_at_log_path_is_not_followed(
    worker: Worker, owner: uuid.UUID, log_dir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    with open("/proc/sys/kernel/ns_last_pid") as f:
        last = int(f.read())
    for pid in range(last + 1, last + 50):
        os.symlink(victim, log_dir / f"echo_{pid}.log")
    job = worker.start(Command("echo", ["fresh"]), owner)
    info = worker.query(job, owner)
    with worker.stream(job, owner) as r:
        assert r.read() == b"fresh\n"
    assert victim.read_bytes() == b"precious"
    assert not info.log_path.is_symlink()
