"""The cgroup filesystem, as the v1 and v2 implementations both use it.

Reading and writing interface files, removing a cgroup directory (rmdir with its EBUSY
retry), parsing /proc/self/mountinfo and /proc/<pid>/cgroup, locating the worker's cgroup
in a mount, and naming the per-worker parent and job cgroups, including telling a parent
whose worker is gone.  Nothing here depends on the cgroup version.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._fds import above_stdio
from . import _dirs

__all__ = [
    "JOB_PREFIX",
    "PARENT_PREFIX",
    "RMDIR_BUSY_TIMEOUT",
    "Mount",
    "cgroup_dir",
    "new_parent_name",
    "parent_is_stale",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "populated_from_events",
    "proc_starttime",
    "read_int_or_none",
    "read_key_or_none",
    "read_keyed",
    "read_pids",
    "read_text",
    "rmdir_retry",
    "subdirs",
    "v2_cgroup_path",
    "write_file",
]

# How long rmdir keeps retrying EBUSY (see rmdir_retry).
RMDIR_BUSY_TIMEOUT = 1.0

PARENT_PREFIX = "jobworker-"
JOB_PREFIX = "job-"
_PARENT_RE = re.compile(r"jobworker-(\d+)-(\d+)(?:-\d+)?")

# Shared by every implementation so that two ResourceControl instances in one process
# (tests, or a worker re-created after close) never pick the same parent name.
_SEQUENCE = itertools.count()


# ---------------------------------------------------------------------------------------
# Files


def write_file(path: str, data: str) -> None:
    """Write ``data`` to a cgroup interface file in one ``write``.

    The kernel parses each ``write`` call as one complete value, so the value must go in a
    single call.  No ``O_CREAT``: an interface file that is missing means the kernel lacks
    the feature, which must surface as an error, not as a new regular file.  ``O_TRUNC``
    is what a shell's ``>`` passes too; kernfs ignores it, and it keeps a regular file
    (the temp-dir layout of the tests) holding exactly the last value written.
    """
    fd = above_stdio(os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC))
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    # Raw reads: these files are small, and the end of every job reads several of them
    # on the reactor thread, where the text-I/O stack's cost per open adds up.
    fd = above_stdio(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    # fsdecode: a cgroup path in /proc/self/cgroup or mountinfo may hold any bytes, and
    # must map back to the same bytes when it is opened.
    return os.fsdecode(b"".join(chunks))


def read_keyed(path: str) -> dict[str, int]:
    """Parse a flat-keyed file (``key value`` lines) such as cpu.stat or memory.events."""
    out: dict[str, int] = {}
    for line in read_text(path).splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def read_key_or_none(path: str, key: str) -> int | None:
    try:
        return read_keyed(path).get(key)
    except OSError:
        return None


def read_int_or_none(path: str) -> int | None:
    try:
        return int(read_text(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_pids(procs_file: str) -> list[int]:
    return [int(x) for x in read_text(procs_file).split()]


def populated_from_events(events_file: str) -> bool:
    """``populated`` of a v2 ``cgroup.events``; a cgroup that is gone is not populated."""
    try:
        return read_keyed(events_file).get("populated", 0) != 0
    except FileNotFoundError:
        return False


def subdirs(path: str) -> list[str]:
    """The subdirectories of ``path`` (none if it is gone), listed through an fd above
    stderr (``_dirs.subdirs``): the background thread lists while a host that closed its
    stdio runs its own code."""
    try:
        return [os.path.join(path, name) for name in _dirs.subdirs(path)]
    except FileNotFoundError:
        return []


def rmdir_retry(rmdir: Callable[[str], None], path: str) -> None:
    """rmdir ``path`` (gone already is fine), retrying EBUSY for a bounded time.

    Right after the last task of a cgroup exits, rmdir can fail with EBUSY for a short
    while although ``cgroup.procs`` is already empty: a task leaves the procs list before
    it drops its last reference on the cgroup (reported for v1 hierarchies; a 6.18 kernel
    did not show it in 100 tries).  There is no event for "removable", hence this one
    short bounded retry loop.
    """
    deadline = time.monotonic() + RMDIR_BUSY_TIMEOUT
    delay = 0.002
    while True:
        try:
            rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# ---------------------------------------------------------------------------------------
# Mounts and /proc/<pid>/cgroup


@dataclass(frozen=True)
class Mount:
    root: str
    mountpoint: str
    fstype: str
    options: frozenset[str]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        try:
            sep = parts.index("-", 6)
        except ValueError:
            continue
        if len(parts) < sep + 2:
            continue
        opts = parts[sep + 3] if len(parts) > sep + 3 else ""
        mounts.append(
            Mount(
                root=_unescape(parts[3]),
                mountpoint=_unescape(parts[4]),
                fstype=parts[sep + 1],
                options=frozenset(opts.split(",")),
            )
        )
    return mounts


def parse_proc_cgroup(text: str) -> list[tuple[int, list[str], str]]:
    """Lines of /proc/<pid>/cgroup as (hierarchy id, controllers, path)."""
    out = []
    for line in text.splitlines():
        hid, sep1, rest = line.partition(":")
        ctrls, sep2, path = rest.partition(":")
        if not sep1 or not sep2:
            continue
        out.append((int(hid), [c for c in ctrls.split(",") if c], path))
    return out


def cgroup_dir(mountpoint: str, mount_root: str, cgroup_path: str) -> str | None:
    """The directory of ``cgroup_path`` in a mount of the hierarchy rooted at ``mount_root``.

    None when the cgroup is not visible through that mount (outside its root, or outside
    this process's cgroup namespace, which /proc shows as a path starting with "/..").
    """
    if ".." in cgroup_path.split("/"):
        return None  # normpath would silently turn "/../x" into "/x"
    rel = posixpath.relpath(posixpath.normpath(cgroup_path), mount_root)
    if rel == ".." or rel.startswith("../"):
        return None
    return mountpoint if rel == "." else os.path.join(mountpoint, rel)


def v2_cgroup_path(proc_cgroup_text: str) -> str | None:
    for hid, ctrls, path in parse_proc_cgroup(proc_cgroup_text):
        if hid == 0 and not ctrls:
            return path
    return None


# ---------------------------------------------------------------------------------------
# Parent and job names


def proc_starttime(pid: int, proc: str = "/proc") -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None."""
    try:
        data = read_text(f"{proc}/{pid}/stat")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its end.
    rest = data[data.rindex(")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def parent_is_stale(name: str) -> bool:
    """Whether a ``jobworker-<pid>-<starttime>[-<n>]`` directory's worker is gone.

    The start time makes this safe against pid reuse: a new process with the dead
    worker's pid has a different start time.
    """
    m = _PARENT_RE.fullmatch(name)
    if m is None:
        return False
    return proc_starttime(int(m[1])) != int(m[2])


def new_parent_name() -> str:
    pid = os.getpid()
    return f"{PARENT_PREFIX}{pid}-{proc_starttime(pid)}-{next(_SEQUENCE)}"
