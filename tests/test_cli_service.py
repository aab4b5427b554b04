"""The service's commands end to end, as users run them: certificates made by ``jobworker
certs``, the service started by ``jobworker serve`` (a child process, on a Unix socket in
a temporary directory and on 127.0.0.1 over mutual TLS), and every other command run as
a subprocess against it."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobworker import detect
from jobworker.cli._exitcodes import ExitCode

from conftest import (
    JOBWORKER,
    PY,
    dies,
    documented_record,
    error_line,
    same_shape,
    stderr_lines,
)
from servicekit import ProxyThread, ServeProcess, pids_alive, serve_process, wait_for

ROOT = Path(__file__).resolve().parent.parent
CONTROL = detect()
MiB = 1 << 20

# Prints its pid and a background child's, says which signal reached it, and exits.
# (Shell, not Python: jobs of TCP owners run as users of their own, who may not be able
# to read this interpreter.)
TRAPPING = 'trap "echo got TERM; exit 0" TERM; sleep 1000 & echo $! $$; wait'
# Prints its pid, ignores SIGTERM.
STUBBORN = "trap '' TERM; echo $$; while :; do sleep 0.05; done"


# -- the service, and how to reach it --------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No user config file in sight (XDG_CONFIG_HOME points here, empty)."""
    return tmp_path_factory.mktemp("home")


