"""Diagnostic (not part of run_all): why pipe capture by splice is slow for small writes.

The same C writer as capture.py (256 MiB, 100-byte or 64 KiB writes, alternating stdout
and stderr into one pipe) is drained by a bare copier loop in this process, without
jobworker, in these ways (1 MiB pipe, non-blocking, woken by epoll, like the worker):

- splice:  ``os.splice(pipe, log, 1 MiB)`` (what ``OutputPipe.drain_into`` does);
- readv:   ``os.readv`` into a preallocated 1 MiB buffer, then ``os.write`` to the log.

and, single-threaded, the cost per call of each way on a pipe pre-filled with 100-byte
writes.  It reports wall time, the copier's calls and bytes per call, and the CPU time of
the writer: splice(2) from a pipe into a file keeps the pipe locked for the whole file
write, so a writer that writes while the copier splices waits on the pipe's lock, and
its own write() calls get dearer.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import _common as c

TOTAL = 256 * c.MiB
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def drain(argv: list[str], out_path: Path, mode: str) -> dict[str, float]:
    r, w = os.pipe2(os.O_CLOEXEC)
    fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_SIZE)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    buf = bytearray(PIPE_SIZE)
    view = memoryview(buf)
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    ch0, own0 = c.children_cpu_seconds(), c.cpu_seconds()
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=w, stderr=w)
    os.close(w)
    os.set_blocking(r, False)
    ep = select.epoll()
    ep.register(r, select.EPOLLIN)
    calls = wakes = 0
    try:
        eof = False
        while not eof:
            ep.poll()
            wakes += 1
            while True:
                try:
                    if mode == "splice":
                        n = os.splice(r, out, PIPE_SIZE, flags=flags)
                    else:
                        n = os.readv(r, [buf])
                        done = 0
                        while done < n:
                            done += os.write(out, view[done:n])
                except BlockingIOError:
                    break
                calls += 1
                if n == 0:
                    eof = True
                    break
    finally:
        ep.close()
        os.close(r)
        os.close(out)
        p.wait()
    wall = time.perf_counter() - t0
    assert os.stat(out_path).st_size == TOTAL
    out_path.unlink()
    return {
        "wall_s": wall,
        "writer_cpu_s": c.children_cpu_seconds() - ch0,
        "copier_cpu_s": c.cpu_seconds() - own0,
        "calls": calls,
        "wakes": wakes,
    }


def per_call_cost(out_path: Path, piece: int, mode: str) -> float:
    """Microseconds per call draining a pre-filled pipe alone (no concurrent writer)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_SIZE)
    os.set_blocking(r, False)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    line = b"x" * 99 + b"\n"
    buf = bytearray(piece)
    spent, calls = 0.0, 0
    try:
        for _ in range(100):
            for _ in range(655):  # 64 KiB as 100-byte writes
                os.write(w, line)
            t0 = time.perf_counter()
            while True:
                try:
                    if mode == "splice":
                        os.splice(r, out, piece, flags=os.SPLICE_F_NONBLOCK)
                    else:
                        n = os.readv(r, [buf])
                        os.write(out, memoryview(buf)[:n])
                except BlockingIOError:
                    break
                calls += 1
            spent += time.perf_counter() - t0
    finally:
        os.close(r)
        os.close(w)
        os.close(out)
        out_path.unlink()
    return spent / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, Any] = {"concurrent": {}, "alone_us_per_call": {}}
    with c.temp_dir("diag-splice") as tmp:
        writer = c.compile_writer(tmp)
        for size in (100, 65536):
            argv = c.bytes_argv(writer, TOTAL, size, nfds=2)
            runs: dict[str, list[dict[str, float]]] = {"splice": [], "readv": []}
            for rnd in range(args.rounds):
                for mode in ("splice", "readv") if rnd % 2 == 0 else ("readv", "splice"):
                    runs[mode].append(drain(argv, tmp / "out.log", mode))
            rows = []
            for mode, rs in runs.items():
                med = {k: c.median([r[k] for r in rs]) for k in rs[0]}
                results["concurrent"][f"{size}/{mode}"] = med
                rows.append(
                    [
                        mode,
                        f"{med['wall_s']:.3f}",
                        f"{med['writer_cpu_s']:.2f}",
                        f"{med['copier_cpu_s']:.2f}",
                        f"{med['calls']:.0f}",
                        f"{TOTAL / med['calls']:.0f}",
                    ]
                )
            print(f"\n{size}-byte writes, 256 MiB, drained concurrently (median of {args.rounds})")
            c.print_table(
                ["copier", "wall s", "writer cpu s", "copier cpu s", "calls", "bytes/call"], rows
            )
        print("\ndraining a pipe pre-filled with 100-byte writes, alone (us per call)")
        rows = []
        for piece in (100, 750, 4096, 65536):
            costs = [per_call_cost(tmp / "alone.log", piece, m) for m in ("splice", "readv")]
            results["alone_us_per_call"][piece] = dict(zip(("splice", "readv"), costs, strict=True))
            rows.append([str(piece), f"{costs[0]:.2f}", f"{costs[1]:.2f}"])
        c.print_table(["bytes per call", "splice us", "readv+write us"], rows)
    c.check_no_children("diag_splice")
    c.write_results("diag_splice", results, [])


if __name__ == "__main__":
    main()
