"""The README's commands, run as it shows them: the demo script and every ``jobworker``
line of its shell blocks."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    yield {**os.environ, "TMPDIR": str(tmp)}
    assert list(tmp.iterdir()) == []  # nothing left behind


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
    # Each line of a sh block that runs jobworker, with the exit code its comment promises
    # ("# exits N"), or 0.
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```sh\n")[1:]]
    lines = [
        line
        for block in blocks
        for line in block.splitlines()
        if line.startswith(("jobworker ", ".venv/bin/jobworker "))
    ]
    assert lines, "the README shows no jobworker command"
    for line in lines:
        command, _, comment = line.partition("  #")
        promised = re.search(r"\bexits (\d+)", comment)
        result = subprocess.run(
            ["bash", "-c", command], capture_output=True, env=tmpdir_env, cwd=ROOT, timeout=120
        )
        assert result.returncode == (int(promised[1]) if promised else 0), line
        assert b"Traceback" not in result.stderr
