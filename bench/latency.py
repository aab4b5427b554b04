"""Follow latency: time from a job's write() of a line until a follower has read it.

The C writer prints ``<CLOCK_MONOTONIC ns> <i>`` every 2 ms (2,000 lines); the follower
takes ``time.monotonic_ns()`` (the same clock) right after each read and records, for
each complete line in what it read, read time - write time.  Followers:

- worker:   a ``Worker.stream`` reader (the job's output goes through the worker's pipe,
            reactor and log file);
- inotify:  the job writes a plain file (kernel redirect); the follower waits with
            inotify (IN_MODIFY, via ctypes) and reads the file to its end on each event;
- pipe:     ``Popen(stdout=PIPE)`` and a blocking os.read loop (copying into a file).

Rounds are interleaved; all samples of a method are pooled for p50/p99/max.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as c

from jobworker import Command, Worker

LINES = 2000
INTERVAL_US = 2000
TARGET_P99_US = 1000.0

IN_MODIFY = 0x00000002
IN_CLOEXEC = os.O_CLOEXEC
IN_NONBLOCK = os.O_NONBLOCK


class LineClock:
    """Splits what a follower read into lines and records their latencies (ns)."""

    def __init__(self) -> None:
        self.partial = b""
        self.latencies: list[int] = []
        self.seen = 0

    def feed(self, data: bytes, now_ns: int) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            written_ns, _, index = line.partition(b" ")
            if int(index) != self.seen:
                raise AssertionError(f"line {self.seen} missing (got {int(index)})")
            self.seen += 1
            self.latencies.append(now_ns - int(written_ns))


def follow_worker(w: Worker, argv: list[str]) -> list[int]:
    owner = uuid.uuid4()
    clock = LineClock()
    job = w.start(Command(argv[0], argv[1:]), owner)
    with w.stream(job, owner) as r:
        while data := r.read(65536):
            clock.feed(data, time.monotonic_ns())
    os.unlink(w.query(job, owner).log_path)
    return clock.latencies


class _Inotify:
    def __init__(self) -> None:
        self.libc: Any = ctypes.CDLL(None, use_errno=True)
        self.fd = int(self.libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK))
        if self.fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def watch(self, path: Path, mask: int) -> None:
        if self.libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def drain(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


def follow_inotify(argv: list[str], path: Path) -> list[int]:
    clock = LineClock()
    path.write_bytes(b"")
    ino = _Inotify()
    ino.watch(path, IN_MODIFY)
    rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with open(path, "ab") as f:
        p = subprocess.Popen(argv, stdout=f)
    pidfd = os.pidfd_open(p.pid)
    poller = select.poll()
    poller.register(ino.fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    exited = False
    try:
        while True:
            events = poller.poll()
            ino.drain()
            exited = exited or any(fd == pidfd for fd, _ in events)
            while data := os.read(rfd, 65536):
                clock.feed(data, time.monotonic_ns())
            if exited:
                break
    finally:
        os.close(pidfd)
        os.close(rfd)
        ino.close()
        p.wait()
    path.unlink()
    return clock.latencies


def follow_pipe(argv: list[str], path: Path) -> list[int]:
    clock = LineClock()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert p.stdout is not None
    src = p.stdout.fileno()
    dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        while data := os.read(src, 65536):
            now = time.monotonic_ns()
            os.write(dst, data)
            clock.feed(data, now)
    finally:
        os.close(dst)
        p.stdout.close()
        p.wait()
    path.unlink()
    return clock.latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lines", type=int, default=LINES)
    args = ap.parse_args()
    print(f"other CPU load before the run: {c.foreign_load():.2f} cores")

    with c.temp_dir("latency") as tmp:
        writer = c.compile_writer(tmp)
        argv = c.ticks_argv(writer, args.lines, INTERVAL_US)
        logs = tmp / "logs"
        logs.mkdir()
        w = Worker(logs, resource_control=c.none_control())
        methods: dict[str, Callable[[], list[int]]] = {
            "worker": lambda: follow_worker(w, argv),
            "inotify": lambda: follow_inotify(argv, tmp / "inotify.log"),
            "pipe": lambda: follow_pipe(argv, tmp / "pipe.log"),
        }
        samples: dict[str, list[int]] = {m: [] for m in methods}
        noise = c.Noise()
        try:
            names = list(methods)
            for rnd in range(args.rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for m in order:
                    lat = methods[m]()
                    if len(lat) != args.lines:
                        raise AssertionError(f"{m}: {len(lat)} lines, expected {args.lines}")
                    samples[m] += lat
                    s = sorted(lat)
                    print(
                        f"  round {rnd + 1}  {m:8} p50 {c.percentile(s, 50) / 1e3:7.1f} us  "
                        f"p99 {c.percentile(s, 99) / 1e3:7.1f} us  max {s[-1] / 1e3:8.1f} us",
                        flush=True,
                    )
        finally:
            w.close()
        c.check_no_children("latency")
        other = noise.foreign_cores()

    stats: dict[str, dict[str, float]] = {}
    for m, v in samples.items():
        s = sorted(v)
        stats[m] = {
            "p50_us": c.percentile(s, 50) / 1e3,
            "p90_us": c.percentile(s, 90) / 1e3,
            "p99_us": c.percentile(s, 99) / 1e3,
            "max_us": s[-1] / 1e3,
            "n": len(s),
        }
    print(
        f"\nfollow latency, {args.lines} lines every {INTERVAL_US} us x {args.rounds} rounds "
        f"(other CPU load during the run: {other:.2f} cores)"
    )
    c.print_table(
        ["follower", "p50 us", "p90 us", "p99 us", "max us"],
        [
            [m, *(f"{st[k]:.1f}" for k in ("p50_us", "p90_us", "p99_us", "max_us"))]
            for m, st in stats.items()
        ],
    )
    wp99 = stats["worker"]["p99_us"]
    best = min((m for m in stats if m != "worker"), key=lambda m: stats[m]["p99_us"])
    summary = [
        c.Summary(
            benchmark="latency",
            metric=f"follow latency p99 (p50 {stats['worker']['p50_us']:.0f} us, "
            f"max {stats['worker']['max_us']:.0f} us)",
            worker=f"{wp99:.0f} us",
            baseline=f"{stats[best]['p99_us']:.0f} us ({best})",
            ratio=None,
            target="p99 <= 1 ms",
            met=wp99 <= TARGET_P99_US,
        )
    ]
    results: dict[str, Any] = {
        "lines": args.lines,
        "interval_us": INTERVAL_US,
        "rounds": args.rounds,
        "stats": stats,
        "other_cpu_cores": other,
    }
    c.write_results("latency", results, summary)


if __name__ == "__main__":
    main()
