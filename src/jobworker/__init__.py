"""jobworker: run Linux processes as jobs; start, stop, query and stream them per owner.

The public surface is what ``__all__`` lists; every module with a leading underscore is
private.
"""

from ._aio import AsyncWorker
from ._errors import (
    CommandNotFound,
    InvalidCommand,
    JobNotFound,
    JobNotRunning,
    JobworkerError,
    LimitError,
    LogUnavailable,
    StartError,
    WorkerClosed,
)
from ._follow import AsyncLogReader, LogReader
from ._model import Command, JobInfo, Limits, RunAs, State, Status, StopType, Usage
from ._rescontrol import JobGroup, ResourceControl, detect
from ._rescontrol._none import NoCgroups
from ._worker import Worker

__all__ = [
    "AsyncLogReader",
    "AsyncWorker",
    "Command",
    "CommandNotFound",
    "InvalidCommand",
    "JobGroup",
    "JobInfo",
    "JobNotFound",
    "JobNotRunning",
    "JobworkerError",
    "LimitError",
    "Limits",
    "LogReader",
    "LogUnavailable",
    "NoCgroups",
    "ResourceControl",
    "RunAs",
    "StartError",
    "State",
    "Status",
    "StopType",
    "Usage",
    "Worker",
    "WorkerClosed",
    "detect",
]
