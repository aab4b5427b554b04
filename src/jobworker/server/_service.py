"""The RPCs: one small method each, all run through ``_rpc``.

``_rpc`` is the one place that, for every call, refuses calls during shutdown, identifies
the caller, reads the request (bounded), turns an error into its status through the one
table (``jobworker._codes``), and logs one line.  ``_owner_for`` is the one place that
decides whose job a call may touch: the caller's own, or, for an admin, the job's owner's.
Below that the library answers another owner's job exactly as a job that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from grpclib.const import Status
from grpclib.server import Stream

from jobworker import (
    AsyncWorker,
    Command,
    InvalidArgument,
    InvalidCommand,
    JobNotFound,
    JobworkerError,
    Limits,
    LogUnavailable,
    PermissionDenied,
    RunAs,
    ServiceUnavailable,
    State,
)

from .. import _codes, _wire
from ..v1 import jobworker_grpc
from ..v1 import jobworker_pb2 as pb
from ._auth import Caller, Identify
from ._jobs import Jobs
from ._runas import Account, Accounts

__all__ = ["MAX_REQUEST", "JobWorkerService"]

log = logging.getLogger("jobworker.server")

# Requests: gRPC's usual default message size; a command as Linux would take it.
MAX_REQUEST = 4 << 20
MAX_ARGS = 4096
MAX_ENV = 1024
MAX_COMMAND_BYTES = 1 << 20  # argv and environment together (ARG_MAX is 2 MiB here)

_Req = TypeVar("_Req", bound=ProtoMessage)
_Resp = TypeVar("_Resp", bound=ProtoMessage)


@dataclass
class _Call:
    caller: Caller | None = None
    job: uuid.UUID | None = None


async def _receive(stream: Stream[_Req, _Resp], request_type: type[_Req]) -> _Req:
    # grpclib buffers whatever size a client announces (up to 4 GiB) before decoding, so
    # the request is read here by its length prefix, and refused past MAX_REQUEST.
    raw = stream._stream
    prefix = await raw.recv_data(5)
    if len(prefix) < 5:
        raise InvalidArgument("no request message")
    compressed, length = struct.unpack(">?I", prefix)
    if compressed:
        raise InvalidArgument("compressed requests are not accepted")
    if length > MAX_REQUEST:
        raise InvalidArgument(f"request of {length} bytes is larger than {MAX_REQUEST}")
    data = await raw.recv_data(length)
    try:
        return request_type.FromString(data)
    except DecodeError as e:
        raise InvalidArgument(f"malformed request: {e}") from None


def _check_size(command: Command) -> None:
    if len(command.args) > MAX_ARGS:
        raise InvalidCommand(f"{len(command.args)} arguments, more than the {MAX_ARGS} allowed")
    env = command.env or {}
    if len(env) > MAX_ENV:
        raise InvalidCommand(f"{len(env)} environment variables, more than the {MAX_ENV} allowed")
    size = sum(len(a.encode(errors="surrogatepass")) + 1 for a in command.argv)
    size += sum(len(k) + len(v or "") + 2 for k, v in env.items())
    if size > MAX_COMMAND_BYTES:
        raise InvalidCommand(
            f"command and environment take {size} bytes, more than {MAX_COMMAND_BYTES}"
        )


def _as(account: Account, command: Command) -> Command:
    """``command`` as it runs for ``account``: the worker's minimal environment plus the
    account's HOME, then the request's variables; in HOME unless it names a directory."""
    env: dict[str, str | None] = {"HOME": account.home, **(command.env or {})}
    return Command(command.name, command.args, env=env, cwd=command.cwd or account.home)


def _log_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError as e:
        raise LogUnavailable(f"log {path} is unavailable: {e.strerror}") from None


def _merge_limits(request: Limits, defaults: Limits) -> Limits:
    def pick(name: str) -> Any:
        value = getattr(request, name)
        return getattr(defaults, name) if value is None else value

    return Limits(
        cpu=pick("cpu"),
        memory=pick("memory"),
        io_read_bps=pick("io_read_bps"),
        io_write_bps=pick("io_write_bps"),
        io_path=pick("io_path"),
        pids=pick("pids"),
    )


class JobWorkerService(jobworker_grpc.JobWorkerBase):
    def __init__(
        self,
        worker: AsyncWorker,
        identify: Identify,
        jobs: Jobs,
        accounts: Accounts,
        *,
        default_limits: Limits,
    ) -> None:
        self._worker = worker
        self._identify = identify
        self._jobs = jobs
        self._accounts = accounts
        self._default_limits = default_limits
        self._closing = False
        # Tasks that outlive an RPC: one per running job, noting its end for the quota.
        self._watchers: set[asyncio.Task[None]] = set()
        self._calls = 0
        self._calls_done = asyncio.Event()
        self._calls_done.set()

    # -- the RPCs ------------------------------------------------------------------------

    async def Start(self, stream: Stream[pb.StartRequest, pb.StartResponse]) -> None:
        await self._rpc(stream, "Start", pb.StartRequest, self._start)

    async def Stop(self, stream: Stream[pb.StopRequest, pb.StopResponse]) -> None:
        await self._rpc(stream, "Stop", pb.StopRequest, self._stop)

    async def Query(self, stream: Stream[pb.QueryRequest, pb.QueryResponse]) -> None:
        await self._rpc(stream, "Query", pb.QueryRequest, self._query)

    async def List(self, stream: Stream[pb.ListRequest, pb.ListResponse]) -> None:
        await self._rpc(stream, "List", pb.ListRequest, self._list)

    async def Wait(self, stream: Stream[pb.WaitRequest, pb.WaitResponse]) -> None:
        await self._rpc(stream, "Wait", pb.WaitRequest, self._wait)

    async def StreamOutput(
        self, stream: Stream[pb.StreamOutputRequest, pb.StreamOutputResponse]
    ) -> None:
        await self._rpc(stream, "StreamOutput", pb.StreamOutputRequest, self._stream_output)

    async def Purge(self, stream: Stream[pb.PurgeRequest, pb.PurgeResponse]) -> None:
        await self._rpc(stream, "Purge", pb.PurgeRequest, self._purge)

    async def _start(
        self, call: _Call, request: pb.StartRequest, stream: Stream[Any, pb.StartResponse]
    ) -> None:
        assert call.caller is not None
        command = _wire.command_from_pb(request.command)
        _check_size(command)
        limits = _merge_limits(_wire.limits_from_pb(request.limits), self._default_limits)
        # Shielded: a client that gives up mid-start must not leave a job nobody indexed.
        launch = asyncio.ensure_future(self._launch(call.caller, command, limits))
        # (If nobody awaits it any more, its error has no one to go to.)
        launch.add_done_callback(lambda t: t.cancelled() or t.exception())
        call.job = await asyncio.shield(launch)
        await stream.send_message(pb.StartResponse(job_id=str(call.job)))

    async def _stop(
        self, call: _Call, request: pb.StopRequest, stream: Stream[Any, pb.StopResponse]
    ) -> None:
        job = call.job = _wire.job_id_from_pb(request.job_id)
        grace = _wire.grace_from_pb(request)
        owner = self._owner_for(call, job)
        await self._worker.stop(job, owner, grace)
        info = await self._worker.query(job, owner)
        await stream.send_message(pb.StopResponse(info=_wire.info_to_pb(info)))

    async def _query(
        self, call: _Call, request: pb.QueryRequest, stream: Stream[Any, pb.QueryResponse]
    ) -> None:
        job = call.job = _wire.job_id_from_pb(request.job_id)
        info = await self._worker.query(job, self._owner_for(call, job))
        await stream.send_message(pb.QueryResponse(info=_wire.info_to_pb(info)))

    async def _list(
        self, call: _Call, request: pb.ListRequest, stream: Stream[Any, pb.ListResponse]
    ) -> None:
        assert call.caller is not None
        if request.all_owners and not call.caller.admin:
            raise PermissionDenied("only admins may list every owner's jobs")
        owners = self._jobs.owners() if request.all_owners else {call.caller.owner_id}
        infos = [info for owner in owners for info in await self._worker.list(owner)]
        infos.sort(key=lambda i: i.started_at)
        await stream.send_message(pb.ListResponse(jobs=[_wire.info_to_pb(i) for i in infos]))

    async def _wait(
        self, call: _Call, request: pb.WaitRequest, stream: Stream[Any, pb.WaitResponse]
    ) -> None:
        job = call.job = _wire.job_id_from_pb(request.job_id)
        info = await self._worker.wait(job, self._owner_for(call, job))
        await stream.send_message(pb.WaitResponse(info=_wire.info_to_pb(info)))

    async def _stream_output(
        self,
        call: _Call,
        request: pb.StreamOutputRequest,
        stream: Stream[Any, pb.StreamOutputResponse],
    ) -> None:
        job = call.job = _wire.job_id_from_pb(request.job_id)
        owner = self._owner_for(call, job)
        offset = request.offset
        async with self._worker.stream(job, owner, offset) as reader:
            end = None
            if request.HasField("follow") and not request.follow:
                # Measured once the reader holds the log: the end of what it holds now.
                # (An ended job's stream ends at its end anyway.)
                info = await self._worker.query(job, owner)
                if info.status.state is State.RUNNING:
                    end = await asyncio.to_thread(_log_size, info.log_path)
            # One chunk in flight: the next is read only once this one is handed to the
            # connection, which waits for the client's HTTP/2 window, so a slow client
            # slows only its own reader, and nothing piles up in memory.
            while end is None or offset < end:
                size = _wire.CHUNK if end is None else min(_wire.CHUNK, end - offset)
                data = await reader.read(size)
                if not data:
                    break
                await stream.send_message(pb.StreamOutputResponse(offset=offset, data=data))
                offset += len(data)

    async def _purge(
        self, call: _Call, request: pb.PurgeRequest, stream: Stream[Any, pb.PurgeResponse]
    ) -> None:
        assert call.caller is not None
        # It removes every owner's logs and forgets every owner's jobs.
        if not call.caller.admin:
            raise PermissionDenied("only admins may purge")
        result = await self._worker.purge()
        self._jobs.forget(result.forgotten)
        await stream.send_message(_wire.purge_to_pb(result))

    # -- shared --------------------------------------------------------------------------

    def _owner_for(self, call: _Call, job: uuid.UUID) -> uuid.UUID:
        """The owner id to ask the library with: the caller's, or for an admin the job's
        owner's (an unknown job stays unknown)."""
        assert call.caller is not None
        if call.caller.admin:
            owner = self._jobs.owner_of(job)
            if owner is None:
                raise JobNotFound(job)
            return owner
        return call.caller.owner_id

    def _start_job(self, caller: Caller, command: Command, limits: Limits) -> uuid.UUID:
        # In a thread: finding the account may allocate a uid (a database write), and a
        # start creates cgroups and may clean up a dead worker's.
        account = self._accounts.for_caller(caller)
        run_as = None if account.uid is None else RunAs(account.uid, account.gid, account.groups)
        return self._worker.worker.start(
            _as(account, command), caller.owner_id, limits=limits, run_as=run_as
        )

    async def _launch(self, caller: Caller, command: Command, limits: Limits) -> uuid.UUID:
        owner = caller.owner_id
        with self._jobs.reserve(owner):
            job = await asyncio.to_thread(self._start_job, caller, command, limits)
            self._jobs.started(job, owner)
        watcher = asyncio.create_task(self._watch(job, owner))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return job

    async def _watch(self, job: uuid.UUID, owner: uuid.UUID) -> None:
        try:
            await self._worker.wait(job, owner)
        except JobNotFound:
            pass  # ended, and already forgotten (retention) before this task began
        finally:
            self._jobs.ended(job)

    async def _rpc(
        self,
        stream: Stream[_Req, _Resp],
        method: str,
        request_type: type[_Req],
        handler: Callable[[_Call, _Req, Stream[_Req, _Resp]], Awaitable[None]],
    ) -> None:
        t0 = time.monotonic()
        call = _Call()
        code = Status.OK
        self._calls += 1
        self._calls_done.clear()
        try:
            if self._closing:
                raise ServiceUnavailable("the service is shutting down")
            call.caller = self._identify.caller(stream.peer)
            request = await _receive(stream, request_type)
            await handler(call, request, stream)
        except asyncio.CancelledError:
            code = Status.CANCELLED
            raise
        except Exception as e:
            mapped = _codes.status_of(e)
            if mapped is None:
                log.exception("%s failed", method)
                mapped = Status.INTERNAL, "internal error", {}
            code, message, metadata = mapped
            await stream.send_trailing_metadata(
                status=code, status_message=message, metadata=metadata
            )
        finally:
            self._calls -= 1
            if not self._calls:
                self._calls_done.set()
            log.info(
                "%s",
                json.dumps(
                    {
                        "rpc": method,
                        "owner": call.caller.name if call.caller else None,
                        "job": str(call.job) if call.job else None,
                        "code": code.name,
                        "ms": round((time.monotonic() - t0) * 1000, 3),
                    }
                ),
            )

    # -- shutdown ------------------------------------------------------------------------

    async def shut_down(self, grace: float, drain: float) -> None:
        """Refuse new calls; stop every running job (SIGTERM, SIGKILL after ``grace``); let
        the calls under way finish (streams end once their job has, with every byte sent)
        for up to ``drain`` more seconds."""
        self._closing = True
        stops = [self._stop_quietly(job, owner, grace) for job, owner in self._jobs.running()]
        await asyncio.gather(*stops)
        if self._watchers:
            await asyncio.wait(set(self._watchers))
        try:
            await asyncio.wait_for(self._calls_done.wait(), drain)
        except TimeoutError:
            log.warning("%d calls still under way at shutdown; cancelling them", self._calls)

    async def _stop_quietly(self, job: uuid.UUID, owner: uuid.UUID, grace: float) -> None:
        # Ended meanwhile (JobNotRunning) is what shutdown wants anyway.
        with contextlib.suppress(JobworkerError):
            await self._worker.stop(job, owner, grace)
