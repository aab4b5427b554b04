"""The jobworker command as a whole, run as users run it: help on every command,
completion, one line on stderr and a documented exit code for every error, and its
imports (public modules only; heavy ones only where a command needs them)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobworker.cli._exitcodes import ExitCode
from jobworker.cli._main import cli

from conftest import JOBWORKER, error_line, jobworker

ROOT = Path(__file__).resolve().parent.parent
CLI_SOURCES = sorted((ROOT / "src" / "jobworker" / "cli").glob("*.py"))


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(cli.commands))])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_command_has_help_with_an_example(command: list[str], flag: str) -> None:
    result = jobworker(*command, flag)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert text.startswith(f"Usage: {' '.join(['jobworker', *command])} ")
    assert "Examples:\n    jobworker " in text
    assert result.stderr == b""


def test_the_console_script_and_python_m_are_the_same_command() -> None:
    assert Path(JOBWORKER).is_file()
    via_m = subprocess.run(
        [sys.executable, "-m", "jobworker.cli", "--help"], capture_output=True, check=True
    )
    assert via_m.stdout == jobworker("--help").stdout


def test_version() -> None:
    result = jobworker("--version")
    assert result.returncode == 0
    assert re.fullmatch(rb"jobworker, version \d+\.\d+\.\d+\S*\n", result.stdout)


def test_no_command_shows_the_help_as_a_usage_error() -> None:
    result = jobworker()
    assert result.returncode == ExitCode.USAGE
    assert result.stdout.startswith(b"Usage: jobworker ")


@pytest.mark.parametrize(
    ("args", "pattern"),
    # Regular expressions: the wording is click's, and varies a little between versions.
    [
        (["xyzzy"], r"No such command 'xyzzy'\. \(see 'jobworker --help'\)$"),
        (["--bogus"], r"No such option.*--bogus.*\(see 'jobworker --help'\)$"),
        (["run", "--memroy", "1G", "--", "true"], r"No such option.*--memroy.*--memory"),
        (["run"], r"Missing argument '-- CMD \[ARGS\]\.\.\.'\. \(see 'jobworker run --help'\)$"),
    ],
)
def test_usage_errors_are_one_line_and_code_2(args: list[str], pattern: str) -> None:
    result = jobworker(*args)
    assert result.returncode == 2
    assert re.match(pattern, error_line(result))
    assert result.stdout == b""


def test_an_unexpected_error_is_one_line_and_code_1() -> None:
    # A command that fails in a way no table foresaw: the catch-all's job.
    code = (
        "import click\n"
        "from jobworker.cli import _main\n"
        "@click.command()\n"
        "def boom() -> None:\n"
        "    raise RuntimeError('something\\nbroke')\n"
        "_main.cli.add_command(boom)\n"
        "_main.main(['boom'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 1
    assert error_line(result) == "unexpected error: RuntimeError: something broke"
    debug = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        timeout=60,
        env={**os.environ, "JOBWORKER_DEBUG": "1"},
    )
    assert b"Traceback" in debug.stderr  # for whoever debugs it


def test_shell_completion() -> None:
    script = jobworker(env={"_JOBWORKER_COMPLETE": "bash_source"})
    assert script.returncode == 0
    assert b"_JOBWORKER_COMPLETE=bash_complete" in script.stdout

    def complete(words: str) -> list[str]:
        env = {
            "_JOBWORKER_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        result = jobworker(env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.decode().split()

    assert "plain,run" in complete("jobworker ru")
    assert "plain,--memory" in complete("jobworker run --mem")
    assert [w for w in complete("jobworker st") if w.startswith("plain,")] == [
        "plain,start",
        "plain,status",
        "plain,stop",
    ]
    assert "plain,--follow" in complete("jobworker logs --f")
    assert "plain,--max-running-jobs" in complete("jobworker serve --max")


def test_every_exit_code_is_documented() -> None:
    doc = (ROOT / "docs" / "CLI.md").read_text()
    table = doc[doc.index("## Exit codes") :]
    for code in ExitCode:
        assert re.search(rf"^\| {code.value}(\+N)? +\|", table, re.MULTILINE), code


# -- imports -------------------------------------------------------------------------------


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(level, module, names) of every import in ``path``."""
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", [a.name for a in node.names]))
    return found


