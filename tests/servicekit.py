"""Helpers of the service tests: certificates, a real server in a thread or a process.

A server in a thread runs ``serve`` on its own event loop, so a test's client (on the
test's loop, through real sockets and real TLS) and the server never share a loop, and the
server's tasks can be counted apart from the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from grpclib.client import Channel

from jobworker.client import Client, TLSFiles, client_tls_context, close_channel
from jobworker.server import ServerConfig, make_certs, serve
from jobworker.server._certs import issue, new_ca, write_pair

T = TypeVar("T")


@dataclass(frozen=True)
class Pki:
    """``make_certs`` output (users alice and bob, admin) plus certificates the server must
    refuse: from another CA, expired, and with only serverAuth usage."""

    dir: Path

    def tls(self, user: str) -> TLSFiles:
        return TLSFiles(
            ca=self.dir / "ca.pem", cert=self.dir / f"{user}.pem", key=self.dir / f"{user}.key"
        )

    def server_files(self) -> dict[str, Path]:
        return {
            "tls_cert": self.dir / "server.pem",
            "tls_key": self.dir / "server.key",
            "client_ca": self.dir / "ca.pem",
        }


def make_pki(directory: Path) -> Pki:
    make_certs(directory, users=["alice", "bob"], admins=["admin"])
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    ca = (ca_cert, ca_key)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    write_pair(
        directory,
        "expired",
        *issue(ca, "alice", not_before=past, not_after=past + datetime.timedelta(days=1)),
    )
    write_pair(directory, "serveronly", *issue(ca, "alice", usages=("serverAuth",)))
    write_pair(directory, "stranger", *issue(new_ca("another CA"), "alice"))
    return Pki(directory)


class ServerThread:
    """``serve(config)`` on an event loop of its own thread, for the span of a ``with``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.addresses: list[str] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="test-server")

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.config, self._stop, on_ready=self._on_ready)

        try:
            asyncio.run(main())
        except BaseException as e:
            self._error = e
        finally:
            self._ready.set()

    def _on_ready(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self._ready.set()

    @property
    def unix(self) -> str:
        return next(a for a in self.addresses if a.startswith("unix:"))

    @property
    def tcp(self) -> str:
        return next(a for a in self.addresses if not a.startswith("unix:"))

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop; return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks()) - 1  # not this one

        return self.call(count())

    def begin_stop(self) -> None:
        """Start the server's shutdown (as SIGTERM would), without waiting for it."""
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the server did not shut down"
        if self._error is not None and exc == (None, None, None):
            raise self._error


def server_config(tmp: Path, pki: Pki | None = None, **kwargs: Any) -> ServerConfig:
    """A config in ``tmp``: socket, state and logs there; TCP on an ephemeral loopback
    port when ``pki`` is given."""
    run = tmp / "run"
    tls: dict[str, Any] = {}
    if pki is not None:
        tls = {"listen": "127.0.0.1:0", **pki.server_files()}
    if pki is not None and os.geteuid() != 0:
        kwargs.setdefault("allow_shared_user", True)  # no other users to give owners
    return ServerConfig(socket=run / "jobworker.sock", state_dir=tmp / "state", **tls, **kwargs)


def client(server: ServerThread, pki: Pki | None = None, user: str | None = None) -> Client:
    if user is None:
        return Client(server.unix)
    assert pki is not None
    return Client(server.tcp, tls=pki.tls(user))


@contextlib.asynccontextmanager
async def raw_channel(address: str, tls: TLSFiles | None = None) -> AsyncIterator[Channel]:
    """A bare grpclib channel to ``address`` (for requests the client would not send),
    closed and its socket gone at the end."""
    if address.startswith("unix:"):
        channel = Channel(path=address[len("unix:") :])
    else:
        host, _, port = address.rpartition(":")
        ssl = client_tls_context(tls) if tls is not None else None
        channel = Channel(host, int(port), ssl=ssl)
    try:
        yield channel
    finally:
        await close_channel(channel)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``: for effects that are asynchronous
    by nature (a task finishing after a reset), never for speed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ---------------------------------------------------------------------------------------
