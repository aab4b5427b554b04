"""A client of the jobworker service, for asyncio.

    async with Client() as c:                          # the local socket, no certificates
        job = await c.start(Command("make", ["-j4"]))
        async for chunk in c.follow(job):              # bytes; survives dropped connections
            sys.stdout.buffer.write(chunk)
        info = await c.wait(job)

    Client("host:7443", tls=TLSFiles(ca="ca.pem", cert="alice.pem", key="alice.key"))

It returns the library's values (``JobInfo``, ``Status``, ...) and raises the library's
exceptions (``JobNotFound``, ``InvalidCommand``, ``LimitError``, ``CommandNotFound``, ...)
exactly where a local ``Worker`` would, translated back from the service's status codes
through the one table in ``jobworker._codes``; and, for the service itself, the
``ServiceError`` branch (``ServiceUnavailable``, ``Unauthenticated``, ``PermissionDenied``,
``QuotaExceeded``, ``InvalidArgument``).  A call past its deadline raises ``TimeoutError``.
It never prints and never exits.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from . import _codes, _wire
from ._errors import ServiceError, ServiceUnavailable, Unauthenticated
from ._model import Command, JobInfo, Limits
from ._retention import PurgeResult
from .v1 import jobworker_grpc
from .v1 import jobworker_pb2 as pb

__all__ = ["Client", "TLSFiles", "client_tls_context", "close_channel"]

_PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a mutual-TLS client: the CA that signed the server's certificate, and
    this client's certificate and key.  ``server_name`` is the name to check the server's
    certificate against, when it is not the host connected to."""

    ca: str | os.PathLike[str]
    cert: str | os.PathLike[str]
    key: str | os.PathLike[str]
    server_name: str | None = None


