"""jobworker: run Linux processes as jobs; start, stop, query and stream them per owner.

The public surface is what ``__all__`` lists; every module with a leading underscore is
private.

The values and the exceptions are imported with the package; the machinery (the worker,
its readers, resource control) on first use.  So a program that needs only the types —
the CLI answering ``--help``, a client of the service — does not pay for the worker's
imports (asyncio among them), a large part of a command's start-up time.
"""

from typing import TYPE_CHECKING

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
from ._model import (
    Command,
    JobInfo,
    Limits,
    LogLoss,
    LossCause,
    RunAs,
    State,
    Status,
    StopType,
    Usage,
)

if TYPE_CHECKING:
    from ._aio import AsyncWorker
    from ._follow import AsyncLogReader, LogReader
    from ._rescontrol import JobGroup, ResourceControl, detect
    from ._rescontrol._none import NoCgroups
    from ._worker import Worker

__all__ = [
    "AsyncLogReader",
    "AsyncWorker",
    "Command",
    "CommandNotFound",
    "InvalidArgument",
    "InvalidCommand",
    "JobGroup",
    "JobInfo",
    "JobNotFound",
    "JobNotRunning",
    "JobworkerError",
    "LimitError",
    "Limits",
    "LogLoss",
    "LogReader",
    "LogUnavailable",
    "LossCause",
    "NoCgroups",
    "PermissionDenied",
    "QuotaExceeded",
    "ResourceControl",
    "RunAs",
    "ServiceError",
    "ServiceUnavailable",
    "StartError",
    "State",
    "Status",
    "StopType",
    "Unauthenticated",
    "Usage",
    "Worker",
    "WorkerClosed",
    "detect",
]

# Where each name imported on first use lives.
_LAZY = {
    "AsyncLogReader": "._follow",
    "AsyncWorker": "._aio",
    "JobGroup": "._rescontrol",
    "LogReader": "._follow",
    "NoCgroups": "._rescontrol._none",
    "ResourceControl": "._rescontrol",
    "Worker": "._worker",
    "detect": "._rescontrol",
}


# Hidden from type checkers: they see the imports above, and a module-level __getattr__
# would make them accept any misspelt name as an attribute of this package.
if not TYPE_CHECKING:

    def __getattr__(name):
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


del TYPE_CHECKING


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
