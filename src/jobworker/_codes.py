"""Errors and gRPC status codes: one table, read forwards by the server and backwards by
the client.

The server answers every error it raises on purpose with the status code of its row and
the trailing metadata ``jobworker-error: <name>`` (plus ``jobworker-errno`` for a
``StartError``), so that the client raises the same exception the library would have,
even where two errors share a code.  A status without that metadata (from a proxy, or the
framework itself) becomes the code's default error.

README.md shows this table; keep the two in step.
"""

from __future__ import annotations

import errno as errno_codes
import uuid
from collections.abc import Mapping

from grpclib.const import Status

from ._errors import (
    CommandNotFound,
    InvalidArgument,
    InvalidCommand,
    JobNotFound,
    JobNotRunning,
    JobworkerError,
    LimitError,
    LogUnavailable,
    PermissionDenied,
    QuotaExceeded,
    ServiceError,
    ServiceUnavailable,
    StartError,
    Unauthenticated,
    WorkerClosed,
)

__all__ = ["ERRNO_KEY", "ERROR_KEY", "TABLE", "error_from_status", "status_of"]

ERROR_KEY = "jobworker-error"
ERRNO_KEY = "jobworker-errno"

# Most precise first: the first row the error is an instance of decides.
TABLE: tuple[tuple[type[Exception], Status], ...] = (
    (InvalidCommand, Status.INVALID_ARGUMENT),
    (LimitError, Status.INVALID_ARGUMENT),
    (InvalidArgument, Status.INVALID_ARGUMENT),
    (JobNotFound, Status.NOT_FOUND),
    # A command that cannot run depends on the server's state (its PATH, its files), so
    # it is not an INVALID_ARGUMENT; NOT_FOUND would read as "no such job".
    (CommandNotFound, Status.FAILED_PRECONDITION),
    (StartError, Status.FAILED_PRECONDITION),
    (JobNotRunning, Status.FAILED_PRECONDITION),
    (QuotaExceeded, Status.RESOURCE_EXHAUSTED),
    (Unauthenticated, Status.UNAUTHENTICATED),
    (PermissionDenied, Status.PERMISSION_DENIED),
    (ServiceUnavailable, Status.UNAVAILABLE),
    (WorkerClosed, Status.UNAVAILABLE),
    (LogUnavailable, Status.DATA_LOSS),
)

_BY_NAME: Mapping[str, type[Exception]] = {cls.__name__: cls for cls, _ in TABLE}

_DEFAULTS: Mapping[Status, type[JobworkerError]] = {
    Status.INVALID_ARGUMENT: InvalidArgument,
    Status.RESOURCE_EXHAUSTED: QuotaExceeded,
    Status.UNAUTHENTICATED: Unauthenticated,
    Status.PERMISSION_DENIED: PermissionDenied,
    Status.UNAVAILABLE: ServiceUnavailable,
    Status.CANCELLED: ServiceUnavailable,
    Status.DATA_LOSS: LogUnavailable,
}


def status_of(error: BaseException) -> tuple[Status, str, dict[str, str]] | None:
    """(code, message, trailing metadata) for an error the server raises on purpose;
    None for anything else (a bug: INTERNAL, and logged)."""
    if isinstance(error, JobworkerError):
        for cls, code in TABLE:
            if isinstance(error, cls):
                metadata = {ERROR_KEY: cls.__name__}
                if isinstance(error, StartError) and error.errno is not None:
                    metadata[ERRNO_KEY] = str(error.errno)
                return code, str(error), metadata
    return None


def error_from_status(
    code: Status,
    message: str | None,
    metadata: Mapping[str, str],
    job_id: uuid.UUID | None = None,
) -> Exception:
    """The exception the client raises for a non-OK status (``job_id``: the job asked
    about, if any)."""
    message = message or code.name
    cls = _BY_NAME.get(metadata.get(ERROR_KEY, ""))
    if cls is None:
        if code is Status.NOT_FOUND and job_id is not None:
            cls = JobNotFound
        elif code is Status.DEADLINE_EXCEEDED:
            return TimeoutError(message)
        else:
            cls = _DEFAULTS.get(code)
            if cls is None:
                return ServiceError(f"{code.name}: {message}")
    if cls in (JobNotFound, JobNotRunning):
        if job_id is None:
            return ServiceError(f"{code.name}: {message}")
        return cls(job_id)
    if issubclass(cls, StartError):
        try:
            number = int(metadata.get(ERRNO_KEY, ""))
        except ValueError:
            number = errno_codes.ENOENT if cls is CommandNotFound else errno_codes.EIO
        return cls(number, message)
    return cls(message)
