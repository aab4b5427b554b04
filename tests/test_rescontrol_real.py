"""Resource control on this machine's real cgroups (needs root and writable cgroups).

The tests put a child into the job's cgroups from the parent (writing its pid into each
``cgroup.procs``) while the child waits on its stdin, and only then let it run, so that
everything it forks is born inside.  The worker proper has the child join by itself
before exec; that is the spawn module's business, not this one's.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker._model import Limits
from jobworker._rescontrol import CgroupV1, CgroupV2, JobGroup, ResourceControl, detect
from jobworker._rescontrol._cgroupfs import parse_mountinfo
from jobworker._rescontrol._limits import block_device
from jobworker._rescontrol._v1 import V1JobGroup
from jobworker._rescontrol._v2 import V2JobGroup

from conftest import job_cgroup_lines

MiB = 1 << 20


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "writing cgroups needs root"
    rc = detect()
    if rc.name == "none":
        return f"no writable cgroups here: {getattr(rc, 'reason', '')}"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture
def rc() -> Iterator[ResourceControl]:
    control = detect()
    yield control
    control.close()


class Jobs:
    """Starts gated children in job groups; reaps and cleans up whatever a test left."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.groups: list[JobGroup] = []

    def start(self, group: JobGroup, script: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            ["sh", "-c", f"read _ || exit 1; {script}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(p)
        self.groups.append(group)
        for f in group.procs_files:
            with open(f, "w") as fh:
                fh.write(str(p.pid))
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
        return p

    def close(self) -> None:
        for g in self.groups:
            g.kill()
        for p in self.procs:
            p.wait(timeout=10)
        for g in self.groups:
            wait_unpopulated(g)
            g.remove()


@pytest.fixture
def jobs() -> Iterator[Jobs]:
    j = Jobs()
    try:
        yield j
    finally:
        j.close()


def wait_unpopulated(g: JobGroup, timeout: float = 5.0) -> None:
    """Wait for the kernel to report the job's cgroup empty (bounded)."""
    deadline = time.monotonic() + timeout
    if g.events_file is None:
        while g.populated():
            assert time.monotonic() < deadline, "the job's cgroup did not empty"
            time.sleep(0.005)
        return
    try:
        f = open(g.events_file, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return  # removed already
    with f:
        poller = select.poll()
        poller.register(f.fileno(), select.POLLPRI)
        while g.populated():
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the job's cgroup did not empty"
            poller.poll(remaining * 1000)
            f.seek(0)
            f.read()


def wait_for_pids(g: JobGroup, n: int, timeout: float = 5.0) -> list[int]:
    """Poll until the job's cgroup lists ``n`` processes (they fork asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [int(x) for x in Path(g.procs_files[0]).read_text().split()]
        if len(pids) >= n:
            return pids
        assert time.monotonic() < deadline, f"expected {n} processes, have {pids}"
        time.sleep(0.005)


def job_dirs(g: JobGroup) -> list[str]:
    return [os.path.dirname(f) for f in g.procs_files]


def parent_dirs(g: JobGroup) -> list[str]:
    return [os.path.dirname(d) for d in job_dirs(g)]


def watch(pids: list[int]) -> list[int]:
    """pidfds of ``pids`` (not our children), to wait for their deaths on."""
    return [os.pidfd_open(pid) for pid in pids]


def all_die(pidfds: list[int], timeout: float = 5.0) -> bool:
    """Whether every watched process exits within ``timeout``; closes the pidfds.

    A process leaves its cgroup (``populated`` 0) a moment before it becomes a zombie,
    so emptiness alone does not prove death: its pidfd turning readable does.
    """
    try:
        deadline = time.monotonic() + timeout
        for fd in pidfds:
            left = max(0.0, deadline - time.monotonic())
            if select.select([fd], [], [], left)[0] != [fd]:
                return False
        return True
    finally:
        for fd in pidfds:
            os.close(fd)


def wait_for_own_session(pid: int, timeout: float = 5.0) -> None:
    """Poll until ``pid`` has run setsid (its child runs asynchronously; bounded)."""
    deadline = time.monotonic() + timeout
    while os.getsid(pid) != pid:
        assert time.monotonic() < deadline, f"{pid} never left its session"
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------


def test_detect_fits_this_machine() -> None:
    with open("/proc/self/mountinfo") as f:
        mounts = parse_mountinfo(f.read())
    rc = detect()
    if any(m.mountpoint == "/sys/fs/cgroup" and m.fstype == "cgroup2" for m in mounts):
        assert isinstance(rc, CgroupV2)
    else:
        assert any(m.fstype == "cgroup" for m in mounts)
        assert isinstance(rc, CgroupV1)
        assert rc.name == "cgroup1"
    assert rc.contains


def test_kill_reaches_a_setsid_escapee(rc: ResourceControl, jobs: Jobs) -> None:
    g = rc.create(uuid.uuid4(), Limits())
    p = jobs.start(g, "setsid sleep 1000 & exec sleep 1000")
    pids = wait_for_pids(g, 2)
    (escapee,) = [pid for pid in pids if pid != p.pid]
    wait_for_own_session(escapee)  # it left the session, let alone the group
    watched = watch([escapee])
    assert g.populated()
    g.kill()
    assert p.wait(timeout=10) == -signal.SIGKILL
    wait_unpopulated(g)
    assert all_die(watched)
    assert not g.populated()
    g.kill()  # idempotent
    g.remove()
    for d in job_dirs(g):
        assert not os.path.exists(d)
    g.remove()  # idempotent
    rc.close()
    for d in parent_dirs(g):
        assert not os.path.exists(d)


def test_job_lands_in_every_hierarchy_with_limits_written(rc: ResourceControl, jobs: Jobs) -> None:
    st = os.stat("/")
    if os.major(st.st_dev) == 0:
        pytest.skip("/ is not on a block device here, io limits cannot apply")
    major, minor = block_device("/")
    job_id = uuid.uuid4()
    limits = Limits(
        cpu=0.5, memory=64 * MiB, io_read_bps=MiB, io_write_bps=2 * MiB, io_path="/", pids=20
    )
    g = rc.create(job_id, limits)
    p = jobs.start(g, "exec sleep 1000")
    deadline = time.monotonic() + 5
    while Path(f"/proc/{p.pid}/comm").read_text() != "sleep\n":  # it ran inside, then
        assert time.monotonic() < deadline
        time.sleep(0.005)
    lines = Path(f"/proc/{p.pid}/cgroup").read_text().splitlines()
    inside = job_cgroup_lines("\n".join(lines))
    assert len(inside) == len(g.procs_files)
    for f in g.procs_files:
        assert Path(f).read_text().split() == [str(p.pid)]

    def read(role: str, name: str) -> str:
        if isinstance(g, V1JobGroup):
            return Path(g.dirs[role], name).read_text()
        assert isinstance(g, V2JobGroup)
        return Path(g.path, name).read_text()

    if isinstance(g, V1JobGroup):
        assert set(g.dirs) >= {"memory", "cpu", "blkio", "pids"}
        assert read("cpu", "cpu.cfs_quota_us") == "50000\n"
        assert read("cpu", "cpu.cfs_period_us") == "100000\n"
        assert read("memory", "memory.limit_in_bytes") == f"{64 * MiB}\n"
        if os.path.exists(os.path.join(g.dirs["memory"], "memory.memsw.limit_in_bytes")):
            assert read("memory", "memory.memsw.limit_in_bytes") == f"{64 * MiB}\n"
        rbps = read("blkio", "blkio.throttle.read_bps_device")
        assert rbps == f"{major}:{minor} {MiB}\n"
        wbps = read("blkio", "blkio.throttle.write_bps_device")
        assert wbps == f"{major}:{minor} {2 * MiB}\n"
        assert read("pids", "pids.max") == "20\n"
    else:
        assert read("", "cpu.max") == "50000 100000\n"
        assert read("", "memory.max") == f"{64 * MiB}\n"
        assert f"{major}:{minor} rbps={MiB} wbps={2 * MiB}" in read("", "io.max")
        assert read("", "pids.max") == "20\n"

    u = g.usage()
    assert u.cpu_seconds is not None and 0 <= u.cpu_seconds < 60
    assert u.memory_peak is not None and 0 < u.memory_peak <= 64 * MiB
    assert u.oom_kills == 0
    assert u.pids_limit_hits == 0
    assert u.cpu_throttled is not None and u.cpu_throttled >= 0
    assert not g.oom_killed()


def test_v1_creates_only_needed_hierarchies(rc: ResourceControl, jobs: Jobs) -> None:
    if not isinstance(rc, CgroupV1):
        pytest.skip("about the v1 layout")
    g = rc.create(uuid.uuid4(), Limits())
    assert isinstance(g, V1JobGroup)
    # Memory only for a memory limit, unless there is no unified hierarchy.
    if rc.unified is not None:
        expected = {"unified"}
    else:
        expected = {"memory", "cpuacct", "freezer"} & set(rc.hierarchies)
    if rc.unified is not None and not os.path.exists(
        os.path.join(g.dirs["unified"], "cgroup.kill")
    ):
        expected.add("freezer")
    assert set(g.dirs) == expected
    jobs.groups.append(g)


def test_memory_limit_oom_kills(rc: ResourceControl, jobs: Jobs) -> None:
    g = rc.create(uuid.uuid4(), Limits(memory=32 * MiB))
    # Touch every page: an untouched allocation would never be charged.
    p = jobs.start(g, f"exec {sys.executable} -c 'x = b\"x\" * (256 << 20)'")
    assert p.wait(timeout=60) == -signal.SIGKILL
    wait_unpopulated(g)
    assert g.oom_killed()
    u = g.usage()
    assert u.oom_kills is not None and u.oom_kills >= 1
    assert u.memory_peak is not None and 0 < u.memory_peak <= 32 * MiB
    g.remove()
    assert g.oom_killed()  # still known after the cgroup is gone


def test_pids_limit_counts_refused_forks(rc: ResourceControl, jobs: Jobs) -> None:
    g = rc.create(uuid.uuid4(), Limits(pids=3))
    p = jobs.start(g, "for i in 1 2 3 4 5 6; do sleep 0.01 & done; wait")
    p.wait(timeout=30)
    wait_unpopulated(g)
    u = g.usage()
    assert u.pids_limit_hits is not None and u.pids_limit_hits >= 1


def test_cpu_limit_throttles(rc: ResourceControl, jobs: Jobs) -> None:
    g = rc.create(uuid.uuid4(), Limits(cpu=0.1))
    busy = "import time\ne = time.monotonic() + 0.3\nwhile time.monotonic() < e: pass"
    t0 = time.monotonic()
    p = jobs.start(g, f"exec {sys.executable} -c '{busy}'")
    assert p.wait(timeout=30) == 0
    wall = time.monotonic() - t0
    wait_unpopulated(g)
    u = g.usage()
    assert u.cpu_throttled is not None and u.cpu_throttled >= 1
    assert u.cpu_seconds is not None and 0 < u.cpu_seconds < wall * 0.5


def test_io_limit_throttles_direct_writes(rc: ResourceControl, jobs: Jobs, tmp_path: Path) -> None:
    if os.major(os.stat(tmp_path).st_dev) == 0:
        pytest.skip("the temporary directory is not on a block device")
    g = rc.create(uuid.uuid4(), Limits(io_write_bps=MiB, io_path=str(tmp_path)))
    out = tmp_path / "out"
    # O_DIRECT, so the writes reach the disk from the job itself (v1 cannot attribute
    # page-cache writeback to a cgroup).  1 MiB at 1 MiB/s: well over 0.4 s, throttled.
    t0 = time.monotonic()
    p = jobs.start(g, f"exec dd if=/dev/zero of={out} bs=64k count=16 oflag=direct")
    assert p.wait(timeout=60) == 0
    assert time.monotonic() - t0 > 0.4
    assert out.stat().st_size == MiB


def test_stale_parent_of_a_dead_worker_is_killed_and_removed(jobs: Jobs) -> None:
    """A parent named after a worker that is gone, with a live process in its job."""
    rc = detect()
    job = f"job-{uuid.uuid4().hex}"
    if isinstance(rc, CgroupV1):
        bases = [h.base for h in (rc.unified, rc.hierarchies.get("memory")) if h]
    else:
        assert isinstance(rc, CgroupV2)
        bases = [rc.worker_cgroup]
    stale = [os.path.join(b, "jobworker-99999999-1-0") for b in bases]
    for d in stale:
        os.mkdir(d)
        os.mkdir(os.path.join(d, job))
    p = subprocess.Popen(["sleep", "1000"])
    jobs.procs.append(p)
    for d in stale:
        Path(d, job, "cgroup.procs").write_text(str(p.pid))
    try:
        g = rc.create(uuid.uuid4(), Limits())
        assert p.wait(timeout=10) == -signal.SIGKILL
        for d in stale:
            assert not os.path.exists(d)
        g.remove()
    finally:
        p.kill()
        rc.close()


def test_v1_without_cgroup2_kills_through_the_freezer(jobs: Jobs, tmp_path: Path) -> None:
    """The v1 path for machines without a cgroup2 mount, on this machine's v1 mounts."""
    if not isinstance(detect(), CgroupV1):
        pytest.skip("about the v1 layout")
    with open("/proc/self/mountinfo") as f:
        lines = [line for line in f if " - cgroup2 " not in line]
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("".join(lines))
    rc = CgroupV1(str(mountinfo))
    if "freezer" not in rc.hierarchies:
        pytest.skip("no v1 freezer hierarchy here")
    assert rc.unified is None
    try:
        g = rc.create(uuid.uuid4(), Limits(memory=64 * MiB))
        assert isinstance(g, V1JobGroup)
        assert "freezer" in g.dirs
        assert g.events_file is None
        p = jobs.start(g, "setsid sh -c 'while :; do sleep 1000 & wait; done' & exec sleep 1000")
        watched = watch([pid for pid in wait_for_pids(g, 3) if pid != p.pid])
        g.kill()
        assert p.wait(timeout=10) == -signal.SIGKILL
        wait_unpopulated(g)
        assert all_die(watched)
        assert Path(g.dirs["freezer"], "freezer.state").read_text() == "THAWED\n"
        u = g.usage()
        assert u.cpu_seconds is not None and u.cpu_seconds > 0  # from cpuacct.usage
        g.remove()
        for d in job_dirs(g):
            assert not os.path.exists(d)
    finally:
        rc.close()
    for d in parent_dirs(g):
        assert not os.path.exists(d)
