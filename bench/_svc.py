"""Shared parts of the service benchmarks: servers in processes of their own, one client.

Servers, each a child process listening on 127.0.0.1 over mutual TLS:

- ``bare grpclib`` and ``bare grpcio``: a ``/bench.Bare/Stream`` method that streams from
  memory (no jobworker in the path) what its request asks: ``bulk:<bytes>`` in 64 KiB
  messages, or ``ticks:<count>:<interval_ms>``: a timestamped line per interval.
- ``service``: ``jobworker serve`` itself (``jobworker.server.run``).

The client is grpcio's (its C core), for every server, so that client cost is the same
whatever server is measured; it calls the methods generically (no generated grpcio code).
Server CPU is read from ``/proc/<pid>/task/*/schedstat`` (nanoseconds, all threads).

Run as ``python bench/_svc.py bare grpclib|grpcio CERTDIR``: prints the port, serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobworker.server import make_certs
from jobworker.v1 import jobworker_pb2 as pb

BENCH_DIR = Path(__file__).resolve().parent
CHUNK = 1 << 16
BARE_METHOD = "/bench.Bare/Stream"
STREAM_METHOD = "/jobworker.v1.JobWorker/StreamOutput"


def certs(directory: Path) -> Path:
    make_certs(directory, users=["bench"])
    return directory


# ---------------------------------------------------------------------------------------
# The bare servers (run in their own process).


def _ticks_line(i: int) -> bytes:
    return b"%d %d\n" % (time.monotonic_ns(), i)


async def _bare_messages(spec: str) -> Any:
    """Yield the StreamOutputResponse messages ``spec`` asks for."""
    kind, *args = spec.split(":")
    if kind == "bulk":
        total = int(args[0])
        block = b"x" * CHUNK
        offset = 0
        while offset < total:
            data = block[: min(CHUNK, total - offset)]
            yield pb.StreamOutputResponse(offset=offset, data=data)
            offset += len(data)
    else:
        count, interval = int(args[0]), int(args[1]) / 1000
        loop = asyncio.get_running_loop()
        start = loop.time()
        offset = 0
        for i in range(count):
            await asyncio.sleep(max(0.0, start + (i + 1) * interval - loop.time()))
            data = _ticks_line(i)
            yield pb.StreamOutputResponse(offset=offset, data=data)
            offset += len(data)


def _server_tls(d: Path) -> tuple[bytes, bytes, bytes]:
    return (
        (d / "server.pem").read_bytes(),
        (d / "server.key").read_bytes(),
        (d / "ca.pem").read_bytes(),
    )


def _listener() -> Any:
    import socket

    # As the service's listener: IPPROTO_TCP, so that asyncio turns Nagle off.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


async def _serve_grpclib(d: Path) -> None:
    import grpclib.const
    from grpclib.server import Server, Stream

    from jobworker.server._auth import server_tls_context

    class Bare:
        async def stream(self, stream: Stream[Any, Any]) -> None:
            request = await stream.recv_message()
            assert request is not None
            async for message in _bare_messages(request.job_id):
                await stream.send_message(message)

        def __mapping__(self) -> dict[str, grpclib.const.Handler]:
            return {
                BARE_METHOD: grpclib.const.Handler(
                    self.stream,
                    grpclib.const.Cardinality.UNARY_STREAM,
                    pb.StreamOutputRequest,
                    pb.StreamOutputResponse,
                )
            }

    server = Server([Bare()])
    ctx = server_tls_context(d / "server.pem", d / "server.key", d / "ca.pem")
    sock = _listener()
    await server.start(sock=sock, ssl=ctx)
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()


async def _serve_grpcio(d: Path) -> None:
    import grpc

    async def stream(request: Any, context: Any) -> Any:
        async for message in _bare_messages(request.job_id):
            yield message

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare",
        {
            "Stream": grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=pb.StreamOutputRequest.FromString,
                response_serializer=pb.StreamOutputResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    cert, key, ca = _server_tls(d)
    creds = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


# ---------------------------------------------------------------------------------------
# Servers as child processes.


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_ns(self) -> int:
        """CPU time of all the server's threads, in nanoseconds."""
        total = 0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError),
                open(f"/proc/{self.pid}/task/{task}/schedstat") as f,
            ):
                total += int(f.read().split()[0])
        return total

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


@contextlib.contextmanager
def bare_server(framework: str, certdir: Path) -> Iterator[ServerProcess]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "_svc.py"), "bare", framework, str(certdir)],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield ServerProcess(proc, port)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


