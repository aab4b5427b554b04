"""The service's messages and the library's values, converted both ways, in one place.

Server and client both import this module, so a field means the same thing on both
sides.  Nothing here validates beyond the shape of the wire: the library judges commands
and limits (``InvalidCommand``, ``LimitError``) exactly as it does for local callers.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from ._errors import InvalidArgument
from ._model import Command, JobInfo, Limits, RunAs, State, Status, StopType, Usage
from ._retention import PurgedLog, PurgeResult, Why
from .v1 import jobworker_pb2 as pb

__all__ = [
    "CHUNK",
    "command_from_pb",
    "command_to_pb",
    "grace_from_pb",
    "info_from_pb",
    "info_to_pb",
    "job_id_from_pb",
    "limits_from_pb",
    "limits_to_pb",
    "parse_address",
    "purge_from_pb",
    "purge_to_pb",
]

# The most output one StreamOutputResponse carries.
CHUNK = 1 << 16

_STATES = {
    State.UNKNOWN: pb.STATE_UNKNOWN,
    State.RUNNING: pb.STATE_RUNNING,
    State.EXITED: pb.STATE_EXITED,
    State.STOPPED: pb.STATE_STOPPED,
    State.SIGNALED: pb.STATE_SIGNALED,
}
_STATES_BACK = {v: k for k, v in _STATES.items()}
_STOP_TYPES = {StopType.TERM: pb.STOP_TYPE_TERM, StopType.KILL: pb.STOP_TYPE_KILL}
_STOP_TYPES_BACK = {v: k for k, v in _STOP_TYPES.items()}
_PURGE_REASONS: dict[Why, pb.PurgeReason] = {
    "age": pb.PURGE_REASON_AGE,
    "budget": pb.PURGE_REASON_BUDGET,
}
_PURGE_REASONS_BACK = {v: k for k, v in _PURGE_REASONS.items()}


def parse_address(address: str) -> tuple[str, int] | str:
    """Where the service listens: ``"HOST:PORT"`` (``"[::1]:PORT"``) as (host, port), or
    ``"unix:PATH"`` (or a path starting with ``/``) as the socket's path."""
    if address.startswith("unix:"):
        return address[len("unix:") :]
    if address.startswith("/"):
        return address
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"an address is HOST:PORT or unix:PATH, not {address!r}")
    return host, int(port)