def client_tls_context(files: TLSFiles) -> ssl.SSLContext:
    """TLS 1.3 only, the server verified against ``files.ca``, this client's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_verify_locations(cafile=files.ca)
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as e:
        raise Unauthenticated(f"cannot load the client's TLS files: {e.strerror or e}") from None
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def close_channel(channel: Channel) -> None:
    """``channel.close()``, returning once its socket is closed."""
    # grpclib's channel does not say when its connection is gone; its socket does.
    connection = getattr(getattr(channel, "_protocol", None), "connection", None)
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    channel.close()
    for _ in range(200):
        if sock is None or sock.fileno() == -1:
            break
        await asyncio.sleep(0.005)


def _default_address() -> str:
    from .server import default_socket_path

    return f"unix:{default_socket_path()}"


class Client:
    """A connection to the service at ``address`` (``"HOST:PORT"``, which needs ``tls``,
    or ``"unix:PATH"``; default: the local server's socket).  ``timeout`` bounds each
    ``start``, ``query`` and ``list`` (seconds; None: no bound).

    Use ``async with``, or call ``close()``.  Connects on the first call, and again after
    the connection was lost.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        tls: TLSFiles | ssl.SSLContext | None = None,
        timeout: float | None = None,
    ) -> None:
        self.address = address or _default_address()
        try:
            target = _wire.parse_address(self.address)
        except ValueError as e:
            raise ValueError(str(e)) from None
        if isinstance(target, tuple) and tls is None:
            raise Unauthenticated(
                f"{self.address} is reached over TCP, which needs mutual TLS: give tls="
            )
        self._target = target
        self._tls = client_tls_context(tls) if isinstance(tls, TLSFiles) else tls
        self._server_name = tls.server_name if isinstance(tls, TLSFiles) else None
        self.timeout = timeout
        self._channel: Channel | None = None

    # -- the operations ------------------------------------------------------------------

    async def start(self, command: Command, limits: Limits | None = None) -> uuid.UUID:
        """Start ``command`` as a job of this client's owner; return its id."""
        request = pb.StartRequest(
            command=_wire.command_to_pb(command),
            limits=_wire.limits_to_pb(limits or Limits()),
        )
        reply = await self._unary(self._stub().Start, request, timeout=self.timeout)
        return uuid.UUID(reply.job_id)

    async def stop(self, job_id: uuid.UUID, grace: float | None = None) -> JobInfo:
        """SIGTERM the job, SIGKILL it after ``grace`` seconds (default: the server's);
        return its final info once it has ended.  ``JobNotRunning`` if it already had."""
        request = pb.StopRequest(job_id=str(job_id), grace_seconds=grace)
        reply = await self._unary(self._stub().Stop, request, job_id)
        return _wire.info_from_pb(reply.info)

    async def query(self, job_id: uuid.UUID) -> JobInfo:
        request = pb.QueryRequest(job_id=str(job_id))
        reply = await self._unary(self._stub().Query, request, job_id, timeout=self.timeout)
        return _wire.info_from_pb(reply.info)

    async def list(self, *, all_owners: bool = False) -> list[JobInfo]:
        """This owner's jobs, oldest first; every owner's with ``all_owners`` (admins
        only: ``PermissionDenied`` otherwise)."""
        request = pb.ListRequest(all_owners=all_owners)
        reply = await self._unary(self._stub().List, request, timeout=self.timeout)
        return [_wire.info_from_pb(i) for i in reply.jobs]

    async def wait(self, job_id: uuid.UUID, timeout: float | None = None) -> JobInfo:
        """The job's final info, once it has ended (``TimeoutError`` after ``timeout``)."""
        request = pb.WaitRequest(job_id=str(job_id))
        reply = await self._unary(self._stub().Wait, request, job_id, timeout=timeout)
        return _wire.info_from_pb(reply.info)

    async def purge(self) -> PurgeResult:
        """Apply the server's retention policy now; what it removed and forgot (admins
        only: ``PermissionDenied`` otherwise)."""
        reply = await self._unary(self._stub().Purge, pb.PurgeRequest(), timeout=self.timeout)
        return _wire.purge_from_pb(reply)

    async def stream(
        self, job_id: uuid.UUID, offset: int = 0, *, follow: bool = True
    ) -> AsyncIterator[bytes]:
        """The job's output from byte ``offset``, live, until the job has ended and every
        byte has come; one connection (``ServiceUnavailable`` if it drops: see
        ``follow``).  ``follow=False``: only what the job's log holds when the call
        arrives (for a running job, what it has written so far), then the end."""
        expected = offset
        request = pb.StreamOutputRequest(
            job_id=str(job_id), offset=offset, follow=None if follow else False
        )
        st = None
        try:
            async with self._stub().StreamOutput.open() as st:
                await st.send_message(request, end=True)
                async for message in st:
                    data = message.data
                    if message.offset > expected:
                        raise ServiceError(
                            f"the service skipped bytes {expected}..{message.offset - 1}"
                        )
                    if message.offset < expected:  # never sent by this server; harmless
                        data = data[expected - message.offset :]
                    if data:
                        expected += len(data)
                        yield data
        except GRPCError as e:
            raise self._error(e, st, job_id) from None
        except (OSError, StreamTerminatedError, ProtocolError) as e:
            raise await self._lost(e) from None

    async def follow(
        self,
        job_id: uuid.UUID,
        offset: int = 0,
        *,
        retries: int = 5,
        delay: float = 0.1,
    ) -> AsyncIterator[bytes]:
        """``stream``, resumed after a dropped connection from the byte after the last one
        yielded (no gap, no duplicate); gives up with ``ServiceUnavailable`` after
        ``retries`` attempts in a row that brought nothing (waiting ``delay``, doubling)."""
        failures = 0
        while True:
            try:
                async for data in self.stream(job_id, offset):
                    offset += len(data)
                    failures = 0
                    yield data
                return
            except ServiceUnavailable:
                failures += 1
                if failures > retries:
                    raise
                self._drop_channel()
                await asyncio.sleep(min(delay * 2 ** (failures - 1), 5.0))

    # -- the connection ------------------------------------------------------------------

    def _stub(self) -> jobworker_grpc.JobWorkerStub:
        if self._channel is None:
            if isinstance(self._target, str):
                self._channel = Channel(path=self._target)
            else:
                host, port = self._target
                config = Configuration(ssl_target_name_override=self._server_name)
                self._channel = Channel(host, port, ssl=self._tls, config=config)
        return jobworker_grpc.JobWorkerStub(self._channel)

    def _drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    async def _unary(
        self,
        method: Any,
        request: Any,
        job_id: uuid.UUID | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        st = None
        try:
            async with method.open(timeout=timeout) as st:
                await st.send_message(request, end=True)
                reply = await st.recv_message()
            return reply
        except GRPCError as e:
            raise self._error(e, st, job_id) from None
        except (OSError, StreamTerminatedError, ProtocolError) as e:
            raise await self._lost(e) from None

    def _error(self, error: GRPCError, st: Any, job_id: uuid.UUID | None) -> Exception:
        metadata: Mapping[str, Any] = (st.trailing_metadata if st is not None else None) or {}
        return _codes.error_from_status(
            error.status,
            error.message,
            {k: v for k, v in metadata.items() if isinstance(v, str)},
            job_id,
        )

    async def _lost(self, error: BaseException) -> Exception:
        self._drop_channel()
        refusal = error.reason if isinstance(error, ssl.SSLError) else await self._tls_refusal()
        if refusal is not None:
            return Unauthenticated(f"TLS with {self.address} refused: {refusal}")
        detail = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return ServiceUnavailable(f"cannot reach the service at {self.address}: {detail}")

    async def _tls_refusal(self) -> str | None:
        """Why TLS was refused, if it was, asked again on a connection of its own: the
        HTTP/2 layer says only "connection lost".  A gRPC server speaks first (its HTTP/2
        SETTINGS); in TLS 1.3 it judges the client's certificate after the client's side
        of the handshake is done, so a refused certificate shows as a connection closed
        right after the handshake, before that first frame."""
        if isinstance(self._target, str):
            return None
        host, port = self._target
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=self._tls, server_hostname=self._server_name or host
                ),
                _PROBE_TIMEOUT,
            )
        except ssl.SSLError as e:
            return str(e.reason or e)
        except ConnectionResetError:
            return (
                "the server ended the TLS handshake: it refused this client's TLS version"
                " or parameters"
            )
        except (OSError, TimeoutError):
            return None
        try:
            first = await asyncio.wait_for(reader.read(1), _PROBE_TIMEOUT)
        except ssl.SSLError as e:
            return str(e.reason or e)
        except ConnectionResetError:
            first = b""
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()
        if first:
            return None
        return (
            "the server closed the connection after the handshake: it did not accept this"
            " client's certificate"
        )

    def close(self) -> None:
        """Close the connection without waiting for it to go (see ``aclose``)."""
        self._drop_channel()

    async def aclose(self) -> None:
        """Close the connection, and return once its socket is closed: a TLS connection
        says goodbye first, which an event loop closed right after would cut short."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await close_channel(channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
