"""The start path (``_spawn.c``, ``_process.py``): what a job's process gets, and what a
start that goes wrong says and leaves.

Several tests run a host program of their own (``python -c``): one that closes its
stdio, sits in a pid namespace, runs under a seccomp filter or has other fd limits than
this test process.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sysconfig
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import seccomp

from jobworker import Command, CommandNotFound, Limits, StartError, Status, Worker, _spawn, detect

from conftest import PY, FileGroups, live_children, open_fds, wait_for_child

TESTS = str(Path(__file__).parent)
SRC = Path(__file__).parents[1] / "src" / "jobworker"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_seccomp = pytest.mark.skipif(not seccomp.supported(), reason="seccomp rules for x86_64")


def host(script: str, *args: str, timeout: float = 60) -> str:
    """Run ``script`` as a Python host program with ``args``; its stdout, after checking
    that it exited 0."""
    done = subprocess.run(
        [PY, "-c", f"import sys; sys.path.insert(0, {TESTS!r})\n{script}", *args],
        capture_output=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (done.returncode, done.stderr.decode())
    return done.stdout.decode()


# -- every fd the worker holds lives above stderr (issue 7, item 1) -------------------------


def test_a_host_that_closed_its_stdio_never_writes_into_a_job_log(log_dir: Path) -> None:
    # A daemon closes 0-2 after making its worker; the lowest free numbers then went to
    # the next job's pidfd and log, and the host's print() into that log.  One worker
    # made before the close, one after (its reactor, log directory and cgroup fds too).
    script = """
import fcntl, json, os, sys, uuid
from jobworker import Command, Worker
log_dir, report = sys.argv[1], os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o600)
early = Worker(log_dir)
for fd in (0, 1, 2):
    os.close(fd)
late = Worker(log_dir)

