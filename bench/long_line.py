"""Memory of a 64 MiB line without a newline: the worker's peak RSS growth vs a copy loop.

A job writes one 64 MiB line (64 KiB writes of non-newline bytes, the C writer) while a
``stream`` reader consumes it in 64 KiB chunks.  The growth is VmHWM after minus VmRSS
before, with VmHWM reset to the current RSS first (``echo 5 > /proc/self/clear_refs``).
Baseline, measured the same way in the same process: ``Popen(stdout=PIPE)`` and a
64 KiB os.read/os.write loop into a file.  Runs are interleaved; the table shows the
median and the worst of them.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import _common as c

from jobworker import Command, Worker

TOTAL = 64 * c.MiB
CHUNK = 64 * 1024
TARGET = 4 * c.MiB


def measure(fn: Any) -> int:
    """Peak RSS growth while ``fn()`` runs."""
    gc.collect()
    c.reset_hwm()
    before = c.rss_bytes()
    fn()
    return c.hwm_bytes() - before


def worker_run(w: Worker, argv: list[str]) -> None:
    owner = uuid.uuid4()
    job = w.start(Command(argv[0], argv[1:]), owner)
    n = 0
    with w.stream(job, owner) as r:
        while chunk := r.read(CHUNK):
            n += len(chunk)
    assert n == TOTAL, n
    info = w.query(job, owner)
    assert os.stat(info.log_path).st_size == TOTAL
    os.unlink(info.log_path)


def copy_run(argv: list[str], out: Path) -> None:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert p.stdout is not None
    src = p.stdout.fileno()
    dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        while data := os.read(src, CHUNK):
            os.write(dst, data)
    finally:
        os.close(dst)
        p.stdout.close()
    assert p.wait() == 0
    assert os.stat(out).st_size == TOTAL
    out.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    with c.temp_dir("long-line") as tmp:
        writer = c.compile_writer(tmp)
        argv = c.bytes_argv(writer, TOTAL, CHUNK, nfds=1, newlines=False)
        logs = tmp / "logs"
        logs.mkdir()
        w = Worker(logs, resource_control=c.none_control())
        growth: dict[str, list[int]] = {"worker+reader": [], "py-copy": []}
        try:
            # Warm both paths up first (imports, first-use allocations, the reactor).
            worker_run(w, argv)
            copy_run(argv, tmp / "copy.log")
            for rnd in range(args.rounds):
                order = ["worker+reader", "py-copy"]
                if rnd % 2:
                    order.reverse()
                for m in order:
                    if m == "py-copy":
                        g = measure(lambda: copy_run(argv, tmp / "copy.log"))
                    else:
                        g = measure(lambda: worker_run(w, argv))
                    growth[m].append(g)
                    print(f"  round {rnd + 1}  {m:14} peak RSS growth {c.fmt_bytes(g)}", flush=True)
        finally:
            w.close()
        c.check_no_children("long_line")

    med = {m: c.median(v) for m, v in growth.items()}
    worst = {m: max(v) for m, v in growth.items()}
    print(
        f"\n64 MiB single line, read in {CHUNK // 1024} KiB chunks "
        f"(peak RSS growth, {args.rounds} runs)"
    )
    c.print_table(
        ["method", "median", "worst", "runs"],
        [
            [m, c.fmt_bytes(med[m]), c.fmt_bytes(worst[m]), " ".join(c.fmt_bytes(x) for x in v)]
            for m, v in growth.items()
        ],
    )
    met = worst["worker+reader"] <= TARGET
    summary = [
        c.Summary(
            benchmark="long_line",
            metric="64 MiB line: peak RSS growth (worst run)",
            worker=c.fmt_bytes(worst["worker+reader"]),
            baseline=f"{c.fmt_bytes(worst['py-copy'])} (py-copy)",
            ratio=None,
            target="<= 4 MiB",
            met=met,
        )
    ]
    results = {
        "total_bytes": TOTAL,
        "chunk": CHUNK,
        "growth_bytes": growth,
        "median_bytes": med,
        "worst_bytes": worst,
    }
    c.write_results("long_line", results, summary)


if __name__ == "__main__":
    main()
