"""Resource limits and containment with real cgroups (root on a cgroup machine)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker import (
    Command,
    LimitError,
    Limits,
    NoCgroups,
    State,
    Status,
    StopType,
    Worker,
    _spawn,
    detect,
)

from conftest import PY, dies, job_cgroup_lines, live_children

CONTROL = detect()
needs_cgroups = pytest.mark.skipif(
    CONTROL.name == "none", reason=f"no writable cgroups here: {getattr(CONTROL, 'reason', '')}"
)
MiB = 1 << 20


def cgroup_dirs() -> set[str]:
    """Every job cgroup directory on the machine (any hierarchy)."""
    found = set()
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found |= {os.path.join(root, d) for d in dirs if d.startswith("job-")}
    return found


def own_cgroup_dirs() -> set[str]:
    """The job cgroups of this process's workers (other processes on the machine, other
    test runs say, come and go meanwhile)."""
    return {d for d in cgroup_dirs() if f"/jobworker-{os.getpid()}-" in d}


@pytest.fixture
def cg_worker(log_dir: Path) -> Iterator[Worker]:
    before = own_cgroup_dirs()
    with Worker(log_dir, resource_control=detect(), grace=5) as w:
        yield w
    assert own_cgroup_dirs() == before
    assert live_children() == []


def finish(w: Worker, job: uuid.UUID, owner: uuid.UUID) -> bytes:
    with w.stream(job, owner) as r:
        return r.read()


@pytest.fixture(params=["clone3", "cgroup.procs"])
def joining(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each way the child gets into its cgroup2 cgroup: born there (CLONE_INTO_CGROUP),
    or, where the kernel cannot, by writing cgroup.procs like the v1 ones."""
    _spawn.set_without_clone_into_cgroup(request.param != "clone3")
    _spawn.set_always_clone_into_cgroup(request.param == "clone3")
    try:
        yield request.param
    finally:
        _spawn.set_without_clone_into_cgroup(False)
        _spawn.set_always_clone_into_cgroup(False)


@needs_cgroups
@pytest.mark.parametrize("with_limits", [False, True])
def test_first_instruction_runs_inside_the_job_cgroup(
    cg_worker: Worker, owner: uuid.UUID, joining: str, with_limits: bool
) -> None:
    # cat's first act is to read its own cgroup membership: if the child joined its
    # cgroups only after exec, this would show the worker's cgroups instead.
    limits = Limits(memory=256 * MiB, pids=100, cpu=1.0) if with_limits else None
    job = cg_worker.start(Command("cat", ["/proc/self/cgroup"]), owner, limits=limits)
    out = finish(cg_worker, job, owner).decode()
    membership = set()
    for line in job_cgroup_lines(out):
        _, controllers, _ = line.split(":", 2)
        membership |= set(controllers.split(",")) if controllers else {"unified"}
    wanted = {"unified"}
    if CONTROL.name == "cgroup1" and with_limits:
        wanted |= {"memory", "pids", "cpu"}
    assert membership >= wanted, out


@needs_cgroups
def test_setsid_escapee_dies_on_stop(cg_worker: Worker, owner: uuid.UUID) -> None:
    code = "setsid sh -c 'echo $$; exec sleep 1000' & exec sleep 1000"
    job = cg_worker.start(Command("sh", ["-c", code]), owner)
    with cg_worker.stream(job, owner) as r:
        line = b""
        while not line.endswith(b"\n"):
            line += r.read(100)
        escapee = int(line)
        assert os.getsid(escapee) == escapee  # really outside the job's session
        watched = os.pidfd_open(escapee)
        cg_worker.stop(job, owner, grace=0)
        assert r.read() == b""
    # Killed with the cgroup; it left the cgroup before the job ended, and turns into
    # a zombie (pidfd readable) a moment after that.
    assert select.select([watched], [], [], 5)[0] == [watched]
    os.close(watched)


