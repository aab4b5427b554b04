"""The service streaming jobs' output over mutual TLS, against a bare grpclib server
streaming the same bytes from memory, in the same run (see service_frameworks.py).

- Throughput: a job's 256 MiB log (written before, so in the page cache) streamed from
  byte 0 by ``StreamOutput``, against the bare server's 256 MiB from memory.  Target: at
  least 0.8x.
- Follow latency: N jobs each writing a timestamped line every 100 ms (the C ticker), each
  followed by one ``StreamOutput`` stream: line written -> line received, p50/p99; the
  server's RSS, CPU, and CPU per streamed message against the bare server's with N
  streams of the same lines (target: at most 1.5x).

The client is grpcio's for both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import _common as c
import _svc
import service_frameworks as fw

from jobworker.v1 import jobworker_pb2 as pb

TARGET_THROUGHPUT = 0.8
TARGET_CPU = 1.5


async def start_job(ch: Any, argv: list[str]) -> str:
    start = _svc.unary_call(ch, "Start", pb.StartRequest, pb.StartResponse)
    reply = await start(pb.StartRequest(command=pb.Command(name=argv[0], args=argv[1:])))
    return str(reply.job_id)


async def wait_job(ch: Any, job: str) -> Any:
    wait = _svc.unary_call(ch, "Wait", pb.WaitRequest, pb.WaitResponse)
    return (await wait(pb.WaitRequest(job_id=job))).info


async def stop_job(ch: Any, job: str) -> None:
    stop = _svc.unary_call(ch, "Stop", pb.StopRequest, pb.StopResponse)
    await stop(pb.StopRequest(job_id=job, grace_seconds=0))


async def service_throughput(
    server: _svc.ServerProcess, certdir: Path, job: str, total: int
) -> dict[str, float]:
    ch = _svc.channel(certdir, server.port)
    try:
        call = _svc.stream_call(ch, _svc.STREAM_METHOD)
        cpu0 = server.cpu_ns()
        t0 = time.perf_counter()
        got = 0
        async for message in call(pb.StreamOutputRequest(job_id=job)):
            got += len(message.data)
        elapsed = time.perf_counter() - t0
        cpu = (server.cpu_ns() - cpu0) / 1e9
    finally:
        await ch.close()
    assert got == total, (got, total)
    return {"seconds": elapsed, "mb_s": total / elapsed / 1e6, "server_cpu_s": cpu}


async def service_followers(
    server: _svc.ServerProcess, certdir: Path, writer: Path, n: int, seconds: float
) -> dict[str, Any]:
    count = int((seconds + 30) * 1000 / fw.INTERVAL_MS)
    ch = _svc.channel(certdir, server.port)
    try:
        jobs = await asyncio.gather(
            *(start_job(ch, c.ticks_argv(writer, count, fw.INTERVAL_MS * 1000)) for _ in range(n))
        )
        requests = [pb.StreamOutputRequest(job_id=j) for j in jobs]
        result = await fw.follow_streams(server, certdir, _svc.STREAM_METHOD, requests, seconds)
        await asyncio.gather(*(stop_job(ch, j) for j in jobs))
    finally:
        await ch.close()
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"throughput": [], "followers": {}}
    with c.temp_dir("service-stream") as tmp:
        certdir = _svc.certs(tmp / "certs")
        writer = c.compile_writer(tmp)
        # The service runs the jobs of its TCP owners as users of their own.
        tmp.chmod(0o755)
        with (
            _svc.bare_server("grpclib", certdir) as bare,
            _svc.service_server(certdir, tmp / "srv") as service,
        ):
            ch = _svc.channel(certdir, service.port)
            try:
                job = await start_job(
                    ch, c.bytes_argv(writer, args.bytes, 65536, nfds=1, newlines=False)
                )
                await wait_job(ch, job)
            finally:
                await ch.close()
            for _ in range(args.rounds):
                b = await fw.throughput(bare, certdir, args.bytes)
                s = await service_throughput(service, certdir, job, args.bytes)
                results["throughput"].append({"bare": b, "service": s})
                print(
                    f"throughput: service {s['mb_s']:.0f} MB/s, bare grpclib {b['mb_s']:.0f} MB/s"
                )
            for n in args.followers:
                b = await fw.follow_streams(
                    bare,
                    certdir,
                    _svc.BARE_METHOD,
                    fw.ticks_requests(n, args.seconds),
                    args.seconds,
                )
                s = await service_followers(service, certdir, writer, n, args.seconds)
                f = await asyncio.to_thread(
                    _svc.library_floor, n, args.seconds, writer, tmp / f"floor{n}"
                )
                results["followers"][n] = {"bare": b, "service": s, "library": f}
                print(
                    f"{n} followers: service {s['cpu_us_per_message']:.0f} us/message"
                    f" (bare {b['cpu_us_per_message']:.0f}), p50 {s['p50_ms']:.2f} ms"
                    f" p99 {s['p99_ms']:.2f} ms (bare {b['p99_ms']:.2f}),"
                    f" RSS {c.fmt_bytes(s['server_rss'])}, {s['server_cores']:.2f} cores,"
                    f" {s['messages']}/{s['expected_messages']};"
                    f" library alone {f['cpu_us_per_line']:.0f} us/line"
                )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bytes", type=int, default=256 * c.MiB)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--followers", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    noise = c.Noise()
    results = asyncio.run(main_async(args))
    results["other_cpu_load"] = noise.foreign_cores()

    tp = results["throughput"]
    service_mb = c.median([r["service"]["mb_s"] for r in tp])
    bare_mb = c.median([r["bare"]["mb_s"] for r in tp])
    ratio = c.median([r["service"]["mb_s"] / r["bare"]["mb_s"] for r in tp])
    rows = [["stream 256 MiB, MB/s", f"{service_mb:.0f}", f"{bare_mb:.0f}", f"{ratio:.2f}"]]
    summary = [
        c.Summary(
            "service_stream",
            "stream a 256 MiB log over TLS, MB/s",
            f"{service_mb:.0f}",
            f"{bare_mb:.0f} bare grpclib from memory",
            ratio,
            f">= {TARGET_THROUGHPUT}",
            ratio >= TARGET_THROUGHPUT,
        )
    ]
    for n, r in results["followers"].items():
        s, b, f = r["service"], r["bare"], r["library"]
        cpu_ratio = s["cpu_us_per_message"] / b["cpu_us_per_message"]
        rows.append(
            [
                f"{n} followers: CPU/message",
                f"{s['cpu_us_per_message']:.0f} us",
                f"{b['cpu_us_per_message']:.0f} us",
                f"{cpu_ratio:.2f}",
            ]
        )
        rows.append(
            [
                f"{n} followers: library alone, CPU/line",
                f"{f['cpu_us_per_line']:.0f} us",
                "-",
                "-",
            ]
        )
        rows.append(
            [
                f"{n} followers: p50 / p99",
                f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f} ms",
                f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f} ms",
                "-",
            ]
        )
        rows.append(
            [
                f"{n} followers: RSS, cores",
                f"{c.fmt_bytes(s['server_rss'])}, {s['server_cores']:.2f}",
                f"{c.fmt_bytes(b['server_rss'])}, {b['server_cores']:.2f}",
                "-",
            ]
        )
        summary.append(
            c.Summary(
                "service_stream",
                f"{n} followers: server CPU per streamed line",
                f"{s['cpu_us_per_message']:.0f} us, p50 {s['p50_ms']:.1f} ms,"
                f" p99 {s['p99_ms']:.1f} ms, RSS {c.fmt_bytes(s['server_rss'])}",
                f"{b['cpu_us_per_message']:.0f} us bare grpclib (p99 {b['p99_ms']:.1f} ms);"
                f" library alone {f['cpu_us_per_line']:.0f} us",
                b["cpu_us_per_message"] / s["cpu_us_per_message"],
                f"service <= {TARGET_CPU}x bare",
                cpu_ratio <= TARGET_CPU,
            )
        )
    print()
    c.print_table(["", "service", "bare grpclib", "service/bare"], rows)
    print(f"other CPU load: {results['other_cpu_load']:.2f} cores")
    c.write_results("service_stream", results, summary)


if __name__ == "__main__":
    main()