SERVE = """
import json, logging, sys
from jobworker.server import ServerConfig, run
logging.basicConfig(level=logging.WARNING)
class Ready(logging.Handler):
    def emit(self, record):
        msg = record.getMessage()
        if '"listening"' in msg:
            print(json.loads(msg)["addresses"][-1].rsplit(":", 1)[1], flush=True)
h = Ready(); h.setLevel(logging.INFO)
log = logging.getLogger("jobworker.server"); log.setLevel(logging.INFO); log.addHandler(h)
log.propagate = False
d = sys.argv[1]
run(ServerConfig(listen="127.0.0.1:0", tls_cert=d + "/server.pem", tls_key=d + "/server.key",
                 client_ca=d + "/ca.pem", socket=sys.argv[2] + "/run/s.sock",
                 state_dir=sys.argv[2] + "/state", max_running_jobs=100000))
"""


@contextlib.contextmanager
def service_server(certdir: Path, workdir: Path) -> Iterator[ServerProcess]:
    """``jobworker.server.run`` over mutual TLS on 127.0.0.1 (its per-RPC log lines off)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(certdir), str(workdir)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield ServerProcess(proc, port)
    finally:
        proc.terminate()
        proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()


# ---------------------------------------------------------------------------------------
# The client: grpcio.


def channel(certdir: Path, port: int) -> Any:
    return channel_with(certdir, port, [])


def channel_with(certdir: Path, port: int, options: list[tuple[str, Any]]) -> Any:
    """A grpcio channel over mutual TLS as user "bench" (``grpc.use_local_subchannel_pool``
    in ``options`` gives it a connection of its own)."""
    import grpc

    creds = grpc.ssl_channel_credentials(
        root_certificates=(certdir / "ca.pem").read_bytes(),
        private_key=(certdir / "bench.key").read_bytes(),
        certificate_chain=(certdir / "bench.pem").read_bytes(),
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        creds,
        options=[("grpc.ssl_target_name_override", "localhost"), *options],
    )


def stream_call(ch: Any, method: str) -> Any:
    return ch.unary_stream(
        method,
        request_serializer=pb.StreamOutputRequest.SerializeToString,
        response_deserializer=pb.StreamOutputResponse.FromString,
    )


def unary_call(ch: Any, method: str, request_type: Any, response_type: Any) -> Any:
    return ch.unary_unary(
        f"/jobworker.v1.JobWorker/{method}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )


# ---------------------------------------------------------------------------------------
# The library alone: what following costs before any gRPC.


async def _floor(n: int, seconds: float, writer: str, directory: str) -> None:
    """N ticking jobs, each followed by an ``AsyncWorker`` reader in this process, with
    cgroups as detected (as the service has them); prints {"cpu_s", "lines"} measured
    over ``seconds`` once every reader follows."""
    import json
    import uuid

    from jobworker import AsyncWorker, Command, Worker

    count = int((seconds + 30) * 10)
    lines = 0
    following = 0
    everyone = asyncio.Event()

    async def follow(aw: AsyncWorker, job: uuid.UUID, owner: uuid.UUID) -> None:
        nonlocal lines, following
        async with aw.stream(job, owner) as reader:
            first = True
            async for chunk in reader:
                if first:
                    first = False
                    following += 1
                    if following == n:
                        everyone.set()
                lines += chunk.count(b"\n")

    owner = uuid.uuid4()
    async with AsyncWorker(Worker(directory)) as aw:
        cmd = Command(writer, ["ticks", str(count), "100000"])
        jobs = [await asyncio.to_thread(aw.worker.start, cmd, owner) for _ in range(n)]
        readers = [asyncio.ensure_future(follow(aw, j, owner)) for j in jobs]
        await everyone.wait()
        await asyncio.sleep(1.0)
        t0, lines0 = os.times(), lines
        await asyncio.sleep(seconds)
        t1, lines1 = os.times(), lines
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    cpu = (t1.user + t1.system) - (t0.user + t0.system)
    print(json.dumps({"cpu_s": cpu, "lines": lines1 - lines0}), flush=True)


def library_floor(n: int, seconds: float, writer: Path, directory: Path) -> dict[str, float]:
    """``_floor`` in a process of its own."""
    import json

    directory.mkdir()
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH_DIR / "_svc.py"),
            "floor",
            str(n),
            str(seconds),
            str(writer),
            str(directory),
        ],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    result: dict[str, float] = json.loads(out.splitlines()[-1])
    result["cpu_us_per_line"] = result["cpu_s"] / max(result["lines"], 1) * 1e6
    return result


if __name__ == "__main__":
    if sys.argv[1] == "floor":
        _, _, n, seconds, writer, directory = sys.argv
        asyncio.run(_floor(int(n), float(seconds), writer, directory))
    else:
        _, mode, framework, directory = sys.argv
        serve = _serve_grpclib if framework == "grpclib" else _serve_grpcio
        asyncio.run(serve(Path(directory)))