@needs_cgroups
def test_double_forked_escapee_dies_when_main_exits(
    cg_worker: Worker, owner: uuid.UUID, tmp_path: Path
) -> None:
    fifo = tmp_path / "escaped"
    os.mkfifo(fifo)
    # The main process exits only once the escapee is out of its session and reparented.
    code = f"(setsid sh -c 'echo $$; echo > {fifo}; exec sleep 1000' &) ; read _ < {fifo}"
    job = cg_worker.start(Command("sh", ["-c", code]), owner)
    out = finish(cg_worker, job, owner)
    assert cg_worker.query(job, owner).status == Status.exited(0)
    assert dies(int(out))


@needs_cgroups
def test_memory_hog_is_oom_killed_and_reported(cg_worker: Worker, owner: uuid.UUID) -> None:
    hog = "b = []\nwhile True: b.append(bytearray(1 << 20))"
    job = cg_worker.start(Command(PY, ["-c", hog]), owner, limits=Limits(memory=64 * MiB))
    finish(cg_worker, job, owner)
    info = cg_worker.query(job, owner)
    assert info.status == Status.signaled(signal.SIGKILL, oom_killed=True)
    assert info.usage.oom_kills is not None and info.usage.oom_kills >= 1
    assert info.usage.memory_peak is not None
    assert 48 * MiB <= info.usage.memory_peak <= 64 * MiB + MiB


@needs_cgroups
def test_a_job_whose_child_was_oom_killed_did_not_die_of_oom(
    cg_worker: Worker, owner: uuid.UUID
) -> None:
    # The cgroup's OOM count covers every process: a main process killed afterwards by
    # another signal is not an OOM kill.
    hog = f"{PY} -c 'x = bytearray(200 << 20)'"
    job = cg_worker.start(
        Command("sh", ["-c", f"{hog}; kill -TERM $$"]), owner, limits=Limits(memory=64 << 20)
    )
    info = cg_worker.wait(job, owner, timeout=30)
    assert info.status == Status.signaled(signal.SIGTERM, oom_killed=False)
    assert info.usage.oom_kills is not None and info.usage.oom_kills >= 1


@needs_cgroups
def test_fork_bomb_is_capped_by_pids_limit(cg_worker: Worker, owner: uuid.UUID) -> None:
    code = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        if os.fork() == 0:\n"
        "            os.read(os.open('/dev/zero', 0), 0); import time; time.sleep(1000)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('capped', n, e.errno, flush=True)\n"
        "os._exit(0)\n"
    )
    job = cg_worker.start(Command(PY, ["-c", code]), owner, limits=Limits(pids=20))
    out = finish(cg_worker, job, owner)
    m = re.fullmatch(rb"capped (\d+) (\d+)\n", out)
    assert m, out
    assert int(m.group(1)) == 19  # the main process is the 20th
    info = cg_worker.query(job, owner)
    assert info.usage.pids_limit_hits is not None and info.usage.pids_limit_hits >= 1


@needs_cgroups
def test_cpu_limit_holds_a_busy_loop_near_its_share(cg_worker: Worker, owner: uuid.UUID) -> None:
    code = "import time\nend = time.monotonic() + 2\nwhile time.monotonic() < end: pass\n"
    job = cg_worker.start(Command(PY, ["-c", code]), owner, limits=Limits(cpu=0.2))
    finish(cg_worker, job, owner)
    info = cg_worker.query(job, owner)
    assert info.ended_at is not None
    wall = info.ended_at - info.started_at
    assert info.usage.cpu_seconds is not None
    share = info.usage.cpu_seconds / wall
    assert 0.15 <= share <= 0.25, (info.usage, wall)
    assert info.usage.cpu_throttled is not None and info.usage.cpu_throttled > 0


