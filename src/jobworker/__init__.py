"""jobworker: run Linux processes as jobs; start, stop, query and stream them per owner.

The public surface is what ``__all__`` lists; every module with a leading underscore is
private.

Every name is imported on first use, from the private module that is its home
(``_HOMES``).  So a program that needs only the types (the CLI answering ``--help``, a
client of the service) does not pay for the worker's imports (asyncio among them), a
large part of a command's start-up time; and ``import jobworker`` itself runs almost no
code, which keeps short the moment, as the ``jobworker`` command starts, when a Ctrl-C
would interrupt an import instead of reaching the command.
"""

# Not imported from typing, whose import alone costs more than the rest of this module;
# type checkers treat any TYPE_CHECKING as true.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from ._aio import AsyncWorker
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
    from ._follow import AsyncLogReader, LogReader
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
    from ._rescontrol import JobGroup, ResourceControl, detect
    from ._rescontrol._none import NoCgroups
    from ._retention import PurgedLog, PurgeResult, Retention
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
    "PurgeResult",
    "PurgedLog",
    "QuotaExceeded",
    "ResourceControl",
    "Retention",
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

# Where each name lives; it is imported on first use.
_HOMES = {
    "._errors": (
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
    ),
    "._model": (
        "Command",
        "JobInfo",
        "Limits",
        "LogLoss",
        "LossCause",
        "RunAs",
        "State",
        "Status",
        "StopType",
        "Usage",
    ),
    "._aio": ("AsyncWorker",),
    "._follow": ("AsyncLogReader", "LogReader"),
    "._rescontrol": ("JobGroup", "ResourceControl", "detect"),
    "._rescontrol._none": ("NoCgroups",),
    "._retention": ("PurgeResult", "PurgedLog", "Retention"),
    "._worker": ("Worker",),
}
_LAZY = {name: module for module, names in _HOMES.items() for name in names}


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
