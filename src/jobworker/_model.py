"""The data model: Command, Status, StopType, JobInfo, plus Limits, RunAs, Usage and LogLoss.

Everything here is an immutable value.  The live, mutable side of a job lives in
``_job.py``; a ``JobInfo`` is a snapshot of it taken under the job's lock.
"""

from __future__ import annotations

import enum
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import InvalidCommand

__all__ = [
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
]


def _path_text(what: str, value: object) -> str:
    """A ``str``, or the ``str`` of an ``os.PathLike`` (users pass ``Path`` objects)."""
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise InvalidCommand(f"{what} must be a str or a path, not {type(value).__name__}")
    return value


@dataclass(frozen=True, init=False)
class Command:
    """What to run: an executable ``name`` and its ``args``, never a shell string.

    ``name`` is looked up in ``PATH`` (of the job's environment) unless it contains a
    ``/``.  ``env`` entries override or extend the inherited environment (a value of
    ``None`` removes the variable); ``cwd`` replaces the inherited working directory.
    ``name``, each argument and ``cwd`` may be a ``str`` or a path (``pathlib.Path``);
    they are kept as ``str``.

    Values of the wrong type raise ``InvalidCommand`` here (a single string as ``args``
    too: ``Command("echo", "hi")`` would otherwise run ``echo h i``); what a value holds
    (an empty name, a NUL byte, text the system cannot encode) is checked by ``start``.
    """

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str | None] | None
    cwd: str | None

    def __init__(
        self,
        name: str | os.PathLike[str],
        args: Iterable[str | os.PathLike[str]] = (),
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(args, str | bytes):
            raise InvalidCommand(
                f"args must be a sequence of arguments, not one {type(args).__name__}:"
                f" Command(name, [arg, ...])"
            )
        try:
            items = tuple(args)
        except TypeError:
            raise InvalidCommand(
                f"args must be a sequence of arguments, not {type(args).__name__}"
            ) from None
        if env is not None:
            if not isinstance(env, Mapping):
                raise InvalidCommand(f"env must be a mapping, not {type(env).__name__}")
            env = dict(env)  # a copy: a Command can be shared between threads safely
            for k, v in env.items():
                if not isinstance(k, str):
                    raise InvalidCommand(
                        f"environment variable names must be str, not {type(k).__name__}"
                    )
                if not (v is None or isinstance(v, str)):
                    raise InvalidCommand(
                        f"environment variable {k}: the value must be a str (None removes"
                        f" the variable), not {type(v).__name__}"
                    )
        object.__setattr__(self, "name", _path_text("command name", name))
        if not all(type(a) is str for a in items):
            items = tuple(_path_text("argument", a) for a in items)
        object.__setattr__(self, "args", items)
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "cwd", None if cwd is None else _path_text("cwd", cwd))

    @property
    def argv(self) -> list[str]:
        return [self.name, *self.args]


class StopType(enum.Enum):
    """How a stop requested through the worker ended the job."""

    TERM = "term"
    KILL = "kill"


class State(enum.Enum):
    UNKNOWN = "unknown"
    RUNNING = "running"
    EXITED = "exited"
    STOPPED = "stopped"
    SIGNALED = "signaled"


@dataclass(frozen=True)
class Status:
    """The seed's Status enum, with data.

    - ``RUNNING``: the job has not ended (its output may still be draining).
    - ``EXITED``: the main process exited by itself; ``exit_code`` is its code.
    - ``STOPPED``: ended because of ``Worker.stop``; ``stop_type`` says whether it went
      within the grace period (TERM) or had to be killed (KILL).
    - ``SIGNALED``: killed by a signal the worker did not send (``signal``);
      ``oom_killed`` is set when the kernel's OOM killer did it.
    """

    state: State
    exit_code: int | None = None
    stop_type: StopType | None = None
    signal: int | None = None
    oom_killed: bool = False

    @classmethod
    def running(cls) -> Status:
        return cls(State.RUNNING)

    @classmethod
    def exited(cls, code: int | None) -> Status:
        return cls(State.EXITED, exit_code=code)

    @classmethod
    def stopped(cls, how: StopType) -> Status:
        return cls(State.STOPPED, stop_type=how)

    @classmethod
    def signaled(cls, signal: int, *, oom_killed: bool = False) -> Status:
        return cls(State.SIGNALED, signal=signal, oom_killed=oom_killed)

    @property
    def ended(self) -> bool:
        return self.state not in (State.RUNNING, State.UNKNOWN)

    def __str__(self) -> str:
        if self.state is State.EXITED:
            return f"exited({self.exit_code})"
        if self.state is State.STOPPED:
            assert self.stop_type is not None
            return f"stopped({self.stop_type.name})"
        if self.state is State.SIGNALED:
            return f"signaled({self.signal}{', oom' if self.oom_killed else ''})"
        return str(self.state.value)


