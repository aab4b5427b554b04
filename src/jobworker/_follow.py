"""Following a job's output: readers of its log that wait at EOF for more.

A reader owns one file descriptor on the log and nothing else.  At end of file it
compares its position with the job's count of bytes written; only if it has everything
and the job has not ended does it hand the job a one-shot waiter, which the reactor calls
right after the next copy into the log (or at the end).  So a reader is woken directly by the
writer, never polls, and costs the job nothing while it is not waiting.  A slow reader
only falls behind in the file; the job and the other readers never wait for it.

EOF is reported only once the job has ended *and* the reader has read every byte the
job's log received.  A log cut short (``_logstore``: a full disk, a file truncated by
someone else) has no EOF: a reader that has read every byte it holds gets
``LogUnavailable`` instead, at once, whether the job has ended or not.

Iterating a reader to its end (or to an error) closes it, and a reader nobody closed is
closed when it is collected, with a ``ResourceWarning``, as a file is.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType

from ._job import Job

__all__ = ["AsyncLogReader", "LogReader", "resolve_soon"]

CHUNK = 1 << 16


class _Wait(enum.Enum):
    MORE = "more"  # output beyond the reader's position, or the end
    CHECK = "check"  # the writer's check of where its write under way landed


class _ReaderBase:
    _fd = -1  # (until opened: a reader whose opening failed has nothing to release)

    def __init__(self, job: Job, offset: int = 0) -> None:
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an integer >= 0, not {offset!r}")
        self._job = job
        self._log = job.log
        # Held around each pread and the close: a reader closed from another thread
        # must not have its fd number reused by someone else's file mid-read.
        self._io = threading.Lock()
        self._fd = job.log.open_reader()
        # Past the end of a running job's output, the reader waits for it to get there.
        self._pos = offset
        # Read at _pos, and the log's write count then, until those writes are checked.
        self._pending: tuple[bytes, int] | None = None

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def offset(self) -> int:
        """The offset of the next byte this reader returns."""
        return self._pos

    def _read_now(self, size: int) -> bytes | _Wait:
        """Bytes available now; b"" at the real end; or what the caller must wait for
        (``_wait_for``)."""
        log = self._log
        # Look at the count before reading, so bytes counted are bytes readable.
        ended = self._job.ended.is_set()
        limit = log.limit
        short = False
        with self._io:
            if self._fd < 0:
                raise ValueError("I/O operation on closed reader")
            if self._pending is None:
                available = limit - self._pos
                if available <= 0:
                    if log.ended_short:
                        raise log.cut_short()
                    return b"" if ended else _Wait.MORE
                want = min(size, available)
                data = os.pread(self._fd, want, self._pos)
                # Any write begun until now may have put bytes in that range at the
                # wrong offset, in a file cut meanwhile (_logstore): they are kept once
                # the writer has checked where each of those writes landed.
                self._pending = data, log.begun
                short = len(data) < want
            data, since = self._pending
        if short:
            # The worker wrote those bytes: someone cut the file short.  Stopping there
            # with b"" would say "the end", which it is not.
            self._job.log_found_short(self._pos + len(data))
        keep = log.readable(self._pos, len(data), since)
        if keep is None:
            return _Wait.CHECK
        self._pending = None
        keep = min(keep, size)
        if keep == 0:
            raise log.cut_short()
        self._pos += keep
        return data if keep == len(data) else data[:keep]

    def _wait_for(self, what: _Wait, waiter: Callable[[], None]) -> bool:
        """Hand the job ``waiter`` for ``what``; False if it came meanwhile."""
        if what is _Wait.CHECK and self._pending is not None:
            return self._job.wait_for_check(self._pending[1], waiter)
        return self._job.wait_for_more(self._pos, waiter)

    def _release(self) -> None:
        with self._io:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __del__(self) -> None:
        if self._fd >= 0:
            self._release()
            warnings.warn(
                f"unclosed {type(self).__name__} of job {self._job.id}",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )


class LogReader(_ReaderBase):
    """A blocking, binary reader of a job's output from byte ``offset`` (0: the first)."""

    def __init__(self, job: Job, offset: int = 0) -> None:
        super().__init__(job, offset)
        self._wake = threading.Event()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all until the end if negative); b"" only at the end."""
        if size < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        if size == 0:
            return b""
        while True:
            # Cleared before looking, not after: a close() from another thread that
            # lands between the look and the wait must still end the wait.
            self._wake.clear()
            data = self._read_now(size)
            if not isinstance(data, _Wait):
                return data
            if self._wait_for(data, self._wake.set):
                self._wake.wait()
                if self._fd < 0:  # closed meanwhile: leave no waiter behind
                    self._job.forget(self._wake.set)

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        # The end of the stream, or an error, ends the reader: `for chunk in
        # worker.stream(...)` has no with block to close it.
        try:
            while chunk := self.read(CHUNK):
                yield chunk
        except Exception:
            self.close()
            raise
        self.close()

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        self._job.forget(self._wake.set)
        self._release()
        self._wake.set()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncLogReader(_ReaderBase):
    """The asyncio face of ``LogReader``: ``await read()`` and ``async for chunk in``."""

    def __init__(self, job: Job, offset: int = 0) -> None:
        # The loop first: without one, no fd may have been opened.
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[None] | None = None
        super().__init__(job, offset)

    def _wake(self) -> None:
        # Called on the reactor thread (or on a reader's, that found the log cut).
        fut = self._future
        if fut is not None:
            resolve_soon(self._loop, fut)

    async def read(self, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes as soon as there are any; b"" only at the end."""
        if size <= 0:
            raise ValueError("size must be positive")
        while True:
            data = self._read_now(size)
            if not isinstance(data, _Wait):
                return data
            self._future = self._loop.create_future()
            if self._wait_for(data, self._wake):
                try:
                    await self._future
                finally:
                    self._job.forget(self._wake)
            self._future = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        # As LogReader._chunks.  (Abandoned early, the reader stays open, and usable:
        # asyncio finalizes an abandoned generator at some later turn of the loop.)
        try:
            while chunk := await self.read():
                yield chunk
        except Exception:
            self.close()
            raise
        self.close()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self._job.forget(self._wake)
        self._release()
        # A read() waiting at the end wakes, and finds the reader closed (as a blocking
        # reader's does).
        self._wake()

    async def __aenter__(self) -> AsyncLogReader:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def resolve_soon(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    """From the reactor thread, resolve ``fut`` on ``loop``; a loop closed meanwhile has
    no one left to wake."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_resolve, fut)
