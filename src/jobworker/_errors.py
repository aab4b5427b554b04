"""The exception tree.  Users catch ``JobworkerError``, or one precise leaf::

    JobworkerError
    ├── InvalidCommand        (also ValueError)  the Command (or its RunAs) is malformed
    ├── StartError            (also OSError)     the command could not be executed
    │   └── CommandNotFound                      no such executable
    ├── LimitError            (also ValueError)  a limit is malformed or not enforceable here
    ├── InvalidArgument       (also ValueError)  another argument is malformed: an id, a grace
    ├── JobNotFound           (also LookupError) no such job *for this owner*
    ├── JobNotRunning                            stop of a job that has already ended
    ├── LogUnavailable                           the job's log is gone, replaced or cut short
    ├── WorkerClosed                             the worker has been closed
    └── ServiceError                             the service refused a call, or is unreachable
        ├── ServiceUnavailable                   unreachable, or shutting down
        ├── Unauthenticated                      TLS or the caller's identity was refused
        ├── PermissionDenied                     an admin-only request from a non-admin
        └── QuotaExceeded                        the owner has too many running jobs

A job owned by someone else raises ``JobNotFound`` with exactly the message an unknown
id gets, so that ownership cannot be probed.  The ``ServiceError`` branch is raised only by
``jobworker.client`` (and by the server, which sends it as a gRPC status).
"""

from __future__ import annotations

import uuid

__all__ = [
    "CommandNotFound",
    "InvalidArgument",
    "InvalidCommand",
    "JobNotFound",
    "JobNotRunning",
    "JobworkerError",
    "LimitError",
    "LogUnavailable",
    "PermissionDenied",
    "QuotaExceeded",
    "ServiceError",
    "ServiceUnavailable",
    "StartError",
    "Unauthenticated",
    "WorkerClosed",
]


class JobworkerError(Exception):
    """Base of every error this library raises on purpose."""


class InvalidCommand(JobworkerError, ValueError):
    """The command is malformed (empty name, NUL byte, ...), or the user to run it as."""


class StartError(JobworkerError, OSError):
    """The command could not be executed; ``errno`` says why."""

    def __str__(self) -> str:
        return str(self.strerror)


class CommandNotFound(StartError):
    """No executable of that name."""


class LimitError(JobworkerError, ValueError):
    """A limit is malformed, or this machine cannot enforce it."""


class InvalidArgument(JobworkerError, ValueError):
    """An argument other than the command or its limits is malformed: a job or owner id
    that is not a ``uuid.UUID``, a grace that is not a duration."""


class JobNotFound(JobworkerError, LookupError):
    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(f"no such job: {job_id}")
        self.job_id = job_id


class JobNotRunning(JobworkerError):
    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(f"job {job_id} has already ended")
        self.job_id = job_id


class LogUnavailable(JobworkerError):
    """The job exists but its log file can no longer be read: deleted, replaced or
    truncated."""


class WorkerClosed(JobworkerError):
    """The worker was closed; it starts no jobs and answers no queries."""


class ServiceError(JobworkerError):
    """The service refused the call, or could not be reached."""


class ServiceUnavailable(ServiceError):
    """The service cannot be reached, or is shutting down."""


class Unauthenticated(ServiceError):
    """The TLS handshake or the caller's identity was refused (by either side)."""


class PermissionDenied(ServiceError):
    """The caller asked for something only an admin may have."""


class QuotaExceeded(ServiceError):
    """The owner already has as many running jobs as the service allows."""
