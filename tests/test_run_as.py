"""Jobs that run as another user (``RunAs``): ids, groups, what the kernel then refuses
them, and what a worker that is not root cannot do."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker import (
    AsyncWorker,
    Command,
    InvalidCommand,
    Limits,
    RunAs,
    StartError,
    State,
    Status,
    Worker,
    detect,
)

from conftest import PY, job_cgroup_lines, live_children

# Ids nobody on this machine uses, so nothing of theirs is in the way.
A, B = 61001, 61002
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="taking other ids needs root")


def finish(w: Worker, job: uuid.UUID, owner: uuid.UUID) -> tuple[bytes, Status]:
    with w.stream(job, owner) as r:
        out = r.read()
    return out, w.wait(job, owner).status


def status_ids(out: bytes) -> dict[str, list[str]]:
    fields = dict(line.split(":", 1) for line in out.decode().splitlines() if ":" in line)
    return {k: fields[k].split() for k in ("Uid", "Gid", "Groups")}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RunAs(True, 0), "uid must be an int"),
        (lambda: RunAs(0, -1), "gid must be an int"),
        (lambda: RunAs(2**32 - 1, 0), "uid must be an int"),
        (lambda: RunAs(0, 0, (1, "2")), "group must be an int"),  # type: ignore[arg-type]
        (lambda: RunAs(0, 0, 5), "groups must be a sequence"),  # type: ignore[arg-type]
        (lambda: RunAs(0, 0, range(70000)), "at most 65536 groups"),  # type: ignore[arg-type]
        (lambda: RunAs(1.0, 0), "uid must be an int"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_run_as_is_refused(make: object, message: str) -> None:
    with pytest.raises(InvalidCommand, match=message):
        make()  # type: ignore[operator]


def test_run_as_is_an_immutable_value() -> None:
    r = RunAs(A, A, [B, A])  # type: ignore[arg-type]
    assert r.groups == (B, A)
    assert r == RunAs(A, A, (B, A)) and hash(r) == hash(RunAs(A, A, (B, A)))
    with pytest.raises(AttributeError):
        r.uid = 0  # type: ignore[misc]


def test_start_refuses_a_run_as_that_is_not_one(
    worker: Worker, owner: uuid.UUID, log_dir: Path
) -> None:
    with pytest.raises(InvalidCommand, match="run_as must be a RunAs"):
        worker.start(Command("true"), owner, run_as=(A, A))  # type: ignore[arg-type]
    assert list(log_dir.iterdir()) == [] and worker.list(owner) == []


@needs_root
def test_a_job_has_the_ids_it_was_given_and_no_other_groups(
    worker: Worker, owner: uuid.UUID
) -> None:
    plain = RunAs(A, B)
    job = worker.start(Command("cat", ["/proc/self/status"]), owner, run_as=plain)
    out, status = finish(worker, job, owner)
    assert status == Status.exited(0)
    # root's own supplementary groups are gone, not inherited
    assert status_ids(out) == {"Uid": [str(A)] * 4, "Gid": [str(B)] * 4, "Groups": []}
    assert worker.query(job, owner).run_as == plain

    grouped = RunAs(B, B, (A, 61003))
    job = worker.start(Command("cat", ["/proc/self/status"]), owner, run_as=grouped)
    out, status = finish(worker, job, owner)
    assert status_ids(out)["Groups"] == [str(A), "61003"]

    job = worker.start(Command("true"), owner)
    assert worker.query(job, owner).run_as is None
    # Only the job's process changed ids: every thread of the worker is still root.
    for task in os.listdir("/proc/self/task"):
        ids = status_ids(Path(f"/proc/self/task/{task}/status").read_bytes())
        assert ids["Uid"] == ["0"] * 4 and ids["Gid"] == ["0"] * 4, (task, ids)


@needs_root
def test_the_async_face_takes_run_as_too(worker: Worker, owner: uuid.UUID) -> None:
    async def main() -> uuid.UUID:
        return await AsyncWorker(worker).start(Command("id", ["-u"]), owner, run_as=RunAs(A, A))

    job = asyncio.run(main())
    assert finish(worker, job, owner) == (f"{A}\n".encode(), Status.exited(0))


@pytest.fixture
def shared_log_dir() -> Iterator[Path]:
    # Like /tmp: every user may pass through it, so what protects a log is its own mode.
    d = Path(tempfile.mkdtemp(prefix="jobworker-test-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


@needs_root
def test_a_job_cannot_read_another_jobs_log(shared_log_dir: Path, owner: uuid.UUID) -> None:
    with Worker(shared_log_dir) as w:
        secret = w.start(Command("echo", ["secret"]), owner)
        assert finish(w, secret, owner) == (b"secret\n", Status.exited(0))
        log = str(w.query(secret, owner).log_path)
        thief = w.start(Command("cat", [log]), owner, run_as=RunAs(A, A))
        out, status = finish(w, thief, owner)
        assert status == Status.exited(1)
        assert out == f"cat: {log}: Permission denied\n".encode()
        # The path is right: the worker's own user reads it.
        reader = w.start(Command("cat", [log]), owner)
        assert finish(w, reader, owner) == (b"secret\n", Status.exited(0))


@needs_root
def test_a_job_cannot_signal_a_job_of_another_user(worker: Worker, owner: uuid.UUID) -> None:
    victim = worker.start(Command("sleep", ["1000"]), owner, run_as=RunAs(B, B))
    pid = worker.query(victim, owner).pid
    killer = worker.start(
        Command("sh", ["-c", f"kill -9 {pid}; echo status $?"]), owner, run_as=RunAs(A, A)
    )
    out, status = finish(worker, killer, owner)
    assert status == Status.exited(0)
    assert out.endswith(b"status 1\n") or out.endswith(b"status 2\n"), out
    assert b"Operation not permitted" in out, out
    assert worker.query(victim, owner).status.state is State.RUNNING
    worker.stop(victim, owner, grace=0)


@needs_root
def test_the_cwd_is_entered_with_the_jobs_own_permissions(
    worker: Worker, owner: uuid.UUID, tmp_path: Path, log_dir: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(StartError, match=f"cannot change directory to {private}: Permission"):
        worker.start(Command("pwd", cwd=str(private)), owner, run_as=RunAs(A, A))
    assert list(log_dir.iterdir()) == [] and worker.list(owner) == []
    job = worker.start(Command("pwd", cwd=str(private)), owner)
    assert finish(worker, job, owner) == (f"{private}\n".encode(), Status.exited(0))


@needs_root
def test_the_first_instruction_runs_inside_the_cgroup(log_dir: Path, owner: uuid.UUID) -> None:
    control = detect()
    if control.name == "none":
        pytest.skip(f"no writable cgroups here: {getattr(control, 'reason', '')}")
    # The cgroups are joined as root, before the ids change: a user could not write
    # cgroup.procs, and joining after exec would let the program run outside.
    limits = Limits(memory=256 << 20, pids=100)
    with Worker(log_dir, resource_control=control) as w:
        job = w.start(
            Command("cat", ["/proc/self/cgroup"]), owner, limits=limits, run_as=RunAs(A, A)
        )
        out, status = finish(w, job, owner)
    assert status == Status.exited(0)
    lines = out.decode().splitlines()
    joined = job_cgroup_lines(out.decode())
    assert len(joined) == (3 if control.name == "cgroup1" else 1), lines


@needs_root
def test_a_worker_that_is_not_root_cannot_run_jobs_as_another_user(shared_log_dir: Path) -> None:
    # A host that dropped to an unprivileged user of its own before making its worker.
    os.chown(shared_log_dir, A, A)
    script = f"""
import os, uuid
from jobworker import Command, NoCgroups, RunAs, StartError, Worker
os.setgroups([])
os.setgid({A})
os.setuid({A})
with Worker({str(shared_log_dir)!r}, resource_control=NoCgroups("test")) as w:
    owner = uuid.uuid4()
    try:
        w.start(Command("true"), owner, run_as=RunAs({B}, {B}))
    except StartError as e:
        print(e)
    print(w.list(owner), os.listdir({str(shared_log_dir)!r}))
    job = w.start(Command("id", ["-u"]), owner)  # its own user, as before
    with w.stream(job, owner) as r:
        print(r.read().decode(), end="")
"""
    done = subprocess.run([PY, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == (
        f"cannot set the job's supplementary groups to []: Operation not permitted\n[] []\n{A}\n"
    )
    assert live_children() == []
