"""The exit codes of ``jobworker``, in one table, and the errors that lead to them.

====  ==================================================================================
code  meaning
====  ==================================================================================
0     success
1     anything else (an unexpected error, a job's log that is gone; the message says what)
2     usage: a bad flag or value (a job id that is not a UUID, a bad grace), a limit that
      cannot be enforced, a malformed command, a configuration ``serve`` refuses
3     no such job (a job of another owner looks exactly the same)
4     the job is not running (stopping a job that has already ended)
5     quota exceeded: too many running jobs for this owner
69    the service is unavailable (not running, unreachable, not answering, shutting down)
77    authentication or permission refused: a certificate refused or unusable, a server
      certificate the CA did not sign, an admin-only request
126   the job could not be started: the command is not executable, or its log could not
      be created
127   the command was not found
128+N ``run`` and ``wait``: the job died of signal N (137 for SIGKILL, which is also how the
      OOM killer kills; 143 for a job stopped within its grace); any command: the CLI
      itself got signal N (130 for Ctrl-C; ``run`` stopped the job first)
other ``run`` and ``wait``: the job's own exit code
====  ==================================================================================

docs/CLI.md repeats this table for users; keep the two alike.
"""

from __future__ import annotations

import enum
import signal
import sys

from jobworker import Status, StopType

__all__ = ["CliError", "ExitCode", "Interrupted", "exit_code_for", "status_exit_code"]


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_FOUND = 3
    NOT_RUNNING = 4
    QUOTA = 5
    UNAVAILABLE = 69  # EX_UNAVAILABLE of sysexits.h
    REFUSED = 77  # EX_NOPERM
    CANNOT_EXECUTE = 126  # as shells say it
    COMMAND_NOT_FOUND = 127
    SIGNAL_BASE = 128


class CliError(Exception):
    """An error the CLI reports as one line on stderr, then exits with ``code``."""

    def __init__(self, message: str, code: int = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """Ctrl-C ended the command (not a job's run, which handles its signals itself): exit
    130, with nothing to say."""


# Exceptions of the layers below, most specific first: (module, class name, exit code).
# Looked up by name among the modules already imported, since an exception can only come
# from a module that was loaded; naming a class instead of importing it keeps this table
# from importing the service's client (grpclib, protobuf) into every command.
_ERRORS: list[tuple[str, str, ExitCode]] = [
    ("jobworker", "CommandNotFound", ExitCode.COMMAND_NOT_FOUND),
    ("jobworker", "StartError", ExitCode.CANNOT_EXECUTE),
    ("jobworker", "InvalidCommand", ExitCode.USAGE),
    ("jobworker", "LimitError", ExitCode.USAGE),
    ("jobworker", "InvalidArgument", ExitCode.USAGE),
    ("jobworker", "JobNotFound", ExitCode.NOT_FOUND),
    ("jobworker", "JobNotRunning", ExitCode.NOT_RUNNING),
    ("jobworker", "QuotaExceeded", ExitCode.QUOTA),
    ("jobworker", "ServiceUnavailable", ExitCode.UNAVAILABLE),
    ("jobworker", "Unauthenticated", ExitCode.REFUSED),
    ("jobworker", "PermissionDenied", ExitCode.REFUSED),
    # The server's configuration (``serve``): a bad flag or file.
    ("jobworker.server", "ConfigError", ExitCode.USAGE),
]


def exit_code_for(error: BaseException) -> int:
    """The exit code for ``error``: its row in the table above, else FAILURE."""
    if isinstance(error, CliError):
        return error.code
    for module_name, class_name, code in _ERRORS:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(error, cls):
            return code
    return ExitCode.FAILURE


_STOP_SIGNAL = {StopType.TERM: signal.SIGTERM, StopType.KILL: signal.SIGKILL}


def status_exit_code(status: Status) -> int:
    """The exit code a shell would give for a job that ended with ``status``.

    A job ended by a stop reports the signal that ended it (143 for TERM, 137 for KILL):
    the library does not keep the code of a job that exited on its own after SIGTERM.
    An exit status lost to the system (``exited(None)``) counts as a failure.
    """
    if not status.ended:
        raise ValueError(f"the job has not ended: {status}")
    if status.exit_code is not None:
        return status.exit_code
    if status.signal is not None:
        return ExitCode.SIGNAL_BASE + status.signal
    if status.stop_type is not None:
        return ExitCode.SIGNAL_BASE + _STOP_SIGNAL[status.stop_type]
    return ExitCode.FAILURE