@dataclass(frozen=True)
class Limits:
    """Per-job resource limits; ``None`` means unlimited.

    - ``cpu``: cores' worth of CPU time (0.5 = half of one core), as quota per period.
    - ``memory``: hard limit in bytes; exceeding it gets the job OOM-killed.
    - ``io_read_bps`` / ``io_write_bps``: bytes per second on the block device that
      holds ``io_path`` (required when either is set).
    - ``pids``: maximum number of tasks in the job.
    """

    cpu: float | None = None
    memory: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    io_path: str | os.PathLike[str] | None = None
    pids: int | None = None

    @property
    def empty(self) -> bool:
        return all(
            v is None
            for v in (self.cpu, self.memory, self.io_read_bps, self.io_write_bps, self.pids)
        )


# (uid_t)-1 is not an id: it means "leave unchanged" to the kernel's set*id calls.
_ID_MAX = 2**32 - 2
_NGROUPS_MAX = 65536  # the kernel's NGROUPS_MAX


def _check_id(what: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _ID_MAX:
        raise InvalidCommand(f"run_as: {what} must be an int from 0 to {_ID_MAX}, not {value!r}")


@dataclass(frozen=True)
class RunAs:
    """The user a job runs as: ``uid``, ``gid`` and supplementary ``groups`` (none by
    default, whatever the user's entry in /etc/group says).

    The job's process creates its log and joins its cgroups as the worker's user, then
    takes these ids (groups, group, user, in that order), and only then changes to the
    command's ``cwd`` and executes the program, both with the job's own permissions.
    Taking another user's ids needs root (``CAP_SETUID``/``CAP_SETGID``); so does
    setting the groups, even to none.  Raises ``InvalidCommand`` for an id that is not
    an int in range.
    """

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_id("uid", self.uid)
        _check_id("gid", self.gid)
        try:
            groups = tuple(self.groups)
        except TypeError:
            raise InvalidCommand(
                f"run_as: groups must be a sequence of group ids, not {self.groups!r}"
            ) from None
        if len(groups) > _NGROUPS_MAX:
            raise InvalidCommand(f"run_as: at most {_NGROUPS_MAX} groups, not {len(groups)}")
        for g in groups:
            _check_id("group", g)
        object.__setattr__(self, "groups", groups)


@dataclass(frozen=True)
class Usage:
    """Resource accounting of a job's cgroup; ``None`` where this machine cannot tell."""

    cpu_seconds: float | None = None
    memory_peak: int | None = None
    cpu_throttled: int | None = None  # periods in which the CPU quota was exhausted
    oom_kills: int | None = None
    pids_limit_hits: int | None = None


class LossCause(enum.Enum):
    """Why a job's log does not hold all of the job's output."""

    WRITE_FAILED = "write_failed"  # the log refused a write: disk full, quota, I/O error
    TRUNCATED = "truncated"  # someone else cut the file short (copytruncate) or wrote into it
    CAPPED = "capped"  # the log reached its size cap (retention): it keeps the head


@dataclass(frozen=True)
class LogLoss:
    """Output a job wrote that its log does not hold.

    The log holds the first ``held`` bytes of the job's output, each at its own offset;
    the ``lost`` bytes after them are gone (while the job runs, ``lost`` keeps growing:
    its output is still read from it, and counted, but not kept).  ``detail`` says why in
    words, such as the error of the write the log refused.  A reader that has read the
    ``held`` bytes gets ``LogUnavailable``.
    """

    cause: LossCause
    held: int
    lost: int
    detail: str


@dataclass(frozen=True)
class JobInfo:
    """Snapshot of a job, as returned by ``query`` and ``list``."""

    id: uuid.UUID
    command: Command
    pid: int
    owner_id: uuid.UUID
    status: Status
    log_path: Path
    started_at: float  # time.time() of the start
    ended_at: float | None  # time.time() when the job counted as ended
    limits: Limits = field(default_factory=Limits)
    usage: Usage = field(default_factory=Usage)
    run_as: RunAs | None = None  # None: the worker's own user
    # None while the log holds every byte the job wrote; see LogLoss.
    log_loss: LogLoss | None = None
