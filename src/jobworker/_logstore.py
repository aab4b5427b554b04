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

**Bytes at their own offsets.**  Byte ``n`` of a log is byte ``n`` of the job's output,
which is what lets a reader resume at an offset.  The worker writes with ``O_APPEND``,
so each write lands at the file's end, wherever that is, and its own file position after
the write says where that was: if it is not where the job's previous bytes ended, the
file changed size under the worker (``copytruncate`` by a log rotator, say).  Writing at
the worker's own offset instead would have left a hole of NULs where the cut bytes were,
indistinguishable from output.  A log that refuses a write (a full disk) or was found cut
takes no more bytes: it holds a prefix of the job's output (``held``) and the rest is
counted as ``lost``, which ``JobInfo.log_loss`` reports and every reader reaching the end
of the prefix gets as ``LogUnavailable``.  The job itself never waits on its log.  A log
that reaches the store's cap (``max_log_size``, retention) is cut the same way: it keeps
the head of the output, at its own offsets, and counts the rest.

**What the logs take.**  The store keeps ``total``, the space this worker's logs take:
for a running log the bytes it holds (the writer adds them as it writes, with no system
call), for an ended one its size rounded up to the file system's block (a 10-byte log
takes a block).  Retention (``_retention``) watches it: ``watch`` names a size past
which the writer calls back, at once, so that a disk budget is kept as logs grow, not
only when a timer comes round.  Only the reactor thread changes ``total``.

Between a write that landed at the wrong offset and the writer's look at where it
landed, a reader could ``pread`` those bytes.  So the writer numbers its writes, and a
reader keeps what it read only once every write begun before its ``pread`` ended has
been checked (it waits for that, like for more output, without reading again), trimmed
to ``held``.  A reader that finds the file shorter than ``held`` notes it (``short``),
for itself, every other reader and ``JobInfo`` at once, and for the writer to take in.
The writer never takes a lock: it runs on the reactor thread and is the only one to
change its fields, which readers on other threads only read (attribute reads and writes
are ordered by the GIL).  A lock held across a write would make an async reader's event
loop wait for the disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import struct
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from ._errors import LogUnavailable, StartError, WorkerClosed
from ._fds import above_stdio
from ._model import LogLoss, LossCause

__all__ = ["LogFile", "LogStore", "log_base"]

