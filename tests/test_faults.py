"""Faults of the host around the worker: out of descriptors, failing callbacks, a host
that is a child subreaper (a container's entrypoint)."""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from jobworker import Command, Status, Worker, detect
from jobworker._reactor import Reactor

from conftest import PY

CONTROL = detect()


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


# The host of the next test.  Its descriptors 0..LIMIT-1 are all taken before the job
# starts, so that everything of the job (pipe, pidfd, log) lies above LIMIT; then the
# limit drops to LIMIT, and no file can be opened (closing one of the job's would not
# help: a number above the limit cannot be handed out).
EMFILE_HOST = """
import json, logging, os, resource, signal, sys, time, uuid
from jobworker import Command, Worker, detect

LIMIT = 512
messages = []
class Keep(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger("jobworker").addHandler(Keep())
logging.getLogger("jobworker").propagate = False

owner = uuid.uuid4()
w = Worker(sys.argv[1], resource_control=detect())
base = os.open("/dev/null", os.O_RDONLY)
fillers = [base]
while fillers[-1] < LIMIT - 1:
    fillers.append(os.dup(base))
code = "setsid sleep 1000 & echo $!; exec sleep 1000"
job = w.start(Command("sh", ["-c", code]), owner)
with w.stream(job, owner) as r:
    leftover = int(r.read(100))
while open(f"/proc/{leftover}/stat").read().rsplit(")", 1)[1].split()[3] != str(leftover):
    time.sleep(0.01)  # not in its own session yet
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))
try:
    os.dup(base)
    full = False
except OSError as e:
    full = e.errno == 24  # EMFILE
os.kill(w.query(job, owner).pid, signal.SIGKILL)  # the main process exits
time.sleep(1.0)
during = list(messages)
running = w.query(job, owner).status.state.value
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
info = w.wait(job, owner, timeout=30)
try:
    pidfd = os.pidfd_open(leftover)
except ProcessLookupError:
    leftover_dead = True
else:
    import select
    leftover_dead = bool(select.select([pidfd], [], [], 10)[0])
    os.close(pidfd)
for fd in fillers:
    os.close(fd)
w.close()
print(json.dumps({
    "full": full, "during": during[:5], "during_count": len(during),
    "running": running, "status": str(info.status), "leftover_dead": leftover_dead,
}))
"""


@pytest.mark.skipif(CONTROL.name == "none", reason="needs cgroups (killing them opens files)")
def test_out_of_descriptors_the_reactor_does_not_spin_and_the_job_still_ends(
    log_dir: Path,
) -> None:
    # The main process exits while a setsid leftover holds the pipe: killing the
    # cgroup means opening cgroup.kill, which fails with EMFILE.  That must neither
    # leave the exit armed (a spin at full CPU, a traceback each time) nor lose the
    # job: it ends, and the leftover dies, once descriptors are free again.
    run = subprocess.run(
        [PY, "-c", EMFILE_HOST, str(log_dir)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["full"], "the host's descriptor table was not full"
    assert out["running"] == "running"  # cannot end while its leftover may still run
    # One warning, not one traceback per epoll turn.
    assert out["during_count"] <= 3, out["during"]
    assert out["status"] == "signaled(9)"
    assert out["leftover_dead"]


# The host of the next test: a child subreaper, as a container's entrypoint is (PID 1),
# with children of its own that it reaps itself.
SUBREAPER_HOST = """
import ctypes, json, os, subprocess, sys, time, uuid
from jobworker import Command, NoCgroups, Worker, detect

libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER

def children():
    kids = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass  # a thread that has just exited (the worker's, after close)
    return kids

def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]

# The host's own children, already exited (zombies) while the jobs run: one in the
# host's session, one in a session of its own.
own = [
    subprocess.Popen(["sh", "-c", "exit 7"]),
    subprocess.Popen(["sh", "-c", "exit 8"], start_new_session=True),
]
while any(state(p.pid) != "Z" for p in own):
    time.sleep(0.01)
cgroups = sys.argv[2] == "detected"
control = detect() if cgroups else NoCgroups("test")
# Leftovers of every kind: children of the main process, a grandchild orphaned while
# the main process still runs, a child of a leftover, and (with cgroups, which reach
# it) a process in a session of its own.
code = "sleep 1000 & (sleep 1000 &); sh -c 'sleep 1000 & exec sleep 1000' & "
if cgroups:
    code += "setsid sleep 1000 & "
code += "sleep 0.2; echo started"
owner = uuid.uuid4()
with Worker(sys.argv[1], resource_control=control) as w:
    jobs = [w.start(Command("sh", ["-c", code]), owner) for _ in range(3)]
    statuses = [str(w.wait(j, owner, timeout=30).status) for j in jobs]
    mine = {p.pid for p in own}
    deadline = time.monotonic() + 10
    while True:
        left = sorted(set(children()) - mine)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    left = [(p, state(p)) for p in left]
    own_there = [p.pid in children() and state(p.pid) == "Z" for p in own]
codes = [p.wait() for p in own]
print(json.dumps({
    "statuses": statuses, "left": left, "own_there": own_there, "codes": codes,
    "after_close": children(),
}))
"""


@pytest.mark.parametrize("control", ["detected", "none"])
def test_a_subreaper_host_gets_no_zombies_and_keeps_its_own_children(
    log_dir: Path, control: str
) -> None:
    if control == "detected" and CONTROL.name == "none":
        pytest.skip("no writable cgroups here")
    run = subprocess.run(
        [PY, "-c", SUBREAPER_HOST, str(log_dir), control],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["statuses"] == ["exited(0)"] * 3
    assert out["left"] == []  # the jobs' orphans were reaped
    assert out["own_there"] == [True, True]  # the host's own were not...
    assert out["codes"] == [7, 8]  # ...so the host got their statuses
    assert out["after_close"] == []
