"""Scale: N concurrent ``sleep 1000`` jobs (N = 100, 1000, 5000), then stop them all.

For each N, the worker (no cgroups) reports its process's RSS growth (VmRSS after the
starts minus before), open fds, threads (``threading.active_count()`` and the kernel's
count), the time to start the N jobs, and the time to stop all of them at once with
``AsyncWorker.stop`` under ``asyncio.gather``: with the default grace (SIGTERM, which
``sleep`` dies of; the primary number) and, on a second batch, with ``grace=0``
(SIGKILL).  Baseline: a plain loop holding N ``Popen``'ed sleeps with pidfds in one
``select.epoll``, its RSS growth and the time to SIGTERM and reap all.  Issue 3: the
stop-all time for 500 jobs each in its own cgroup (the detected resource control).

Each measurement runs in a fresh Python process (this script with ``--child``), so that
memory one measurement freed cannot flatter the next one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import _common as c

from jobworker import AsyncWorker, Command, Worker

SIZES = (100, 1000, 5000)
CGROUP_N = 500
TARGET_RSS = 64 * c.MiB
TARGET_THREADS = 8
TARGET_STOP_S = 1.0
SLEEP = ["sleep", "1000"]


def probe() -> dict[str, int]:
    return {
        "rss": c.rss_bytes(),
        "fds": c.open_fds(),
        "threads_py": threading.active_count(),
        "threads_os": c.os_threads(),
    }


async def stop_all(
    aw: AsyncWorker, jobs: list[uuid.UUID], owner: uuid.UUID, grace: float | None
) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(aw.stop(j, owner, grace) for j in jobs))
    return time.perf_counter() - t0


def footprint(
    t_start: float, t_stop: float, before: dict[str, int], after: dict[str, int]
) -> dict[str, Any]:
    """What holding the jobs cost this process: times, and growth between two probes."""
    return {
        "start_s": t_start,
        "stop_s": t_stop,
        "rss_delta": after["rss"] - before["rss"],
        "fds": after["fds"],
        "fds_delta": after["fds"] - before["fds"],
        "threads_py": after["threads_py"],
        "threads_os": after["threads_os"],
    }


def child_worker(n: int, control: str) -> dict[str, Any]:
    if control == "none":
        rc = c.none_control()
    else:
        detected, why = c.detected_control()
        if detected is None:
            return {"skipped": why}
        rc = detected
    out: dict[str, Any] = {"control": rc.name}
    with c.temp_dir("scale") as tmp:
        w = Worker(tmp, resource_control=rc)
        aw = AsyncWorker(w)
        owner = uuid.uuid4()
        cmd = Command(SLEEP[0], SLEEP[1:])
        try:
            for grace_name, grace in (("term", None), ("kill", 0.0)):
                create_us = c.file_create_us(tmp)
                before = probe()
                t0 = time.perf_counter()
                jobs = [w.start(cmd, owner) for _ in range(n)]
                t_start = time.perf_counter() - t0
                time.sleep(0.2)  # let the reactor settle before sampling
                after = probe()
                t_stop = asyncio.run(stop_all(aw, jobs, owner, grace))
                statuses = {str(w.query(j, owner).status) for j in jobs}
                out[grace_name] = {
                    **footprint(t_start, t_stop, before, after),
                    "statuses": sorted(statuses),
                    "file_create_us": create_us,
                }
                # The logs stay until the end: deleting files can slow down the next
                # creations (see _common.file_create_us).
        finally:
            w.close()
    return out


def child_popen(n: int) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = probe()
    ep = select.epoll()
    procs: dict[int, subprocess.Popen[bytes]] = {}
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            p = subprocess.Popen(SLEEP)
            fd = os.pidfd_open(p.pid)
            ep.register(fd, select.EPOLLIN)
            procs[fd] = p
        t_start = time.perf_counter() - t0
        time.sleep(0.2)
        after = probe()
        t0 = time.perf_counter()
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        while procs:
            for fd, _ in ep.poll():
                ep.unregister(fd)
                procs.pop(fd).wait()
                os.close(fd)
        t_stop = time.perf_counter() - t0
    finally:
        c.reap_all(list(procs.values()))
        for fd in procs:
            os.close(fd)
        ep.close()
    return footprint(t_start, t_stop, before, after)


def run_child(*args: str) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", *args],
        stdout=subprocess.PIPE,
        check=True,
        timeout=600,
    )
    data: dict[str, Any] = json.loads(res.stdout.decode().strip().splitlines()[-1])
    if data.get("left_children"):
        print(f"WARNING: child {args} left processes behind: {data['left_children']}")
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--no-cgroup", action="store_true")
    args = ap.parse_args()
    if args.child:
        method, n = args.child[0], int(args.child[1])
        result = child_popen(n) if method == "popen" else child_worker(n, method)
        result["left_children"] = c.child_pids()
        print(json.dumps(result))
        return

    noise = c.Noise()
    results: dict[str, Any] = {"worker": {}, "popen": {}}
    for n in args.sizes:
        for method in ("popen", "worker") if n % 2 else ("worker", "popen"):
            if method == "worker":
                r = run_child("none", str(n))
                results["worker"][n] = r
                t = r["term"]
                print(
                    f"  N={n:5} worker  start {t['start_s']:.2f} s  "
                    f"stop(TERM) {t['stop_s']:.3f} s  stop(KILL) {r['kill']['stop_s']:.3f} s  "
                    f"RSS +{c.fmt_bytes(t['rss_delta'])}  (a file create: "
                    f"{t['file_create_us']:.0f} us)",
                    flush=True,
                )
            else:
                r = run_child("popen", str(n))
                results["popen"][n] = r
                print(
                    f"  N={n:5} popen   start {r['start_s']:.2f} s  "
                    f"stop(TERM) {r['stop_s']:.3f} s  RSS +{c.fmt_bytes(r['rss_delta'])}",
                    flush=True,
                )
    cg_note = ""
    if args.no_cgroup:
        cg_note = "--no-cgroup given"
    else:
        cg = run_child("detected", str(CGROUP_N))
        results["cgroup"] = cg
        if "skipped" in cg:
            cg_note = cg["skipped"]
            print(f"cgroup part skipped: {cg_note}")
        else:
            print(
                f"  N={CGROUP_N:5} worker+cgroup ({cg['control']})  "
                f"start {cg['term']['start_s']:.2f} s  stop(TERM) {cg['term']['stop_s']:.3f} s  "
                f"stop(KILL) {cg['kill']['stop_s']:.3f} s",
                flush=True,
            )
    results["other_cpu_cores"] = noise.foreign_cores()

    print(
        f"\nN concurrent `sleep 1000` jobs (other CPU load: {results['other_cpu_cores']:.2f} cores)"
    )
    rows: list[list[object]] = []
    for n in args.sizes:
        wr, pr = results["worker"][n], results["popen"][n]
        t, k = wr["term"], wr["kill"]
        rows.append(
            [
                n,
                c.fmt_bytes(t["rss_delta"]),
                c.fmt_bytes(pr["rss_delta"]),
                f"{t['fds']} (+{t['fds_delta']})",
                f"{t['threads_py']}/{t['threads_os']}",
                f"{t['start_s']:.2f} / {pr['start_s']:.2f}",
                f"{t['stop_s']:.3f}",
                f"{k['stop_s']:.3f}",
                f"{pr['stop_s']:.3f}",
            ]
        )
    c.print_table(
        [
            "N",
            "worker RSS+",
            "popen RSS+",
            "worker fds",
            "threads py/os",
            "start s worker/popen",
            "stop TERM s",
            "stop KILL s",
            "popen TERM+reap s",
        ],
        rows,
    )
    if "cgroup" in results and "skipped" not in results["cgroup"]:
        cg = results["cgroup"]
        print(
            f"\n{CGROUP_N} jobs each in its own cgroup ({cg['control']}): start "
            f"{cg['term']['start_s']:.2f} s, stop-all TERM {cg['term']['stop_s']:.3f} s, "
            f"KILL {cg['kill']['stop_s']:.3f} s"
        )

    summary: list[c.Summary] = []
    if 1000 in results["worker"]:
        t = results["worker"][1000]["term"]
        pr = results["popen"][1000]
        summary += [
            c.Summary(
                "scale",
                "N=1000 sleeps: worker RSS growth",
                c.fmt_bytes(t["rss_delta"]),
                f"{c.fmt_bytes(pr['rss_delta'])} (popen+pidfd)",
                None,
                "<= 64 MB",
                t["rss_delta"] <= TARGET_RSS,
            ),
            c.Summary(
                "scale",
                "N=1000 sleeps: threads (threading / kernel)",
                f"{t['threads_py']} / {t['threads_os']}",
                f"{pr['threads_py']} / {pr['threads_os']}",
                None,
                "<= 8",
                max(t["threads_py"], t["threads_os"]) <= TARGET_THREADS,
            ),
            c.Summary(
                "scale",
                "N=1000 sleeps: stop all (TERM, gather)",
                f"{t['stop_s']:.3f} s",
                f"{pr['stop_s']:.3f} s (popen TERM+reap)",
                pr["stop_s"] / t["stop_s"] if t["stop_s"] else None,
                "<= 1 s",
                t["stop_s"] <= TARGET_STOP_S,
                note=f"KILL (grace=0): {results['worker'][1000]['kill']['stop_s']:.3f} s",
            ),
        ]
    for n in args.sizes:
        if n == 1000:
            continue
        t = results["worker"][n]["term"]
        summary.append(
            c.Summary(
                "scale",
                f"N={n} sleeps: stop all (TERM) / RSS / threads",
                f"{t['stop_s']:.3f} s / {c.fmt_bytes(t['rss_delta'])} / {t['threads_os']}",
                f"{results['popen'][n]['stop_s']:.3f} s / "
                f"{c.fmt_bytes(results['popen'][n]['rss_delta'])} (popen)",
                None,
                "-",
                None,
            )
        )
    if "cgroup" in results and "skipped" not in results["cgroup"]:
        cg = results["cgroup"]
        summary.append(
            c.Summary(
                "scale",
                f"N={CGROUP_N} sleeps, a cgroup each ({cg['control']}): stop all (TERM)",
                f"{cg['term']['stop_s']:.3f} s",
                "-",
                None,
                "-",
                None,
                note=f"KILL: {cg['kill']['stop_s']:.3f} s; start {cg['term']['start_s']:.2f} s",
            )
        )
    else:
        summary.append(
            c.Summary(
                "scale", f"N={CGROUP_N}, a cgroup each", "skipped", "-", None, "-", None, cg_note
            )
        )
    c.write_results("scale", results, summary)


if __name__ == "__main__":
    main()