# A server in a process of its own, for signals.


SERVE_SCRIPT = """
import sys
from jobworker.server import load_config, run
sys.exit(run(load_config(sys.argv[1])))
"""


@contextlib.contextmanager
def server_process(config_toml: Path) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """``run(load_config(config_toml))`` in a child process; yields it and the addresses
    it listens on, once it does."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, str(config_toml)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    addresses: list[str] = []
    lines: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            ready, _, _ = select.select(
                [proc.stderr], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                raise AssertionError(f"server not listening: {b''.join(lines)!r}")
            line = proc.stderr.readline()
            if not line:
                raise AssertionError(f"server exited: {b''.join(lines)!r}")
            lines.append(line)
            if b'"event": "listening"' in line:
                addresses = json.loads(line)["addresses"]
                break
        yield proc, addresses
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        proc.stderr.close()


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        # A zombie is dead for our purpose.
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
    return alive


# ---------------------------------------------------------------------------------------
# A network that fails.


class CuttingProxy:
    """A TCP relay to the server that cuts every connection after ``cut_after`` bytes from
    the server, as a network failure would (TLS passes through untouched)."""

    def __init__(self, target: str, cut_after: int) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.cut_after = cut_after
        self.cuts = 0
        self.server: asyncio.Server | None = None
        self.relays: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        if self.relays:
            await asyncio.wait(self.relays)

    def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(cr, cw))
        self.relays.add(task)
        task.add_done_callback(self.relays.discard)

    async def _relay(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(*self.target)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, limit: int) -> None:
            sent = 0
            with contextlib.suppress(OSError):
                while sent < limit and (data := await r.read(min(4096, limit - sent))):
                    w.write(data)
                    await w.drain()
                    sent += len(data)

        up = asyncio.ensure_future(pipe(cr, sw, 1 << 62))
        down = asyncio.ensure_future(pipe(sr, cw, self.cut_after))
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        if down.done():
            self.cuts += 1
        for t in (up, down):
            t.cancel()
        for w in (cw, sw):
            w.transport.abort()
        await asyncio.wait([up, down])
        await asyncio.sleep(0)  # the aborted transports close their sockets


class ProxyThread:
    """A ``CuttingProxy`` on an event loop of its own thread, for clients in other
    processes (the CLI); ``address`` once entered."""

    def __init__(self, target: str, cut_after: int) -> None:
        self.proxy = CuttingProxy(target, cut_after)
        self.address = ""
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="proxy")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.proxy as address:
            self.address = address
            self._started.set()
            await self._stop.wait()

    @property
    def cuts(self) -> int:
        return self.proxy.cuts

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        assert self._started.wait(30), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()


# ---------------------------------------------------------------------------------------
# The service as a user starts it: `jobworker serve`.


class ServeProcess:
    """``jobworker serve ARGS`` in a child process, its stderr (one JSON line per RPC) in
    a file, so that it never blocks on a full pipe."""

    def __init__(self, jobworker: str, args: list[str], log: Path) -> None:
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 -- open for the server's life
        self.proc = subprocess.Popen(
            [jobworker, "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )
        self.addresses: list[str] = []

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log.read_bytes().splitlines():
                if b'"event": "listening"' in line:
                    self.addresses = json.loads(line)["addresses"]
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"serve not listening: {self.output()}")
            time.sleep(0.02)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def unix(self) -> str:
        return next(a for a in self.addresses if a.startswith("unix:"))

    @property
    def tcp(self) -> str:
        return next(a for a in self.addresses if not a.startswith("unix:"))

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as an init system stops it; its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._log_file.close()


@contextlib.contextmanager
def serve_process(jobworker: str, args: list[str], log: Path) -> Iterator[ServeProcess]:
    """``jobworker serve ARGS`` for the span of a ``with``, listening; it must stop on
    SIGTERM with exit 0 at the end."""
    server = ServeProcess(jobworker, args, log)
    try:
        server.wait_listening()
        yield server
        assert server.terminate() == 0, server.output()
    finally:
        server.kill()
