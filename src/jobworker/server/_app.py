"""The server's life: start listening, serve, and shut down on request.

Shutdown (SIGTERM or SIGINT under ``run``): the health status turns NOT_SERVING, the
local socket is removed, new calls get UNAVAILABLE, every running job is stopped (SIGTERM,
SIGKILL after the grace), the streams end once their job has and every byte is sent, then
the listeners close and the worker closes, which kills anything that started meanwhile.
No job outlives the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import stat
from collections.abc import Callable
from pathlib import Path

from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from jobworker import AsyncWorker, Worker

from ._auth import Identify, server_tls_context
from ._config import ConfigError, ServerConfig, parse_address
from ._jobs import Jobs
from ._paths import private_dir
from ._runas import Accounts
from ._service import JobWorkerService
from ._store import Store

__all__ = ["MINIMAL_ENV", "run", "serve"]

log = logging.getLogger("jobworker.server")

# What a job's environment starts from (never the server's own, which may hold secrets);
# HOME is added per job, then the request's variables.
MINIMAL_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
# After the jobs are stopped, how long streams get to deliver their last bytes.
DRAIN = 5.0


def _private(path: Path, what: str) -> Path:
    try:
        return private_dir(path)
    except OSError as e:
        raise ConfigError(f"{what} {path}: {e.strerror or e}") from None


def _unix_listener(path: Path) -> socket.socket:
    """A listening socket at ``path`` (mode 0600, in a 0700 directory); a stale socket
    left by a dead server is replaced, a live one is not."""
    _private(path.parent, "socket directory")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"socket {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            os.unlink(path)
        else:
            raise ConfigError(f"another server is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {path}: {e.strerror}") from None
    return sock


def _tcp_listener(address: str) -> socket.socket:
    host, port = parse_address(address)
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(f"cannot listen on {address}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # asyncio turns Nagle off only for sockets that say IPPROTO_TCP (hence the proto
        # above, which accepted sockets inherit); with it on, a reply's small frames wait
        # for the client's delayed ACK: 40 ms a call.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {address}: {e.strerror or e}") from None
    return sock


def _tls(config: ServerConfig) -> ssl.SSLContext:
    assert config.tls_cert and config.tls_key and config.client_ca
    try:
        return server_tls_context(config.tls_cert, config.tls_key, config.client_ca)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the TLS certificates: {e.strerror or e}") from None


def _index_forget_after(config: ServerConfig) -> float | None:
    # The worker forgets a job at the first purge from forget_after on: within one
    # interval of its timer.
    retention = config.retention
    if retention.forget_after is None:
        return None
    return retention.forget_after + retention.interval


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


async def serve(
    config: ServerConfig,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[list[str]], None] | None = None,
) -> None:
    """Serve ``config`` until ``stop`` is set, then shut down (see the module's doc).

    ``on_ready`` gets the addresses listened on (``unix:/path``, ``host:port``) once
    calls are accepted.  Raises ``ConfigError`` if the server cannot start as configured.
    """
    config.check()
    state_dir = _private(config.state_path, "state directory")
    log_dir = _private(config.log_path, "log directory")
    tls = _tls(config) if config.listen is not None else None
    store = await asyncio.to_thread(Store, state_dir / "jobworker.db")
    accounts = Accounts(config, store)
    listeners: list[socket.socket] = []
    servers: list[Server] = []
    socket_path = config.socket_path
    try:
        accounts.check()
        listeners.append(_unix_listener(socket_path))
        if config.listen is not None:
            listeners.append(_tcp_listener(config.listen))
        # Creating the worker may clean up a dead worker's cgroups: off the loop.
        worker = AsyncWorker(
            await asyncio.to_thread(
                Worker, log_dir, grace=config.grace, env=MINIMAL_ENV, retention=config.retention
            )
        )
    except BaseException:
        for sock in listeners:
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            if listeners:
                os.unlink(socket_path)
        store.close()
        raise
    try:
        service = JobWorkerService(
            worker,
            Identify(config.admins),
            Jobs(config.max_running_jobs, _index_forget_after(config)),
            accounts,
            default_limits=config.default_limits,
        )
        health = ServiceStatus()
        handlers = ServerReflection.extend([service, Health({service: [health]})])
        for sock in listeners:
            server = Server(handlers)
            await server.start(sock=sock, ssl=None if sock.family == socket.AF_UNIX else tls)
            servers.append(server)
        health.set(True)
        addresses = [_address(s) for s in listeners]
        log.info("%s", json.dumps({"event": "listening", "addresses": addresses}))
        if on_ready is not None:
            on_ready(addresses)

        await stop.wait()

        log.info("%s", json.dumps({"event": "shutting down"}))
        health.set(False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)  # no new local connections
        await service.shut_down(config.grace, DRAIN)
    finally:
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        for sock in listeners:
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        await worker.close()
        store.close()
    log.info("%s", json.dumps({"event": "stopped"}))


def run(config: ServerConfig) -> int:
    """Serve ``config`` until SIGTERM or SIGINT; return the exit status (0).

    Logs go to the ``jobworker.server`` logger (to stderr, one JSON object a line, unless
    logging is configured already).  Raises ``ConfigError`` if the server cannot start.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve(config, stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
    return 0
