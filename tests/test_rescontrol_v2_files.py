"""The cgroup v2 implementation against a temporary directory laid out like cgroupfs.

A real cgroupfs makes a cgroup's interface files on mkdir and drops them on rmdir; a
temporary directory does neither.  ``FakeKernelV2`` overrides exactly those two seams
(``_mkdir``/``_rmdir``) to do what the kernel would: a new cgroup gets the core files and
the files of the controllers its parent enables in ``cgroup.subtree_control``.  Everything
else (reads, writes, limit checks) runs unchanged against the files.

Also here: limit validation, the block-device lookup, the parsers behind ``detect``, and
the ``none`` implementation, all of which need no real cgroup.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from jobworker._errors import LimitError
from jobworker._model import Limits, Usage
from jobworker._rescontrol import CgroupV1, CgroupV2, NoCgroups, detect
from jobworker._rescontrol._base import POOL_SIZE
from jobworker._rescontrol._cgroupfs import parse_mountinfo, proc_starttime
from jobworker._rescontrol._housekeeper import REMOVE_BATCH
from jobworker._rescontrol._limits import block_device, check_limits
from jobworker._rescontrol._v1 import find_hierarchies
from jobworker._rescontrol._v2 import V2JobGroup

CONTROLLER_FILES: dict[str, dict[str, str]] = {
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "memory": {
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.peak": "4096\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    },
    "io": {"io.max": ""},
    "pids": {"pids.max": "max\n", "pids.events": "max 0\n"},
}
CORE_FILES = {
    "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.kill": "",
    "cgroup.freeze": "0\n",
    "cgroup.type": "domain\n",
    "cgroup.subtree_control": "",
    "cpu.stat": "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
}


def enabled_in(cgroup: Path) -> list[str]:
    """Controllers a parent enables, from what was written (``+cpu +memory``) or listed."""
    text = (cgroup / "cgroup.subtree_control").read_text()
    return [c.lstrip("+") for c in text.split() if not c.startswith("-")]


def make_cgroup_files(path: Path, drop: frozenset[str] = frozenset()) -> None:
    """What mkdir on cgroupfs does: the interface files, per the parent's controllers."""
    controllers = enabled_in(path.parent)
    files = dict(CORE_FILES)
    files["cgroup.controllers"] = " ".join(controllers) + "\n"
    for c in controllers:
        files.update(CONTROLLER_FILES[c])
    for name, content in files.items():
        if name not in drop:
            (path / name).write_text(content)


