"""``jobworker run`` end to end: the CLI as a subprocess, real jobs, real signals.

Every test runs the console script with TMPDIR pointing at a directory of its own, and
checks at the end that the run's temporary log directory and the worker's cgroups are
gone."""

from __future__ import annotations

import glob
import json
import os
import pty
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker import detect

from conftest import (
    JOBWORKER,
    PY,
    dies,
    documented_record,
    error_line,
    same_shape,
    stderr_lines,
)

ROOT = Path(__file__).resolve().parent.parent
CONTROL = detect()
MiB = 1 << 20


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose TMPDIR is empty now, and must be empty again at the end."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    yield {**os.environ, "TMPDIR": str(tmp)}
    assert list(tmp.iterdir()) == []  # the run's private log directory went


def leftover_cgroups(pid: int) -> list[str]:
    """Cgroups the worker of CLI process ``pid`` made (named after it) that still exist."""
    return glob.glob(f"/sys/fs/cgroup/**/jobworker-{pid}-*", recursive=True)


def run(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.Popen(
        [JOBWORKER, "run", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = proc.communicate(timeout=timeout)
    assert leftover_cgroups(proc.pid) == []
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [JOBWORKER, "run", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


# -- exit codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("kill -TERM $$", 128 + signal.SIGTERM),
        ("kill -KILL $$", 128 + signal.SIGKILL),
        ("kill -SEGV $$", 128 + signal.SIGSEGV),
    ],
)
def test_exits_with_the_jobs_code_or_128_plus_its_signal(
    tmpdir_env: dict[str, str], script: str, code: int
) -> None:
    result = run(tmpdir_env, "--", "sh", "-c", script)
    assert result.returncode == code
    assert result.stdout == b""
    assert stderr_lines(result.stderr) == []  # a job's failure is its own: nothing added


def test_command_not_found_is_127_and_not_executable_is_126(
    tmpdir_env: dict[str, str], tmp_path: Path
) -> None:
    result = run(tmpdir_env, "--", "no-such-command-here")
    assert result.returncode == 127
    assert error_line(result) == "command not found: no-such-command-here"
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    result = run(tmpdir_env, "--", str(script))
    assert result.returncode == 126
    assert error_line(result).startswith(f"cannot execute {script}: permission denied")


@pytest.mark.skipif(os.geteuid() != 0 or CONTROL.name == "none", reason="OOM needs cgroups")
def test_an_oom_killed_job_exits_137_and_says_so(tmpdir_env: dict[str, str]) -> None:
    hog = "b = []\nwhile True: b.append(bytearray(1 << 20))"
    result = run(tmpdir_env, "--memory", "64M", "--", PY, "-c", hog)
    assert result.returncode == 128 + signal.SIGKILL == 137
    assert error_line(result) == (
        "the job was killed by the kernel's OOM killer (memory limit 64M)"
    )
    result = run(tmpdir_env, "--memory", "64M", "--json", "--", PY, "-c", hog)
    assert result.returncode == 137
    record = json.loads(result.stderr.decode().splitlines()[-1])
    assert record["status"]["signal"] == signal.SIGKILL
    assert record["status"]["oom_killed"] is True
    assert record["limits"]["memory"] == 64 * MiB


def test_a_sigkill_that_is_not_oom_says_nothing_of_oom(tmpdir_env: dict[str, str]) -> None:
    result = run(tmpdir_env, "--memory", "64M", "--", "sh", "-c", "kill -KILL $$")
    if result.returncode == 2:
        pytest.skip(f"no memory limit here: {error_line(result)}")
    assert result.returncode == 137
    assert stderr_lines(result.stderr) == []


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "12Q"], "Invalid value for '--memory': '12Q' is not a size"),
        (["--memory", "1.5"], "Invalid value for '--memory': '1.5' is not a whole number"),
        (["--memory", "-1G"], "Invalid value for '--memory': '-1G' is not a size"),
        (["--io-read", "fast"], "Invalid value for '--io-read': 'fast' is not a rate"),
        (["--io-write", "10M/min"], "Invalid value for '--io-write': '10M/min' is not a rate"),
        (["--cpu", "half"], "Invalid value for '--cpu': 'half' is not a number of cores"),
        (["--cpu", "nan"], "Invalid value for '--cpu': 'nan' is not a number of cores"),
        (["--pids", "1.5"], "Invalid value for '--pids': '1.5' is not a whole number"),
        (["--pids", "-3"], "Invalid value for '--pids': '-3' is not a whole number"),
        (["--grace", "-1"], "Invalid value for '--grace': '-1' is not a number of seconds"),
        (["--grace", "soon"], "Invalid value for '--grace': 'soon' is not a number of seconds"),
        (["--io-path", "/no/such/path"], "Invalid value for '--io-path': Path '/no/such/path'"),
        (["--log-dir", "/no/such/dir"], "Invalid value for '--log-dir': Directory '/no/such/dir'"),
        (["--memory"], "Invalid value for '--memory': '--' is not a size"),
    ],
)
def test_bad_values_are_refused_before_anything_starts(
    tmpdir_env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    marker = tmp_path / "ran"
    result = run(tmpdir_env, *args, "--", "touch", str(marker))
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith(message), line
    assert line.endswith("(see 'jobworker run --help')")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--memory", "100"], "memory must be at least 1048576 bytes, not 100"),
        (["--cpu", "0.001"], "cpu must be at least 0.01 cores"),
        (["--pids", "0"], "pids must be at least 1, not 0"),
        (["--", ""], "command name is empty"),
    ],
)
def test_values_the_library_refuses_are_usage_errors_too(
    tmpdir_env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    marker = tmp_path / "ran"
    if "--" not in args:
        args = [*args, "--", "touch", str(marker)]
    result = run(tmpdir_env, *args)
    assert result.returncode == 2
    if CONTROL.name != "none":  # without cgroups, any limit is refused, for that reason
        assert error_line(result).startswith(message)
    else:
        error_line(result)
    assert not marker.exists()


# -- output ----------------------------------------------------------------------------------


def test_binary_output_arrives_byte_for_byte(tmpdir_env: dict[str, str]) -> None:
    every_byte = bytes(range(256)) * 1000
    code = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 1000)"
    result = run(tmpdir_env, "--", PY, "-c", code)
    assert result.returncode == 0
    assert result.stdout == every_byte