def jw(
    *args: str, env: dict[str, str], timeout: float = 60, check_stderr: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """``jobworker ARGS`` to its end, in ``env`` (added to this process's environment)."""
    result = subprocess.run(
        [JOBWORKER, *args],
        capture_output=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    if check_stderr:
        stderr_lines(result.stderr)  # never a traceback; every line "jobworker: ..."
    return result


def spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [JOBWORKER, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, home: Path) -> Path:
    """``jobworker certs`` for alice, bob and admin; and, in ``other/``, a CA of its own
    with an alice of its own."""
    d = tmp_path_factory.mktemp("pki")
    env = {"XDG_CONFIG_HOME": str(home)}
    made = jw("certs", str(d / "certs"), "--user", "alice", "--user", "bob", env=env)
    assert made.returncode == 0, made.stderr
    other = jw("certs", str(d / "other"), "--user", "alice", env=env)
    assert other.returncode == 0, other.stderr
    return d


def serve_args(tmp: Path, pki: Path, *more: str) -> list[str]:
    certs = pki / "certs"
    return [
        "--socket",
        str(tmp / "run" / "jobworker.sock"),
        "--state-dir",
        str(tmp / "state"),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(certs / "server.pem"),
        "--tls-key",
        str(certs / "server.key"),
        "--client-ca",
        str(certs / "ca.pem"),
        *(["--allow-shared-user"] if os.geteuid() != 0 else []),
        *more,
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[ServeProcess]:
    tmp = tmp_path_factory.mktemp("srv")
    with serve_process(JOBWORKER, serve_args(tmp, pki, "--grace", "5"), tmp / "serve.log") as s:
        yield s


def local_env(server: ServeProcess, home: Path) -> dict[str, str]:
    """The server's own user, on its Unix socket: no certificates, an admin."""
    return {"JOBWORKER_SERVER": server.unix, "XDG_CONFIG_HOME": str(home)}


def tls_env(
    server: ServeProcess | str, pki: Path, home: Path, user: str, ca: str = "certs"
) -> dict[str, str]:
    address = server if isinstance(server, str) else server.tcp
    return {
        "JOBWORKER_SERVER": address,
        "JOBWORKER_CA": str(pki / ca / "ca.pem"),
        "JOBWORKER_CERT": str(pki / "certs" / f"{user}.pem"),
        "JOBWORKER_KEY": str(pki / "certs" / f"{user}.key"),
        "XDG_CONFIG_HOME": str(home),
    }


@pytest.fixture(params=["unix", "tls"])
def env(
    request: pytest.FixtureRequest, server: ServeProcess, pki: Path, home: Path
) -> dict[str, str]:
    """Each test of this fixture runs on the local socket and over mutual TLS (as alice)."""
    if request.param == "unix":
        return local_env(server, home)
    return tls_env(server, pki, home, "alice")


@pytest.fixture
def alice(server: ServeProcess, pki: Path, home: Path) -> dict[str, str]:
    return tls_env(server, pki, home, "alice")


def start(env: dict[str, str], *command: str, options: tuple[str, ...] = ()) -> str:
    result = jw("start", *options, "--", *command, env=env)
    assert result.returncode == 0, result.stderr
    job = result.stdout.decode().strip()
    uuid.UUID(job)
    return job


def record(env: dict[str, str], job: str) -> dict[str, Any]:
    result = jw("status", "--json", job, env=env)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# -- certs ---------------------------------------------------------------------------------


def test_certs_makes_a_working_setup_and_never_overwrites(tmp_path: Path, home: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(home)}
    d = tmp_path / "certs"
    result = jw("certs", str(d), "--user", "alice", "--host", "jobs.example", env=env)
    assert result.returncode == 0
    names = [Path(line).name for line in result.stdout.decode().splitlines()]
    assert sorted(names) == sorted(
        f"{n}.{e}" for n in ("ca", "server", "admin", "alice") for e in ("pem", "key")
    )
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for key in d.glob("*.key"):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    before = {p: p.read_bytes() for p in d.iterdir()}
    # Again, with a new user: only that user's files, signed by the same CA.
    again = jw("certs", str(d), "--user", "alice", "--user", "carol", "--json", env=env)
    assert again.returncode == 0
    assert json.loads(again.stdout) == {
        "directory": str(d),
        "written": [str(d / "carol.pem"), str(d / "carol.key")],
    }
    assert {p: p.read_bytes() for p in before} == before


# -- the commands, on the local socket and over mutual TLS ---------------------------------


def test_start_logs_status_list_wait(env: dict[str, str]) -> None:
    job = start(env, "sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.1; done; exit 3")
    follow = jw("logs", "-f", job, env=env)
    assert follow.returncode == 0
    assert follow.stdout == b"line 1\nline 2\nline 3\n"
    wait = jw("wait", job, env=env)
    assert wait.returncode == 3  # the job's own exit code
    assert wait.stdout == b""
    # Ended: logs without -f prints it all as well.
    assert jw("logs", job, env=env).stdout == follow.stdout

    status = jw("status", job, env=env)
    assert status.returncode == 0
    text = status.stdout.decode()
    assert re.search(rf"^id: +{job}$", text, re.MULTILINE)
    assert re.search(r"^state: +exited$", text, re.MULTILINE)
    assert re.search(r"^exit code: +3$", text, re.MULTILINE)
    assert "\x1b[" not in text  # not a terminal: no colour

    data = record(env, job)
    assert data["id"] == job
    assert data["status"]["state"] == "exited"
    assert data["status"]["exit_code"] == 3
    assert same_shape(data, documented_record())
    # The log is on the service's machine: here, this one.
    assert Path(data["log_path"]).read_bytes() == follow.stdout

    listed = jw("list", env=env)
    assert listed.returncode == 0
    header, *rows = listed.stdout.decode().splitlines()
    assert header.split()[:3] == ["ID", "COMMAND", "STATE"]
    assert any(row.startswith(job) and " exited " in row for row in rows)
    as_json = json.loads(jw("list", "--json", env=env).stdout)
    assert job in [r["id"] for r in as_json]
    assert all(same_shape(r, documented_record()) for r in as_json)


def test_start_with_limits_environment_and_directory(env: dict[str, str]) -> None:
    result = jw(
        "start",
        "--json",
        "--pids",
        "50",
        "--env",
        "GREETING=hello there",
        "--env",
        "EMPTY=",
        "--cwd",
        "/",
        "--",
        "sh",
        "-c",
        'echo "$GREETING [$EMPTY] $(pwd)"',
        env=env,
    )
    if result.returncode == 2:
        pytest.skip(f"no pids limit here: {error_line(result)}")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert same_shape(data, documented_record())
    assert data["limits"]["pids"] == 50
    assert data["command"]["env"]["GREETING"] == "hello there"
    job = data["id"]
    assert jw("logs", "-f", job, env=env).stdout == b"hello there [] /\n"


def test_logs_without_follow_prints_what_there_is_so_far(env: dict[str, str]) -> None:
    job = start(env, "sh", "-c", "echo first; exec sleep 1000")
    follower = spawn("logs", "-f", job, env=env)
    assert follower.stdout is not None
    assert follower.stdout.readline() == b"first\n"  # so the log holds it
    now = jw("logs", job, env=env)  # returns although the job runs on
    assert now.returncode == 0
    assert now.stdout == b"first\n"
    assert record(env, job)["status"]["state"] == "running"
    assert jw("stop", job, env=env).returncode == 0
    out, _ = follower.communicate(timeout=60)
    assert out == b""
    assert follower.returncode == 0


def test_stop_within_the_grace_and_after_it(env: dict[str, str]) -> None:
    job = start(env, "sh", "-c", TRAPPING)
    follower = spawn("logs", "-f", job, env=env)
    assert follower.stdout is not None
    pids = [int(p) for p in follower.stdout.readline().split()]
    stopped = jw("stop", job, env=env)
    assert stopped.returncode == 0
    assert stopped.stdout == b"stopped (TERM)\n"
    assert follower.communicate(timeout=60)[0] == b"got TERM\n"
    for pid in pids:
        assert dies(pid)
    # Ended: stopping it again is "not running".
    again = jw("stop", job, env=env)
    assert again.returncode == ExitCode.NOT_RUNNING
    assert error_line(again) == f"job {job} has already ended"
    assert jw("wait", job, env=env).returncode == 128 + signal.SIGTERM

    stubborn = start(env, "sh", "-c", STUBBORN)
    killed = jw("stop", "--grace", "0.2", "--json", stubborn, env=env)
    assert killed.returncode == 0
    data = json.loads(killed.stdout)
    assert data["status"]["state"] == "stopped"
    assert data["status"]["stop_type"] == "kill"
    assert same_shape(data, documented_record())
    assert dies(int(jw("logs", stubborn, env=env).stdout))
    assert jw("wait", stubborn, env=env).returncode == 128 + signal.SIGKILL


def test_wait_json_and_a_job_that_dies_of_a_signal(env: dict[str, str]) -> None:
    job = start(env, "sh", "-c", "kill -SEGV $$")
    result = jw("wait", "--json", job, env=env)
    assert result.returncode == 128 + signal.SIGSEGV
    data = json.loads(result.stdout)
    assert data["status"] == {
        "state": "signaled",
        "exit_code": None,
        "signal": signal.SIGSEGV,
        "stop_type": None,
        "oom_killed": False,
    }


def has_socket(pid: int) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd).startswith("socket:") for fd in fds.iterdir())
    except FileNotFoundError:  # an fd closed meanwhile
        return False


def test_ctrl_c_stops_the_waiting_not_the_job(alice: dict[str, str]) -> None:
    job = start(alice, "sh", "-c", "echo $$; exec sleep 1000")
    for command in (["wait", job], ["logs", "-f", job]):
        proc = spawn(*command, env=alice)
        assert proc.stdout is not None
        if command[0] == "logs":
            assert proc.stdout.readline().strip().isdigit()  # it follows
        else:
            # wait says nothing: once it holds a socket, it is past Python's start-up.
            assert wait_for(functools.partial(has_socket, proc.pid))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGINT
        assert stderr_lines(err) == []
    assert record(alice, job)["status"]["state"] == "running"
    assert jw("stop", "--grace", "0", job, env=alice).stdout == b"stopped (KILL)\n"


# -- owners ----------------------------------------------------------------------------------


def test_owners_see_only_their_own_jobs_and_admins_all(
    server: ServeProcess, pki: Path, home: Path
) -> None:
    alice, bob, admin = (tls_env(server, pki, home, u) for u in ("alice", "bob", "admin"))
    job = start(alice, "true")
    assert jw("wait", job, env=alice).returncode == 0
    for command in (["status", job], ["logs", job], ["wait", job], ["stop", job]):
        result = jw(*command, env=bob)
        assert result.returncode == ExitCode.NOT_FOUND
        assert error_line(result) == f"no such job: {job}"
    assert job not in jw("list", env=bob).stdout.decode()
    refused = jw("list", "--all", env=bob)
    assert refused.returncode == ExitCode.REFUSED
    assert error_line(refused) == "only admins may list every owner's jobs"
    everyone = jw("list", "--all", env=admin)
    assert everyone.returncode == 0
    header, *rows = everyone.stdout.decode().splitlines()
    assert header.split()[:3] == ["ID", "OWNER", "COMMAND"]
    assert any(row.startswith(job) for row in rows)
    assert jw("status", job, env=admin).returncode == 0


# -- run --server ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("echo out; echo err >&2; exit 0", 0),
        ("exit 3", 3),
        ("kill -TERM $$", 128 + signal.SIGTERM),
        ("kill -KILL $$", 128 + signal.SIGKILL),
    ],
)
def test_run_through_the_service_exits_as_the_job_did(
    env: dict[str, str], script: str, code: int
) -> None:
    result = jw("run", "--", "sh", "-c", script, env=env)
    assert result.returncode == code
    assert result.stdout == (b"out\nerr\n" if "echo" in script else b"")
    assert stderr_lines(result.stderr) == []