def job_id_from_pb(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidArgument(f"job id must be a UUID, not {text[:64]!r}") from None


def grace_from_pb(request: pb.StopRequest) -> float | None:
    if not request.HasField("grace_seconds"):
        return None
    grace = request.grace_seconds
    if math.isnan(grace) or grace < 0:
        raise InvalidArgument(f"grace must be a number of seconds >= 0, not {grace}")
    return grace


def command_to_pb(command: Command) -> pb.Command:
    env = command.env or {}
    return pb.Command(
        name=command.name,
        args=list(command.args),
        env={k: v for k, v in env.items() if v is not None},
        unset_env=[k for k, v in env.items() if v is None],
        cwd=command.cwd,
    )


def command_from_pb(message: pb.Command) -> Command:
    env: dict[str, str | None] = dict(message.env)
    for name in message.unset_env:
        env[name] = None
    return Command(
        message.name,
        list(message.args),
        env=env or None,
        cwd=message.cwd if message.HasField("cwd") else None,
    )


def limits_to_pb(limits: Limits) -> pb.Limits:
    return pb.Limits(
        cpu=limits.cpu,
        memory_bytes=limits.memory,
        io_read_bps=limits.io_read_bps,
        io_write_bps=limits.io_write_bps,
        io_path=None if limits.io_path is None else os.fspath(limits.io_path),
        pids=limits.pids,
    )


def limits_from_pb(message: pb.Limits) -> Limits:
    def get(name: str) -> int | None:
        return getattr(message, name) if message.HasField(name) else None

    return Limits(
        cpu=message.cpu if message.HasField("cpu") else None,
        memory=get("memory_bytes"),
        io_read_bps=get("io_read_bps"),
        io_write_bps=get("io_write_bps"),
        io_path=message.io_path if message.HasField("io_path") else None,
        pids=get("pids"),
    )


def _status_to_pb(status: Status) -> pb.Status:
    return pb.Status(
        state=_STATES[status.state],
        exit_code=status.exit_code,
        stop_type=pb.STOP_TYPE_UNSPECIFIED
        if status.stop_type is None
        else _STOP_TYPES[status.stop_type],
        signal=status.signal,
        oom_killed=status.oom_killed,
    )


def _status_from_pb(message: pb.Status) -> Status:
    return Status(
        _STATES_BACK.get(message.state, State.UNKNOWN),
        exit_code=message.exit_code if message.HasField("exit_code") else None,
        stop_type=_STOP_TYPES_BACK.get(message.stop_type),
        signal=message.signal if message.HasField("signal") else None,
        oom_killed=message.oom_killed,
    )


def _usage_to_pb(usage: Usage) -> pb.Usage:
    return pb.Usage(
        cpu_seconds=usage.cpu_seconds,
        memory_peak_bytes=usage.memory_peak,
        cpu_throttled_periods=usage.cpu_throttled,
        oom_kills=usage.oom_kills,
        pids_limit_hits=usage.pids_limit_hits,
    )


def _usage_from_pb(message: pb.Usage) -> Usage:
    def get(name: str) -> int | None:
        return getattr(message, name) if message.HasField(name) else None

    return Usage(
        cpu_seconds=message.cpu_seconds if message.HasField("cpu_seconds") else None,
        memory_peak=get("memory_peak_bytes"),
        cpu_throttled=get("cpu_throttled_periods"),
        oom_kills=get("oom_kills"),
        pids_limit_hits=get("pids_limit_hits"),
    )


def _timestamp(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(round(t * 1e9))
    return ts


def info_to_pb(info: JobInfo) -> pb.JobInfo:
    return pb.JobInfo(
        id=str(info.id),
        owner_id=str(info.owner_id),
        command=command_to_pb(info.command),
        pid=info.pid,
        status=_status_to_pb(info.status),
        log_path=str(info.log_path),
        started_at=_timestamp(info.started_at),
        ended_at=None if info.ended_at is None else _timestamp(info.ended_at),
        limits=limits_to_pb(info.limits),
        usage=_usage_to_pb(info.usage),
        run_as=None
        if info.run_as is None
        else pb.RunAs(uid=info.run_as.uid, gid=info.run_as.gid, groups=info.run_as.groups),
    )


def info_from_pb(message: pb.JobInfo) -> JobInfo:
    return JobInfo(
        id=uuid.UUID(message.id),
        command=command_from_pb(message.command),
        pid=message.pid,
        owner_id=uuid.UUID(message.owner_id),
        status=_status_from_pb(message.status),
        log_path=Path(message.log_path),
        started_at=message.started_at.ToNanoseconds() / 1e9,
        ended_at=message.ended_at.ToNanoseconds() / 1e9 if message.HasField("ended_at") else None,
        limits=limits_from_pb(message.limits),
        usage=_usage_from_pb(message.usage),
        run_as=RunAs(message.run_as.uid, message.run_as.gid, tuple(message.run_as.groups))
        if message.HasField("run_as")
        else None,
    )


def purge_to_pb(result: PurgeResult) -> pb.PurgeResponse:
    return pb.PurgeResponse(
        removed=[
            pb.PurgedLog(
                job_id=str(p.job_id),
                path=str(p.path),
                size_bytes=p.size,
                reason=_PURGE_REASONS[p.reason],
            )
            for p in result.removed
        ],
        freed_bytes=result.freed,
        forgotten=[str(j) for j in result.forgotten],
    )


def purge_from_pb(message: pb.PurgeResponse) -> PurgeResult:
    return PurgeResult(
        removed=tuple(
            PurgedLog(
                uuid.UUID(p.job_id),
                Path(p.path),
                p.size_bytes,
                _PURGE_REASONS_BACK.get(p.reason, "age"),
            )
            for p in message.removed
        ),
        freed=message.freed_bytes,
        forgotten=tuple(uuid.UUID(j) for j in message.forgotten),
    )