def test_a_large_output_arrives_whole(tmpdir_env: dict[str, str]) -> None:
    # 48 MiB of pseudo-random bytes in writes of varying sizes.
    code = (
        "import os, random\n"
        "r = random.Random(7)\n"
        "data = r.randbytes(48 << 20)\n"
        "i = 0\n"
        "while i < len(data):\n"
        "    n = r.randrange(1, 200_000)\n"
        "    os.write(1, data[i : i + n])\n"
        "    i += n\n"
    )
    result = run(tmpdir_env, "--", PY, "-c", code)
    assert result.returncode == 0
    assert len(result.stdout) == 48 << 20
    assert result.stdout == random.Random(7).randbytes(48 << 20)


def test_stdout_and_stderr_are_one_stream_in_write_order(tmpdir_env: dict[str, str]) -> None:
    code = "import os\nfor i in range(200):\n    os.write(1 + i % 2, b'%d;' % i)\n"
    result = run(tmpdir_env, "--", PY, "-c", code)
    assert result.returncode == 0
    assert result.stdout == b"".join(b"%d;" % i for i in range(200))
    assert stderr_lines(result.stderr) == []


def test_output_is_streamed_while_the_job_runs(tmpdir_env: dict[str, str], tmp_path: Path) -> None:
    # The job waits for a file the test makes only once it has read the job's first
    # line from the CLI: so that line came through while the job was running.
    go = tmp_path / "go"
    script = f"echo first; while [ ! -e {go} ]; do sleep 0.01; done; echo second"
    proc = start(tmpdir_env, "--", "sh", "-c", script)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"first\n"
    go.touch()
    out, _ = proc.communicate(timeout=60)
    assert out == b"second\n"
    assert proc.returncode == 0


def test_a_closed_stdout_discards_the_output(tmpdir_env: dict[str, str]) -> None:
    # With fd 1 closed, the next file the CLI opened would take its number, and the
    # job's output would be written into that.
    command = f"exec {JOBWORKER} run -- sh -c 'echo hi; echo there >&2; exit 4' >&-"
    result = subprocess.run(["bash", "-c", command], capture_output=True, env=tmpdir_env)
    assert result.returncode == 4
    assert stderr_lines(result.stderr) == []


