"""The CLI's building blocks, in-process: the limit parser, the connection settings, the
output formatter over real JobInfos.  The commands themselves are tested end to end, as
a user runs them, in test_cli.py and test_cli_run.py."""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest

from jobworker import Command, Worker
from jobworker.cli import _limits
from jobworker.cli._connection import (
    Connection,
    TcpAddress,
    UnixAddress,
    parse_address,
    resolve_connection,
)
from jobworker.cli._exitcodes import CliError, ExitCode
from jobworker.cli._output import format_duration, job_details, job_record, jobs_table

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("4096", 4096),
        ("100B", 100),
        ("1K", K),
        ("1k", K),
        ("256M", 256 * M),
        ("256m", 256 * M),
        ("256Mi", 256 * M),
        ("256MiB", 256 * M),
        ("256MB", 256 * M),
        ("256mb", 256 * M),
        ("1.5G", 3 * G // 2),
        (".5K", 512),
        ("2T", 2 * T),
        (" 64M ", 64 * M),
        ("1.0000001K", 1024),  # rounded down to whole bytes
    ],
)
def test_sizes_are_read_as_users_write_them(text: str, size: int) -> None:
    assert _limits.parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "M", "12Q", "-1", "1.5", "1e9", "1 G", "0x10", "256iB", "256MBB", "nan", "1,5G"]
)
def test_a_bad_size_says_why(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a size|not a whole number of bytes"):
        _limits.parse_size(text)


def test_rates_are_sizes_per_second() -> None:
    assert _limits.parse_rate("10M") == _limits.parse_rate("10M/s") == 10 * M
    assert _limits.parse_rate("512k/S") == 512 * K
    with pytest.raises(ValueError, match="not a rate"):
        _limits.parse_rate("10M/min")


def test_cpu_and_pids() -> None:
    assert _limits.parse_cpu("0.5") == 0.5
    assert _limits.parse_cpu("2") == 2.0
    assert _limits.parse_cpu(".25") == 0.25
    assert _limits.parse_pids("100") == 100
    for bad in ("", "half", "nan", "inf", "-1", "1e3", "50%"):
        with pytest.raises(ValueError, match="not a number of cores"):
            _limits.parse_cpu(bad)
    for bad in ("", "1.5", "-1", "ten"):
        with pytest.raises(ValueError, match="not a whole number"):
            _limits.parse_pids(bad)


def test_sizes_print_the_way_they_are_written() -> None:
    assert _limits.format_size(512) == "512"
    assert _limits.format_size(256 * M) == "256M"
    assert _limits.format_size(3 * G // 2) == "1.5G"
    assert _limits.format_size(262144) == "256K"
    for n in (512, 256 * M, 3 * G // 2, 5 * T):
        assert _limits.parse_size(_limits.format_size(n)) == n


# -- connection settings -------------------------------------------------------------------


def test_server_addresses() -> None:
    assert parse_address("localhost:7443") == TcpAddress("localhost", 7443)
    assert parse_address("10.1.2.3:1") == TcpAddress("10.1.2.3", 1)
    assert parse_address("[::1]:7443") == TcpAddress("::1", 7443)
    assert str(TcpAddress("::1", 7443)) == "[::1]:7443"
    assert parse_address("unix:/run/jw.sock") == UnixAddress(Path("/run/jw.sock"))
    for bad in ("localhost", "localhost:", ":7443", "host:0", "host:65536", "::1:7443", "unix:"):
        with pytest.raises(ValueError):
            parse_address(bad)


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name in ("ca", "cert", "key"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text("not checked here\n")
    return files


@pytest.fixture
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))


@pytest.mark.usefixtures("no_user_config")
def test_no_server_means_the_local_service() -> None:
    assert resolve_connection(None, None, None, None, None) == Connection()


@pytest.mark.usefixtures("no_user_config")
def test_tcp_is_always_mutual_tls(certs: dict[str, Path]) -> None:
    with pytest.raises(CliError, match="needs --cert, --key: TCP is always mutual TLS") as e:
        resolve_connection("host:7443", str(certs["ca"]), None, None, None)
    assert e.value.code == ExitCode.USAGE
    with pytest.raises(CliError, match=r"--key .*: no such file"):
        resolve_connection("host:7443", str(certs["ca"]), str(certs["cert"]), "/nonexistent", None)
    c = resolve_connection(
        "host:7443", str(certs["ca"]), str(certs["cert"]), str(certs["key"]), None
    )
    assert c == Connection(TcpAddress("host", 7443), certs["ca"], certs["cert"], certs["key"])
    # A Unix socket needs no certificates, and ignores any.
    assert resolve_connection("unix:/s", str(certs["ca"]), None, None, None) == Connection(
        UnixAddress(Path("/s"))
    )


def test_the_config_file_fills_what_flags_leave(
    tmp_path: Path, certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "xdg"
    (home / "jobworker").mkdir(parents=True)
    (home / "jobworker" / "config.toml").write_text(
        'server = "jobs.example:7443"\n'
        'ca = "../../ca.pem"\ncert = "../../cert.pem"\nkey = "../../key.pem"\n'
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    c = resolve_connection(None, None, None, None, None)
    assert c.address == TcpAddress("jobs.example", 7443)
    # Paths in the file are relative to the file.
    assert c.ca is not None and c.ca.resolve() == certs["ca"]
    # A flag (or its environment variable, which click folds into it) wins over the file.
    assert resolve_connection("other:1", None, None, None, None).address == TcpAddress("other", 1)
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('server = "unix:/tmp/x.sock"\n')
    assert resolve_connection(None, None, None, None, str(explicit)) == Connection(
        UnixAddress(Path("/tmp/x.sock"))
    )


@pytest.mark.usefixtures("no_user_config")
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('sever = "x:1"\n', "unknown setting 'sever'"),
        ("server = 7443\n", "server must be a string"),
        ("server = \n", "config file"),
        ('server = "nope"\n', "invalid server address"),
    ],
)
def test_a_bad_config_file_is_a_usage_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(CliError, match=message) as e:
        resolve_connection(None, None, None, None, str(path))
    assert e.value.code == ExitCode.USAGE
    with pytest.raises(CliError, match="cannot read config file"):
        resolve_connection(None, None, None, None, str(tmp_path / "missing.toml"))


# -- output --------------------------------------------------------------------------------


def test_durations_for_people() -> None:
    assert format_duration(0.000929) == "0.929ms"
    assert format_duration(0.0125) == "12.5ms"
    assert format_duration(4.5183) == "4.52s"
    assert format_duration(184.2) == "3m04s"
    assert format_duration(2 * 3600 + 5 * 60 + 59) == "2h05m"
    assert format_duration(3 * 86400 + 4 * 3600) == "3d04h"


def test_json_record_of_a_real_job(worker: Worker, owner: uuid.UUID) -> None:
    job = worker.start(Command("sh", ["-c", "exit 3"], env={"A": "1", "B": None}), owner)
    info = worker.wait(job, owner)
    record = json.loads(json.dumps(job_record(info)))
    assert record["id"] == str(job)
    assert record["owner_id"] == str(owner)
    assert record["command"] == {
        "name": "sh",
        "args": ["-c", "exit 3"],
        "env": {"A": "1", "B": None},
        "cwd": None,
    }
    assert record["status"] == {
        "state": "exited",
        "exit_code": 3,
        "signal": None,
        "stop_type": None,
        "oom_killed": False,
    }
    assert record["log_path"] == str(info.log_path)
    assert record["started_at"].endswith("Z") and record["ended_at"].endswith("Z")
    assert record["started_at"] <= record["ended_at"]
    assert record["duration_seconds"] >= 0
    assert set(record["limits"]) == {
        "cpu",
        "memory",
        "io_read_bps",
        "io_write_bps",
        "io_path",
        "pids",
    }
    assert job_record(info, log_kept=False)["log_path"] is None


def test_a_running_and_a_stopped_job_in_a_table(worker: Worker, owner: uuid.UUID) -> None:
    long_arg = "x" * 100
    running = worker.start(Command("sh", ["-c", "sleep 100", long_arg]), owner)
    stopped = worker.start(Command("sleep", ["100"]), owner)
    worker.stop(stopped, owner, grace=5)
    infos = sorted(worker.list(owner), key=lambda i: i.started_at)
    now = infos[0].started_at + 61
    record = job_record(infos[0], now=now)
    assert record["ended_at"] is None and record["status"]["state"] == "running"
    assert record["duration_seconds"] == pytest.approx(61)
    table = jobs_table(infos, colour=False, now=now)
    header, first, second = table.splitlines()
    assert header.split() == [
        "ID",
        "COMMAND",
        "STATE",
        "EXIT",
        "STOP",
        "OOM",
        "STARTED",
        "DURATION",
        "CPU",
        "MEMORY",
    ]
    # Aligned: every column starts at the same place on every line.
    for word in ("COMMAND", "STATE", "EXIT", "STOP", "OOM", "STARTED", "DURATION"):
        col = header.index(word)
        assert first[col - 2 : col] == "  " and first[col] != " "
        assert second[col - 2 : col] == "  " and second[col] != " "
    assert first.startswith(str(running)) and "running" in first and "1m01s" in first
    assert "..." in first and long_arg not in first  # long commands are shortened
    assert "stopped" in second and " TERM " in second
    assert "\x1b[" not in table
    assert "\x1b[" in jobs_table(infos, colour=True, now=now)
    details = job_details(infos[0], colour=False, now=now)
    assert f"command:      {shlex.join(['sh', '-c', 'sleep 100', long_arg])}\n" in details
    worker.stop(running, owner, grace=0)


def test_a_command_is_shown_on_one_line_without_escape_sequences(
    worker: Worker, owner: uuid.UUID
) -> None:
    job = worker.start(Command("sh", ["-c", "exit 0", "\x1b[2J\nline\ttwo"]), owner)
    info = worker.wait(job, owner)
    for text in (job_details(info, colour=False), jobs_table([info], colour=False)):
        assert "\x1b" not in text and "\t" not in text
        assert len(text.splitlines()) == (2 if text.startswith("ID") else 16)
    assert "'\\x1b[2J\\nline\\ttwo'" in job_details(info, colour=False)
