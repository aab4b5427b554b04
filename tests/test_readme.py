"""The README's commands, run as it shows them: the demo script, every ``jobworker`` line
of its shell blocks, and its service block as one script, against the server it starts
(its port and the server's directories rewritten to this test's)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import JOBWORKER

ROOT = Path(__file__).resolve().parent.parent
BIN = str(Path(JOBWORKER).parent)


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBWORKER_")}
    # `jobworker` on PATH, as after `source .venv/bin/activate`; no user config file.
    env |= {"TMPDIR": str(tmp), "PATH": f"{BIN}:{env['PATH']}", "XDG_CONFIG_HOME": str(tmp_path)}
    yield env
    assert list(tmp.iterdir()) == []  # nothing left behind


def sh_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return [b.split("```", 1)[0] for b in readme.split("```sh\n")[1:]]


def promised_exit(line: str) -> tuple[str, int]:
    """The command of a line, and the exit code its comment promises ("# exits N"), or 0."""
    command, _, comment = line.partition("  #")
    promised = re.search(r"\bexits (\d+)", comment)
    return command.strip(), int(promised[1]) if promised else 0


def test_the_demo_script(tmpdir_env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo")],
        capture_output=True,
        env=tmpdir_env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines == [f"{stream} line {i}" for i in range(1, 6) for stream in ("stdout", "stderr")]


def test_every_jobworker_command_in_the_readme(tmpdir_env: dict[str, str]) -> None:
    # Each line of a sh block that runs jobworker, with the exit code its comment promises;
    # the service's block has a test of its own, below.
    lines = [
        line
        for block in sh_blocks()
        if "jobworker serve" not in block
        for line in block.splitlines()
        if line.startswith(("jobworker ", ".venv/bin/jobworker "))
    ]
    assert lines, "the README shows no jobworker command"
    for line in lines:
        command, code = promised_exit(line)
        result = subprocess.run(
            ["bash", "-c", command], capture_output=True, env=tmpdir_env, cwd=ROOT, timeout=120
        )
        assert result.returncode == code, line
        assert b"Traceback" not in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(os.geteuid() != 0, reason="the README's server runs as root")
def test_the_readmes_service_block(tmpdir_env: dict[str, str], tmp_path: Path) -> None:
    (block,) = [b for b in sh_blocks() if "jobworker serve" in b]
    work = tmp_path / "work"
    work.mkdir()
    port = str(free_port())
    # If the script fails half-way, its server goes with it.
    script = ["trap 'kill %1 2>/dev/null; wait' EXIT"]
    served = killed = False
    for line in block.splitlines():
        command, code = promised_exit(line.replace("7443", port))
        if command.startswith("jobworker serve"):
            # Its socket and state where the test says; its log to a file, to wait for.
            assert command.endswith("&"), line
            command = (
                f"{command[:-1]} --socket {tmp_path}/run/s.sock --state-dir {tmp_path}/state"
                " 2>serve.log &"
            )
            script += [
                command,
                "for i in $(seq 1200); do grep -qs '\"listening\"' serve.log && break;"
                " sleep 0.05; done",
            ]
            served = True
            continue
        script += [
            command,
            f"rc=$?; [ $rc -eq {code} ] || {{ echo exit $rc: {shlex.quote(line)} >&2; exit 1; }}",
        ]
        if command.startswith("kill %1"):
            script.append("wait %1; echo served $? > served")
            killed = True
    assert served and killed, "the block starts and stops a server"
    proc = subprocess.Popen(
        ["bash", "-c", "\n".join(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=tmpdir_env,
        cwd=work,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, (err.decode(), (work / "serve.log").read_text())
    assert b"Traceback" not in err
    text = out.decode()
    assert text.count("tick 1\ntick 2\ntick 3\n") == 1  # logs -f
    assert "stopped (TERM)\n" in text
    assert "uid=" in text  # run, on the service
    assert (work / "served").read_text() == "served 0\n"  # SIGTERM: a clean exit
    assert sorted(p.name for p in (work / "certs").glob("*.key")) == [
        "admin.key",
        "alice.key",
        "ca.key",
        "server.key",
    ]