def test_the_log_is_kept_with_log_dir(tmpdir_env: dict[str, str], tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    result = run(tmpdir_env, "--log-dir", str(logs), "--", "sh", "-c", "echo out; echo err >&2")
    assert result.returncode == 0
    (log,) = logs.iterdir()
    assert log.read_bytes() == result.stdout == b"out\nerr\n"
    assert stderr_lines(result.stderr) == [f"jobworker: log: {log}"]


def test_json_summary(tmpdir_env: dict[str, str]) -> None:
    result = run(tmpdir_env, "--json", "--pids", "50", "--", "sh", "-c", "echo hi; exit 3")
    if result.returncode == 2:
        pytest.skip(f"no pids limit here: {error_line(result)}")
    assert result.returncode == 3
    assert result.stdout == b"hi\n"
    record = json.loads(result.stderr.decode().splitlines()[-1])
    assert record["command"] == {
        "name": "sh",
        "args": ["-c", "echo hi; exit 3"],
        "env": None,
        "cwd": None,
    }
    assert record["status"] == {
        "state": "exited",
        "exit_code": 3,
        "signal": None,
        "stop_type": None,
        "oom_killed": False,
    }
    assert record["limits"]["pids"] == 50
    assert record["log_path"] is None  # removed with the run's temporary directory
    assert record["run_as"] is None  # jobworker's own user
    # The shape docs/CLI.md documents, key for key.
    assert same_shape(record, documented_record())


def test_human_summary(tmpdir_env: dict[str, str]) -> None:
    result = run(tmpdir_env, "--summary", "--", "sh", "-c", "exit 3")
    assert result.returncode == 3
    text = result.stderr.decode()
    assert "\nstate:        exited\n" in text
    assert "\nexit code:    3\n" in text
    assert "\nlog:          (removed)\n" in text
    assert "\x1b[" not in text  # not a terminal: no colour


@pytest.mark.parametrize("no_color", [None, "1"])
def test_colour_only_on_a_terminal_and_never_with_no_color(
    tmpdir_env: dict[str, str], no_color: str | None
) -> None:
    env = {k: v for k, v in tmpdir_env.items() if k not in ("NO_COLOR", "TERM")}
    env["TERM"] = "xterm"
    if no_color is not None:
        env["NO_COLOR"] = no_color
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [JOBWORKER, "run", "--summary", "--", "true"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=env,
        )
        os.close(terminal)
        seen = b""
        while chunk := _read_pty(controller):
            seen += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(controller)
    assert b"exited" in seen
    assert (b"\x1b[" in seen) is (no_color is None)


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other side closed
        return b""


# -- signals ---------------------------------------------------------------------------------

# Prints its pid and a background child's, says which signal reached it, and exits.
TRAPPING = 'trap "echo got TERM; exit 0" TERM; sleep 1000 & echo $! $$; wait'


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_cli_stops_the_job_and_leaves_no_process(
    tmpdir_env: dict[str, str], sig: signal.Signals
) -> None:
    proc = start(tmpdir_env, "--", "sh", "-c", TRAPPING)
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    # The job heard SIGTERM, and what it said then still came through.
    assert out.endswith(b"got TERM\n")
    assert stderr_lines(err) == [
        "jobworker: stopping the job: SIGTERM, SIGKILL after 10 s; interrupt again to kill it now"
    ]
    for pid in pids:
        assert dies(pid)
    assert leftover_cgroups(proc.pid) == []


def test_a_second_ctrl_c_kills_at_once(tmpdir_env: dict[str, str]) -> None:
    # A job that ignores SIGTERM, with a grace far beyond the test's timeout.
    code = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(10000)\n"
    )
    proc = start(tmpdir_env, "--grace", "10000", "--", PY, "-c", code)
    assert proc.stdout is not None and proc.stderr is not None
    pid = int(proc.stdout.readline())
    try:
        proc.send_signal(signal.SIGINT)
        while b"stopping the job" not in (line := proc.stderr.readline()):
            assert line, "the CLI ended without stopping the job"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.returncode is None:  # the test failed: leave nothing running
            os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert stderr_lines(err) == ["jobworker: killing the job (SIGKILL)"]
    assert dies(pid)


def test_a_signal_during_start_up_starts_nothing(
    tmpdir_env: dict[str, str], tmp_path: Path
) -> None:
    # Whenever the signal lands (before the handlers, while the worker starts, after the
    # job started), the CLI ends with no job left behind.
    marker = tmp_path / "pid"
    for _ in range(5):
        proc = start(tmpdir_env, "--", "sh", "-c", f"echo $$ > {marker}; exec sleep 1000")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 1 and b"init_import_site" in err:
            continue  # Python's own start-up was interrupted (its site module): not ours
        # -SIGINT: it came before jobworker's code ran, and ended it as it ends any program.
        assert proc.returncode in (130, -signal.SIGINT)
        assert b"Traceback" not in err
        if marker.exists():
            assert dies(int(marker.read_text()))
            marker.unlink()


def test_a_reader_that_goes_away_stops_the_job(tmpdir_env: dict[str, str]) -> None:
    # `jobworker run -- yes | head -1`: once nobody reads, the job is stopped and the CLI
    # exits as a shell's writer would (128 + SIGPIPE).
    code = (
        "import os\nprint(os.getpid(), flush=True)\nwhile True:\n    print('y' * 100, flush=True)\n"
    )
    proc = start(tmpdir_env, "--", PY, "-c", code)
    assert proc.stdout is not None and proc.stderr is not None
    pid = int(proc.stdout.readline())
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert stderr_lines(err) == []
    assert dies(pid)
