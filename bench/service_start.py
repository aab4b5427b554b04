"""Starting jobs through the service over mutual TLS, 8 clients at once.

Each client (a grpcio channel of its own) starts jobs one after another; each job is the
C ticker writing one ``CLOCK_MONOTONIC`` line as soon as it runs.  Reported: jobs/s over
the whole run, and request -> the job's first instruction (the time in that line minus
the time the client sent the Start request), p50/p99.  For scale, the same number of
``Worker.start`` calls from 8 threads of one process, with no service in the path.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import _common as c
import _svc
import service_stream as ss

from jobworker import Command, Worker
from jobworker.v1 import jobworker_pb2 as pb


async def through_service(
    server: _svc.ServerProcess, certdir: Path, writer: Path, clients: int, jobs: int
) -> dict[str, Any]:
    channels = [
        _svc.channel_with(certdir, server.port, [("grpc.use_local_subchannel_pool", 1)])
        for _ in range(clients)
    ]
    sent: dict[str, int] = {}
    argv = c.ticks_argv(writer, 1, 0)
    try:
        for ch in channels:  # connect (and handshake) before the clock starts
            await ch.channel_ready()

        async def client(ch: Any, n: int) -> None:
            start = _svc.unary_call(ch, "Start", pb.StartRequest, pb.StartResponse)
            request = pb.StartRequest(command=pb.Command(name=argv[0], args=argv[1:]))
            for _ in range(n):
                t = time.monotonic_ns()
                reply = await start(request)
                sent[reply.job_id] = t

        t0 = time.perf_counter()
        per = [jobs // clients + (i < jobs % clients) for i in range(clients)]
        await asyncio.gather(*(client(ch, n) for ch, n in zip(channels, per, strict=True)))
        elapsed = time.perf_counter() - t0
        infos = await asyncio.gather(*(ss.wait_job(channels[0], j) for j in sent))
    finally:
        for ch in channels:
            await ch.close()
    lags = sorted(
        int(Path(info.log_path).read_bytes().split()[0]) - sent[info.id] for info in infos
    )
    return {
        "jobs": jobs,
        "seconds": elapsed,
        "jobs_per_s": jobs / elapsed,
        "p50_ms": c.percentile(lags, 50) / 1e6,
        "p99_ms": c.percentile(lags, 99) / 1e6,
    }


def in_process(writer: Path, logs: Path, threads: int, jobs: int) -> dict[str, Any]:
    """``Worker.start`` from ``threads`` threads (cgroups as detected, like the server)."""
    logs.mkdir()
    owner = uuid.uuid4()
    with Worker(logs) as w:
        command = Command(str(writer), c.ticks_argv(writer, 1, 0)[1:])
        started: list[uuid.UUID] = []

        def loop(n: int) -> None:
            for _ in range(n):
                started.append(w.start(command, owner))

        per = [jobs // threads + (i < jobs % threads) for i in range(threads)]
        pool = [threading.Thread(target=loop, args=(n,)) for n in per]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
        for j in started:
            w.wait(j, owner, 60)
    return {"jobs": jobs, "seconds": elapsed, "jobs_per_s": jobs / elapsed}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"service": [], "in_process": []}
    with c.temp_dir("service-start") as tmp:
        certdir = _svc.certs(tmp / "certs")
        writer = c.compile_writer(tmp)
        # The service runs the jobs of its TCP owners as users of their own.
        tmp.chmod(0o755)
        with _svc.service_server(certdir, tmp / "srv") as server:
            for r in range(args.rounds):
                s = await through_service(server, certdir, writer, args.clients, args.jobs)
                p = await asyncio.to_thread(
                    in_process, writer, tmp / f"logs{r}", args.clients, args.jobs
                )
                results["service"].append(s)
                results["in_process"].append(p)
                print(
                    f"service: {s['jobs_per_s']:.0f} jobs/s, request -> first instruction"
                    f" p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms;"
                    f" Worker.start from {args.clients} threads: {p['jobs_per_s']:.0f} jobs/s"
                )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    noise = c.Noise()
    results = asyncio.run(main_async(args))
    results["other_cpu_load"] = noise.foreign_cores()
    s = results["service"]
    rate = c.median([r["jobs_per_s"] for r in s])
    base = c.median([r["jobs_per_s"] for r in results["in_process"]])
    p50 = c.median([r["p50_ms"] for r in s])
    p99 = c.median([r["p99_ms"] for r in s])
    print()
    c.print_table(
        ["", "service (8 TLS clients)", "Worker.start (8 threads)"],
        [
            ["jobs/s", f"{rate:.0f}", f"{base:.0f}"],
            ["request -> first instruction", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", "-"],
        ],
    )
    print(f"other CPU load: {results['other_cpu_load']:.2f} cores")
    summary = [
        c.Summary(
            "service_start",
            f"start over TLS, {args.clients} clients",
            f"{rate:.0f} jobs/s, first instruction p50 {p50:.1f} ms p99 {p99:.1f} ms",
            f"{base:.0f} jobs/s Worker.start, {args.clients} threads",
            rate / base,
            "-",
            None,
        )
    ]
    c.write_results("service_start", results, summary)


if __name__ == "__main__":
    main()
