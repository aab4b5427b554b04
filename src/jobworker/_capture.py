"""Output capture: one pipe per job, spliced into one log file per job.

stdout and stderr share *one* pipe, so the order of the job's writes across the two is
the order they reach the log (two pipes cannot preserve it).  The worker moves the bytes
with ``splice(2)``: they go from the pipe's pages to the file's page cache without
passing through Python, in batches as large as the pipe holds, so memory stays bounded
whatever the job writes (a 64 MiB line without a newline included) and the cost per
byte is the kernel's.  The kernel's own redirect (child writes the file directly) would
avoid the copy, but measured here each small ``write()`` into a file costs more than
into a pipe; the pipe also lets the worker wake readers the moment bytes land.

The log file is created before the job starts, with no name (``O_TMPFILE``), mode 0600,
then linked as ``{name}_{pid}.log`` once the pid is known.  ``link`` never replaces and
never follows an existing name, so a stale log, a pid-reuse leftover or a hostile
symlink at that path makes the worker pick ``{name}_{pid}.1.log`` and so on instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
from pathlib import Path

__all__ = ["LogFile", "OutputPipe", "log_stem"]

PIPE_SIZE = 1 << 20
SPLICE_BATCH = 4 << 20  # per wake-up, so one chatty job cannot starve the others
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def log_stem(command_name: str, pid: int) -> str:
    """``{basename}_{pid}`` with the basename made safe for a file name."""
    base = _UNSAFE.sub("_", os.path.basename(command_name.rstrip("/")))[:64] or "job"
    return f"{base}_{pid}"


class LogFile:
    """A job's log: written by the worker only, read by any number of followers."""

    def __init__(self, fd: int, directory: Path, dir_fd: int, temp_name: str | None) -> None:
        self.fd = fd
        self._directory = directory
        self._dir_fd = dir_fd
        self._temp_name = temp_name
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)
        self.path: Path | None = None

    @classmethod
    def create(cls, directory: Path, dir_fd: int) -> LogFile:
        """A new, nameless log in ``directory`` (``dir_fd``, an ``O_PATH`` fd of it)."""
        flags = os.O_WRONLY | os.O_CLOEXEC
        try:
            fd = os.open(".", flags | os.O_TMPFILE, 0o600, dir_fd=dir_fd)
            return cls(fd, directory, dir_fd, None)
        except OSError as e:
            # O_TMPFILE needs filesystem support; an ordinary exclusive name is the
            # fallback (and is what we link from, then unlink).
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        name = f".jobworker-{secrets.token_hex(8)}.tmp"
        fd = os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        return cls(fd, directory, dir_fd, name)

    def publish(self, stem: str) -> Path:
        """Give the log its final name; never over, or through, an existing entry."""
        # An O_TMPFILE file is linked through its /proc magic link, which linkat must
        # follow; a named temporary is linked as itself.  Neither call follows the target.
        if self._temp_name is None:
            source, src_dir_fd = f"/proc/self/fd/{self.fd}", None
        else:
            source, src_dir_fd = self._temp_name, self._dir_fd
        for n in range(1000):
            name = f"{stem}.log" if n == 0 else f"{stem}.{n}.log"
            try:
                os.link(
                    source,
                    name,
                    src_dir_fd=src_dir_fd,
                    dst_dir_fd=self._dir_fd,
                    follow_symlinks=self._temp_name is None,
                )
            except FileExistsError:
                continue
            self.path = self._directory / name
            self._drop_temp()
            return self.path
        raise FileExistsError(errno.EEXIST, "no free log file name", str(self._directory / stem))

    def _drop_temp(self) -> None:
        if self._temp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp_name, dir_fd=self._dir_fd)
            self._temp_name = None

    def discard(self) -> None:
        """Undo ``create`` (the job never started)."""
        self._drop_temp()
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class OutputPipe:
    """The pipe both of a job's output streams write into."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        # A larger pipe lets a burst of small writes go without waking the worker per
        # write and moves more per splice.  Unprivileged users over their pipe quota are
        # refused; the default size still works.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.read_fd, _F_SETPIPE_SZ, PIPE_SIZE)

    def close_write(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self.close_write()
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1

    def drain_into(self, log_fd: int) -> tuple[int, bool]:
        """Move what the pipe holds now into the log: (bytes moved, writers all gone)."""
        moved = 0
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        while moved < SPLICE_BATCH:
            try:
                n = os.splice(self.read_fd, log_fd, PIPE_SIZE, flags=flags)
            except BlockingIOError:
                return moved, False
            if n == 0:
                return moved, True
            moved += n
            if n < PIPE_SIZE:
                # Short: the pipe is empty now.  epoll is level-triggered and will say
                # when more comes; asking again here would only cost an EAGAIN.
                return moved, False
        return moved, False