def test_run_through_the_service_command_not_found_and_not_executable(
    env: dict[str, str],
) -> None:
    result = jw("run", "--", "no-such-command-here", env=env)
    assert result.returncode == ExitCode.COMMAND_NOT_FOUND
    assert error_line(result) == "command not found: no-such-command-here"
    result = jw("run", "--", "/etc/passwd", env=env)  # not executable
    assert result.returncode == ExitCode.CANNOT_EXECUTE
    assert error_line(result).startswith("cannot execute /etc/passwd: permission denied")


def test_run_through_the_service_summary_is_the_services(env: dict[str, str]) -> None:
    result = jw("run", "--json", "--", "sh", "-c", "echo hi; exit 4", env=env, check_stderr=False)
    assert result.returncode == 4
    assert result.stdout == b"hi\n"
    data = json.loads(result.stderr.decode().splitlines()[-1])
    assert same_shape(data, documented_record())
    assert Path(data["log_path"]).read_bytes() == b"hi\n"  # kept by the service


@pytest.mark.skipif(os.geteuid() != 0 or CONTROL.name == "none", reason="OOM needs cgroups")
def test_run_through_the_service_oom(server: ServeProcess, home: Path) -> None:
    hog = "b = []\nwhile True: b.append(bytearray(1 << 20))"
    result = jw("run", "--memory", "64M", "--", PY, "-c", hog, env=local_env(server, home))
    assert result.returncode == 128 + signal.SIGKILL
    assert error_line(result) == (
        "the job was killed by the kernel's OOM killer (memory limit 64M)"
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_run_stops_the_job_through_the_service(
    alice: dict[str, str], sig: signal.Signals
) -> None:
    proc = spawn("run", "--", "sh", "-c", TRAPPING, env=alice)
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert out == b"got TERM\n"  # what the job said while stopping came through
    assert stderr_lines(err) == [
        "jobworker: stopping the job: SIGTERM, SIGKILL after the service's grace;"
        " interrupt again to kill it now"
    ]
    for pid in pids:
        assert dies(pid)


def test_a_second_ctrl_c_kills_the_job_at_once(alice: dict[str, str]) -> None:
    proc = spawn("run", "--grace", "10000", "--", "sh", "-c", STUBBORN, env=alice)
    assert proc.stdout is not None and proc.stderr is not None
    pid = int(proc.stdout.readline())
    try:
        proc.send_signal(signal.SIGINT)
        while b"stopping the job" not in (line := proc.stderr.readline()):
            assert line, "run ended without stopping the job"
        assert line == (
            b"jobworker: stopping the job: SIGTERM, SIGKILL after 10000 s;"
            b" interrupt again to kill it now\n"
        )
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


def test_a_signal_while_run_starts_the_job_leaves_no_job(
    server: ServeProcess, home: Path, tmp_path: Path
) -> None:
    # Whenever the signal lands (Python's start-up, connecting, the Start call in flight,
    # the job started), run ends with no job left running.
    env = local_env(server, home)
    marker = tmp_path / "pid"
    for delay in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3):
        proc = spawn("run", "--", "sh", "-c", f"echo $$ > {marker}; exec sleep 1000", env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 1 and b"init_import_site" in err:
            continue  # Python's own start-up was interrupted (its site module): not ours
        # -SIGINT: it came before jobworker's code ran, and ended it as it ends any program.
        assert proc.returncode in (130, -signal.SIGINT), err
        if b"Traceback" in err and b"/jobworker/" not in err:
            # The console script pip writes imports re and sys, then looks for our
            # package; a Ctrl-C there is any Python program's, before a line of ours ran.
            assert b'bin/jobworker", line ' in err, err
            continue
        assert b"Traceback" not in err
        if marker.exists():
            assert dies(int(marker.read_text()))
            marker.unlink()
    jobs = json.loads(jw("list", "--json", env=env).stdout)
    mine = [j for j in jobs if str(marker) in " ".join(j["command"]["args"])]
    assert [j["status"]["state"] for j in mine if j["status"]["state"] == "running"] == []


def test_run_with_a_reader_that_goes_away_stops_the_job(alice: dict[str, str]) -> None:
    proc = spawn("run", "--", "sh", "-c", "echo $$; while :; do echo y; done", env=alice)
    assert proc.stdout is not None and proc.stderr is not None
    pid = int(proc.stdout.readline())
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert stderr_lines(err) == []
    assert dies(pid)


def test_a_config_files_server_never_sends_run_to_the_service(
    server: ServeProcess, tmp_path: Path
) -> None:
    (tmp_path / "jobworker").mkdir()
    (tmp_path / "jobworker" / "config.toml").write_text(f'server = "{server.unix}"\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    job = start(env, "true")  # the config file's service...
    assert jw("wait", job, env=env).returncode == 0
    ran = jw("run", "--json", "--", "true", env=env, check_stderr=False)  # ...but run is here
    assert ran.returncode == 0
    assert json.loads(ran.stderr.decode().splitlines()[-1])["log_path"] is None
    there = jw("run", "--server", server.unix, "--json", "--", "true", env=env, check_stderr=False)
    assert json.loads(there.stderr.decode().splitlines()[-1])["log_path"] is not None


def test_a_closed_stdout_is_never_the_services_socket(env: dict[str, str]) -> None:
    # With fd 1 closed, the connection to the service would take its number, and the
    # job's output would be written into it.
    job = start(env, "sh", "-c", "echo hi; echo there >&2")
    for command in (f"logs -f {job}", "run -- sh -c 'echo hi; exit 4'"):
        result = subprocess.run(
            ["bash", "-c", f"exec {JOBWORKER} {command} >&-"],
            capture_output=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert result.returncode == (4 if command.startswith("run") else 0), result.stderr
        assert stderr_lines(result.stderr) == []


# -- logs -f -------------------------------------------------------------------------------


def test_two_followers_get_the_same_bytes_as_the_log(env: dict[str, str]) -> None:
    script = "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); sleep 0.002; done"
    job = start(env, "sh", "-c", script)
    followers = [spawn("logs", "-f", job, env=env) for _ in range(2)]
    outputs = [f.communicate(timeout=60) for f in followers]
    assert [f.returncode for f in followers] == [0, 0]
    expected = b"".join(b"line %d\n" % i for i in range(300))
    assert outputs[0][0] == outputs[1][0] == expected
    assert Path(record(env, job)["log_path"]).read_bytes() == expected


def test_logs_follow_resumes_after_the_connection_is_cut(
    server: ServeProcess, pki: Path, home: Path
) -> None:
    lines = 150_000
    expected = b"".join(b"%06d\n" % i for i in range(lines))
    # Cut after 200 kB from the server, every connection: each carries a few of the
    # stream's messages (up to 64 KiB) before the cut.
    with ProxyThread(server.tcp, cut_after=200_000) as proxy:
        env = tls_env(proxy.address, pki, home, "alice")
        job = start(tls_env(server, pki, home, "alice"), "seq", "-f", "%06g", "0", str(lines - 1))
        result = jw("logs", "-f", job, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected
        assert proxy.cuts >= 3


# -- serve -----------------------------------------------------------------------------------


def test_serve_flags_override_its_config_file_and_sigterm_stops_every_job(
    tmp_path: Path, pki: Path, home: Path
) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        'socket = "run/s.sock"\nstate_dir = "state"\nmax_running_jobs = 10\ngrace = 30\n'
        "[default_limits]\npids = 64\n"
    )
    server = ServeProcess(
        JOBWORKER,
        ["--config", str(config), "--max-running-jobs", "1", "--grace", "1"],
        tmp_path / "serve.log",
    )
    try:
        server.wait_listening()
        assert server.addresses == [f"unix:{tmp_path / 'run' / 's.sock'}"]
        env = local_env(server, home)
        job = start(env, "sh", "-c", STUBBORN)
        data = record(env, job)
        if CONTROL.name != "none":
            assert data["limits"]["pids"] == 64  # the file's default limit
        # The flag's quota, not the file's.
        over = jw("start", "--", "true", env=env)
        assert over.returncode == ExitCode.QUOTA
        assert "running jobs" in error_line(over)
        # SIGTERM: every job stopped (this one only by the SIGKILL after the flag's
        # grace), the socket removed, exit 0.
        assert server.terminate() == 0
        assert pids_alive([data["pid"]]) == []
        assert not (tmp_path / "run" / "s.sock").exists()
        assert jw("list", env=env).returncode == ExitCode.UNAVAILABLE
    finally:
        server.kill()
    lines = [json.loads(line) for line in server.output().splitlines()]
    assert {"rpc": "Start", "owner": lines[1]["owner"]}.items() <= lines[1].items()


# -- purge -----------------------------------------------------------------------------------


def test_purge_is_for_admins_and_forgets_what_the_flags_say(
    tmp_path: Path, pki: Path, home: Path
) -> None:
    # The flags' retention (the file says: keep everything): logs and jobs of ended jobs
    # go at the first purge; the timer would not come round during the test.
    config = tmp_path / "server.toml"
    config.write_text('[retention]\nmax_age = "none"\nforget_after = "none"\n')
    args = serve_args(tmp_path, pki, "--config", str(config), "--retention-max-age", "0")
    args += ["--retention-forget-after", "0", "--retention-interval", "3600"]
    with serve_process(JOBWORKER, args, tmp_path / "serve.log") as server:
        alice, admin = tls_env(server, pki, home, "alice"), local_env(server, home)
        job = start(alice, "echo", "hi")
        assert jw("wait", job, env=alice).returncode == 0
        log = Path(record(alice, job)["log_path"])
        refused = jw("purge", env=alice)
        assert refused.returncode == ExitCode.REFUSED
        assert error_line(refused) == "only admins may purge"
        assert log.exists()
        done = jw("purge", "--json", env=admin)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "removed": [{"job_id": job, "path": str(log), "size": 3, "reason": "age"}],
            "freed_bytes": 3,
            "forgotten": [job],
        }
        assert not log.exists()
        gone = jw("status", job, env=alice)
        assert gone.returncode == ExitCode.NOT_FOUND
        assert error_line(gone) == f"no such job: {job}"
        # For people: a line a log, then the sums.
        again = start(admin, "echo", "hi")
        assert jw("wait", again, env=admin).returncode == 0
        path = record(admin, again)["log_path"]
        text = jw("purge", env=admin)
        assert text.stdout.decode().splitlines() == [
            f"     3  age     {path}",
            "removed 1 log (3 freed), forgot 1 job",
        ]
        assert jw("purge", env=admin).stdout == b"removed 0 logs (0 freed), forgot 0 jobs\n"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--retention-max-age", "-1", "not a number of seconds >= 0, nor none"),
        ("--retention-max-total", "lots", "lots"),
        ("--retention-interval", "none", "not a number of seconds"),
    ],
)
def test_bad_retention_flags_are_usage_errors(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    result = jw("serve", "--state-dir", str(tmp_path / "state"), flag, value, env={})
    assert result.returncode == ExitCode.USAGE
    assert message in error_line(result)


# -- errors: one line, a documented code, never a traceback ------------------------------------


@pytest.fixture
def deleted_log(server: ServeProcess, home: Path) -> tuple[dict[str, str], str]:
    env = local_env(server, home)
    job = start(env, "echo", "hi")
    assert jw("wait", job, env=env).returncode == 0
    os.unlink(record(env, job)["log_path"])
    return env, job


def test_a_log_that_is_gone_is_an_error_of_its_own(deleted_log: tuple[dict[str, str], str]) -> None:
    env, job = deleted_log
    result = jw("logs", job, env=env)
    assert result.returncode == ExitCode.FAILURE
    assert "is unavailable" in error_line(result)


UNKNOWN = str(uuid.uuid4())

# (arguments, where: "local" (the Unix socket), "alice" (mutual TLS), or alice's settings
# changed as a dict says ({pki}: the certificates' directory; None: unset), exit code,
# start of the message)
BAD_INPUT: list[tuple[list[str], str | dict[str, str | None], int, str]] = [
    (["status", "nope"], "local", 2, "Invalid value for 'ID': 'nope' is not a job id"),
    (["status", ""], "local", 2, "Invalid value for 'ID': '' is not a job id"),
    (["stop", UNKNOWN + "0"], "local", 2, "Invalid value for 'ID'"),
    (["logs", "-f", "../../etc"], "local", 2, "Invalid value for 'ID'"),
    (["wait"], "local", 2, "Missing argument 'ID'"),
    (["status", UNKNOWN], "local", 3, f"no such job: {UNKNOWN}"),
    (["stop", UNKNOWN], "alice", 3, f"no such job: {UNKNOWN}"),
    (["wait", UNKNOWN], "alice", 3, f"no such job: {UNKNOWN}"),
    (["logs", UNKNOWN], "alice", 3, f"no such job: {UNKNOWN}"),
    (["logs", "-f", UNKNOWN], "alice", 3, f"no such job: {UNKNOWN}"),
    (["stop", "--grace", "-1", UNKNOWN], "local", 2, "Invalid value for '--grace'"),
    (["start", "--memory", "12Q", "--", "true"], "local", 2, "Invalid value for '--memory'"),
    (["start", "--cpu", "0.001", "--", "true"], "alice", 2, "cpu must be at least 0.01"),
    (["start", "--pids", "0", "--", "true"], "alice", 2, "pids must be at least 1"),
    (["start", "--", ""], "alice", 2, "command name is empty"),
    (["start", "--", "a\x01b"], "local", 127, "command not found"),
    (["start", "--env", "=x", "--", "true"], "local", 2, "Invalid value for '--env'"),
    (["start"], "local", 2, "Missing argument '-- CMD [ARGS]...'"),
    (["start", "--", "no-such-command"], "alice", 127, "command not found: no-such-command"),
    (["run", "--log-dir", "/tmp", "--", "true"], "alice", 2, "Invalid value for '--log-dir"),
    (["list"], {"JOBWORKER_SERVER": "nope"}, 2, "Invalid value for '--server'"),
    (["list"], {"JOBWORKER_CERT": "/no/such.pem"}, 2, "--cert /no/such.pem: no such file"),
    (["list"], {"JOBWORKER_KEY": None}, 2, "--server 127.0.0.1:"),
    (["list"], {"JOBWORKER_SERVER": "127.0.0.1:1"}, 69, "cannot reach the service"),
    (["list"], {"JOBWORKER_SERVER": "unix:/no/such.sock"}, 69, "cannot reach the service"),
    # A CA that did not sign the server's certificate; a client certificate the server's
    # CA did not sign; a certificate that is not the key's.
    (["list"], {"JOBWORKER_CA": "{pki}/other/ca.pem"}, 77, "TLS with 127.0.0.1:"),
    (
        ["list"],
        {"JOBWORKER_CERT": "{pki}/other/alice.pem", "JOBWORKER_KEY": "{pki}/other/alice.key"},
        77,
        "TLS with 127.0.0.1:",
    ),
    (["list"], {"JOBWORKER_CERT": "{pki}/certs/ca.pem"}, 77, "cannot load the client's TLS"),
    (["list", "--all"], "alice", 77, "only admins may list every owner's jobs"),
    (["list", "--config", "/no/such.toml"], "local", 2, "cannot read config file"),
    (["serve", "--listen", "127.0.0.1:0"], "local", 2, "listening on 127.0.0.1:0 needs"),
    (["serve", "--grace", "inf"], "local", 2, "grace must be a finite number"),
    (["serve", "--owner", "x=1"], "local", 2, "Invalid value for '--owner'"),
    (["serve", "--dynamic-uids", "9-1"], "local", 2, "dynamic_uids must be"),
    (["serve", "--config", "/no/such.toml"], "local", 2, "cannot read /no/such.toml"),
    (["certs", "{tmp}/certs", "--user", "ca"], "local", 2, "user name 'ca' cannot be used"),
    (["certs", "{tmp}/certs", "--user", "../x"], "local", 2, "user name '../x' cannot be"),
    (["certs", "/proc/certs"], "local", 1, "cannot write certificates"),
]


@pytest.mark.parametrize(("args", "where", "code", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_a_documented_code(
    server: ServeProcess,
    pki: Path,
    home: Path,
    tmp_path: Path,
    args: list[str],
    where: str | dict[str, str | None],
    code: int,
    message: str,
) -> None:
    env = local_env(server, home) if where == "local" else tls_env(server, pki, home, "alice")
    for name, value in (where if isinstance(where, dict) else {}).items():
        if value is None:
            del env[name]
        else:
            env[name] = value.format(pki=pki)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBWORKER_")}
    result = subprocess.run(
        [JOBWORKER, *(a.format(tmp=tmp_path) for a in args)],
        capture_output=True,
        env={**clean, **env},
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == code, result.stderr
    line = error_line(result)
    assert line.startswith(message), line
    assert result.stdout == b""
    assert not (tmp_path / "certs").exists()  # nothing half-made