class FakeKernelV2(CgroupV2):
    """CgroupV2 whose mkdir/rmdir do what cgroupfs does to the interface files."""

    drop: frozenset[str] = frozenset()  # interface files this "kernel" lacks

    def _mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)
        make_cgroup_files(Path(path), self.drop)

    def _enable(self, cgroup: str, controllers: Iterable[str]) -> None:
        # The kernel gives every existing child the files of a controller enabled in its
        # parent (cgroups made ahead of need, here).
        controllers = list(controllers)
        super()._enable(cgroup, controllers)
        for child in Path(cgroup).iterdir():
            if child.is_dir():
                for c in controllers:
                    for name, content in CONTROLLER_FILES[c].items():
                        if name not in self.drop and not (child / name).exists():
                            (child / name).write_text(content)

    def _rmdir(self, path: str) -> None:
        for entry in os.scandir(path):
            if entry.is_file():
                os.unlink(entry.path)
        os.rmdir(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A cgroup2 root with every controller available and none enabled."""
    r = tmp_path / "cgroup"
    r.mkdir()
    (r / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (r / "cgroup.subtree_control").write_text("")
    (r / "cgroup.procs").write_text("1\n")
    (r / "cpu.stat").write_text("usage_usec 0\n")
    return r


def proc_file(tmp_path: Path, path: str) -> str:
    f = tmp_path / "proc_self_cgroup"
    f.write_text(f"0::{path}\n")
    return str(f)


@pytest.fixture
def rc(root: Path, tmp_path: Path) -> FakeKernelV2:
    """The worker in the root cgroup: the one place v2 lets controllers be enabled
    although the cgroup has processes."""
    return FakeKernelV2(str(root), proc_file(tmp_path, "/"))


@pytest.fixture
def busy_worker(root: Path, tmp_path: Path) -> FakeKernelV2:
    """The worker in a non-root cgroup that holds processes (the worker itself)."""
    (root / "cgroup.subtree_control").write_text("+cpu +memory +pids")
    w = root / "worker.service"
    w.mkdir()
    make_cgroup_files(w)
    (w / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return FakeKernelV2(str(root), proc_file(tmp_path, "/worker.service"))


def job_dir(group: object) -> Path:
    assert isinstance(group, V2JobGroup)
    return Path(group.path)


def root_device() -> str:
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    if major == 0 or os.path.exists(f"/sys/dev/block/{major}:{minor}/partition"):
        pytest.skip("/ is not directly on a whole block device here")
    return f"{major}:{minor}"


# ---------------------------------------------------------------------------------------
# Layout and writes


def test_layout_and_names(rc: FakeKernelV2, root: Path) -> None:
    job_id = uuid.uuid4()
    g = rc.create(job_id, Limits())
    me = os.getpid()
    parent = Path(rc.parent_cgroup)
    assert parent.parent == root
    assert parent.name.startswith(f"jobworker-{me}-{proc_starttime(me)}-")
    job = job_dir(g)
    assert job.parent == parent
    assert re.fullmatch("job-[0-9a-f]{32}", job.name)
    assert g.procs_files == (str(job / "cgroup.procs"),)
    assert g.events_file == str(job / "cgroup.events")
    assert g.cgroup2_dir == str(job)
    assert job.is_dir()
    assert not g.populated()


@pytest.mark.parametrize("name", ["caf\u00e9 bar", "not-utf8-\udcff"])
def test_a_worker_cgroup_named_in_any_bytes_is_found(root: Path, tmp_path: Path, name: str) -> None:
    # /proc/self/cgroup holds raw bytes: decoded as ASCII they no longer named the
    # directory, and the worker fell back to no cgroups at all.
    worker = root / name
    worker.mkdir()
    make_cgroup_files(worker)
    f = tmp_path / "proc_self_cgroup"
    f.write_bytes(b"0::/" + os.fsencode(name) + b"\n")
    rc = FakeKernelV2(str(root), str(f))
    assert rc.worker_cgroup == str(worker)
    g = rc.create(uuid.uuid4(), Limits())
    assert Path(g.procs_files[0]).parent.parent.parent == worker
    g.remove()
    rc.close()


def test_two_instances_in_one_process_get_distinct_parents(root: Path, tmp_path: Path) -> None:
    a = FakeKernelV2(str(root), proc_file(tmp_path, "/"))
    b = FakeKernelV2(str(root), proc_file(tmp_path, "/"))
    assert a.parent_cgroup != b.parent_cgroup
    a.create(uuid.uuid4(), Limits())
    b.create(uuid.uuid4(), Limits())  # must not take a's parent for a stale one
    assert Path(a.parent_cgroup).is_dir()
    assert Path(b.parent_cgroup).is_dir()


def test_cpu_limit(rc: FakeKernelV2, root: Path) -> None:
    g = rc.create(uuid.uuid4(), Limits(cpu=0.5))
    assert (job_dir(g) / "cpu.max").read_text() == "50000 100000"
    # Enabled in the worker's cgroup and in the parent, in one write each; memory comes
    # along because it is free here and gives usage() its peak.
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (Path(rc.parent_cgroup) / "cgroup.subtree_control").read_text() == "+cpu +memory"


def test_memory_limit_also_forbids_swap(rc: FakeKernelV2) -> None:
    g = rc.create(uuid.uuid4(), Limits(memory=64 << 20))
    assert (job_dir(g) / "memory.max").read_text() == str(64 << 20)
    assert (job_dir(g) / "memory.swap.max").read_text() == "0"


def test_io_limit_names_the_disk(rc: FakeKernelV2, root: Path) -> None:
    dev = root_device()
    g = rc.create(uuid.uuid4(), Limits(io_read_bps=1 << 20, io_write_bps=2 << 20, io_path="/"))
    assert (job_dir(g) / "io.max").read_text() == f"{dev} rbps=1048576 wbps=2097152"
    assert (root / "cgroup.subtree_control").read_text() == "+io +memory"


def test_io_limit_read_only(rc: FakeKernelV2) -> None:
    dev = root_device()
    g = rc.create(uuid.uuid4(), Limits(io_read_bps=4096, io_path="/"))
    assert (job_dir(g) / "io.max").read_text() == f"{dev} rbps=4096"


def test_pids_limit(rc: FakeKernelV2) -> None:
    g = rc.create(uuid.uuid4(), Limits(pids=7))
    assert (job_dir(g) / "pids.max").read_text() == "7"


def test_all_limits_together(rc: FakeKernelV2, root: Path) -> None:
    root_device()
    limits = Limits(cpu=2, memory=1 << 30, io_write_bps=10, io_path="/", pids=100)
    g = rc.create(uuid.uuid4(), limits)
    assert (job_dir(g) / "cpu.max").read_text() == "200000 100000"
    assert (job_dir(g) / "memory.max").read_text() == str(1 << 30)
    assert (job_dir(g) / "pids.max").read_text() == "100"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +io +memory +pids"


def test_no_limits_writes_no_limit_files(rc: FakeKernelV2, root: Path) -> None:
    g = rc.create(uuid.uuid4(), Limits())
    assert (job_dir(g) / "memory.max").read_text() == "max\n"
    assert not (job_dir(g) / "cpu.max").exists()  # cpu was not enabled for it
    assert (root / "cgroup.subtree_control").read_text() == "+memory"


def test_usage_kill_and_remove(rc: FakeKernelV2) -> None:
    g = rc.create(uuid.uuid4(), Limits(pids=3))
    d = job_dir(g)
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    (d / "pids.events").write_text("max 2\n")
    expected = Usage(
        cpu_seconds=1.5, memory_peak=4096, cpu_throttled=None, oom_kills=1, pids_limit_hits=2
    )
    assert g.usage() == expected
    assert g.oom_killed()
    g.kill()
    assert (d / "cgroup.kill").read_text() == "1"
    g.remove()
    assert not d.exists()
    assert g.usage() == expected  # kept from before the rmdir
    g.remove()  # idempotent
    g.kill()  # idempotent, even with the cgroup gone
    assert not g.populated()


def test_populated_follows_cgroup_events(rc: FakeKernelV2) -> None:
    g = rc.create(uuid.uuid4(), Limits())
    (job_dir(g) / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert g.populated()


def test_close_removes_parent(rc: FakeKernelV2, root: Path) -> None:
    g = rc.create(uuid.uuid4(), Limits(cpu=1))
    g.remove()
    rc.close()
    assert not Path(rc.parent_cgroup).exists()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == []
    rc.close()  # idempotent


def test_close_removes_leftover_jobs(rc: FakeKernelV2) -> None:
    g = rc.create(uuid.uuid4(), Limits())
    rc.close()
    assert not job_dir(g).exists()
    assert not Path(rc.parent_cgroup).exists()


# ---------------------------------------------------------------------------------------
# Stale parents


def test_stale_parents_are_cleaned_on_first_create(root: Path, tmp_path: Path) -> None:
    me = os.getpid()
    start = proc_starttime(me)
    dead = root / "jobworker-99999999-12345-0"  # pid above PID_MAX_LIMIT: never alive
    reused = root / f"jobworker-{me}-{(start or 0) + 1}-3"  # our pid, other start time
    old_style = root / "jobworker-99999998-1"  # without the sequence suffix
    alive = root / f"jobworker-{me}-{start}-999"  # another instance in this process
    unrelated = root / "system.slice"
    for d in (dead, dead / "job-aa", dead / "job-aa" / "nested", reused, old_style, alive):
        d.mkdir()
        make_cgroup_files(d)
    unrelated.mkdir()
    rc = FakeKernelV2(str(root), proc_file(tmp_path, "/"))
    assert dead.exists()  # nothing happens before the first create
    rc.create(uuid.uuid4(), Limits())
    assert not dead.exists()
    assert not reused.exists()
    assert not old_style.exists()
    assert alive.is_dir()
    assert unrelated.is_dir()


def test_a_locked_parent_is_alive_whatever_its_name_says(root: Path, tmp_path: Path) -> None:
    # A worker in another pid namespace: its pid means nothing here (no such process,
    # say), but it holds the lock on its parent, so its jobs must be left alone.
    other = root / "jobworker-99999999-12345-0"
    for d in (other, other / "job-aa"):
        d.mkdir()
        make_cgroup_files(d)
    fd = os.open(other, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc = FakeKernelV2(str(root), proc_file(tmp_path, "/"))
        rc.create(uuid.uuid4(), Limits())
        assert (other / "job-aa").is_dir()
        rc.close()
    finally:
        os.close(fd)


def test_a_worker_holds_its_parents_lock_until_closed(root: Path, tmp_path: Path) -> None:
    rc = FakeKernelV2(str(root), proc_file(tmp_path, "/"))
    rc.create(uuid.uuid4(), Limits())
    fd = os.open(rc.parent_cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    rc.close()
    assert not Path(rc.parent_cgroup).exists()


# ---------------------------------------------------------------------------------------
# What cannot be enforced


def test_busy_worker_cgroup_refuses_limits_but_runs_jobs(
    busy_worker: FakeKernelV2, root: Path
) -> None:
    with pytest.raises(LimitError, match="holds processes"):
        busy_worker.validate(Limits(memory=64 << 20))
    with pytest.raises(LimitError, match="holds processes"):
        busy_worker.create(uuid.uuid4(), Limits(cpu=1))
    assert not Path(busy_worker.parent_cgroup).exists()
    g = busy_worker.create(uuid.uuid4(), Limits())  # cgroup.kill/events need no controller
    assert job_dir(g).is_dir()
    assert (root / "worker.service" / "cgroup.subtree_control").read_text() == ""
    g.remove()
    busy_worker.close()


def test_missing_controller_is_a_limit_error(root: Path, tmp_path: Path) -> None:
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    rc = FakeKernelV2(str(root), proc_file(tmp_path, "/"))
    with pytest.raises(LimitError, match=r"controller\(s\) io"):
        rc.create(uuid.uuid4(), Limits(io_read_bps=1000, io_path="/"))
    assert [p for p in root.iterdir() if p.is_dir()] == []


def test_create_undoes_the_job_dir_on_error(root: Path, tmp_path: Path) -> None:
    class NoPidsMax(FakeKernelV2):
        drop = frozenset({"pids.max"})

    rc = NoPidsMax(str(root), proc_file(tmp_path, "/"))
    with pytest.raises(LimitError, match=r"pids\.max"):
        rc.create(uuid.uuid4(), Limits(cpu=1, pids=5))
    assert [p.name for p in Path(rc.parent_cgroup).iterdir() if p.is_dir()] == []
    rc.close()
    assert not Path(rc.parent_cgroup).exists()


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(cpu=0), "cpu must be a positive"),
        (Limits(cpu=-1), "cpu must be a positive"),
        (Limits(cpu=float("nan")), "cpu must be a positive"),
        (Limits(cpu=float("inf")), "cpu must be a positive"),
        (Limits(cpu=0.001), "cpu must be at least 0.01"),
        (Limits(cpu=1e12), "cpu must be at most"),
        (Limits(memory=0), "memory must be at least 1048576"),
        (Limits(memory=4096), "memory must be at least 1048576"),
        (Limits(memory=2**70), "memory must be at most"),
        (Limits(memory=True), "memory must be an integer"),
        (Limits(memory=1.5e9), "memory must be an integer"),  # type: ignore[arg-type]
        (Limits(pids=0), "pids must be at least 1"),
        (Limits(pids=1 << 30), "pids must be at most"),
        (Limits(io_read_bps=0, io_path="/"), "io_read_bps must be at least 1"),
        (Limits(io_write_bps=-5, io_path="/"), "io_write_bps must be at least 1"),
        (Limits(io_read_bps=1000), "io limits need io_path"),
        (Limits(io_write_bps=1000, io_path="/no/such/path"), "io_path '/no/such/path'"),
        (Limits(io_write_bps=1000, io_path="/proc"), "no block device holds /proc"),
    ],
)
def test_malformed_limits(rc: FakeKernelV2, limits: Limits, message: str) -> None:
    with pytest.raises(LimitError, match=message):
        rc.validate(limits)
    with pytest.raises(LimitError, match=message):
        rc.create(uuid.uuid4(), limits)
    assert not Path(rc.parent_cgroup).exists()


def test_limit_values() -> None:
    c = check_limits(Limits(cpu=0.01, memory=1 << 20, pids=1))
    assert (c.cpu_quota_us, c.memory, c.pids) == (1000, 1 << 20, 1)
    assert check_limits(Limits(cpu=3)).cpu_quota_us == 300000
    assert check_limits(Limits(io_path="/")).io_device is None  # io_path alone is ignored


# ---------------------------------------------------------------------------------------
# Block devices


def test_block_device_of_root() -> None:
    dev = root_device()
    assert "{}:{}".format(*block_device("/")) == dev


def test_block_device_of_tmpfs() -> None:
    if os.major(os.stat("/dev/shm").st_dev) != 0:
        pytest.skip("/dev/shm is not a tmpfs here")
    with pytest.raises(LimitError, match="no block device holds /dev/shm"):
        block_device("/dev/shm")


def test_partition_maps_to_its_disk(tmp_path: Path) -> None:
    """A sysfs-like tree where / sits on a partition of disk 'vdz' (dev 254:16)."""
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    if major == 0:
        pytest.skip("/ is not on a block device here")
    disk = tmp_path / "sys" / "devices" / "virtual" / "block" / "vdz"
    part = disk / "vdz1"
    part.mkdir(parents=True)
    (disk / "dev").write_text("254:16\n")
    (part / "dev").write_text(f"{major}:{minor}\n")
    (part / "partition").write_text("1\n")
    links = tmp_path / "sys" / "dev" / "block"
    links.mkdir(parents=True)
    (links / f"{major}:{minor}").symlink_to("../../devices/virtual/block/vdz/vdz1")
    assert block_device("/", str(tmp_path / "sys")) == (254, 16)


# ---------------------------------------------------------------------------------------
# detect() and the parsers behind it


def write_mountinfo(tmp_path: Path, lines: list[str]) -> str:
    f = tmp_path / "mountinfo"
    f.write_text("".join(line + "\n" for line in lines))
    return str(f)


def test_detect_pure_v2(root: Path, tmp_path: Path) -> None:
    mi = write_mountinfo(
        tmp_path,
        [
            "22 1 0:21 / /proc rw,nosuid - proc proc rw",
            f"30 22 0:26 / {root} rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate",
        ],
    )
    rc = detect(mountinfo=mi, proc_self_cgroup=proc_file(tmp_path, "/"), v2_mountpoint=str(root))
    assert isinstance(rc, CgroupV2)
    assert rc.worker_cgroup == str(root)
    assert rc.name == "cgroup2"
    assert rc.contains


def test_detect_v2_with_invisible_cgroup_is_none(root: Path, tmp_path: Path) -> None:
    mi = write_mountinfo(tmp_path, [f"30 22 0:26 / {root} rw - cgroup2 cgroup2 rw"])
    pc = proc_file(tmp_path, "/../outside")
    rc = detect(mountinfo=mi, proc_self_cgroup=pc, v2_mountpoint=str(root))
    assert isinstance(rc, NoCgroups)
    assert "not visible" in rc.reason


def test_detect_without_cgroups_is_none(tmp_path: Path) -> None:
    mi = write_mountinfo(tmp_path, ["22 1 0:21 / /proc rw - proc proc rw"])
    rc = detect(mountinfo=mi, proc_self_cgroup=proc_file(tmp_path, "/"))
    assert isinstance(rc, NoCgroups)
    assert rc.name == "none"
    assert not rc.contains
    assert rc.reason == "no cgroup filesystem is mounted"


def test_detect_unreadable_proc_is_none(tmp_path: Path) -> None:
    rc = detect(mountinfo=str(tmp_path / "missing"))
    assert isinstance(rc, NoCgroups)
    assert "cannot read" in rc.reason


def test_detect_v1_layout(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    for d in ("cpu,cpuacct", "memory/sandbox/a", "freezer", "unified", "systemd"):
        (fs / d).mkdir(parents=True)
    mi = write_mountinfo(
        tmp_path,
        [
            f"32 31 0:29 / {fs}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
            f"35 31 0:32 /sandbox {fs}/memory/sandbox rw - cgroup cgroup rw,memory",
            f"37 31 0:34 / {fs}/freezer rw - cgroup cgroup rw,freezer",
            f"40 31 0:37 / {fs}/systemd rw - cgroup cgroup rw,xattr,name=systemd",
            f"41 31 0:38 / {fs}/unified rw - cgroup2 cgroup2 rw",
        ],
    )
    pc = tmp_path / "cgroup"
    pc.write_text("9:name=systemd:/\n4:memory:/sandbox/a\n3:freezer:/\n1:cpu,cpuacct:/\n0::/\n")
    rc = detect(mountinfo=mi, proc_self_cgroup=str(pc))
    assert isinstance(rc, CgroupV1)
    assert rc.name == "cgroup1"
    assert rc.hierarchies["cpu"] is rc.hierarchies["cpuacct"]
    assert rc.hierarchies["cpu"].base == f"{fs}/cpu,cpuacct"
    assert rc.hierarchies["memory"].base == f"{fs}/memory/sandbox/a"
    assert set(rc.hierarchies) == {"cpu", "cpuacct", "memory", "freezer"}
    assert rc.unified is not None and rc.unified.base == f"{fs}/unified"
    with pytest.raises(LimitError, match="cgroup v1 pids controller, which is not mounted"):
        rc.validate(Limits(pids=3))


def test_mountinfo_escapes_and_optional_fields() -> None:
    text = (
        "41 31 0:38 / /sys/fs/cgroup/with\\040space rw,relatime shared:9 master:2 "
        "- cgroup2 cgroup2 rw\n"
    )
    (m,) = parse_mountinfo(text)
    assert m.mountpoint == "/sys/fs/cgroup/with space"
    assert m.fstype == "cgroup2"
    by_controller, unified = find_hierarchies(text, "0::/a/b\n")
    assert by_controller == {}
    assert unified is not None and unified.base == "/sys/fs/cgroup/with space/a/b"


# ---------------------------------------------------------------------------------------
# none


def test_none_refuses_limits_and_contains_nothing() -> None:
    rc = NoCgroups("no cgroup filesystem is mounted")
    rc.validate(Limits())
    rc.validate(Limits(io_path="/"))  # io_path alone sets no limit
    with pytest.raises(LimitError) as info:
        rc.validate(Limits(cpu=1))
    assert str(info.value) == (
        "resource limits need cgroups, which this worker cannot write: "
        "no cgroup filesystem is mounted"
    )
    with pytest.raises(LimitError):
        rc.create(uuid.uuid4(), Limits(pids=2))
    g = rc.create(uuid.uuid4(), Limits())
    assert g.procs_files == ()
    assert g.events_file is None
    assert not g.populated()
    g.kill()
    assert g.usage() == Usage()
    assert not g.oom_killed()
    g.remove()
    rc.close()


# ---------------------------------------------------------------------------------------
# Housekeeping: the background thread a Worker starts


def job_dirs_in(parent: Path) -> set[str]:
    return {p.name for p in parent.iterdir() if p.is_dir()} if parent.exists() else set()


def wait_for(what: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "the background thread never did it"
        time.sleep(0.002)


def test_starts_take_cgroups_made_ahead_and_close_removes_them(
    rc: FakeKernelV2, root: Path
) -> None:
    threads = threading.active_count()
    rc.start_housekeeping()
    parent = Path(rc.parent_cgroup)
    wait_for(lambda: len(job_dirs_in(parent)) == POOL_SIZE)
    ready = job_dirs_in(parent)
    made: list[str] = []
    real_mkdir = rc._mkdir

    def counting_mkdir(path: str) -> None:
        made.append(path)
        real_mkdir(path)

    rc._mkdir = counting_mkdir  # type: ignore[method-assign]
    rc.start_housekeeping()  # a second call starts nothing more
    assert threading.active_count() == threads + 1
    taken = POOL_SIZE - POOL_SIZE // 2
    groups = [rc.create(uuid.uuid4(), Limits(pids=5)) for _ in range(taken)]
    for g in groups:
        assert job_dir(g).name in ready  # taken, not made on the start path...
        assert (job_dir(g) / "pids.max").read_text() == "5"  # ... with its limits written
    # Half empty: refilled (by halves, off the start path).
    wait_for(lambda: len(job_dirs_in(parent)) == POOL_SIZE + taken)
    assert not {str(job_dir(g)) for g in groups} & set(made)
    rc.close()
    assert not parent.exists()
    assert threading.active_count() == threads


def test_released_cgroups_are_removed_in_the_background_keeping_their_usage(
    rc: FakeKernelV2,
) -> None:
    rc.start_housekeeping()
    groups = [rc.create(uuid.uuid4(), Limits()) for _ in range(REMOVE_BATCH + 1)]
    for g in groups:
        (job_dir(g) / "cpu.stat").write_text("usage_usec 2500000\n")
        g.release()
        assert g.usage().cpu_seconds == 2.5
    # A full batch goes at once, the rest within the batch delay.
    wait_for(lambda: not any(job_dir(g).exists() for g in groups))
    assert all(g.usage().cpu_seconds == 2.5 for g in groups)
    rc.close()


def test_close_finishes_the_removals_it_has_queued(rc: FakeKernelV2) -> None:
    rc.start_housekeeping()
    g = rc.create(uuid.uuid4(), Limits())
    g.release()  # one: it waits for company, or for the batch delay
    rc.close()
    assert not job_dir(g).exists()
    assert not Path(rc.parent_cgroup).exists()
    g.release()  # idempotent, also once the thread is gone


class SlowToClean(FakeKernelV2):
    """Cleaning up after dead workers takes until the test says so."""

    def __init__(self, *args: str) -> None:
        super().__init__(*args)
        self.cleaning = threading.Event()
        self.may_finish = threading.Event()

    def clean_stale(self, base: str) -> None:
        self.cleaning.set()
        assert self.may_finish.wait(10)
        super().clean_stale(base)


def test_no_start_waits_for_the_cleanup_after_a_dead_worker(root: Path, tmp_path: Path) -> None:
    dead = root / "jobworker-99999999-12345-0"
    for d in (dead, dead / "job-aa"):
        d.mkdir()
        make_cgroup_files(d)
    rc = SlowToClean(str(root), proc_file(tmp_path, "/"))
    try:
        rc.start_housekeeping()
        assert rc.cleaning.wait(10)
        g = rc.create(uuid.uuid4(), Limits())  # while the cleanup is stuck
        assert job_dir(g).is_dir()
        assert dead.exists()
    finally:
        rc.may_finish.set()
    hk = rc.housekeeper
    assert hk is not None
    assert hk.stale_cleaned.wait(10)
    assert not dead.exists()
    rc.close()


def test_close_waits_for_the_cleanup_after_a_dead_worker(root: Path, tmp_path: Path) -> None:
    dead = root / "jobworker-99999999-12345-0"
    dead.mkdir()
    make_cgroup_files(dead)
    rc = SlowToClean(str(root), proc_file(tmp_path, "/"))
    rc.start_housekeeping()
    assert rc.cleaning.wait(10)
    threading.Timer(0.05, rc.may_finish.set).start()
    rc.close()
    assert not dead.exists()
