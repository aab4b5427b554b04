"""The log store: one home for a job's log, from its name to its removal.

A worker keeps its logs in one directory, which it opens once (``O_PATH``) and then
reaches only through that descriptor: the job's child creates each log relative to it,
and readers reopen it relative to it too.  So a log directory that is moved, or a path
re-pointed at another directory, changes nothing for the worker: its jobs' logs stay
where they were made.

The child creates the log between clone and exec (``_spawn``), as ``{base}_{pid}.log``
with ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600: a stale log, a pid-reuse leftover or
a hostile symlink at that path makes it take ``{base}_{pid}.1.log`` ... ``.9.log``
instead, then names with 64 random bits (``{base}_{pid}.{16 hex digits}.log``) for as
long as it takes, so that names planted in a shared directory cannot block a start; and
a log that cannot be created means the program never runs.  The store gives it the
directory's fd and the base name.

A log is known by its name *and* by the identity of the file its job's child created:
device, inode and, where the file system keeps one (ext4, xfs, btrfs: not tmpfs), the
inode's generation number, since ext4 hands a deleted log's inode number to the next file
created.  Whatever is found under that name later is checked against it before it is
read, measured or removed: a file put there by someone else (another file, a symlink, a
FIFO) is never opened in a way that can block, never read, and never removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import struct
import threading
import uuid
from pathlib import Path

from ._errors import LogUnavailable, StartError, WorkerClosed
from ._fds import above_stdio

__all__ = ["LogFile", "LogStore", "log_base"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
# _IOR('v', 1, long): the inode's generation number.
_LONG = struct.calcsize("l")
_FS_IOC_GETVERSION = (2 << 30) | (_LONG << 16) | (ord("v") << 8) | 1

Identity = tuple[int, int, int | None]  # device, inode, generation (None: not kept)


def log_base(command_name: str) -> str:
    """The basename of the command, made safe for a file name: logs are
    ``{base}_{pid}.log``."""
    return _UNSAFE.sub("_", os.path.basename(command_name.rstrip("/")))[:64] or "job"


class LogStore:
    """The directory that holds a worker's logs, reached only through one descriptor."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory).absolute()
        self.dir_fd = above_stdio(os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        # Taken around every use of dir_fd by another thread than the one that closes
        # it, so that its number is never used once closed (perhaps someone else's).
        self._lock = threading.Lock()

    def base_name(self, command_name: str) -> str:
        """What the job's child names its log after (``{base}_{pid}.log``)."""
        return log_base(command_name)

    def create_error(self, err: int) -> StartError:
        """The error of a job whose child could not create its log (``errno`` ``err``)."""
        return StartError(err, f"cannot create a log in {self.path}: {os.strerror(err)}")

    def adopt(self, fd: int, name: str, job_id: uuid.UUID) -> LogFile:
        """Take over ``fd``, the log ``name`` that job ``job_id``'s child just created; on
        error it is closed and removed."""
        try:
            identity = _identity(fd)
            if identity is None:  # (O_CREAT | O_EXCL made it: cannot happen)
                raise OSError(errno.EINVAL, "the new log is not a regular file")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.dir_fd)
            os.close(fd)
            raise
        return LogFile(self, fd, name, identity, job_id)

    def open_reader(self, logfile: LogFile) -> int:
        """A new read-only descriptor on ``logfile``; ``LogUnavailable`` if the file under
        its name is gone or is not the one its job's child created."""
        with self._lock:
            return self._open(logfile)

    def size(self, logfile: LogFile) -> int | None:
        """The size of ``logfile`` on disk; None if it is gone or was replaced."""
        with self._lock:
            try:
                fd = self._open(logfile)
            except (LogUnavailable, WorkerClosed):
                return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def discard(self, logfile: LogFile) -> None:
        """Close ``logfile`` and remove it, if the file under its name is still the one
        its job's child created; anything else there is left alone."""
        logfile.close()
        with self._lock:
            try:
                fd = self._open(logfile)
            except (LogUnavailable, WorkerClosed):
                return
            try:
                # (A file swapped in between the check and the unlink would need write
                # access to the directory: the worker's own, or the owner's under /tmp's
                # sticky bit.)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(logfile.name, dir_fd=self.dir_fd)
            finally:
                os.close(fd)

    def _open(self, logfile: LogFile) -> int:
        if self.dir_fd < 0:
            raise WorkerClosed("the worker is closed")
        try:
            # O_NONBLOCK: a FIFO or a device planted under the name must not hang the
            # caller (an event loop, perhaps) in open(); what it is, is checked next.
            fd = above_stdio(
                os.open(
                    logfile.name,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=self.dir_fd,
                )
            )
        except OSError as e:
            if e.errno == errno.ELOOP:  # a symlink: not what the child created
                raise logfile.unavailable("it was replaced") from None
            raise logfile.unavailable(e.strerror or str(e)) from None
        try:
            found = _identity(fd)
        except BaseException:
            os.close(fd)
            raise
        if found is None or found != logfile.identity:
            os.close(fd)
            raise logfile.unavailable("it was replaced")
        return fd

    def close(self) -> None:
        with self._lock:
            if self.dir_fd >= 0:
                os.close(self.dir_fd)
                self.dir_fd = -1


def _identity(fd: int) -> Identity | None:
    """What tells the file open at ``fd`` from any other; None if it is not a regular
    file."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        generation = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETVERSION, bytes(_LONG)))[0]
    except OSError:
        generation = None  # (tmpfs: inode numbers there are not reused at once)
    return st.st_dev, st.st_ino, generation


class LogFile:
    """One job's log: written by the worker only, read by any number of readers."""

    def __init__(
        self,
        store: LogStore,
        fd: int,
        name: str,
        identity: Identity,
        job_id: uuid.UUID,
    ) -> None:
        self.fd = fd
        self.name = name
        self.path = store.path / name
        self.identity = identity
        self.job_id = job_id
        self._store = store

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def open_reader(self) -> int:
        return self._store.open_reader(self)

    def discard(self) -> None:
        """Close and remove this log (see ``LogStore.discard``)."""
        self._store.discard(self)

    def unavailable(self, why: str) -> LogUnavailable:
        return LogUnavailable(f"log of job {self.job_id} is unavailable: {why}")
