"""Start rate: 300 ``/bin/true`` jobs as fast as possible, then wait for all of them.

Worker (no cgroups) against a plain ``subprocess.Popen(["/bin/true"])`` loop, and (issue 3)
the worker with one cgroup per job (the detected resource control, without limits and
with limits) against the worker without cgroups.  Each method is timed twice: the start
loop alone, and start loop + wait until every job has ended.  Rounds are interleaved;
medians are reported.

The worker creates a log file per job, which plain Popen does not: ``popen+file``
(``Popen(stdout=<a new file>)``) and the worker with its logs on tmpfs (/dev/shm) are
shown for reference, and the cost of creating one file in the log directory is probed
before and after the run.  Logs are only deleted at the end, because on ext4 without a
journal every file deleted makes the next file creations slower for minutes (see
``_common.file_create_us``); for the same reason every method creates its files in one
directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import _common as c

from jobworker import Command, LimitError, Limits, ResourceControl, Worker

N = 300
TARGET_POPEN = 0.7
TARGET_CGROUP = 0.5
TRUE = "/bin/true"


def run_worker(w: Worker, n: int, limits: Limits | None) -> tuple[float, float]:
    owner = uuid.uuid4()
    cmd = Command(TRUE)
    t0 = time.perf_counter()
    jobs = [w.start(cmd, owner, limits=limits) for _ in range(n)]
    t_start = time.perf_counter() - t0
    for j in jobs:
        c.wait_ended(w, j, owner)
    t_all = time.perf_counter() - t0
    for j in jobs:
        info = w.query(j, owner)
        assert info.status.exit_code == 0, info.status
    return t_start, t_all


def _wait_all(procs: list[subprocess.Popen[bytes]], t0: float) -> tuple[float, float]:
    """(start loop time, start + wait time) for ``procs``, all started since ``t0``."""
    t_start = time.perf_counter() - t0
    for p in procs:
        p.wait()
    t_all = time.perf_counter() - t0
    assert all(p.returncode == 0 for p in procs)
    return t_start, t_all


def run_popen(n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    return _wait_all([subprocess.Popen([TRUE]) for _ in range(n)], t0)


def run_popen_file(n: int, directory: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    procs = []
    for _ in range(n):
        fd = os.open(
            directory / f"true_{uuid.uuid4().hex}.log",
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
            0o600,
        )
        procs.append(subprocess.Popen([TRUE], stdout=fd, stderr=fd))
        os.close(fd)
    return _wait_all(procs, t0)


def usable_limits(rc: ResourceControl) -> tuple[Limits | None, str]:
    """The fullest of the limit sets this control accepts, and a description of it."""
    candidates = [
        (Limits(memory=256 * c.MiB, pids=100, cpu=1.0), "memory=256M pids=100 cpu=1.0"),
        (Limits(memory=256 * c.MiB, pids=100), "memory=256M pids=100"),
        (Limits(pids=100), "pids=100"),
        (Limits(memory=256 * c.MiB), "memory=256M"),
    ]
    refused = []
    for limits, desc in candidates:
        try:
            rc.validate(limits)
        except LimitError as e:
            refused.append(f"{desc}: {e}")
            continue
        return limits, desc
    return None, "; ".join(refused)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=N)
    ap.add_argument("--no-cgroup", action="store_true", help="skip the cgroup part")
    args = ap.parse_args()
    n = args.n

    if args.no_cgroup:
        detected, why_not = None, "--no-cgroup given"
    else:
        detected, why_not = c.detected_control()
    with c.temp_dir("start-rate") as tmp:
        workers: dict[str, Worker] = {}
        limits: dict[str, Limits | None] = {}

        # Every method's files go into this one directory.  On ext4 a directory's new
        # inodes come from its own block group, and a group where thousands of inodes
        # were freed in the last minutes makes every creation scan past them (see
        # _common.file_create_us): with a directory each, one method could land in a
        # bad group and another in a good one.
        logs = tmp / "logs"
        logs.mkdir()

        def add_worker(name: str, rc: ResourceControl, lim: Limits | None, d: Path = logs) -> None:
            workers[name] = Worker(d, resource_control=rc)
            limits[name] = lim

        cgroup_note = ""
        shm = Path("/dev/shm")
        shm_tmp = None
        try:
            add_worker("worker", c.none_control(), None)
            if shm.is_dir() and os.access(shm, os.W_OK):
                # For reference: the same, with the logs on tmpfs, where creating a file
                # costs next to nothing whatever was deleted before.
                shm_tmp = Path(tempfile.mkdtemp(prefix="jobworker-bench-start-", dir=shm))
                add_worker("worker (logs on tmpfs)", c.none_control(), None, shm_tmp)
            if detected is None:
                cgroup_note = f"cgroup part skipped: {why_not}"
            else:
                add_worker(f"worker+cgroup ({detected.name})", detected, None)
                # A control of its own (detect() again) for the worker with limits.
                detected2, _ = c.detected_control()
                assert detected2 is not None
                lim, desc = usable_limits(detected2)
                if lim is None:
                    cgroup_note = f"no limits accepted: {desc}"
                    detected2.close()
                else:
                    add_worker(f"worker+cgroup+limits ({desc})", detected2, lim)
            if cgroup_note:
                print(cgroup_note)

            popen_dir = logs
            methods: dict[str, Callable[[], tuple[float, float]]] = {
                "popen": partial(run_popen, n),
                "popen+file": partial(run_popen_file, n, popen_dir),
            }
            for name, w in workers.items():
                methods[name] = partial(run_worker, w, n, limits[name])
            create_us = [c.file_create_us(workers["worker"].log_dir)]
            print(f"creating a file in the log directory: {create_us[0]:.0f} us")
            # Warm-up: one batch each, not measured.
            for fn in methods.values():
                fn()
            runs: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
            names = list(methods)
            for rnd in range(args.rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for m in order:
                    t_start, t_all = methods[m]()
                    runs[m].append((t_start, t_all))
                    print(
                        f"  round {rnd + 1}  {m:50} start {n / t_start:7.0f}/s  "
                        f"start+wait {n / t_all:7.0f}/s",
                        flush=True,
                    )
            create_us.append(c.file_create_us(workers["worker"].log_dir))
        finally:
            for w in workers.values():
                w.close()
            if shm_tmp is not None:
                shutil.rmtree(shm_tmp, ignore_errors=True)
        c.check_no_children("start_rate")

    med_start = {m: c.median([r[0] for r in v]) for m, v in runs.items()}
    med_all = {m: c.median([r[1] for r in v]) for m, v in runs.items()}
    rate_start = {m: n / t for m, t in med_start.items()}
    rate_all = {m: n / t for m, t in med_all.items()}

    def baseline_of(m: str) -> str | None:
        if m.startswith("popen"):
            return None if m == "popen" else "popen"
        return "popen" if m.startswith("worker") and "cgroup" not in m else "worker"

    print(
        f"\n{n} x {TRUE}: starts per second (median of {args.rounds}); creating a file "
        f"took {create_us[0]:.0f} us before the run, {create_us[1]:.0f} us after"
    )
    rows: list[list[object]] = []
    for m in runs:
        b = baseline_of(m)
        rows.append(
            [
                m,
                f"{rate_start[m]:.0f}",
                f"{rate_all[m]:.0f}",
                "-" if b is None else f"{rate_start[m] / rate_start[b]:.2f} vs {b}",
                "-" if b is None else f"{rate_all[m] / rate_all[b]:.2f} vs {b}",
            ]
        )
    c.print_table(["method", "start/s", "start+wait/s", "ratio start", "ratio start+wait"], rows)

    summary: list[c.Summary] = []
    for m in runs:
        b = baseline_of(m)
        if b is None or m in ("popen+file", "worker (logs on tmpfs)"):
            continue
        r = rate_all[m] / rate_all[b]
        target = TARGET_POPEN if b == "popen" else TARGET_CGROUP
        summary.append(
            c.Summary(
                benchmark="start_rate",
                metric=f"{n} x true, start+wait/s: {m}",
                worker=f"{rate_all[m]:.0f}/s",
                baseline=f"{rate_all[b]:.0f}/s ({b})",
                ratio=r,
                target=f">= {target}",
                met=r >= target,
                note=f"start loop only: {rate_start[m]:.0f}/s vs {rate_start[b]:.0f}/s"
                + (
                    f"; popen+file {rate_all['popen+file']:.0f}/s; a file create "
                    f"{create_us[0]:.0f} us"
                    + (
                        f"; worker with logs on tmpfs {rate_all['worker (logs on tmpfs)']:.0f}/s"
                        if "worker (logs on tmpfs)" in rate_all
                        else ""
                    )
                    if m == "worker"
                    else ""
                ),
            )
        )
    if cgroup_note:
        summary.append(
            c.Summary(
                benchmark="start_rate",
                metric="start+wait/s with a cgroup per job",
                worker="skipped",
                baseline="-",
                ratio=None,
                target=f">= {TARGET_CGROUP}",
                met=None,
                note=cgroup_note,
            )
        )
    results: dict[str, Any] = {
        "n": n,
        "rounds": args.rounds,
        "runs_s": {m: [list(r) for r in v] for m, v in runs.items()},
        "start_per_s": rate_start,
        "start_and_wait_per_s": rate_all,
        "limits": {m: str(v) for m, v in limits.items()},
        "cgroup_note": cgroup_note,
        "file_create_us_before_after": create_us,
        "true": str(Path(TRUE).resolve()),
    }
    c.write_results("start_rate", results, summary)


if __name__ == "__main__":
    main()
