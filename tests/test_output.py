"""Output capture: exact bytes, in write order, binary-safe, nothing lost."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker import AsyncWorker, Command, Worker, _spawn

from conftest import PY, run_python


def test_interleaved_stdout_and_stderr_in_write_order(worker: Worker, owner: uuid.UUID) -> None:
    code = (
        "import os\n"
        "for i in range(2000):\n"
        "    os.write(1 + i % 2, b'%d:%s\\n' % (i, b'o' if i % 2 == 0 else b'e'))\n"
    )
    expected = b"".join(b"%d:%s\n" % (i, b"o" if i % 2 == 0 else b"e") for i in range(2000))
    assert run_python(worker, owner, code) == expected


def test_binary_output_every_byte_value(worker: Worker, owner: uuid.UUID) -> None:
    code = "import os\nos.write(1, bytes(range(256)) * 1000)\nos.write(2, b'\\x00\\xff')"
    assert run_python(worker, owner, code) == bytes(range(256)) * 1000 + b"\x00\xff"


def test_output_without_trailing_newline(worker: Worker, owner: uuid.UUID) -> None:
    assert run_python(worker, owner, "import sys; sys.stdout.write('no newline')") == b"no newline"


def test_long_line_without_newline_is_intact(worker: Worker, owner: uuid.UUID) -> None:
    size = 8 << 20
    code = f"import os\nb = b'x' * {size}\nv = memoryview(b)\nwhile v: v = v[os.write(1, v):]"
    data = run_python(worker, owner, code)
    assert len(data) == size and data.count(b"x") == size


def test_no_output(worker: Worker, owner: uuid.UUID) -> None:
    assert run_python(worker, owner, "pass") == b""


def test_grandchild_writing_just_before_parent_exits_is_kept(
    worker: Worker, owner: uuid.UUID
) -> None:
    # The grandchild writes and then the parent exits at once: the leftover kill that
    # follows the parent's exit must not lose what was already written.
    code = (
        "import os, sys\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.write(1, b'from grandchild\\n')\n"
        "    os.write(w, b'x')\n"
        "    os.execvp('sleep', ['sleep', '1000'])\n"
        "os.read(r, 1)\n"
        "os.write(1, b'parent done\\n')\n"
    )
    job = worker.start(Command(PY, ["-c", code]), owner)
    with worker.stream(job, owner) as r:
        assert r.read() == b"from grandchild\nparent done\n"
    assert worker.query(job, owner).status.exit_code == 0


def test_log_file_is_private_and_named_after_command_and_pid(
    worker: Worker, owner: uuid.UUID, log_dir: Path
) -> None:
    job = worker.start(Command("echo", ["hi"]), owner)
    info = worker.query(job, owner)
    assert info.log_path == log_dir / f"echo_{info.pid}.log"
    st = os.lstat(info.log_path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    with worker.stream(job, owner) as r:
        assert r.read() == b"hi\n"


def test_environment_and_cwd_overrides(log_dir: Path, owner: uuid.UUID) -> None:
    with Worker(log_dir, env={"KEEP": "1", "DROP": "2", "PATH": os.defpath}) as w:
        code = (
            "import os; e = os.environ; "
            "print(os.getcwd(), e.get('KEEP'), e.get('DROP'), e.get('A'))"
        )
        cmd = Command(PY, ["-c", code], env={"A": "b c", "DROP": None}, cwd="/")
        job = w.start(cmd, owner)
        with w.stream(job, owner) as r:
            assert r.read() == b"/ 1 None b c\n"


@pytest.mark.parametrize("env", [{"A": "x\0y"}, {"A=B": "1"}, {"": "1"}])
def test_worker_refuses_a_bad_environment_and_holds_nothing(
    log_dir: Path, env: dict[str, str]
) -> None:
    # The worker's environment is encoded once, for every job: checked then, not at
    # some later start.  (The fixture's fd check sees a leaked log-directory fd.)
    with pytest.raises(ValueError, match="invalid environment variable"):
        Worker(log_dir, env=env)


def test_stdin_is_dev_null_and_job_has_own_session(worker: Worker, owner: uuid.UUID) -> None:
    code = "import os; print(os.getsid(0) == os.getpid(), os.getpgrp() == os.getpid())"
    assert run_python(worker, owner, code) == b"True True\n"


def test_job_does_not_inherit_worker_fds(worker: Worker, owner: uuid.UUID) -> None:
    sleeper = worker.start(Command("sleep", ["1000"]), owner)  # its fds are held by the worker
    data = run_python(
        worker, owner, "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"
    )
    assert data == b"[0, 1, 2, 3]\n"  # 3 is listdir's own
    worker.stop(sleeper, owner, grace=0)


@pytest.fixture(params=["close_range", "no close_range"])
def fd_copy(request: pytest.FixtureRequest) -> Iterator[str]:
    # Kernels before 5.9 have no close_range: the child then lists /proc/self/fd.
    _spawn.set_without_close_range(request.param == "no close_range")
    try:
        yield request.param
    finally:
        _spawn.set_without_close_range(False)


def test_concurrent_starts_leak_no_fds(worker: Worker, owner: uuid.UUID, fd_copy: str) -> None:
    # One start at a time copies only the low end of the worker's fd table (the slots);
    # the others, meanwhile, copy all of it.  Neither may leak a descriptor.
    sleepers = [worker.start(Command("sleep", ["1000"]), owner) for _ in range(20)]
    code = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"
    results: list[bytes] = []
    # Not close-on-exec: the child must still not pass it on.
    inheritable = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(inheritable, True)

    def starter() -> None:
        for _ in range(10):
            results.append(run_python(worker, owner, code))

    threads = [threading.Thread(target=starter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.close(inheritable)
    assert results == [b"[0, 1, 2, 3]\n"] * 40
    for s in sleepers:
        worker.stop(s, owner, grace=0)


def test_spawn_slots_closed_and_reused_are_left_alone(tmp_path: Path) -> None:
    # A daemonizing close-all in the host program may close the worker's reserved fds
    # and reuse their numbers: the worker must notice and never dup onto them.
    script = f"""
