"""1,000 concurrent jobs, each followed live by its own reader, in one worker.

Each job is the C ticker writing a timestamped line every 100 ms (10,000 lines/s in all);
each job has one ``AsyncWorker.stream`` reader, all in one asyncio loop.  Reported:
threads, RSS growth and CPU of this process (worker + readers), follow latency under that
load (time the line was written -> time its reader got it), and, after stopping all jobs,
that every reader got exactly its log's bytes and then EOF.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from typing import Any

import _common as c

from jobworker import AsyncLogReader, AsyncWorker, Command, Worker

TARGET_THREADS = 8
TARGET_RSS = 64 * c.MiB
INTERVAL_US = 100_000


async def follow(reader: AsyncLogReader, lags: list[int], window: list[int]) -> bytes:
    """Read to EOF; record the lag of each line written and read within ``window``.

    Lines written before every reader was following (while the jobs were being started)
    are backlog, and lines read while all jobs are being stopped wait behind that work:
    neither is follow latency.
    """
    got = bytearray()
    pending = b""
    async with reader:
        async for chunk in reader:
            now = time.monotonic_ns()
            got += chunk
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                written = int(line.split()[0])
                if written > window[0] and now < window[1]:
                    lags.append(now - written)
    return bytes(got)


async def run(n: int, seconds: float) -> dict[str, Any]:
    with c.temp_dir("readers") as tmp:
        writer = c.compile_writer(tmp)
        logs = tmp / "logs"
        logs.mkdir()
        w = Worker(logs, resource_control=c.none_control())
        aw = AsyncWorker(w)
        owner = uuid.uuid4()
        count = int(seconds * 1e6 / INTERVAL_US) * 10  # more than we let them run
        cmd = Command(str(writer), ["ticks", str(count), str(INTERVAL_US)])
        try:
            rss0, cpu0 = c.rss_bytes(), os.times()
            jobs = [await aw.start(cmd, owner) for _ in range(n)]
            lags: list[int] = []
            window = [2**63, 2**63]
            tasks = [asyncio.create_task(follow(aw.stream(j, owner), lags, window)) for j in jobs]
            await asyncio.sleep(0.5)  # every reader has caught up with the backlog
            window[0] = time.monotonic_ns()
            await asyncio.sleep(seconds)  # the measured period: let them tick
            window[1] = time.monotonic_ns()
            threads_py, threads_os = threading.active_count(), c.os_threads()
            rss = c.rss_bytes() - rss0
            fds = c.open_fds()
            cpu1 = os.times()
            cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            t0 = time.perf_counter()
            await asyncio.gather(*(aw.stop(j, owner, 0) for j in jobs))
            stop_s = time.perf_counter() - t0
            outs = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            exact = 0
            for j, out in zip(jobs, outs, strict=True):
                exact += out == (await aw.query(j, owner)).log_path.read_bytes()
        finally:
            await aw.close()
    lags.sort()
    return {
        "jobs": n,
        "seconds": seconds,
        "lines": len(lags),
        "threads_py": threads_py,
        "threads_os": threads_os,
        "rss_delta": rss,
        "fds": fds,
        "cpu_s": cpu,
        "cpu_cores": cpu / seconds,
        "lag_p50_us": c.percentile(lags, 50) / 1e3,
        "lag_p99_us": c.percentile(lags, 99) / 1e3,
        "lag_max_us": lags[-1] / 1e3,
        "stop_all_s": stop_s,
        "readers_exact": exact,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    noise = c.Noise()
    r = asyncio.run(run(args.jobs, args.seconds))
    r["other_cpu_cores"] = noise.foreign_cores()
    c.check_no_children("readers")
    print(
        f"{r['jobs']} jobs, one reader each, {r['lines']} lines in {r['seconds']:.0f} s "
        f"(other CPU load {r['other_cpu_cores']:.2f} cores)"
    )
    c.print_table(
        ["threads py/os", "RSS+", "fds", "CPU (cores)", "lag p50/p99/max us", "stop all s"],
        [
            [
                f"{r['threads_py']}/{r['threads_os']}",
                c.fmt_bytes(r["rss_delta"]),
                r["fds"],
                f"{r['cpu_cores']:.2f}",
                f"{r['lag_p50_us']:.0f} / {r['lag_p99_us']:.0f} / {r['lag_max_us']:.0f}",
                f"{r['stop_all_s']:.3f}",
            ]
        ],
    )
    print(f"readers that got exactly their log: {r['readers_exact']} of {r['jobs']}")
    ok = r["threads_os"] <= TARGET_THREADS and r["rss_delta"] <= TARGET_RSS
    summary = [
        c.Summary(
            benchmark="readers",
            metric=f"{r['jobs']} jobs + a live reader each: threads / RSS growth",
            worker=f"{r['threads_os']} / {c.fmt_bytes(r['rss_delta'])}",
            baseline="-",
            ratio=None,
            target=f"<= {TARGET_THREADS} / <= {c.fmt_bytes(TARGET_RSS)}",
            met=ok and r["readers_exact"] == r["jobs"],
            note=(
                f"CPU {r['cpu_cores']:.2f} cores for {r['lines'] / r['seconds']:.0f} lines/s; "
                f"lag p99 {r['lag_p99_us']:.0f} us; exact readers "
                f"{r['readers_exact']}/{r['jobs']}"
            ),
        )
    ]
    c.write_results("readers", r, summary)


if __name__ == "__main__":
    main()