log = logging.getLogger("jobworker")

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

    def __init__(
        self, directory: str | os.PathLike[str], *, max_log_size: int | None = None
    ) -> None:
        self.path = Path(directory).absolute()
        self.dir_fd = above_stdio(os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        # Taken around every use of dir_fd by another thread than the one that closes
        # it, so that its number is never used once closed (perhaps someone else's).
        self._lock = threading.Lock()
        try:
            fs = os.fstatvfs(self.dir_fd)
        except OSError:
            os.close(self.dir_fd)
            raise
        self.block = fs.f_frsize or fs.f_bsize or 4096
        self.capacity = fs.f_blocks * self.block
        """The size of the file system that holds the directory, in bytes."""
        self.max_log_size = max_log_size
        """The most a log holds (its head); None: no cap."""
        self.total = 0
        self._watermark: int | None = None
        self._over: Callable[[], None] | None = None

    def watch(self, size: int | None, over: Callable[[], None]) -> None:
        """Call ``over`` (on the reactor thread) whenever a write leaves ``total`` above
        ``size``; None: never."""
        self._watermark, self._over = size, over

    def on_disk(self, size: int) -> int:
        """The space a file of ``size`` bytes takes: whole blocks."""
        return -(-size // self.block) * self.block

    def account(self, logfile: LogFile, charge: int) -> None:
        """``logfile`` now takes ``charge`` bytes (reactor thread)."""
        self.total += charge - logfile.charged
        logfile.charged = charge
        if self._watermark is not None and self.total > self._watermark:
            assert self._over is not None
            self._over()

    def release(self, logfile: LogFile) -> None:
        """``logfile`` is on its way out: it no longer counts (reactor thread)."""
        self.total -= logfile.charged
        logfile.charged = 0

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
            identity = _identity(fd)[0]
            if identity is None:  # (O_CREAT | O_EXCL made it: cannot happen)
                raise OSError(errno.EINVAL, "the new log is not a regular file")
            # The child creates it O_WRONLY; appending is what shows a cut (see above).
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
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
            return self._open(logfile)[0]

    def size(self, logfile: LogFile) -> int | None:
        """The size of ``logfile`` on disk; None if it is gone or was replaced."""
        with self._lock:
            try:
                fd, size = self._open(logfile)
            except (LogUnavailable, WorkerClosed):
                return None
        os.close(fd)
        return size

    def discard(self, logfile: LogFile) -> None:
        """Close ``logfile`` and remove it, if the file under its name is still the one
        its job's child created; anything else there is left alone."""
        logfile.close()
        if logfile.charged:  # (a start that failed after output came: rare)
            self.release(logfile)
        self._unlink(logfile)

    def remove(self, logfile: LogFile) -> int | None:
        """Remove the log of an ended job (retention: ``release`` it first), if the file
        under its name is still the one its job's child created; return its size, or None
        if something else is there now (left alone) or nothing is.

        Readers that have it open read on to its end: the open descriptor keeps the data
        until the last one is closed.  Not on the reactor thread: unlinking a large file
        frees its blocks there and then, which takes milliseconds.
        """
        return self._unlink(logfile)

    def _unlink(self, logfile: LogFile) -> int | None:
        with self._lock:
            try:
                fd, size = self._open(logfile, removing=True)
            except (LogUnavailable, WorkerClosed):
                return None
            try:
                # (A file swapped in between the check and the unlink would need write
                # access to the directory: the worker's own, or the owner's under /tmp's
                # sticky bit.)
                os.unlink(logfile.name, dir_fd=self.dir_fd)
            except FileNotFoundError:
                return None
            finally:
                os.close(fd)
        return size

    def _open(self, logfile: LogFile, removing: bool = False) -> tuple[int, int]:
        """A read-only descriptor on ``logfile`` and its size (under ``_lock``)."""
        if self.dir_fd < 0:
            raise WorkerClosed("the worker is closed")
        if logfile.removed is not None and not removing:
            # Whatever is under its name now (perhaps still the log, for a moment) is
            # not for new readers: the log is on its way out.
            raise logfile.unavailable(f"it was removed ({logfile.removed})")
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
            found, size = _identity(fd)
        except BaseException:
            os.close(fd)
            raise
        if found is None or found != logfile.identity:
            os.close(fd)
            raise logfile.unavailable("it was replaced")
        return fd, size

    def close(self) -> None:
        with self._lock:
            if self.dir_fd >= 0:
                os.close(self.dir_fd)
                self.dir_fd = -1


def _identity(fd: int) -> tuple[Identity | None, int]:
    """What tells the file open at ``fd`` from any other (None if it is not a regular
    file), and its size."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None, st.st_size
    try:
        generation = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETVERSION, bytes(_LONG)))[0]
    except OSError:
        generation = None  # (tmpfs: inode numbers there are not reused at once)
    return (st.st_dev, st.st_ino, generation), st.st_size


class LogFile:
    """One job's log: appended to by the worker only, read by any number of readers.

    Written by the writer (the reactor thread) only: ``held``, the bytes of the job's
    output the file holds at their own offsets, ``lost``, those it does not, ``cut`` once
    the log takes no more, and ``begun`` / ``checked``, the writes begun and those whose
    landing was checked; ``charged``, what it counts for in the store's ``total``, and
    ``removed``, why retention removes it, once it does.  Written by readers only:
    ``short``.
    """

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
        self.held = 0
        self.lost = 0
        self.cut: tuple[LossCause, str] | None = None
        self.begun = 0
        self.checked = 0
        self.short: int | None = None  # a size a reader found the file at, below held
        self.charged = 0
        self.removed: str | None = None
        self._noting = threading.Lock()  # (among readers)
        self._store = store

    # -- the writer (the reactor thread) ---------------------------------------------------

    def append(self, data: memoryview) -> bool:
        """Add the job's next bytes.  Returns whether readers have something new to see
        (more bytes, a cut, a checked write).  Never raises for the log's sake."""
        if self.cut is not None or self.short is not None:
            if self.cut is None:  # a reader found the file cut: take that in
                self._cut(LossCause.TRUNCATED, _CUT_BY_OTHERS, self.limit)
            self.lost += len(data)
            return False
        fd, held = self.fd, self.held
        # Past the cap, only the head is kept: the bytes the log holds stay at their own
        # offsets, which a tail could not (see docs/DESIGN.md, "Retention").
        cap = self._store.max_log_size
        over = 0 if cap is None else max(0, held + len(data) - cap)
        if over:
            data = data[: len(data) - over]
        self.begun += 1
        try:
            while data:
                wrote = os.write(fd, data)
                end = os.lseek(fd, 0, os.SEEK_CUR)
                if end != held + wrote:
                    # The file's end was not where the job's bytes ended: cut (or grown)
                    # by someone else.  What this write put at end - wrote is not at its
                    # own offset; the file holds the job's bytes only up to there (or to
                    # held, if it was grown).
                    start = end - wrote
                    why = _CUT_BY_OTHERS if start < held else _GROWN_BY_OTHERS
                    self._cut(LossCause.TRUNCATED, why, min(start, held))
                    self.lost += len(data)
                    break
                self.held = held = end
                data = data[wrote:]
        except OSError as e:
            self._cut(LossCause.WRITE_FAILED, e.strerror or str(e), held)
            self.lost += len(data)
        finally:
            self.checked = self.begun
        if over:
            if self.cut is None:
                self._cut(LossCause.CAPPED, f"the log reached its cap of {cap} bytes", held)
            self.lost += over
        self._store.account(self, self.held)
        return True

    def finish(self) -> None:
        """The job has ended: check that the file still holds every byte, and close it."""
        if self.fd >= 0:
            size = self.limit
            with contextlib.suppress(OSError):
                size = min(size, os.fstat(self.fd).st_size)
            if size < self.held and self.cut is None:
                self._cut(LossCause.TRUNCATED, _CUT_BY_OTHERS, size)
            elif size < self.held:  # cut before, and shortened since
                self.lost += self.held - size
                self.held = size
            self._store.account(self, self._store.on_disk(size))
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _cut(self, cause: LossCause, detail: str, held: int) -> None:
        log.warning(
            "jobworker: job %s: its log holds only the first %d bytes of its output (%s);"
            " the rest is counted, not kept",
            self.job_id,
            held,
            detail,
        )
        self.lost += self.held - held
        self.held = held
        self.cut = (cause, detail)

    # -- readers (any thread) --------------------------------------------------------------

    def open_reader(self) -> int:
        return self._store.open_reader(self)

    def discard(self) -> None:
        """Close and remove this log (see ``LogStore.discard``)."""
        self._store.discard(self)

    @property
    def limit(self) -> int:
        """Readers read below this offset: held, or less if a reader found the file short."""
        short = self.short
        return self.held if short is None else min(short, self.held)

    @property
    def ended_short(self) -> bool:
        """The log takes no more, or is known to hold less than it was given."""
        return self.cut is not None or self.short is not None

    def readable(self, offset: int, got: int, since: int) -> int | None:
        """How many of ``got`` bytes read at ``offset`` are the job's own bytes at their
        own offsets; None until the writes begun before the read (``since``, the value of
        ``begun`` read after it) are checked."""
        if self.checked < since:
            return None
        return max(0, min(got, self.limit - offset))

    def note_short(self, size: int) -> bool:
        """A reader found the file ``size`` bytes long, short of what the worker wrote.
        Returns whether that is news (readers waiting must look again)."""
        with self._noting:
            if size >= self.limit:
                return False
            self.short = size
            return True

    def loss(self) -> LogLoss | None:
        # (A snapshot: while the job runs, lost keeps growing.)
        cut, short, held, lost = self.cut, self.short, self.held, self.lost
        if short is not None and short < held:
            cut = cut or (LossCause.TRUNCATED, _CUT_BY_OTHERS)
            held, lost = short, lost + held - short
        if cut is None:
            return None
        return LogLoss(cut[0], held=held, lost=lost, detail=cut[1])

    def unavailable(self, why: str) -> LogUnavailable:
        return LogUnavailable(f"log of job {self.job_id} is unavailable: {why}")

    def cut_short(self) -> LogUnavailable:
        """What a reader that has read every byte the log holds gets, once it is cut."""
        loss = self.loss()
        held, detail = (loss.held, loss.detail) if loss else (self.limit, _CUT_BY_OTHERS)
        return LogUnavailable(
            f"log of job {self.job_id} was cut short: it holds only the first {held}"
            f" bytes of the job's output ({detail})"
        )


_CUT_BY_OTHERS = "the file was truncated by someone else"
_GROWN_BY_OTHERS = "someone else wrote into the file"
