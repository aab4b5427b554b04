"""Output capture: one pipe per job, copied into one log file per job.

stdout and stderr share *one* pipe, so the order of the job's writes across the two is
the order they reach the log (two pipes cannot preserve it).  The reactor copies what the
pipe holds with one ``readv`` into a 1 MiB scratch buffer and one ``write`` to the log:
memory stays bounded whatever the job writes (a 64 MiB line without a newline included),
and a burst of small writes costs one pair of system calls.

Measured on this machine (bench/capture.py, bench/diag_capture.py), and why not the
alternatives:

- ``splice(2)`` pipe-to-file avoids the copy through user space, but it keeps the pipe
  locked while it writes the file, so the job waits on that lock for nearly every small
  write: 100-byte writes ran at 0.28x of a blocking copy loop.
- The kernel redirect (the child writes the log itself) is fastest for 64 KiB writes,
  but each small ``write()`` into an ext4 file costs about 2.6x one into a pipe, and it
  leaves the worker no event to wake readers on.
- How the reactor learns that a pipe has data matters as much as the copy: see
  ``_pipewatch`` (it never polls the pipe, since polling makes every write dearer).
- For large writes any pipe costs two copies where the redirect costs one: the copier
  must put every byte into the page cache, the whole of the redirect's work, after
  taking it out of the pipe.  In C, with either read+write or splice, that caps pipe
  capture at about 0.6x of the redirect for 64 KiB writes on this machine.

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

__all__ = ["LogFile", "LogWriteError", "OutputPipe", "log_stem"]

PIPE_SIZE = 1 << 20
DEFAULT_PIPE_SIZE = 1 << 16  # the kernel's, unless the user is over a pipe quota
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


class LogWriteError(OSError):
    """The log refused a write (disk full, ...): of ``read`` bytes taken from the pipe,
    ``moved`` did reach it."""

    def __init__(self, err: int, strerror: str, read: int, moved: int) -> None:
        super().__init__(err, strerror)
        self.read = read
        self.moved = moved


class OutputPipe:
    """The pipe both of a job's output streams write into."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        self._grown = False

    def _grow(self) -> None:
        # A larger pipe lets a burst of small writes go without waking the worker per
        # write, and moves more per copy.  Only once the pipe has been found full: most
        # jobs never fill the default 64 KiB, and an enlarged pipe holds a 256-slot ring
        # in kernel memory for its whole life.  Unprivileged users over their pipe quota
        # are refused; the default size still works.
        self._grown = True
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

    def copy_once(self, log_fd: int | None, buffer: bytearray) -> tuple[int, bool]:
        """One read of what the pipe holds, into the log: (bytes moved, writers all gone).

        ``(0, False)`` means the pipe is empty now.  ``buffer`` is scratch space owned by
        the calling thread; one read empties the pipe when it is as large as the pipe.
        With ``log_fd`` None the bytes are thrown away (the log takes no more).
        """
        try:
            n = os.readv(self.read_fd, [buffer])
        except BlockingIOError:
            return 0, False
        if n == 0:
            return 0, True
        if n >= DEFAULT_PIPE_SIZE and not self._grown:
            self._grow()
        if log_fd is None:
            return n, False
        view = memoryview(buffer)
        done = 0
        try:
            while done < n:
                done += os.write(log_fd, view[done:n])
        except OSError as e:
            raise LogWriteError(e.errno or errno.EIO, e.strerror or str(e), n, done) from e
        return n, False