def is_open(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False

def host_writes():
    for fd in (1, 2):
        try:
            os.write(fd, b"HOST\\n")
        except OSError:
            pass
    try:
        print("HOST print", flush=True)
    except OSError:
        pass
    return [fd for fd in (0, 1, 2) if is_open(fd)]

owner, held, jobs = uuid.uuid4(), [], []
for w in (early, late):
    for i in range(3):
        # A leftover in the background: with cgroups, the end watches cgroup.events.
        code = f"echo job {i}; sleep 0.1 & echo job {i} done"
        job = w.start(Command("sh", ["-c", code]), owner)
        held += host_writes()
        with w.stream(job, owner) as r:
            held += host_writes()
            data = r.read()
        info = w.wait(job, owner)
        jobs.append([str(info.log_path), data.decode(), i])
    held += host_writes()
early.close()
late.close()
os.write(report, json.dumps({"held": held, "jobs": jobs}).encode())
os._exit(0)
"""
    report = log_dir.parent / "report.json"
    host(script, str(log_dir), str(report))
    result = json.loads(report.read_text())
    assert result["held"] == []
    assert len(result["jobs"]) == 6
    for path, read, i in result["jobs"]:
        expected = f"job {i}\njob {i} done\n"
        assert read == expected
        assert Path(path).read_text() == expected


# -- log names cannot all be planted (item 5) -----------------------------------------------


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_names_planted_for_the_next_pid_do_not_block_its_start(log_dir: Path) -> None:
    # A private pid namespace makes the job's pid known beforehand: every numbered name
    # for it is taken (a thousand, as many as were once tried), and it still starts,
    # under a random name.
    script = """
import json, os, sys, uuid
from pathlib import Path
from jobworker import Command, NoCgroups, Worker
log_dir = Path(sys.argv[1])
with Worker(log_dir, resource_control=NoCgroups("test")) as w:
    pid = 500
    planted = [log_dir / f"echo_{pid}.log"]
    planted += [log_dir / f"echo_{pid}.{n}.log" for n in range(1, 1000)]
    for p in planted:
        p.write_bytes(b"planted")
    # Nothing else here makes processes: the next one gets this pid.
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    owner = uuid.uuid4()
    job = w.start(Command("echo", ["fresh"]), owner)
    info = w.wait(job, owner)
    with w.stream(job, owner) as r:
        out = r.read().decode()
    print(json.dumps({
        "pid": info.pid, "log": info.log_path.name, "out": out,
        "untouched": all(p.read_bytes() == b"planted" for p in planted),
    }))
"""
    done = subprocess.run(
        ["unshare", "--pid", "--fork", PY, "-c", script, str(log_dir)],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result["pid"] == 500
    assert re.fullmatch(r"echo_500\.[0-9a-f]{16}\.log", result["log"]), result["log"]
    assert result["out"] == "fresh\n"
    assert result["untouched"]


# -- a fork elsewhere in the host (item 12) -------------------------------------------------


def _pipe_write_ends() -> set[str]:
    """``pipe:[inode]`` of every pipe write end this process holds."""
    ends = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
            flags = Path(f"/proc/self/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
        except (OSError, IndexError):
            continue
        if link.startswith("pipe:") and int(flags, 8) & os.O_ACCMODE == os.O_WRONLY:
            ends.add(link)
    return ends


def test_a_fork_in_another_thread_does_not_hold_a_starting_jobs_output_open(
    log_dir: Path, owner: uuid.UUID, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # multiprocessing's default start method is a plain fork(), from any thread.  The
    # job's child waits at its "cgroup" (a FIFO) while the starting thread sleeps in
    # clone, holding the job's pipe twice (its own end, and _spawn's slot); this thread
    # forks then, and the forked process stays alive.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    started: dict[str, uuid.UUID | BaseException] = {}
    with (
        caplog.at_level(logging.WARNING, logger="jobworker"),
        Worker(log_dir, resource_control=FileGroups(str(gate))) as w,
    ):
        known = _pipe_write_ends()

        def start() -> None:
            try:
                started["job"] = w.start(Command("echo", ["hi"]), owner)
            except BaseException as e:
                started["job"] = e

        starter = threading.Thread(target=start)
        starter.start()
        wait_for_child()
        report_r, report_w = os.pipe()
        go_r, go_w = os.pipe()
        known |= {os.readlink(f"/proc/self/fd/{fd}") for fd in (report_w, go_w)}
        forked = os.fork()
        if forked == 0:
            try:
                os.write(report_w, json.dumps(sorted(_pipe_write_ends())).encode())
                os.close(report_w)
                os.read(go_r, 1)
            finally:
                os._exit(0)
        try:
            os.close(report_w)
            with open(report_r, "rb") as f:
                in_fork = set(json.loads(f.read()))
            with open(gate, "rb") as f:
                assert f.read() == b"0"  # the job's child goes on
            starter.join()
            job = started["job"]
            assert isinstance(job, uuid.UUID), job
            info = w.wait(job, owner, timeout=30)
            with w.stream(job, owner) as r:
                assert r.read() == b"hi\n"
            assert info.status == Status.exited(0)
        finally:
            os.close(go_r)
            os.write(go_w, b"x")
            os.close(go_w)
            os.waitpid(forked, 0)
    assert in_fork <= known, in_fork - known
    assert "hold its output" not in caplog.text


# -- a child that dies before exec (item 17) ------------------------------------------------


def _at_the_gate(pid: int) -> bool:
    """Whether the job's child ``pid`` sleeps in its "cgroup" join: it has left the
    worker's session (setsid comes just before), and only opening the FIFO sleeps."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return os.getsid(pid) == pid and state == "S"
    except (OSError, IndexError):
        return False


def _start_and_kill(w: Worker, owner: uuid.UUID, at_the_gate: bool) -> object:
    """Start a job in another thread, SIGKILL its child (at once, or once it waits at the
    gate), and return what start() returned or raised."""
    started: dict[str, object] = {}

    def start() -> None:
        try:
            started["job"] = w.start(Command("echo", ["hi"]), owner)
        except BaseException as e:
            started["job"] = e

    starter = threading.Thread(target=start)
    starter.start()
    child = wait_for_child()
    while at_the_gate and not _at_the_gate(child):
        time.sleep(0.001)
    os.kill(child, signal.SIGKILL)
    starter.join()
    return started["job"]


def test_a_child_killed_before_exec_is_a_start_error_and_leaves_nothing(
    log_dir: Path, owner: uuid.UUID, tmp_path: Path
) -> None:
    # Killed while it joins its cgroup (the OOM killer, an admin): the program never
    # ran, so this is no job.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with Worker(log_dir, resource_control=FileGroups(str(gate))) as w:
        error = _start_and_kill(w, owner, at_the_gate=True)
        assert isinstance(error, StartError), error
        assert "killed by signal 9 before executing the program" in str(error)
        assert w.list(owner) == []
    assert list(log_dir.iterdir()) == []
    assert live_children() == []


def test_a_child_killed_while_it_creates_its_log_leaves_nothing(
    log_dir: Path, owner: uuid.UUID, tmp_path: Path
) -> None:
    # Killed at once, the child often dies inside the openat that creates its log:
    # the file exists and its fd is in the worker's table, but the child never said so.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    fds = open_fds()
    with Worker(log_dir, resource_control=FileGroups(str(gate))) as w:
        for _ in range(30):
            assert isinstance(_start_and_kill(w, owner, at_the_gate=False), StartError)
            assert list(log_dir.iterdir()) == []
    assert open_fds() == fds
    assert live_children() == []


# -- the fd limit jobs get (item 14) --------------------------------------------------------


def test_jobs_get_the_fd_limit_the_host_had(log_dir: Path) -> None:
    script = """
import resource, sys, uuid
from jobworker import Command, NoCgroups, Worker
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
owner = uuid.uuid4()
with Worker(sys.argv[1], resource_control=NoCgroups("test")) as w:
    with Worker(sys.argv[1], resource_control=NoCgroups("test")) as second:
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        for worker in (w, second):
            job = worker.start(Command("sh", ["-c", "ulimit -Sn; ulimit -Hn"]), owner)
            with worker.stream(job, owner) as r:
                print(r.read().decode().split(), hard)
"""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert host(script, str(log_dir)) == f"['256', '{hard}'] {hard}\n" * 2


# -- C robustness: strv_from, fds past 65,536, kcmp, old headers, old kernels -----------------


def test_an_fspath_that_shrinks_the_list_being_converted_is_harmless(log_dir: Path) -> None:
    # Converting an item runs its __fspath__, which may change the list under the
    # conversion: the C code read past the end (a crash, hence a host of its own).
    script = """
import os, sys
from jobworker import _spawn
paths = []
class Shrinking:
    def __fspath__(self):
        paths.clear()
        return "/nonexistent/a"
paths += [Shrinking(), "/nonexistent/b", "/nonexistent/c"]
r, w = os.pipe()
d = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)
got = _spawn.spawn(paths, ["a"], [], None, w, [], None, d, "a", None, -1)
print(got[4] == _spawn.STAGE_EXEC, got[5] == 2)
"""
    assert host(script, str(log_dir)) == "True True\n"


@pytest.mark.parametrize("limits", ["a million", "lowered below an open fd"])
def test_without_close_range_no_fd_reaches_a_job_whatever_the_fd_limit(
    log_dir: Path, limits: str
) -> None:
    # The fallback marked fds close-on-exec up to min(fd limit, 65,536): Docker's hard
    # limit is a million, which the worker raises its soft one to; and a soft limit
    # lowered after an fd was opened says nothing of that fd.  The fd table's size does.
    script = """
import os, resource, sys, uuid
from jobworker import Command, NoCgroups, Worker, _spawn
million = sys.argv[2] == "a million"
if million:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))
high = 70000 if million else resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 1
os.dup2(os.open("/dev/null", os.O_RDONLY), high, inheritable=True)
_spawn.set_without_close_range(True)
owner = uuid.uuid4()
with Worker(sys.argv[1], resource_control=NoCgroups("test")) as w:
    if not million:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, high + 1))
    job = w.start(Command("ls", ["/proc/self/fd"]), owner)
    with w.stream(job, owner) as r:
        print(r.read().decode().split())
"""
    if limits == "a million":
        try:
            subprocess.run(["prlimit", "--nofile=1048576", "true"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            pytest.skip("cannot raise the hard fd limit to a million here")
    assert host(script, str(log_dir), limits) == "['0', '1', '2', '3']\n"  # 3: ls's own


@needs_seccomp
def test_where_seccomp_refuses_kcmp_starts_keep_their_low_slots(log_dir: Path) -> None:
    # Docker's default profile refuses kcmp without CAP_SYS_PTRACE; the slots were then
    # given up at the first start, and every start copied the whole fd table.
    script = """
import ctypes, errno, os, sys, uuid
import seccomp
seccomp.install([("kcmp", None, 0, errno.EPERM)])
libc = ctypes.CDLL(None, use_errno=True)
assert libc.syscall(seccomp.NR["kcmp"], 0, 0, 0, 0, 0) == -1
assert ctypes.get_errno() == errno.EPERM
from jobworker import Command, NoCgroups, Worker, _spawn
before = _spawn.slots()
owner = uuid.uuid4()
with Worker(sys.argv[1], resource_control=NoCgroups("test")) as w:
    for _ in range(3):
        job = w.start(Command("true"), owner)
        w.wait(job, owner)
print(before != (-1, -1), _spawn.slots() == before)
"""
    assert host(script, str(log_dir)) == "True True\n"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_the_start_path_builds_with_headers_older_than_the_kernel(tmp_path: Path) -> None:
    # Headers from before 5.9 lack these numbers; the module must carry its own.
    shadow = tmp_path / "include" / "sys"
    shadow.mkdir(parents=True)
    (shadow / "syscall.h").write_text(
        "#include_next <sys/syscall.h>\n"
        "#undef SYS_close_range\n#undef SYS_pidfd_send_signal\n#undef SYS_clone3\n"
        "#undef __NR_close_range\n#undef __NR_pidfd_send_signal\n#undef __NR_clone3\n"
    )
    for source in ("_spawn.c", "_signalfd.c"):
        done = subprocess.run(
            [
                "gcc",
                "-fsyntax-only",
                "-Wall",
                "-Werror",
                "-I",
                str(tmp_path / "include"),
                "-I",
                sysconfig.get_paths()["include"],
                str(SRC / source),
            ],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()


@pytest.fixture
def no_clone_pidfd() -> object:
    _spawn.set_without_clone_pidfd(True)
    try:
        yield
    finally:
        _spawn.set_without_clone_pidfd(False)


def test_a_kernel_that_gives_no_pidfd_is_refused_before_anything_runs(
    worker: Worker, owner: uuid.UUID, log_dir: Path, tmp_path: Path, no_clone_pidfd: object
) -> None:
    # Kernels before 5.2 ignore CLONE_PIDFD instead of refusing it.
    marker = tmp_path / "ran"
    with pytest.raises(StartError, match="no pidfd"):
        worker.start(Command("touch", [str(marker)]), owner)
    assert not marker.exists()
    assert list(log_dir.iterdir()) == []
    assert worker.list(owner) == []


# -- exec and its errors (item 21, and 15's missing interpreter) ----------------------------


@needs_seccomp
def test_the_path_search_moves_past_file_systems_that_failed(log_dir: Path) -> None:
    # Like glibc's execvp: ESTALE, ENODEV and ETIMEDOUT (a dead NFS mount in PATH, say)
    # are candidates that did not work, not the end of the search.  The filter makes
    # execve fail with them for the first three candidates, picked by address.
    script = """
import errno, os, sys
import seccomp
from jobworker import _spawn
failing = [(b"/nonexistent/%d/echo" % e, e) for e in (errno.ESTALE, errno.ENODEV, errno.ETIMEDOUT)]
offset = bytes.__basicsize__ - 1  # where a bytes object keeps its characters
seccomp.install([("execve", 0, id(p) + offset, e) for p, e in failing])
d = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)

def spawn(paths):
    r, w = os.pipe()
    pid, pidfd, log_fd, name, stage, err = _spawn.spawn(
        paths, ["echo", "ran"], [], None, w, [], None, d, "echo", None, -1
    )
    os.close(w)
    if stage == _spawn.STAGE_OK:
        os.waitpid(pid, 0)
        os.close(pidfd)
        os.close(log_fd)
    return stage, err, os.read(r, 100).decode()

for path, e in failing:  # each alone: the filter works
    assert spawn([path]) == (_spawn.STAGE_EXEC, e, ""), (path, spawn([path]))
print(spawn([p for p, _ in failing] + [b"/bin/echo"]))
"""
    assert host(script, str(log_dir)) == "(0, 0, 'ran\\n')\n"


def test_not_a_directory_on_a_path_is_not_command_not_found(
    log_dir: Path, owner: uuid.UUID
) -> None:
    with Worker(log_dir, env={"PATH": "/etc/passwd:/nonexistent"}) as w:
        with pytest.raises(StartError, match="Not a directory") as e:
            w.start(Command("/etc/passwd/x"), owner)
        assert not isinstance(e.value, CommandNotFound)
        # In a PATH search, an entry that is not a directory just holds no command.
        with pytest.raises(CommandNotFound, match="command not found: echo"):
            w.start(Command("echo"), owner)
    assert list(log_dir.iterdir()) == []


def test_a_script_whose_interpreter_is_missing_is_not_command_not_found(
    worker: Worker, owner: uuid.UUID, tmp_path: Path
) -> None:
    script = tmp_path / "bin" / "script"
    script.parent.mkdir()
    script.write_text("#!/nonexistent/interp -x\necho hi\n")
    script.chmod(0o755)
    for command in (Command(str(script)), Command("script", env={"PATH": str(script.parent)})):
        with pytest.raises(StartError) as e:
            worker.start(command, owner)
        assert not isinstance(e.value, CommandNotFound)
        assert e.value.errno == errno.ENOENT
        assert "its interpreter /nonexistent/interp" in str(e.value), str(e.value)
        assert str(script) in str(e.value)


@needs_seccomp
def test_a_short_write_to_cgroup_procs_reports_no_stale_errno(tmp_path: Path) -> None:
    # The filter makes every 1-byte write of this thread (and its job children) write
    # nothing, as a cgroup.procs write might: no errno is set then.
    script = """
import os, sys, uuid
import seccomp
from conftest import FileGroups
from jobworker import Command, StartError, Worker
with Worker(sys.argv[1], resource_control=FileGroups(sys.argv[2])) as w:
    seccomp.install([("write", 2, 1, 0)])
    try:
        w.start(Command("true"), uuid.uuid4())
    except StartError as e:
        os.write(1, f"{e.errno} {e}\\n".encode())  # in one write of more than a byte
"""
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    (tmp_path / "logs").mkdir()
    out = host(script, str(tmp_path / "logs"), str(procs))
    assert out == f"{errno.EIO} cannot join the job's cgroup: {os.strerror(errno.EIO)}\n"


def test_signalfd_closes_its_fd_when_it_cannot_return_it() -> None:
    # Only a new int object can fail to be made (small ints are cached): hence fds
    # above 256, and each allocation of the call failed in turn.
    script = """
import os, _testcapi
from jobworker import _signalfd
low = [os.open("/dev/null", os.O_RDONLY) for _ in range(300)]
before = sorted(os.listdir("/proc/self/fd"))
failed = 0
for n in range(40):
    _testcapi.set_nomemory(n, n + 1)
    try:
        fd = _signalfd.signalfd([10], 0)
    except MemoryError:
        _testcapi.remove_mem_hooks()
        failed += 1
        continue
    _testcapi.remove_mem_hooks()
    os.close(fd)
print(failed > 0, sorted(os.listdir("/proc/self/fd")) == before)
"""
    pytest.importorskip("_testcapi")
    assert host(script) == "True True\n"


# -- born inside the job's cgroup2 cgroup (clone3 with CLONE_INTO_CGROUP) ------------------


needs_unified = pytest.mark.skipif(
    os.geteuid() != 0 or detect().name == "none", reason="needs root and writable cgroups"
)


@pytest.fixture
def cgroup2_dir() -> Iterator[str]:
    """A real, empty job cgroup in this machine's cgroup2 hierarchy."""
    rc = detect()
    group = rc.create(uuid.uuid4(), Limits())
    assert group.cgroup2_dir is not None
    try:
        yield group.cgroup2_dir
    finally:
        group.remove()
        rc.close()


@pytest.fixture
def always_clone_into_cgroup() -> Iterator[None]:
    """Every start born in its cgroup2 cgroup, also one that follows another closely."""
    _spawn.set_always_clone_into_cgroup(True)
    try:
        yield
    finally:
        _spawn.set_always_clone_into_cgroup(False)


@pytest.fixture
def without_clone_into_cgroup() -> Iterator[None]:
    _spawn.set_without_clone_into_cgroup(True)
    try:
        yield
    finally:
        _spawn.set_without_clone_into_cgroup(False)


def spawn_cat_cgroup(log_dir: Path, procs: list[str], cgroup2_dir: str) -> tuple[int, int, str]:
    """Start ``cat /proc/self/cgroup`` joining ``procs``, born in ``cgroup2_dir``:
    (stage, errno, what cat printed)."""
    d = os.open(log_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    r, w = os.pipe()
    try:
        pid, pidfd, log_fd, name, stage, err = _spawn.spawn(
            ["/bin/cat"], ["cat", "/proc/self/cgroup"], [], None, w, procs, cgroup2_dir,
            d, "cat", None, -1,
        )  # fmt: skip
        os.close(w)
        if stage == _spawn.STAGE_OK:
            os.waitpid(pid, 0)
            os.close(pidfd)
            os.close(log_fd)
            os.unlink(name, dir_fd=d)
        out = b""
        while chunk := os.read(r, 4096):
            out += chunk
        return stage, err, out.decode()
    finally:
        os.close(r)
        os.close(d)


@needs_unified
def test_the_child_is_born_in_its_cgroup2_cgroup(
    log_dir: Path, cgroup2_dir: str, always_clone_into_cgroup: None
) -> None:
    # The child would fail to write the first cgroup.procs (there is no such file) if
    # it joined by writing: it is started inside the cgroup instead.
    assert _spawn.clone_into_cgroup_usable()
    missing = os.path.join(str(log_dir), "no-such-dir", "cgroup.procs")
    stage, err, out = spawn_cat_cgroup(log_dir, [missing], cgroup2_dir)
    assert (stage, err) == (_spawn.STAGE_OK, 0)
    (unified,) = [line for line in out.splitlines() if line.startswith("0::")]
    assert unified.endswith("/" + os.path.basename(cgroup2_dir)), out


@needs_unified
def test_where_clone_into_cgroup_is_unavailable_the_child_joins_by_writing(
    log_dir: Path, cgroup2_dir: str, without_clone_into_cgroup: None
) -> None:
    missing = os.path.join(str(log_dir), "no-such-dir", "cgroup.procs")
    stage, err, _ = spawn_cat_cgroup(log_dir, [missing], cgroup2_dir)
    assert (stage, err) == (_spawn.STAGE_CGROUP, errno.ENOENT)
    procs = os.path.join(cgroup2_dir, "cgroup.procs")
    stage, err, out = spawn_cat_cgroup(log_dir, [procs], cgroup2_dir)
    assert (stage, err) == (_spawn.STAGE_OK, 0)
    assert any(line.endswith(os.path.basename(cgroup2_dir)) for line in out.splitlines()), out


@needs_unified
@needs_seccomp
def test_where_seccomp_refuses_clone3_starts_fall_back_to_joining_by_writing(
    log_dir: Path,
) -> None:
    # Docker's default profile answers clone3 with ENOSYS, so that callers fall back.
    script = """
import errno, sys, uuid
import seccomp
seccomp.install([("clone3", None, 0, errno.ENOSYS)])
from conftest import job_cgroup_lines
from jobworker import Command, Worker, _spawn
owner = uuid.uuid4()
with Worker(sys.argv[1]) as w:
    for _ in range(2):
        job = w.start(Command("cat", ["/proc/self/cgroup"]), owner)
        info = w.wait(job, owner)
        lines = job_cgroup_lines(info.log_path.read_text())
        print(info.status.exit_code, [line.split(":")[0] for line in lines])
print(_spawn.clone_into_cgroup_usable())
"""
    assert host(script, str(log_dir)) == "0 ['0']\n0 ['0']\nFalse\n"
