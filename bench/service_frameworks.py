"""grpclib against grpc.aio, bare: the same bytes streamed from memory over mutual TLS on
loopback, no jobworker in the path.

- Throughput: 256 MiB in 64 KiB messages on one stream (MB/s, and server CPU per MiB).
- Followers: N streams each getting a small timestamped message every 100 ms; server CPU
  per message, server RSS, and latency (server's timestamp -> client's receipt).

Both servers run in a process of their own and are driven by the same client (grpcio's),
so the difference is the servers'.  This is what chose grpclib for the service: it is
the framework whose TLS is Python's ``ssl`` (TLS 1.3 only, client certificates checked),
which grpcio's Python API cannot restrict to TLS 1.3.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import _common as c
import _svc

from jobworker.v1 import jobworker_pb2 as pb

FRAMEWORKS = ["grpclib", "grpcio"]
INTERVAL_MS = 100


async def throughput(server: _svc.ServerProcess, certdir: Path, total: int) -> dict[str, float]:
    ch = _svc.channel(certdir, server.port)
    try:
        call = _svc.stream_call(ch, _svc.BARE_METHOD)
        cpu0 = server.cpu_ns()
        t0 = time.perf_counter()
        got = 0
        async for message in call(pb.StreamOutputRequest(job_id=f"bulk:{total}")):
            got += len(message.data)
        elapsed = time.perf_counter() - t0
        cpu = (server.cpu_ns() - cpu0) / 1e9
    finally:
        await ch.close()
    assert got == total
    return {"seconds": elapsed, "mb_s": total / elapsed / 1e6, "server_cpu_s": cpu}


async def follow_streams(
    server: _svc.ServerProcess,
    certdir: Path,
    method: str,
    requests: list[Any],
    seconds: float,
    warmup: float = 1.0,
) -> dict[str, Any]:
    """Follow one stream per request; measure the server between ``warmup`` and
    ``warmup + seconds`` after every stream got its first message."""
    import grpc

    per_channel = 50
    channels = [
        _svc.channel_with(certdir, server.port, [("grpc.use_local_subchannel_pool", 1)])
        for _ in range((len(requests) + per_channel - 1) // per_channel)
    ]
    lags: list[int] = []
    counted = 0
    window = [1 << 62, 1 << 62]
    started = 0
    all_started = asyncio.Event()

    async def one(i: int, request: Any) -> None:
        nonlocal counted, started
        call = _svc.stream_call(channels[i // per_channel], method)(request)
        first = True
        pending = b""
        try:
            async for message in call:
                now = time.monotonic_ns()
                if first:
                    first = False
                    started += 1
                    if started == len(requests):
                        all_started.set()
                pending += message.data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    written = int(line.split()[0])
                    if window[0] <= written and now < window[1]:
                        lags.append(now - written)
                        counted += 1
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise

    tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
    try:
        await asyncio.wait_for(all_started.wait(), 120)
        await asyncio.sleep(warmup)
        window[0] = time.monotonic_ns()
        cpu0, rss0 = server.cpu_ns(), server.rss()
        await asyncio.sleep(seconds)
        window[1] = time.monotonic_ns()
        cpu = (server.cpu_ns() - cpu0) / 1e9
        rss = server.rss()
        # Lines written in the window but still in flight: give them a moment.
        await asyncio.sleep(0.5)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()
    lags.sort()
    span = (window[1] - window[0]) / 1e9
    expected = len(requests) * span / (INTERVAL_MS / 1000)
    return {
        "streams": len(requests),
        "messages": counted,
        "expected_messages": round(expected),
        "server_cpu_s": cpu,
        "server_cores": cpu / span,
        "cpu_us_per_message": cpu / max(counted, 1) * 1e6,
        "server_rss": rss,
        "server_rss_at_start": rss0,
        "p50_ms": c.percentile(lags, 50) / 1e6,
        "p99_ms": c.percentile(lags, 99) / 1e6,
        "max_ms": (lags[-1] / 1e6) if lags else float("nan"),
    }


def ticks_requests(n: int, seconds: float) -> list[Any]:
    count = int((seconds + 30) * 1000 / INTERVAL_MS)
    return [pb.StreamOutputRequest(job_id=f"ticks:{count}:{INTERVAL_MS}") for _ in range(n)]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"throughput": {}, "followers": {}}
    with c.temp_dir("frameworks") as tmp:
        certdir = _svc.certs(tmp / "certs")
        for framework in FRAMEWORKS:
            with _svc.bare_server(framework, certdir) as server:
                runs = [await throughput(server, certdir, args.bytes) for _ in range(args.rounds)]
                best = max(runs, key=lambda r: r["mb_s"])
                results["throughput"][framework] = {"runs": runs, "best": best}
                print(
                    f"{framework}: {best['mb_s']:.0f} MB/s, server CPU {best['server_cpu_s']:.2f} s"
                )
                for n in args.followers:
                    r = await follow_streams(
                        server,
                        certdir,
                        _svc.BARE_METHOD,
                        ticks_requests(n, args.seconds),
                        args.seconds,
                    )
                    results["followers"][f"{framework}/{n}"] = r
                    print(
                        f"{framework} {n} followers: {r['cpu_us_per_message']:.0f} us CPU/message,"
                        f" p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms,"
                        f" RSS {c.fmt_bytes(r['server_rss'])},"
                        f" {r['messages']}/{r['expected_messages']}"
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

    rows = []
    tp = results["throughput"]
    rows.append(
        [
            "throughput MB/s",
            f"{tp['grpclib']['best']['mb_s']:.0f}",
            f"{tp['grpcio']['best']['mb_s']:.0f}",
        ]
    )
    for n in args.followers:
        a, b = results["followers"][f"grpclib/{n}"], results["followers"][f"grpcio/{n}"]
        rows.append(
            [
                f"{n} followers: us CPU/message",
                f"{a['cpu_us_per_message']:.0f}",
                f"{b['cpu_us_per_message']:.0f}",
            ]
        )
        rows.append(
            [
                f"{n} followers: p50 / p99 ms",
                f"{a['p50_ms']:.2f} / {a['p99_ms']:.2f}",
                f"{b['p50_ms']:.2f} / {b['p99_ms']:.2f}",
            ]
        )
        rows.append(
            [
                f"{n} followers: server RSS",
                c.fmt_bytes(a["server_rss"]),
                c.fmt_bytes(b["server_rss"]),
            ]
        )
    print()
    c.print_table(["bare server, same client", "grpclib", "grpc.aio"], rows)
    print(f"other CPU load: {results['other_cpu_load']:.2f} cores")
    summary = [
        c.Summary(
            "service_frameworks",
            "stream 256 MiB from memory, MB/s",
            f"grpclib {tp['grpclib']['best']['mb_s']:.0f}",
            f"grpc.aio {tp['grpcio']['best']['mb_s']:.0f}",
            tp["grpclib"]["best"]["mb_s"] / tp["grpcio"]["best"]["mb_s"],
            "-",
            None,
        )
    ]
    for n in args.followers:
        a, b = results["followers"][f"grpclib/{n}"], results["followers"][f"grpcio/{n}"]
        summary.append(
            c.Summary(
                "service_frameworks",
                f"{n} followers, server CPU per message",
                f"grpclib {a['cpu_us_per_message']:.0f} us (p99 {a['p99_ms']:.1f} ms)",
                f"grpc.aio {b['cpu_us_per_message']:.0f} us (p99 {b['p99_ms']:.1f} ms)",
                b["cpu_us_per_message"] / a["cpu_us_per_message"],
                "-",
                None,
            )
        )
    c.write_results("service_frameworks", results, summary)


if __name__ == "__main__":
    main()
