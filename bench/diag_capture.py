"""Diagnostic (not part of run_all): what each way of capturing through a pipe costs.

``copier.c`` runs the C writer of capture.py (256 MiB, 100-byte or 64 KiB writes,
alternating stdout and stderr into one 1 MiB pipe) and copies the pipe into a file in
C, without Python and without jobworker, waking up in each of the ways in its header
(blocked reader, epoll, epoll only while waiting, one-shot inotify, fasync signals) and
copying with read+write or splice.  It shows two things the worker's design rests on:

- how much each wake-up scheme makes the *writer's* small writes dearer (the pipe's
  ``poll_usage``: once polled, every write wakes the reader queue), and
- the ceiling for 64 KiB writes: the copier has to put every byte into the page cache,
  the whole of what the kernel redirect does, *and* take it out of the pipe first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import _common as c

TOTAL = 256 * c.MiB
WAYS = [
    ("redirect", "rw"),
    ("block", "rw"),
    ("epoll", "rw"),
    ("eptoggle", "rw"),
    ("inotify", "rw"),
    ("fasync", "rw"),
    ("epoll", "splice"),
    ("fasync", "splice2"),
]


def compile_copier(directory: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit("this diagnostic needs gcc (or cc)")
    exe = directory / "copier"
    src = c.BENCH_DIR / "copier.c"
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    return exe


def run(copier: Path, wake: str, copy: str, out: Path, writer_argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [str(copier), wake, copy, str(out), "--", *writer_argv],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    out.unlink()
    if result["bytes"] != TOTAL or result["exit"] != 0:
        sys.exit(f"{wake}/{copy}: {result}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    noise = c.Noise()
    with c.temp_dir("diag-capture") as tmp:
        writer = c.compile_writer(tmp)
        copier = compile_copier(tmp)
        for size, label, baseline in ((100, "lines", "block/rw"), (65536, "chunks", "redirect/rw")):
            argv = c.bytes_argv(writer, TOTAL, size, nfds=2)
            runs: dict[str, list[dict[str, Any]]] = {f"{w}/{m}": [] for w, m in WAYS}
            for rnd in range(args.rounds):
                ways = WAYS[rnd % len(WAYS) :] + WAYS[: rnd % len(WAYS)]  # rotate the order
                for wake, copy in ways:
                    runs[f"{wake}/{copy}"].append(run(copier, wake, copy, tmp / "out.log", argv))
            med = {
                name: {
                    k: c.median([r[k] for r in rs])
                    for k in ("wall_s", "writer_cpu_s", "copier_cpu_s", "reads", "wakes")
                }
                for name, rs in runs.items()
            }
            results[label] = med
            base = med[baseline]["wall_s"]
            rows = [
                [
                    name,
                    f"{m['wall_s']:.3f}",
                    f"{m['writer_cpu_s']:.2f}",
                    f"{m['copier_cpu_s']:.2f}",
                    f"{m['reads']:.0f}",
                    f"{m['wakes']:.0f}",
                    f"{base / m['wall_s']:.2f}",
                ]
                for name, m in med.items()
            ]
            print(f"\n{label}: 256 MiB as {size}-byte writes (median of {args.rounds})")
            c.print_table(
                [
                    "wake/copy",
                    "wall s",
                    "writer cpu s",
                    "copier cpu s",
                    "reads",
                    "wake-ups",
                    f"{baseline}/this",
                ],
                rows,
            )
    results["other_cpu_load_cores"] = noise.foreign_cores()
    print(f"\nother CPU load during the run: {results['other_cpu_load_cores']:.2f} cores")
    c.check_no_children("diag_capture")
    c.write_results("diag_capture", results, [])


if __name__ == "__main__":
    main()
