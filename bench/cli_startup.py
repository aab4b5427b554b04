"""Cold start of the jobworker command: wall time of a fresh process, start to exit.

Measured, interleaved round by round in one run (medians): ``jobworker --help`` and
``jobworker run -- true`` (the console script, as a user types it), against ``python -c
pass`` (the interpreter alone) and, for ``run``, a Python program that runs ``true``
with ``subprocess`` (the least any Python CLI that runs a command pays).  Also what the
imports cost on their own: ``import click``, ``import jobworker`` (types only), ``from
jobworker import Worker`` and ``import jobworker.client``.

The service's commands, against a running ``jobworker serve`` (started here, on a Unix
socket in a temporary directory and on 127.0.0.1 with certificates from ``make_certs``):
``jobworker list`` and ``jobworker status ID`` on the local socket, and ``jobworker list``
over mutual TLS; against a Python program that makes the same ``List`` call with
``jobworker.client`` (the floor under any Python client).  A command against the
service must answer within 0.3 s from a cold start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    "python: import jobworker.client": [PY, "-c", "import jobworker.client"],
    "python: subprocess.run(true)": [PY, "-c", "import subprocess; subprocess.run(['true'])"],
    "jobworker --help": [JOBWORKER, "--help"],
    "jobworker run -- true": [JOBWORKER, "run", "--", "true"],
}

CLIENT_LIST = """
import asyncio, sys
from jobworker.client import Client
async def main():
    async with Client(sys.argv[1]) as c:
        await c.list()
asyncio.run(main())
"""


@contextlib.contextmanager
def service(directory: Path) -> Iterator[dict[str, str]]:
    """``jobworker serve`` in ``directory``, with one ended job; yields the environment of
    a client on its socket (``ID``: the job) and over TLS (``TLS_*``)."""
    from jobworker.server import make_certs

    certs = directory / "certs"
    make_certs(certs, users=["alice"])
    log = directory / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [JOBWORKER, "serve", "--socket", str(directory / "run" / "s.sock")]
            + ["--state-dir", str(directory / "state"), "--listen", "127.0.0.1:0"]
            + ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
            + ["--client-ca", str(certs / "ca.pem")]
            + ([] if os.geteuid() == 0 else ["--allow-shared-user"]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while b'"listening"' not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"jobworker serve did not start: {log.read_text()}")
            time.sleep(0.02)
        line = next(x for x in log.read_text().splitlines() if '"listening"' in x)
        unix, tcp = json.loads(line)["addresses"]
        env = {**os.environ, "JOBWORKER_SERVER": unix, "XDG_CONFIG_HOME": str(directory)}
        job = subprocess.run(
            [JOBWORKER, "start", "--", "true"], env=env, capture_output=True, check=True
        )
        env["ID"] = job.stdout.decode().strip()
        env["TLS_SERVER"] = tcp
        env["TLS_CA"] = str(certs / "ca.pem")
        env["TLS_CERT"] = str(certs / "alice.pem")
        env["TLS_KEY"] = str(certs / "alice.key")
        yield env
    finally:
        proc.terminate()
        proc.wait(60)


def service_commands(env: dict[str, str]) -> dict[str, tuple[list[str], dict[str, str]]]:
    tls = {
        **env,
        "JOBWORKER_SERVER": env["TLS_SERVER"],
        "JOBWORKER_CA": env["TLS_CA"],
        "JOBWORKER_CERT": env["TLS_CERT"],
        "JOBWORKER_KEY": env["TLS_KEY"],
    }
    return {
        "python: Client.list() (socket)": ([PY, "-c", CLIENT_LIST, env["JOBWORKER_SERVER"]], env),
        "jobworker list (socket)": ([JOBWORKER, "list"], env),
        "jobworker status ID (socket)": ([JOBWORKER, "status", env["ID"]], env),
        "jobworker list (mTLS)": ([JOBWORKER, "list"], tls),
    }


def wall(argv: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="jobworker-bench-") as tmp, service(Path(tmp)) as env:
        commands: dict[str, tuple[list[str], dict[str, str] | None]] = {
            name: (argv, None) for name, argv in COMMANDS.items()
        }
        commands.update(service_commands(env))
        times: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for argv, e in commands.values():
            wall(argv, e)  # page cache and .pyc files warm, as on any machine in use
        noise = c.Noise()
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                times[name].append(wall(*commands[name]))
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
    floor = med["python: Client.list() (socket)"]
    for name in (
        "jobworker list (socket)",
        "jobworker status ID (socket)",
        "jobworker list (mTLS)",
    ):
        summary.append(
            c.Summary(
                benchmark="cli_startup",
                metric=f"cold start: {name}",
                worker=ms[name],
                baseline=f"{ms['python: Client.list() (socket)']} (python: Client.list())",
                ratio=floor / med[name],
                target="<= 300 ms",
                met=med[name] <= TARGET,
                note=f"import jobworker.client {ms['python: import jobworker.client']}",
            )
        )
    results = {"rounds": args.rounds, "seconds": times, "median_seconds": med, "foreign": foreign}
    c.write_results("cli_startup", results, summary)


if __name__ == "__main__":
    main()