def test_the_cli_uses_only_public_modules_of_the_library() -> None:
    allowed = {"jobworker", "jobworker.client", "jobworker.server"}
    assert len(CLI_SOURCES) > 3
    for path in CLI_SOURCES:
        for level, module, names in _imports(path):
            where = f"{path.name}: import {'.' * level}{module} {names}"
            if level > 1:
                raise AssertionError(f"{where}: outside the cli package, say jobworker...")
            if level == 1:
                continue  # the cli package's own modules
            top = module.split(".")[0]
            if top != "jobworker":
                continue
            assert module in allowed or module.startswith("jobworker.cli"), where
            if module in allowed:
                assert not any(n.startswith("_") for n in names), where


def test_the_private_import_check_catches_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from jobworker._worker import Worker\nfrom .. import _model\n")
    assert _imports(bad) == [(0, "jobworker._worker", ["Worker"]), (2, "", ["_model"])]


# Modules that no command may load unless it needs them: the worker's machinery (asyncio
# alone is a large part of a cold start), the service's client and server, and what they
# bring (gRPC, protobuf, TLS, certificate making, rich text).
SERVICE = {"jobworker.client", "jobworker.server", "grpclib", "grpc", "google.protobuf"}
HEAVY = {"rich", "cryptography", "ssl", *SERVICE}
WORKER = {"asyncio", "jobworker._worker", "jobworker._reactor", "jobworker._rescontrol"}


def _loaded_by(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", JOBWORKER, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "click" in names  # the parse worked
    return names


def _top(names: set[str], of: set[str]) -> set[str]:
    return {n for n in names if n in of or any(n.startswith(p + ".") for p in of)}


# What a command of the service needs: the client (asyncio, gRPC, protobuf, TLS), and
# jobworker.server for the local socket's path; never the worker, nor the server's
# machinery, nor certificate making.
CLIENT = {"jobworker.client", "grpclib", "google.protobuf", "asyncio", "ssl", "jobworker.server"}
SERVER = {"jobworker.server._app", "jobworker.server._service", "jobworker.server._runas"}


@pytest.mark.parametrize(
    ("args", "not_loaded"),
    [
        (["--help"], HEAVY | WORKER),
        (["run", "--help"], HEAVY | WORKER),
        (["run", "--memory", "12Q", "--", "true"], HEAVY | WORKER),
        (["run", "--", "true"], HEAVY - {"ssl"}),  # asyncio (and its ssl) come with the worker
        (["list", "--help"], HEAVY | WORKER),
        (["purge", "--help"], HEAVY | WORKER),
        (["purge", "--server", "unix:/nonexistent"], HEAVY - CLIENT | WORKER - CLIENT | SERVER),
        (["status", "not-a-uuid"], HEAVY | WORKER),
        (["list", "--server", "unix:/nonexistent"], HEAVY - CLIENT | WORKER - CLIENT | SERVER),
        (["list"], HEAVY - CLIENT | WORKER - CLIENT | SERVER),  # the local socket
        (["serve", "--help"], HEAVY | WORKER),
        (["serve", "--grace", "inf"], WORKER | SERVER | {"grpclib", "cryptography"}),
        (["certs", "--help"], HEAVY | WORKER),
        (["certs", "--user", "ca", "/nonexistent"], WORKER | SERVER | {"grpclib"}),
    ],
)
def test_commands_load_only_what_they_use(args: list[str], not_loaded: set[str]) -> None:
    loaded = _loaded_by(*args)
    assert not _top(loaded, not_loaded)


def test_the_import_check_sees_what_a_command_loads() -> None:
    loaded = _loaded_by("list", "--server", "unix:/nonexistent")
    assert _top(loaded, CLIENT) >= {"jobworker.client", "grpclib", "asyncio"}
