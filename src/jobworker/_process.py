"""Supervision of one process: spawn it, signal it, reap it.

The pid is only ever used while the process is unreaped (a zombie at worst), and all
three operations run on the reactor thread, so a signal can never reach a recycled pid.
Exit is noticed through the pidfd, which turns readable when the process exits, before
it is reaped; that window is when the leftovers of its process group are killed,
because the group id cannot be reused while its leader is still a zombie.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Mapping, Sequence

from . import _spawn
from ._errors import CommandNotFound, InvalidCommand, StartError
from ._logstore import LogStore
from ._model import Command, RunAs

__all__ = ["Process", "encode_env", "prepare"]


def _check_text(what: str, value: str) -> None:
    if "\0" in value:
        raise InvalidCommand(f"{what} contains a NUL byte")
    try:
        os.fsencode(value)
    except UnicodeEncodeError as e:
        # A lone surrogate that no bytes decode to (only U+DC80-U+DCFF, from undecodable
        # bytes, map back), or text the filesystem encoding lacks.
        raise InvalidCommand(f"{what} cannot be encoded for the system: {e.reason}") from None


def encode_env(env: Mapping[str, str]) -> list[bytes]:
    """``env`` as the ``KEY=value`` strings ``execve`` takes, fs-encoded."""
    envp = [os.fsencode(f"{k}={v}") for k, v in env.items()]
    for k, entry in zip(env, envp, strict=True):
        if b"\0" in entry or not k or "=" in k:
            raise ValueError(f"invalid environment variable {k!r}")
    return envp


def prepare(
    command: Command, base_env: Mapping[str, str], base_envp: Sequence[bytes]
) -> tuple[list[str], list[str], Sequence[str | bytes]]:
    """Validate ``command``; return (candidate paths, argv, envp) for ``spawn``.

    ``base_envp`` is ``encode_env(base_env)``, made once: most commands change nothing
    in the environment, and encoding it anew would cost each start several microseconds.
    """
    if not isinstance(command, Command):
        raise InvalidCommand(f"command must be a jobworker.Command, not {type(command).__name__}")
    if not command.name:
        raise InvalidCommand("command name is empty")
    _check_text("command name", command.name)
    for a in command.args:
        _check_text("argument", a)
    env: Mapping[str, str] = base_env
    envp: Sequence[str | bytes] = base_envp
    if command.env:
        changed = dict(base_env)
        for k, v in command.env.items():
            if not k or "=" in k:
                raise InvalidCommand(f"invalid environment variable name {k!r}")
            _check_text("environment variable name", k)
            if v is None:
                changed.pop(k, None)
            else:
                _check_text(f"environment variable {k}", v)
                changed[k] = v
        env = changed
        envp = [f"{k}={v}" for k, v in changed.items()]
    if command.cwd is not None:
        _check_text("working directory", command.cwd)
    if "/" in command.name:
        paths = [command.name]
    else:
        search = env.get("PATH", os.defpath)
        paths = [os.path.join(d or ".", command.name) for d in search.split(":")]
    return paths, list(command.argv), envp


class Process:
    """A started, not yet reaped child, and its pidfd."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.reaped = False

    @classmethod
    def spawn(
        cls,
        command: Command,
        paths: Sequence[str],
        argv: Sequence[str],
        envp: Sequence[str | bytes],
        out_fd: int,
        cgroup_procs: Sequence[str],
        logs: LogStore,
        run_as: RunAs | None = None,
        nofile: int = -1,
        cgroup2_dir: str | None = None,
    ) -> tuple[Process, int, str]:
        """Start the process, and create its log in ``logs``.

        ``cgroup2_dir``: the cgroup2 directory of ``cgroup_procs[0]``, which the process
        is started inside where the kernel can (``CLONE_INTO_CGROUP``).  ``run_as``: the
        user the program runs as (None: the worker's).  ``nofile``: the soft
        ``RLIMIT_NOFILE`` it gets (-1: the worker's).  Returns the process, the
        log's fd and the log's name.
        """
        ids = None if run_as is None else (run_as.uid, run_as.gid, run_as.groups)
        pid, pidfd, log_fd, log_name, stage, err = _spawn.spawn(
            paths,
            argv,
            envp,
            command.cwd,
            out_fd,
            cgroup_procs,
            cgroup2_dir,
            logs.dir_fd,
            logs.base_name(command.name),
            ids,
            nofile,
        )
        if stage == _spawn.STAGE_OK:
            return cls(pid, pidfd), log_fd, os.fsdecode(log_name)
        if stage == _spawn.STAGE_LOG:
            raise logs.create_error(err)
        raise _start_error(command, paths, stage, err, run_as)

    def send(self, sig: int, *, group: bool) -> None:
        """Signal the process (and its whole process group), unless already reaped."""
        if self.reaped:
            return
        try:
            if group:
                # The group's id is the leader's pid, pinned while the leader is unreaped.
                os.killpg(self.pid, sig)
            else:
                signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> int | None:
        """Reap if exited; return the raw wait status's meaning as -signal or code
        (None if someone else reaped it first)."""
        if self.reaped:
            return None
        try:
            result = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            self.forget()
            return None
        if result is None:
            return None  # a spurious wake-up: not exited yet
        self.reaped = True
        os.close(self.pidfd)
        self.pidfd = -1
        if result.si_code == os.CLD_EXITED:
            return result.si_status
        return -result.si_status  # CLD_KILLED or CLD_DUMPED: the signal number

    def reap_killed(self) -> None:
        """Wait for the process, just sent SIGKILL, to die, and reap it; its status is of
        no interest (a start being undone)."""
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED)
        self.forget()

    def forget(self) -> None:
        """The process was reaped by someone else: its exit status is lost, and its pid
        must not be used again."""
        self.reaped = True
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def _start_error(
    command: Command,
    paths: Sequence[str],
    stage: int,
    err: int,
    run_as: RunAs | None = None,
) -> StartError:
    name = command.name
    if stage == _spawn.STAGE_EXEC:
        return _exec_error(name, paths, err)
    if stage == _spawn.STAGE_CWD:
        return StartError(err, f"cannot change directory to {command.cwd}: {os.strerror(err)}")
    if stage == _spawn.STAGE_CGROUP:
        return StartError(err, f"cannot join the job's cgroup: {os.strerror(err)}")
    if run_as is not None and stage in (_spawn.STAGE_GROUPS, _spawn.STAGE_GID, _spawn.STAGE_UID):
        what, value = {
            _spawn.STAGE_GROUPS: ("supplementary groups", str(list(run_as.groups))),
            _spawn.STAGE_GID: ("group id", str(run_as.gid)),
            _spawn.STAGE_UID: ("user id", str(run_as.uid)),
        }[stage]
        return StartError(err, f"cannot set the job's {what} to {value}: {os.strerror(err)}")
    if stage == _spawn.STAGE_DIED:
        how = f"was killed by signal {err}" if err else "exited"
        # ESRCH: the process is gone; err is a signal number, not an errno.
        return StartError(
            errno.ESRCH, f"cannot start {name}: its process {how} before executing the program"
        )
    if stage == _spawn.STAGE_PIDFD:
        return StartError(
            err, "cannot start jobs: this kernel gives no pidfd for a new process (needs 5.2)"
        )
    return StartError(err, f"cannot set up the job's process: {os.strerror(err)}")


