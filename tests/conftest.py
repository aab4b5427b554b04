"""Shared fixtures: a real Worker on a temporary log directory, with leak checks.

Every worker-using test runs under two lifecycles: with the resource control this
machine offers (cgroups when root) and with none (process groups only).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from jobworker import (
    Command,
    JobGroup,
    Limits,
    NoCgroups,
    ResourceControl,
    Status,
    Usage,
    Worker,
    detect,
)

PY = sys.executable


@contextlib.contextmanager
def small_tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` (made here) with ``options`` (size, nr_inodes), for
    filling up; skips the test unless root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def run_python(worker: Worker, owner: uuid.UUID, code: str) -> bytes:
    """Run ``python -c code`` as a job; return everything a reader got, after checking
    that the job exited 0 and that its log holds exactly the same bytes."""
    job = worker.start(Command(PY, ["-c", code]), owner)
    with worker.stream(job, owner) as r:
        data = r.read()
    info = worker.query(job, owner)
    assert info.status == Status.exited(0), info.status
    assert info.log_path.read_bytes() == data
    return data


def job_cgroup_lines(proc_cgroup: str) -> list[str]:
    """The lines of a ``/proc/<pid>/cgroup`` text that name a job cgroup of one of this
    process's workers, after checking that they all name the same job cgroup."""
    pattern = re.compile(rf"/jobworker-{os.getpid()}-\d+-\d+/(job-[0-9a-f]{{32}})$")
    lines = [line for line in proc_cgroup.splitlines() if pattern.search(line)]
    names = {m[1] for line in lines if (m := pattern.search(line))}
    assert len(names) <= 1, proc_cgroup
    return lines


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def live_children() -> list[int]:
    """Pids whose parent is this process (zombies included)."""
    me = str(os.getpid())
    kids = []
    for task in os.listdir(f"/proc/{me}/task"):
        try:
            with open(f"/proc/{me}/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass
    return kids


def dies(pid: int, timeout: float = 5.0) -> bool:
    """Whether ``pid`` (not our child) has exited, or does within ``timeout`` seconds.

    A SIGKILLed process needs a moment to be scheduled and die; its pidfd turns
    readable when it has, so the test waits for that event instead of sampling /proc.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True  # dead and reaped already
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(timeout * 1000))
    finally:
        os.close(fd)


@pytest.fixture(params=["detected", "none"])
def control(request: pytest.FixtureRequest) -> ResourceControl:
    if request.param == "none":
        return NoCgroups("chosen by the test")
    return detect()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir()
    return d


@pytest.fixture
def worker(log_dir: Path, control: ResourceControl) -> Iterator[Worker]:
    fds_before = open_fds()
    threads_before = threading.active_count()
    w = Worker(log_dir, resource_control=control, grace=5)
    yield w
    w.close()
    # Nothing a worker made may outlive it: no process, fd or thread.
    assert live_children() == []
    assert open_fds() == fds_before
    assert threading.active_count() == threads_before


@pytest.fixture
def make_worker(log_dir: Path, control: ResourceControl) -> Iterator[Callable[..., Worker]]:
    """``make_worker(**kwargs)``: a ``Worker(log_dir, ...)`` with this test's resource
    control, closed and checked for leftovers as ``worker`` is."""
    fds_before = open_fds()
    threads_before = threading.active_count()
    made: list[Worker] = []

    def make(**kwargs: Any) -> Worker:
        w = Worker(kwargs.pop("log_dir", log_dir), resource_control=control, grace=5, **kwargs)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
    assert live_children() == []
    assert open_fds() == fds_before
    assert threading.active_count() == threads_before


@pytest.fixture
def owner() -> uuid.UUID:
    return uuid.uuid4()


class FileGroup(JobGroup):
    """A job "group" that is one file: the job's child writes "0" into it as it would
    into a cgroup.procs file, and nothing else happens."""

    def __init__(self, procs: str) -> None:
        self._procs = procs

    @property
    def procs_files(self) -> Sequence[str]:
        return (self._procs,)

    @property
    def events_file(self) -> str | None:
        return None

    def populated(self) -> bool:
        return False

    def kill(self) -> None:
        pass

    def usage(self) -> Usage:
        return Usage()

    def oom_killed(self) -> bool:
        return False

    def remove(self) -> None:
        pass


class FileGroups(ResourceControl):
    """Resource control that has every job's child "join" the file ``procs`` (a FIFO
    holds the child there, while the starting thread sleeps in clone, until the test
    opens the FIFO's other end); no cgroups, no limits."""

    name = "file"
    contains = False
    reason = "jobs join a file, for a test"

    def __init__(self, procs: str) -> None:
        self.procs = procs

    def validate(self, limits: Limits) -> None:
        pass

    def create(self, job_id: uuid.UUID, limits: Limits) -> JobGroup:
        return FileGroup(self.procs)

    def close(self) -> None:
        pass


def wait_for_child(timeout: float = 10.0) -> int:
    """The pid of this process's only child, once it has one (a job's child, blocked)."""
    deadline = time.monotonic() + timeout
    while not (kids := live_children()):
        assert time.monotonic() < deadline, "no child appeared"
        time.sleep(0.005)
    assert len(kids) == 1, kids
    return kids[0]


# -- the command line ----------------------------------------------------------------------

# The console script `pip install` made, beside this interpreter: the CLI as users run it.
JOBWORKER = str(Path(sys.executable).with_name("jobworker"))

# What the library says once per worker where it has no cgroups; tests of the CLI's
# messages look past it, so that they also pass without root.
NO_CGROUPS_WARNING = "jobs are contained by their process group only"


def jobworker(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run ``jobworker ARGS...`` to its end; stdout and stderr captured as bytes."""
    return subprocess.run(
        [JOBWORKER, *args],
        capture_output=True,
        env=None if env is None else {**os.environ, **env},
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def stderr_lines(stderr: bytes) -> list[str]:
    """jobworker's lines on stderr, never a traceback; each one says ``jobworker: ...``."""
    text = stderr.decode()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if NO_CGROUPS_WARNING not in line]
    for line in lines:
        assert line.startswith("jobworker: "), text
    return lines


def error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The one line on stderr of a command that failed, without its ``jobworker: ``."""
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, lines
    return lines[0].removeprefix("jobworker: ")


def documented_record() -> dict[str, Any]:
    """The example of a job's JSON object in docs/CLI.md."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "CLI.md").read_text()
    example: dict[str, Any] = json.loads(doc.split("```json\n", 1)[1].split("```", 1)[0])
    return example


def same_shape(obj: object, example: object) -> bool:
    """Whether ``obj`` has the keys of ``example``, in its order, nested; a null on either
    side stands for an object that may be null (``run_as``), and ``command.env`` is the
    job's own mapping."""
    if obj is None or example is None:
        return True
    if isinstance(obj, dict) and isinstance(example, dict):
        return list(obj) == list(example) and all(
            k == "env" or same_shape(obj[k], example[k]) for k in obj
        )
    return not isinstance(obj, dict) and not isinstance(example, dict)