import os, uuid
from pathlib import Path
from jobworker import Command, NoCgroups, Worker
from jobworker import _spawn
slots = _spawn.slots()
assert min(slots) > 2, slots
for i, fd in enumerate(slots):
    os.close(fd)
    mine = os.open({str(tmp_path)!r} + f"/mine{{i}}", os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(mine, fd)
    os.close(mine)
with Worker({str(tmp_path)!r}, resource_control=NoCgroups("test")) as w:
    owner = uuid.uuid4()
    job = w.start(Command("echo", ["hi"]), owner)
    with w.stream(job, owner) as r:
        assert r.read() == b"hi\\n"
for i, fd in enumerate(slots):
    assert os.readlink(f"/proc/self/fd/{{fd}}") == {str(tmp_path)!r} + f"/mine{{i}}"
assert _spawn.slots() == (-1, -1)
print("ok")
"""
    done = subprocess.run([PY, "-c", script], capture_output=True, timeout=60)
    assert done.stdout == b"ok\n", done.stderr.decode()


def test_a_host_with_its_stdio_closed_can_start_jobs(tmp_path: Path) -> None:
    # A daemon that closed fds 0-2: the job's pipe would get those numbers.
    script = f"""
import os, uuid
from jobworker import Command, NoCgroups, Worker
with Worker({str(tmp_path)!r}, resource_control=NoCgroups("test")) as w:
    os.close(0); os.close(1)
    owner = uuid.uuid4()
    job = w.start(Command("echo", ["hi"]), owner)
    with w.stream(job, owner) as r:
        assert r.read() == b"hi\\n"
os.write(2, b"ok")
"""
    done = subprocess.run([PY, "-c", script], capture_output=True, timeout=60)
    assert done.stderr.endswith(b"ok"), done.stderr.decode()


def test_an_async_reader_needs_a_running_loop_and_leaks_nothing_without(
    worker: Worker, owner: uuid.UUID
) -> None:
    job = worker.start(Command("echo", ["x"]), owner)
    with pytest.raises(RuntimeError, match="no running event loop"):
        AsyncWorker(worker).stream(job, owner)  # the fixture checks for a leaked fd


def test_closing_an_async_reader_wakes_its_pending_read(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sleep", ["1000"]), owner)

    async def main() -> None:
        r = AsyncWorker(worker).stream(job, owner)
        pending = asyncio.ensure_future(r.read())
        await asyncio.sleep(0.05)
        r.close()
        with pytest.raises(ValueError, match="closed reader"):
            await asyncio.wait_for(pending, 5)

    asyncio.run(main())
    worker.stop(job, owner, grace=0)


def test_sigpipe_is_default_in_the_job(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sh", ["-c", "yes | head -c 3"]), owner)
    with worker.stream(job, owner) as r:
        assert r.read() == b"y\ny"
    assert worker.query(job, owner).status.exit_code == 0
