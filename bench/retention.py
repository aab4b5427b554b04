"""Retention: 100,000 short jobs through one worker with retention on.

The worker (no cgroups) runs N short jobs (``echo`` of a 100-byte line), started from one
thread in waves of ``WAVE`` and waited for, with a retention tight enough to purge all
the time: logs go 2 s after their job ended or when they take more than 4 MiB, records
2 s after, purges every 0.5 s.  At 1%, 10% and 100% of N (1k, 10k, 100k by default) it
samples this process's RSS, open fds and threads, the jobs it still knows and the logs
on disk; its CPU time (all threads: the starting thread, the reactor, the purge's) and
the purge's own (``Purger.cpu_choosing`` on the reactor thread, ``cpu_removing`` on the
purge's thread, each the thread's CPU time around that work).

Baseline: the same jobs with ``Retention.keep_all()`` up to 10% of N, in a fresh process
of its own, to show what retention keeps from growing.  Each run is a fresh process.

Why removals leave the reactor thread: a job prints a timestamped line every 2 ms,
followed by a reader, while the logs of four ended jobs of 64 MiB each are removed (1)
by a purge (its own thread), (2) by ``unlink`` calls run on the reactor thread (what a
purge working there would do), (3) not at all; the line latencies (write to read) show
what each costs the jobs' output.

The floor of removing: in a directory where files are created and removed as under
retention (a window of 1,000), the CPU time of a bare ``unlink`` per file, and of the
log store's identity check (open, fstat, the inode's generation, close) plus ``unlink``.

Unlinking a file on ext4 without a journal makes creating files slower for minutes after
(see bench/README.md), and this benchmark removes a log for every job it starts: the
start rate it reports is that of a worker under steady retention, and it runs last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import _common as c

from jobworker import Command, Retention, Worker

N = 100_000
WAVE = 100
LINE = "x" * 99
RETENTION = Retention(
    max_age=2.0, max_total=4 << 20, max_log_size=1 << 20, forget_after=2.0, interval=0.5
)
TARGET_PURGE_SHARE = 0.01
TARGET_FLAT = 0.05  # RSS growth from a tenth of the jobs to all, of the RSS then


def sample(w: Worker, owner: uuid.UUID, t0: float, cpu0: float) -> dict[str, Any]:
    # After the removals under way, so that a log the purge's thread has open for its
    # identity check does not count as one of the worker's fds.
    w.purge()
    return {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": c.cpu_seconds() - cpu0,
        "rss": c.rss_bytes(),
        "fds": c.open_fds(),
        "threads": c.os_threads(),
        "jobs_known": len(w.list(owner)),
        "logs_on_disk": len(os.listdir(w.log_dir)),
        "purge_choosing_s": w.purger.cpu_choosing,
        "purge_removing_s": w.purger.cpu_removing,
    }


def child(n: int, mode: str) -> dict[str, Any]:
    retention = RETENTION if mode == "retention" else Retention.keep_all()
    marks = sorted({max(1, n // 100), max(1, n // 10), n})
    out: dict[str, Any] = {"mode": mode, "n": n, "samples": {}}
    with c.temp_dir("retention") as tmp:
        out["file_create_us_before"] = c.file_create_us(tmp)
        w = Worker(tmp, resource_control=c.none_control(), retention=retention)
        owner = uuid.uuid4()
        cmd = Command("echo", [LINE])
        try:
            t0 = time.perf_counter()
            cpu0 = c.cpu_seconds()
            done = 0
            for mark in marks:
                while done < mark:
                    wave = [w.start(cmd, owner) for _ in range(min(WAVE, mark - done))]
                    for job in wave:
                        w.wait(job, owner, timeout=60)
                    done += len(wave)
                out["samples"][mark] = sample(w, owner, t0, cpu0)
                s = out["samples"][mark]
                print(
                    f"  {mode:9} {mark:7} jobs  {s['wall_s']:6.1f} s  RSS {c.fmt_bytes(s['rss'])}"
                    f"  fds {s['fds']}  threads {s['threads']}  known {s['jobs_known']}"
                    f"  logs {s['logs_on_disk']}  CPU {s['cpu_s']:.1f} s, purge"
                    f" {s['purge_choosing_s'] + s['purge_removing_s']:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            w.close()
        out["threads_after_close"] = threading.active_count()
        out["file_create_us_after"] = c.file_create_us(tmp)
    return out


STALL_LOGS = 4
STALL_SIZE = 64 << 20
TICKS = 1000  # one every 2 ms


def stall(mode: str) -> dict[str, Any]:
    keep = Retention(max_age=86400.0, max_total=None, forget_after=None)
    with c.temp_dir("retention-stall") as tmp:
        writer = c.compile_writer(tmp)
        logs = tmp / "logs"
        logs.mkdir()
        w = Worker(logs, resource_control=c.none_control(), retention=keep)
        owner = uuid.uuid4()
        try:
            argv = c.bytes_argv(writer, STALL_SIZE, 1 << 16)
            big = [w.start(Command(argv[0], argv[1:]), owner) for _ in range(STALL_LOGS)]
            paths = [w.wait(j, owner, timeout=120).log_path for j in big]
            os.sync()  # on disk, as the logs of jobs ended long ago are
            argv = c.ticks_argv(writer, TICKS, 2000)
            ticker = w.start(Command(argv[0], argv[1:]), owner)
            latencies: list[int] = []

            def follow() -> None:
                partial = b""
                with w.stream(ticker, owner) as r:
                    while data := r.read(65536):
                        now = time.monotonic_ns()
                        *lines, partial = (partial + data).split(b"\n")
                        latencies.extend(now - int(line.split()[0]) for line in lines)

            reader = threading.Thread(target=follow)
            reader.start()
            time.sleep(0.5)
            t0 = time.perf_counter()
            if mode == "purge":
                w.purger.clock = lambda: time.time() + 2 * 86400.0
                removed = len(w.purge().removed)
            elif mode == "reactor":
                done = threading.Event()

                def unlink_all() -> None:
                    for path in paths:
                        os.unlink(path)
                    done.set()

                w._reactor.call_soon(unlink_all)
                done.wait()
                removed = len(paths)
            else:
                removed = 0
            removal_s = time.perf_counter() - t0
            reader.join()
        finally:
            w.close()
    latencies.sort()
    return {
        "mode": mode,
        "removed": removed,
        "removal_s": removal_s,
        "lines": len(latencies),
        "p50_us": c.percentile(latencies, 50) / 1000,
        "p99_us": c.percentile(latencies, 99) / 1000,
        "max_us": latencies[-1] / 1000,
    }


STALL_MODES = ("none", "purge", "reactor")
FLOOR_FILES = 20_000
FLOOR_WINDOW = 1000


def floor() -> dict[str, Any]:
    import fcntl
    import struct

    ioc = (2 << 30) | (struct.calcsize("l") << 16) | (ord("v") << 8) | 1
    out: dict[str, Any] = {}
    with c.temp_dir("retention-floor") as tmp:
        dfd = os.open(tmp, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for checked in (False, True):
                names: list[str] = []
                cpu = 0.0
                for i in range(FLOOR_FILES):
                    name = f"echo_{i}_{checked:d}.log"
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
                    os.write(fd, LINE.encode() + b"\n")
                    os.close(fd)
                    names.append(name)
                    if len(names) <= FLOOR_WINDOW:
                        continue
                    old = names.pop(0)
                    t0 = time.thread_time()
                    if checked:
                        fd = os.open(old, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                        os.fstat(fd)
                        fcntl.ioctl(fd, ioc, bytes(struct.calcsize("l")))
                        os.unlink(old, dir_fd=dfd)
                        os.close(fd)
                    else:
                        os.unlink(old, dir_fd=dfd)
                    cpu += time.thread_time() - t0
                for name in names:
                    os.unlink(name, dir_fd=dfd)
                key = "checked_unlink_us" if checked else "unlink_us"
                out[key] = cpu / (FLOOR_FILES - FLOOR_WINDOW) * 1e6
        finally:
            os.close(dfd)
    return out


def run_stall(mode: str) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", mode, "0"],
        stdout=subprocess.PIPE,
        check=True,
        timeout=600,
    )
    data: dict[str, Any] = json.loads(res.stdout.decode().strip().splitlines()[-1])
    if mode in STALL_MODES:
        print(
            f"  removed by {mode:8}: {data['removal_s']:.3f} s; line latency p99"
            f" {data['p99_us']:.0f} us, max {data['max_us']:.0f} us",
            file=sys.stderr,
            flush=True,
        )
    return data


def last_logs(results: dict[str, Any]) -> int:
    """Logs still on disk at the end of the retention run (not removed)."""
    samples = results["retention"]["samples"]
    return int(samples[max(samples)]["logs_on_disk"])


def run_child(n: int, mode: str) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", mode, str(n)],
        stdout=subprocess.PIPE,
        check=True,
        timeout=7200,
    )
    data: dict[str, Any] = json.loads(res.stdout.decode().strip().splitlines()[-1])
    data["samples"] = {int(k): v for k, v in data["samples"].items()}
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--jobs", type=int, default=N, help=f"jobs to run (default {N:,})")
    args = ap.parse_args()
    if args.child:
        mode = args.child[0]
        if mode == "floor":
            result = floor()
        elif mode in STALL_MODES:
            result = stall(mode)
        else:
            result = child(int(args.child[1]), mode)
        result["left_children"] = c.child_pids()
        print(json.dumps(result))
        return

    n = args.jobs
    noise = c.Noise()
    results: dict[str, Any] = {
        "retention": run_child(n, "retention"),
        "keep_all": run_child(max(1, n // 10), "keep_all"),
        "policy": repr(RETENTION),
    }
    results["stall"] = {m: run_stall(m) for m in STALL_MODES}
    results["floor"] = run_stall("floor")
    results["other_cpu_cores"] = noise.foreign_cores()
    on, off = results["retention"]["samples"], results["keep_all"]["samples"]
    marks = sorted(on)
    print(
        f"\n{n:,} `echo` jobs, retention {RETENTION}"
        f" (other CPU load: {results['other_cpu_cores']:.2f} cores)"
    )
    rows: list[list[object]] = []
    for mark in marks:
        s = on[mark]
        purge = s["purge_choosing_s"] + s["purge_removing_s"]
        base = off.get(mark)
        rows.append(
            [
                f"{mark:,}",
                c.fmt_bytes(s["rss"]),
                "-" if base is None else c.fmt_bytes(base["rss"]),
                s["fds"],
                "-" if base is None else base["fds"],
                s["threads"],
                s["jobs_known"],
                s["logs_on_disk"],
                f"{mark / s['wall_s']:.0f}/s",
                f"{s['cpu_s']:.2f}",
                f"{purge:.3f} ({s['purge_choosing_s']:.3f} + {s['purge_removing_s']:.3f})",
                f"{purge / s['cpu_s']:.2%}" if s["cpu_s"] else "-",
            ]
        )
    c.print_table(
        [
            "jobs",
            "RSS",
            "RSS kept all",
            "fds",
            "fds kept all",
            "threads",
            "known",
            "logs",
            "rate",
            "CPU s",
            "purge CPU s (choose + remove)",
            "purge share",
        ],
        rows,
    )
    r = results["retention"]
    print(
        f"a file creation: {r['file_create_us_before']:.0f} us before, "
        f"{r['file_create_us_after']:.0f} us after"
    )
    fl = results["floor"]
    removed = max(1, n - last_logs(results))
    per_log = on[marks[-1]]["purge_removing_s"] / removed * 1e6
    print(
        f"removing, per log: {per_log:.1f} us of CPU by the purge's thread; in a loop of"
        f" creations and removals, {fl['unlink_us']:.1f} us a bare unlink,"
        f" {fl['checked_unlink_us']:.1f} us with the identity check"
    )
    print(
        f"\nA job's line every 2 ms, followed, while {STALL_LOGS} logs of"
        f" {c.fmt_bytes(STALL_SIZE)} are removed:"
    )
    c.print_table(
        ["removed by", "removal s", "lines", "p50 us", "p99 us", "max us"],
        [
            [
                m,
                f"{x['removal_s']:.3f}",
                x["lines"],
                f"{x['p50_us']:.0f}",
                f"{x['p99_us']:.0f}",
                f"{x['max_us']:.0f}",
            ]
            for m, x in results["stall"].items()
        ],
    )

    first, last = on[marks[0]], on[marks[-1]]
    tenth = on[marks[-2]] if len(marks) > 1 else first
    purge = last["purge_choosing_s"] + last["purge_removing_s"]
    share = purge / last["cpu_s"]
    choose_share = last["purge_choosing_s"] / last["cpu_s"]
    # Flat: from a tenth of the jobs to all of them (the first tenth fills the steady
    # state: the jobs and logs retention keeps, the allocator's high-water mark).
    rss_growth = last["rss"] - tenth["rss"]
    base_marks = sorted(off)
    base_growth = off[base_marks[-1]]["rss"] - off[base_marks[0]]["rss"]
    curve = " / ".join(f"{c.fmt_bytes(on[m]['rss'])}, {on[m]['fds']} fds at {m:,}" for m in marks)
    summary = [
        c.Summary(
            "retention",
            f"{n:,} short jobs: worker RSS growth from {marks[-2]:,} to {n:,} jobs",
            c.fmt_bytes(rss_growth),
            f"{c.fmt_bytes(base_growth)} over {base_marks[0]:,}-{base_marks[-1]:,} jobs (keep_all)",
            None,
            "flat",
            rss_growth <= tenth["rss"] * TARGET_FLAT,
            note=curve,
        ),
        c.Summary(
            "retention",
            f"{n:,} short jobs: fds {first['fds']} -> {last['fds']}",
            str(last["fds"]),
            str(off[base_marks[-1]]["fds"]) + " (keep_all)",
            None,
            "flat",
            last["fds"] <= first["fds"],
        ),
        c.Summary(
            "retention",
            f"{n:,} short jobs: purge CPU / worker CPU",
            f"{share:.2%} ({purge:.2f} s of {last['cpu_s']:.1f} s)",
            "-",
            None,
            "< 1%",
            share < TARGET_PURGE_SHARE,
            note=f"choosing alone {choose_share:.2%}; removing the rest:"
            f" {per_log:.1f} us a log (a bare unlink {fl['unlink_us']:.1f} us, with the"
            f" identity check {fl['checked_unlink_us']:.1f} us);"
            f" worker {last['cpu_s'] / n * 1e6:.0f} us a job; {n / last['wall_s']:.0f} jobs/s",
        ),
    ]
    st = results["stall"]
    summary.append(
        c.Summary(
            "retention",
            f"follow latency max while {STALL_LOGS} x {c.fmt_bytes(STALL_SIZE)} logs are purged",
            f"{st['purge']['max_us']:.0f} us (p99 {st['purge']['p99_us']:.0f} us)",
            f"{st['reactor']['max_us']:.0f} us unlinked on the reactor thread;"
            f" {st['none']['max_us']:.0f} us with no removal",
            None,
            "-",
            None,
            note=f"removal took {st['purge']['removal_s']:.3f} s",
        )
    )
    c.write_results("retention", results, summary)


if __name__ == "__main__":
    main()
