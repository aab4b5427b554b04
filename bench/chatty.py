"""Chatty jobs: eight at once, each writing 64 MiB as 100-byte writes (C writer).

Aggregate throughput (512 MiB / wall time until all eight have ended with every byte in
their logs) and the CPU time of *this* process (os.times() user+system delta, which
includes the worker's reactor thread), against:

- redirect: eight ``Popen(stdout=f, stderr=f)`` at once, the kernel writes the files;
- py-epoll: eight ``Popen(stdout=PIPE, stderr=STDOUT)`` copied by one Python epoll
            loop (os.read 64 KiB / os.write), the classic supervisor design.

The writers alternate their writes between stdout and stderr.  The writers' own CPU time
(RUSAGE_CHILDREN delta) is reported too: capture that makes the writers' write() calls
more expensive shows up there.  Rounds are interleaved; medians are reported.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common as c

from jobworker import Command, Worker

JOBS = 8
PER_JOB = 64 * c.MiB
WRITE = 100


@dataclass
class Run:
    wall: float
    cpu_self: float
    cpu_children: float


def measured(fn: Callable[[], None]) -> Run:
    cpu0, ch0 = c.cpu_seconds(), c.children_cpu_seconds()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    return Run(wall, c.cpu_seconds() - cpu0, c.children_cpu_seconds() - ch0)


def run_worker(w: Worker, argv: list[str]) -> None:
    owner = uuid.uuid4()
    cmd = Command(argv[0], argv[1:])
    jobs = [w.start(cmd, owner) for _ in range(JOBS)]
    for j in jobs:
        c.wait_ended(w, j, owner)
    for j in jobs:
        info = w.query(j, owner)
        assert info.status.exit_code == 0, info.status
        assert os.stat(info.log_path).st_size == PER_JOB
        os.unlink(info.log_path)


def run_redirect(argv: list[str], tmp: Path) -> None:
    paths = [tmp / f"redirect{i}.log" for i in range(JOBS)]
    procs = []
    for p in paths:
        with open(p, "wb") as f:
            procs.append(subprocess.Popen(argv, stdout=f, stderr=f))
    for proc in procs:
        assert proc.wait() == 0
    for p in paths:
        assert os.stat(p).st_size == PER_JOB
        p.unlink()


def run_py_epoll(argv: list[str], tmp: Path) -> None:
    ep = select.epoll()
    outs: dict[int, int] = {}
    procs = []
    paths = [tmp / f"epoll{i}.log" for i in range(JOBS)]
    try:
        for p in paths:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert proc.stdout is not None
            procs.append(proc)
            fd = proc.stdout.fileno()
            outs[fd] = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            ep.register(fd, select.EPOLLIN)
        open_fds = len(outs)
        while open_fds:
            for fd, _ in ep.poll():
                data = os.read(fd, 65536)
                if data:
                    os.write(outs[fd], data)
                else:
                    ep.unregister(fd)
                    open_fds -= 1
    finally:
        for out in outs.values():
            os.close(out)
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.close()
            proc.wait()
        ep.close()
    for p in paths:
        assert os.stat(p).st_size == PER_JOB
        p.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    total = JOBS * PER_JOB

    noise = c.Noise()
    with c.temp_dir("chatty") as tmp:
        writer = c.compile_writer(tmp)
        argv = c.bytes_argv(writer, PER_JOB, WRITE, nfds=2)
        logs = tmp / "logs"
        logs.mkdir()
        w = Worker(logs, resource_control=c.none_control())
        methods: dict[str, Callable[[], None]] = {
            "worker": lambda: run_worker(w, argv),
            "redirect": lambda: run_redirect(argv, tmp),
            "py-epoll": lambda: run_py_epoll(argv, tmp),
        }
        runs: dict[str, list[Run]] = {m: [] for m in methods}
        try:
            names = list(methods)
            for rnd in range(args.rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for m in order:
                    r = measured(methods[m])
                    runs[m].append(r)
                    print(
                        f"  round {rnd + 1}  {m:9} {r.wall:6.2f} s  "
                        f"{total / r.wall / 1e6:5.0f} MB/s  cpu self {r.cpu_self:5.2f} s  "
                        f"writers {r.cpu_children:5.2f} s",
                        flush=True,
                    )
        finally:
            w.close()
        c.check_no_children("chatty")
    other = noise.foreign_cores()

    med: dict[str, dict[str, float]] = {}
    for m, rs in runs.items():
        med[m] = {
            "wall_s": c.median([r.wall for r in rs]),
            "cpu_self_s": c.median([r.cpu_self for r in rs]),
            "cpu_children_s": c.median([r.cpu_children for r in rs]),
        }
        med[m]["mb_per_s"] = total / med[m]["wall_s"] / 1e6
    print(
        f"\n{JOBS} jobs x {PER_JOB // c.MiB} MiB as {WRITE}-byte writes, at once "
        f"(median of {args.rounds}; other CPU load {other:.2f} cores)"
    )
    base = med["redirect"]
    c.print_table(
        ["method", "wall s", "MB/s", "vs redirect", "cpu self s", "cpu s/GB", "writers cpu s"],
        [
            [
                m,
                f"{v['wall_s']:.2f}",
                f"{v['mb_per_s']:.0f}",
                f"{base['wall_s'] / v['wall_s']:.2f}",
                f"{v['cpu_self_s']:.2f}",
                f"{v['cpu_self_s'] / (total / 1e9):.2f}",
                f"{v['cpu_children_s']:.2f}",
            ]
            for m, v in med.items()
        ],
    )
    wk = med["worker"]
    summary = [
        c.Summary(
            benchmark="chatty",
            metric=f"{JOBS} x {PER_JOB // c.MiB} MiB of 100-byte writes: throughput",
            worker=f"{wk['mb_per_s']:.0f} MB/s",
            baseline=f"{base['mb_per_s']:.0f} MB/s (redirect)",
            ratio=base["wall_s"] / wk["wall_s"],
            target="-",
            met=None,
            note=f"py-epoll {med['py-epoll']['mb_per_s']:.0f} MB/s",
        ),
        c.Summary(
            benchmark="chatty",
            metric="... worker process CPU (self, incl. reactor)",
            worker=f"{wk['cpu_self_s']:.2f} s",
            baseline=f"{med['py-epoll']['cpu_self_s']:.2f} s (py-epoll)",
            ratio=None,
            target="-",
            met=None,
            note=f"writers' CPU: worker {wk['cpu_children_s']:.2f} s, redirect "
            f"{base['cpu_children_s']:.2f} s, py-epoll {med['py-epoll']['cpu_children_s']:.2f} s",
        ),
    ]
    results: dict[str, Any] = {
        "jobs": JOBS,
        "bytes_per_job": PER_JOB,
        "write_size": WRITE,
        "runs": {m: [vars(r) for r in rs] for m, rs in runs.items()},
        "median": med,
        "other_cpu_cores": other,
    }
    c.write_results("chatty", results, summary)


if __name__ == "__main__":
    main()
