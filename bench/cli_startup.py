"""Cold start of the jobworker command: wall time of a fresh process, start to exit.

Measured, interleaved round by round in one run (medians): ``jobworker --help`` and
``jobworker run -- true`` (the console script, as a user types it), against ``python -c
pass`` (the interpreter alone) and, for ``run``, a Python program that runs ``true``
with ``subprocess`` (the least any Python CLI that runs a command pays).  Also what the
imports cost on their own: ``import click``, ``import jobworker`` (types only) and
``from jobworker import Worker``.  A command against the service must answer within
0.3 s from a cold start; ``--help`` is the floor under every command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import _common as c

PY = sys.executable
JOBWORKER = str(Path(PY).with_name("jobworker"))
TARGET = 0.3  # seconds

COMMANDS = {
    "python -c pass": [PY, "-c", "pass"],
    "python: import click": [PY, "-c", "import click"],
    "python: import jobworker": [PY, "-c", "import jobworker"],
    "python: from jobworker import Worker": [PY, "-c", "from jobworker import Worker"],
    "python: subprocess.run(true)": [PY, "-c", "import subprocess; subprocess.run(['true'])"],
    "jobworker --help": [JOBWORKER, "--help"],
    "jobworker run -- true": [JOBWORKER, "run", "--", "true"],
}


def wall(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()

    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    names = list(COMMANDS)
    for argv in COMMANDS.values():
        wall(argv)  # page cache and .pyc files warm, as on any machine in use
    noise = c.Noise()
    for rnd in range(args.rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            times[name].append(wall(COMMANDS[name]))
    foreign = noise.foreign_cores()
    c.check_no_children("cli_startup")

    med = {name: c.median(v) for name, v in times.items()}
    ms = {name: f"{med[name] * 1000:.0f} ms" for name in names}
    print(f"\nwall time of a fresh process, median of {args.rounds} (other CPU load {foreign:.2f})")
    c.print_table(
        ["command", "median", "min", "max"],
        [
            [n, ms[n], f"{min(times[n]) * 1000:.0f} ms", f"{max(times[n]) * 1000:.0f} ms"]
            for n in names
        ],
    )
    base = med["python -c pass"]
    summary = [
        c.Summary(
            benchmark="cli_startup",
            metric="cold start: jobworker --help",
            worker=ms["jobworker --help"],
            baseline=f"{ms['python -c pass']} (python -c pass)",
            ratio=base / med["jobworker --help"],
            target="<= 300 ms",
            met=med["jobworker --help"] <= TARGET,
            note=f"import click {ms['python: import click']}, import jobworker "
            f"{ms['python: import jobworker']}",
        ),
        c.Summary(
            benchmark="cli_startup",
            metric="cold start: jobworker run -- true",
            worker=ms["jobworker run -- true"],
            baseline=f"{ms['python: subprocess.run(true)']} (python: subprocess.run)",
            ratio=med["python: subprocess.run(true)"] / med["jobworker run -- true"],
            target="-",
            met=None,
            note=f"from jobworker import Worker {ms['python: from jobworker import Worker']}",
        ),
    ]
    results = {"rounds": args.rounds, "seconds": times, "median_seconds": med, "foreign": foreign}
    c.write_results("cli_startup", results, summary)


if __name__ == "__main__":
    main()