def _exec_error(name: str, paths: Sequence[str], err: int) -> StartError:
    """Why no candidate of ``paths`` (``name`` looked up in PATH, or ``name`` itself if it
    has a ``/``) could be executed, said after the fact, from what is there now."""
    searched = "/" not in name
    if err in (errno.ENOENT, errno.ENOTDIR):
        # ENOENT for a file that exists: the interpreter it names (its #! line, or an
        # ELF's loader) does not.  (On a PATH entry, ENOTDIR only means that entry is
        # not a directory; on a path, that a component of it is not.)
        script = next((p for p in paths if os.path.isfile(p)), None)
        if err == errno.ENOENT and script is not None:
            return StartError(err, f"cannot execute {name}: {_missing_interpreter(script)}")
        if err == errno.ENOENT or searched:
            return CommandNotFound(err, f"command not found: {name}")
    if err == errno.EACCES:
        # The candidates exec tried (from the job's PATH): say why the first refused.
        found = next((p for p in paths if os.path.exists(p)), name)
        reason = "is a directory" if os.path.isdir(found) else "permission denied (not executable?)"
        return StartError(err, f"cannot execute {name}: {reason}")
    return StartError(err, f"cannot execute {name}: {os.strerror(err)}")


def _missing_interpreter(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.readline(4096)
    except OSError:
        head = b""
    if head.startswith(b"#!"):
        interpreter = head[2:].strip().split(maxsplit=1)
        if interpreter:
            shown = os.fsdecode(interpreter[0])
            return f"its interpreter {shown} (from the #! line of {path}) was not found"
    return f"{path} exists, but the interpreter (ELF loader) it needs was not found"