@needs_cgroups
def test_io_limit_holds_direct_writes(cg_worker: Worker, owner: uuid.UUID, tmp_path: Path) -> None:
    target = tmp_path / "io.bin"
    limits = Limits(io_write_bps=1_000_000, io_path=str(tmp_path))
    try:
        CONTROL.validate(limits)
    except LimitError as e:
        pytest.skip(f"this machine cannot throttle IO under {tmp_path}: {e}")
    # 3 MB at 1 MB/s: direct IO bypasses the page cache, so the throttle sees it.
    cmd = Command(
        "dd", ["if=/dev/zero", f"of={target}", "bs=64k", "count=46", "oflag=direct", "status=none"]
    )
    job = cg_worker.start(cmd, owner, limits=limits)
    finish(cg_worker, job, owner)
    info = cg_worker.query(job, owner)
    assert info.status == Status.exited(0)
    assert info.ended_at is not None
    wall = info.ended_at - info.started_at
    written = 46 * 64 * 1024
    assert target.stat().st_size == written
    # Throttling allows a small initial burst; at 1 MB/s this takes about 2 s or more.
    assert written / wall <= 1_500_000, wall


@needs_cgroups
def test_no_limits_still_get_a_cgroup_and_usage(cg_worker: Worker, owner: uuid.UUID) -> None:
    job = cg_worker.start(Command(PY, ["-c", "sum(range(10**6))"]), owner)
    finish(cg_worker, job, owner)
    info = cg_worker.query(job, owner)
    assert info.status.state is State.EXITED
    assert info.usage.cpu_seconds is not None and info.usage.cpu_seconds > 0


@needs_cgroups
def test_stop_with_limits_removes_the_cgroups(cg_worker: Worker, owner: uuid.UUID) -> None:
    jobs = [
        cg_worker.start(
            Command("sleep", ["1000"]), owner, limits=Limits(memory=64 * MiB, pids=10, cpu=0.5)
        )
        for _ in range(20)
    ]
    assert len(cgroup_dirs()) >= 20
    for j in jobs:
        cg_worker.stop(j, owner, grace=0)
        assert cg_worker.query(j, owner).status == Status.stopped(StopType.KILL)


@pytest.mark.parametrize(
    "limits",
    [
        Limits(cpu=0),
        Limits(cpu=-1),
        Limits(memory=0),
        Limits(pids=0),
        Limits(io_write_bps=1000),  # no io_path
        Limits(io_write_bps=1000, io_path="/proc"),  # no block device behind it
    ],
)
def test_bad_or_unenforceable_limits_are_clear_errors(
    log_dir: Path, owner: uuid.UUID, limits: Limits
) -> None:
    with Worker(log_dir) as w:
        with pytest.raises(LimitError):
            w.start(Command("true"), owner, limits=limits)
        assert w.list(owner) == []
        assert list(log_dir.iterdir()) == []


def test_limits_without_cgroups_are_refused(log_dir: Path, owner: uuid.UUID) -> None:
    with Worker(log_dir, resource_control=NoCgroups("test")) as w:
        with pytest.raises(LimitError, match="need cgroups"):
            w.start(Command("true"), owner, limits=Limits(memory=64 * MiB))
        job = w.start(Command("true"), owner)
        assert finish(w, job, owner) == b""


@needs_cgroups
def test_next_worker_cleans_up_after_a_crashed_one(log_dir: Path, owner: uuid.UUID) -> None:
    code = (
        "import sys, uuid\n"
        "from jobworker import Command, Worker\n"
        "w = Worker(sys.argv[1])\n"
        "o = uuid.uuid4()\n"
        "j = w.start(Command('sleep', ['1000']), o)\n"
        "print(w.query(j, o).pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    crashed = subprocess.Popen(
        [PY, "-c", code, str(log_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert crashed.stdout is not None
    orphan = int(crashed.stdout.readline())
    watched = os.pidfd_open(orphan)
    parents = {d for d in cgroup_dirs() if "job-" in d and f"-{crashed.pid}-" in d}
    assert parents, "the crashed worker's job had no cgroup"
    crashed.kill()  # a worker that dies without cleaning up
    crashed.communicate()
    assert select.select([watched], [], [], 0)[0] == []  # its job outlived it

    with Worker(log_dir) as w:  # the next worker
        job = w.start(Command("true"), owner)
        finish(w, job, owner)
    assert select.select([watched], [], [], 5)[0] == [watched]
    os.close(watched)
    assert not any(os.path.exists(d) for d in parents)
    assert not [d for d in cgroup_dirs() if f"-{crashed.pid}-" in d]
