"""Run every benchmark, one after the other, and print a Markdown summary table.

Each benchmark runs as its own process (``python bench/<name>.py``) and writes
``bench/results/<name>.json``; the summary is built from those files and also written to
``bench/results/summary.md``.  Before each benchmark this waits (up to ``--quiet-wait``
seconds) for the CPU load of other processes to drop, since two cores are easily
disturbed, and records what it saw.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import _common as c

# scale and retention go last: scale deletes ~20,000 logs at its end and retention a
# log for every job it starts, which slows file creation for a while on ext4 without a
# journal (see _common.file_create_us).
BENCHMARKS = [
    "capture",
    "long_line",
    "start_rate",
    "latency",
    "chatty",
    "readers",
    "cli_startup",
    "service_frameworks",
    "service_stream",
    "service_start",
    "scale",
    "retention",
]
QUIET = 0.15  # cores


def wait_quiet(max_wait: float) -> float:
    deadline = time.monotonic() + max_wait
    load = c.foreign_load(1.0)
    while load > QUIET and time.monotonic() < deadline:
        print(f"   (other processes use {load:.2f} cores; waiting for quiet)", flush=True)
        load = c.foreign_load(2.0)
    return load


def cell(s: object) -> str:
    return str(s).replace("|", "\\|")


def markdown(results: dict[str, dict[str, Any]], loads: dict[str, float]) -> str:
    m = next(iter(results.values()))["machine"] if results else c.machine()
    lines = [
        f"Machine: {c.machine_line(m)}",
        "",
        "| benchmark | metric | worker | baseline | ratio | target | met | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, data in results.items():
        for s in data["summary"]:
            met = {True: "yes", False: "**NO**", None: "-"}[s["met"]]
            lines.append(
                "| "
                + " | ".join(
                    cell(x)
                    for x in (
                        name,
                        s["metric"],
                        s["worker"],
                        s["baseline"],
                        c.ratio_str(s["ratio"]),
                        s["target"],
                        met,
                        s["note"],
                    )
                )
                + " |"
            )
    lines += [
        "",
        "Ratios are baseline time / worker time (higher is better for the worker); "
        "other processes' CPU load before each benchmark, in cores: "
        + ", ".join(f"{k} {v:.2f}" for k, v in loads.items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    ap.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[], help="skip these")
    ap.add_argument(
        "--summary-only", action="store_true", help="only rebuild the table from results/"
    )
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    args = ap.parse_args()
    names = [b for b in (args.only or BENCHMARKS) if b not in args.skip]

    loads: dict[str, float] = {}
    failed: list[str] = []
    if not args.summary_only:
        for name in names:
            print(f"\n=== {name} ===", flush=True)
            loads[name] = wait_quiet(args.quiet_wait)
            t0 = time.monotonic()
            rc = subprocess.call([sys.executable, str(c.BENCH_DIR / f"{name}.py")])
            print(f"=== {name}: {time.monotonic() - t0:.0f} s, exit {rc}", flush=True)
            if rc != 0:
                failed.append(name)

    results: dict[str, dict[str, Any]] = {}
    for name in names:
        path = c.RESULTS_DIR / f"{name}.json"
        if name not in failed and path.exists():
            results[name] = json.loads(path.read_text())
    md = markdown(results, loads)
    c.RESULTS_DIR.mkdir(exist_ok=True)
    (c.RESULTS_DIR / "summary.md").write_text(md)
    print("\n" + md)
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
