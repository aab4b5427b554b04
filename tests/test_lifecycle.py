"""Start errors, exit statuses, stop (TERM, KILL, process trees) and reaping."""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from jobworker import (
    Command,
    CommandNotFound,
    InvalidCommand,
    JobNotRunning,
    NoCgroups,
    ResourceControl,
    StartError,
    State,
    Status,
    StopType,
    Worker,
    WorkerClosed,
)

from conftest import dies, live_children, small_tmpfs


def wait_end(worker: Worker, job: uuid.UUID, owner: uuid.UUID) -> Status:
    with worker.stream(job, owner) as r:
        r.read()
    return worker.query(job, owner).status


def run_true(worker: Worker, owner: uuid.UUID) -> Status:
    return worker.wait(worker.start(Command("true"), owner), owner, timeout=10).status


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("command", "error", "message"),
    [
        (Command(""), InvalidCommand, "command name is empty"),
        (Command("ec\0ho"), InvalidCommand, "NUL"),
        (Command("echo", ["a\0b"]), InvalidCommand, "NUL"),
        (Command("echo", env={"A=B": "c"}), InvalidCommand, "environment variable name"),
        (Command("no-such-command-jobworker"), CommandNotFound, "command not found"),
        (Command("./no/such/path"), CommandNotFound, "command not found"),
        (Command("/"), StartError, "is a directory"),
        (Command(".."), StartError, "is a directory"),
        (Command("/etc/passwd"), StartError, "permission denied"),
        (Command("echo", cwd="/no/such/dir"), StartError, "cannot change directory"),
    ],
)
def test_bad_commands_raise_and_leave_nothing(
    worker: Worker,
    owner: uuid.UUID,
    log_dir: Path,
    command: Command,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        worker.start(command, owner)
    assert list(log_dir.iterdir()) == []
    assert worker.list(owner) == []
    assert live_children() == []


def test_no_room_for_a_log_means_the_command_never_runs(
    tmp_path: Path, owner: uuid.UUID, control: ResourceControl
) -> None:
    marker = tmp_path / "ran"
    # One inode: the root directory's.  Creating any file fails with ENOSPC.
    with small_tmpfs(tmp_path / "full", "size=1m,nr_inodes=1") as full:
        with Worker(full, resource_control=control) as w:
            with pytest.raises(StartError, match=f"cannot create a log in {full}: No space"):
                w.start(Command("touch", [str(marker)]), owner)
            assert w.list(owner) == []
        assert not marker.exists()
        assert list(full.iterdir()) == []
        assert live_children() == []


def test_name_with_dotdot_and_slashes_keeps_log_in_log_dir(
    worker: Worker, owner: uuid.UUID, log_dir: Path
) -> None:
    echo = "/bin/../bin/echo"
    job = worker.start(Command(echo, ["x"]), owner)
    info = worker.query(job, owner)
    assert info.log_path.parent == log_dir
    assert info.log_path.name == f"echo_{info.pid}.log"
    assert wait_end(worker, job, owner) == Status.exited(0)


def test_exit_codes(worker: Worker, owner: uuid.UUID) -> None:
    for code in (0, 1, 42, 255):
        job = worker.start(Command("sh", ["-c", f"exit {code}"]), owner)
        assert wait_end(worker, job, owner) == Status.exited(code)


def test_killed_by_a_signal_the_worker_did_not_send(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sh", ["-c", "kill -SEGV $$"]), owner)
    assert wait_end(worker, job, owner) == Status.signaled(signal.SIGSEGV)


def test_query_while_running_and_times(worker: Worker, owner: uuid.UUID) -> None:
    t0 = time.time()
    job = worker.start(Command("sleep", ["1000"]), owner)
    info = worker.query(job, owner)
    assert info.status.state is State.RUNNING and info.ended_at is None
    assert t0 <= info.started_at <= time.time() and info.owner_id == owner
    assert info.command == Command("sleep", ["1000"])
    assert pid_alive(info.pid)
    worker.stop(job, owner, grace=0)
    info = worker.query(job, owner)
    assert info.status == Status.stopped(StopType.KILL)
    assert info.ended_at is not None and info.ended_at >= info.started_at


def test_stop_within_grace_is_term(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sleep", ["1000"]), owner)
    worker.stop(job, owner)
    assert worker.query(job, owner).status == Status.stopped(StopType.TERM)


def test_stop_of_term_ignoring_job_kills_after_grace(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sh", ["-c", "trap '' TERM; echo ready; sleep 1000"]), owner)
    with worker.stream(job, owner) as r:
        assert r.read(6) == b"ready\n"
    t0 = time.monotonic()
    worker.stop(job, owner, grace=0.2)
    assert time.monotonic() - t0 >= 0.2
    assert worker.query(job, owner).status == Status.stopped(StopType.KILL)


def test_stop_reaches_the_whole_process_tree(worker: Worker, owner: uuid.UUID) -> None:
    code = "sleep 1000 & echo $!; sleep 1000 & echo $!; wait"
    job = worker.start(Command("sh", ["-c", code]), owner)
    with worker.stream(job, owner) as r:
        seen = b""
        while seen.count(b"\n") < 2:
            seen += r.read(100)
        pids = [int(p) for p in seen.split()]
        watched = [os.pidfd_open(p) for p in pids]
        worker.stop(job, owner)
        r.read()
    for fd in watched:
        assert select.select([fd], [], [], 5)[0] == [fd]
        os.close(fd)


def test_leftovers_are_killed_when_main_process_exits(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sh", ["-c", "sleep 1000 & echo $!"]), owner)
    with worker.stream(job, owner) as r:
        out = r.read()
    assert worker.query(job, owner).status == Status.exited(0)
    # SIGKILLed before the job counted as ended; it may take a moment to finish dying.
    assert dies(int(out))


def test_stopping_an_ended_job_is_an_error(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("true"), owner)
    wait_end(worker, job, owner)
    with pytest.raises(JobNotRunning):
        worker.stop(job, owner)


def test_concurrent_stops_are_safe(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sh", ["-c", "trap '' TERM; echo ready; sleep 1000"]), owner)
    with worker.stream(job, owner) as r:
        r.read(6)
    errors: list[BaseException] = []

    def stop(grace: float) -> None:
        try:
            worker.stop(job, owner, grace=grace)
        except JobNotRunning:
            pass
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=stop, args=(g,)) for g in (5, 5, 0, 5, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert worker.query(job, owner).status == Status.stopped(StopType.KILL)


@pytest.mark.parametrize("grace", [float("nan"), -1.0, "5"])
def test_a_grace_that_is_not_a_duration_is_refused(
    worker: Worker, owner: uuid.UUID, log_dir: Path, grace: object
) -> None:
    job = worker.start(Command("sleep", ["1000"]), owner)
    with pytest.raises(ValueError, match="grace"):
        worker.stop(job, owner, grace=grace)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace"):
        Worker(log_dir, grace=grace)  # type: ignore[arg-type]
    worker.stop(job, owner, grace=0)


def test_an_endless_grace_waits_for_term_and_a_later_stop_can_kill(
    worker: Worker, owner: uuid.UUID
) -> None:
    # An infinite (or any very long) grace once overflowed epoll's timeout and killed
    # the reactor thread.
    job = worker.start(Command("sh", ["-c", "trap '' TERM; echo ready; sleep 1000"]), owner)
    with worker.stream(job, owner) as r:
        assert r.read(6) == b"ready\n"
    patient = threading.Thread(target=worker.stop, args=(job, owner, float("inf")))
    patient.start()
    time.sleep(0.2)  # let the endless stop begin; the job ignores its SIGTERM
    assert worker.query(job, owner).status.state is State.RUNNING
    other = worker.start(Command("sh", ["-c", "trap '' TERM; echo ready; sleep 1000"]), owner)
    with worker.stream(other, owner) as r:
        assert r.read(6) == b"ready\n"  # its trap is set
    very_patient = threading.Thread(target=worker.stop, args=(other, owner, 1e12))
    very_patient.start()
    worker.stop(job, owner, grace=0)
    patient.join(10)
    assert not patient.is_alive()
    assert worker.query(job, owner).status == Status.stopped(StopType.KILL)
    assert run_true(worker, owner) == Status.exited(0)  # the reactor is alive
    worker.stop(other, owner, grace=0)
    very_patient.join(10)


def test_jobs_reaped_behind_the_workers_back_still_end(
    log_dir: Path, owner: uuid.UUID, caplog: pytest.LogCaptureFixture
) -> None:
    # With SIGCHLD ignored the kernel reaps children itself: the worker cannot learn
    # the exit status, must not signal the freed pid, and must still end the job.
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with caplog.at_level(logging.WARNING, logger="jobworker"), Worker(log_dir) as w:
            job = w.start(Command("sh", ["-c", "echo out; exit 3"]), owner)
            info = w.wait(job, owner, timeout=10)
            assert info.status == Status.exited(None)
            with w.stream(job, owner) as r:
                assert r.read() == b"out\n"
        assert "SIGCHLD is ignored" in caplog.text
        assert "internal error" not in caplog.text
    finally:
        signal.signal(signal.SIGCHLD, old)


def test_a_start_whose_watch_fails_leaves_nothing(
    worker: Worker, owner: uuid.UUID, log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # epoll refusing the job's pidfd (its watch limit, say), after the process started.
    def refuse(fd: int, events: int, handler: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(worker._reactor, "register", refuse)
    with pytest.raises(StartError, match="No space left"):
        worker.start(Command("sleep", ["1000"]), owner)
    monkeypatch.undo()
    assert worker.list(owner) == []
    assert list(log_dir.iterdir()) == []
    assert live_children() == []
    assert run_true(worker, owner) == Status.exited(0)


def test_a_closed_reactor_drops_callbacks_without_touching_its_old_fd(
    log_dir: Path, tmp_path: Path
) -> None:
    # stop() racing close(): the eventfd's number may belong to another file by now.
    w = Worker(log_dir)
    reactor = w._reactor
    old_fd = reactor._wake_fd
    w.close()
    fd = os.open(tmp_path / "someone_elses", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.dup2(fd, old_fd)
        reactor.call_soon(lambda: None)
        assert os.pread(old_fd, 100, 0) == b""
    finally:
        os.close(old_fd)
        os.close(fd)


def test_thousands_of_jobs_leave_no_zombies(log_dir: Path, owner: uuid.UUID) -> None:
    with Worker(log_dir) as w:
        jobs = [w.start(Command("true"), owner) for _ in range(2000)]
        for j in jobs:
            assert wait_end(w, j, owner) == Status.exited(0)
        assert live_children() == []


def test_worker_close_kills_running_jobs(log_dir: Path, owner: uuid.UUID) -> None:
    w = Worker(log_dir)
    job = w.start(Command("sleep", ["1000"]), owner)
    pid = w.query(job, owner).pid
    w.close()
    assert not pid_alive(pid)
    assert os.path.exists(log_dir)


def test_a_closed_worker_leaves_only_its_jobs_logs(log_dir: Path, owner: uuid.UUID) -> None:
    # Only the jobs' logs: no temporary or leftover file.
    with Worker(log_dir) as w:
        jobs = [w.start(Command("true"), owner) for _ in range(3)]
        logs = {w.wait(j, owner).log_path.name for j in jobs}
        assert len(os.listdir(log_dir)) == 3
    assert set(os.listdir(log_dir)) == logs


def test_wait_returns_final_info_and_times_out(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sh", ["-c", "exit 3"]), owner)
    info = worker.wait(job, owner)
    assert info.status == Status.exited(3) and info.ended_at is not None
    sleeper = worker.start(Command("sleep", ["1000"]), owner)
    with pytest.raises(TimeoutError):
        worker.wait(sleeper, owner, timeout=0.05)
    worker.stop(sleeper, owner, grace=0)


def test_close_racing_starts_leaves_no_job_behind(log_dir: Path, owner: uuid.UUID) -> None:
    w = Worker(log_dir)
    first = threading.Event()
    refused: list[Exception] = []

    def starter() -> None:
        for _ in range(200):
            try:
                w.start(Command("sleep", ["1000"]), owner)
            except WorkerClosed as e:
                refused.append(e)
                return
            first.set()

    threads = [threading.Thread(target=starter) for _ in range(4)]
    for t in threads:
        t.start()
    assert first.wait(10)  # close while starts are landing
    w.close()
    for t in threads:
        t.join()
    assert len(refused) == 4
    assert live_children() == []


def test_without_cgroups_an_escapee_holding_the_output_cannot_hold_the_job_open(
    log_dir: Path, owner: uuid.UUID
) -> None:
    from jobworker._job import ORPHAN_GRACE

    fifo = log_dir.parent / "escaped"
    os.mkfifo(fifo)
    # The main process exits only once the escapee has left the process group.
    code = (
        f"setsid sh -c 'echo $$; echo > {fifo}; exec sleep 1000' & read _ < {fifo}; echo main done"
    )
    with Worker(log_dir, resource_control=NoCgroups("test")) as w:
        job = w.start(Command("sh", ["-c", code]), owner)
        with w.stream(job, owner) as r:
            out = b""
            while len(out.splitlines()) < 2:
                chunk = r.read(100)
                assert chunk, out
                out += chunk
            assert out.endswith(b"main done\n"), out
            escapee = int(out.split()[0])
            t0 = time.monotonic()
            assert r.read() == b""  # ends although the escapee still holds the pipe
        waited = time.monotonic() - t0
    try:
        assert ORPHAN_GRACE - 0.5 <= waited <= ORPHAN_GRACE + 2
        assert pid_alive(escapee)  # outside the group, no cgroup: nothing could reach it
    finally:
        os.kill(escapee, signal.SIGKILL)  # a descendant of our own job
        assert dies(escapee) or not pid_alive(escapee)


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_job_that_stopped_itself_ends_on_term(worker: Worker, owner: uuid.UUID) -> None:
    # A stopped process keeps SIGTERM pending: without a SIGCONT after it, the stop
    # would burn the whole grace and report KILL (an endless grace: never return).
    job = worker.start(Command("sh", ["-c", "kill -STOP $$; sleep 1000"]), owner)
    pid = worker.query(job, owner).pid
    deadline = time.monotonic() + 10
    while proc_state(pid) != "T":
        assert time.monotonic() < deadline, "the job never stopped itself"
        time.sleep(0.01)
    worker.stop(job, owner, grace=30)
    assert worker.query(job, owner).status == Status.stopped(StopType.TERM)


def _start_with_escapee(w: Worker, owner: uuid.UUID, fifo: Path) -> tuple[uuid.UUID, int]:
    """A job whose main process exits at once, leaving a process outside its process
    group (and, without cgroups, out of the worker's reach) holding its output: the job
    stays running for ORPHAN_GRACE after its main process is gone.  Returns the job and
    the escapee's pid (the caller kills it)."""
    os.mkfifo(fifo)
    code = f"setsid sh -c 'echo $$; echo > {fifo}; exec sleep 1000' & read _ < {fifo}; echo done"
    job = w.start(Command("sh", ["-c", code]), owner)
    with w.stream(job, owner) as r:
        out = b""
        while not out.endswith(b"done\n"):
            chunk = r.read(100)
            assert chunk, out
            out += chunk
    return job, int(out.split()[0])


def test_stop_after_the_main_process_exited_ends_the_job_and_keeps_its_status(
    log_dir: Path, owner: uuid.UUID
) -> None:
    # query() says running while the output drains; stop() must agree: it waits for the
    # end instead of raising JobNotRunning, and the status stays the main process's own.
    with Worker(log_dir, resource_control=NoCgroups("test")) as w:
        job, escapee = _start_with_escapee(w, owner, log_dir.parent / "fifo")
        try:
            main = w.query(job, owner).pid
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{main}"):  # exited and reaped by the worker
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert w.query(job, owner).status.state is State.RUNNING  # the escapee holds on
            w.stop(job, owner, grace=5)
            info = w.query(job, owner)
            assert info.status == Status.exited(0) and info.ended_at is not None
            with pytest.raises(JobNotRunning):
                w.stop(job, owner)
        finally:
            os.kill(escapee, signal.SIGKILL)  # a descendant of our own job
    assert dies(escapee) or not pid_alive(escapee)


def test_a_second_close_returns_only_once_the_worker_is_closed(
    log_dir: Path, owner: uuid.UUID
) -> None:
    from conftest import open_fds

    fds_before = open_fds()
    w = Worker(log_dir, resource_control=NoCgroups("test"))
    # Its escapee keeps the job open for ORPHAN_GRACE after its main process is killed,
    # so the first close() is still waiting when the second one comes.
    job, escapee = _start_with_escapee(w, owner, log_dir.parent / "fifo")
    first = threading.Thread(target=w.close)
    try:
        first.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                w.query(job, owner)
            except WorkerClosed:
                break  # the first close() has begun
            time.sleep(0.001)
        w.close()
        assert open_fds() == fds_before  # every job and the reactor are gone
        first.join(10)
        assert not first.is_alive()
    finally:
        os.kill(escapee, signal.SIGKILL)
    assert dies(escapee) or not pid_alive(escapee)
