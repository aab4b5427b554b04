"""What the CLI prints about jobs: aligned tables for people, JSON for programs.

Everything here is built over the library's ``JobInfo``, so the same functions print a job
run in this process and a job the service answers about.

The JSON shape (documented in docs/CLI.md, and stable: keys are only ever added) mirrors
``JobInfo``: snake_case keys, times as ISO-8601 UTC strings, null where unknown.  Colour
only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import click

from jobworker import JobInfo, State, Status

from ._limits import format_size

__all__ = [
    "STDOUT",
    "format_duration",
    "job_details",
    "job_record",
    "jobs_table",
    "oom_message",
    "print_json",
    "status_text",
    "use_colour",
    "write_all",
]


def use_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


# -- JSON ----------------------------------------------------------------------------------


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _duration(info: JobInfo, now: float | None) -> float:
    end = info.ended_at if info.ended_at is not None else (time.time() if now is None else now)
    return max(0.0, end - info.started_at)


def job_record(info: JobInfo, *, log_kept: bool = True, now: float | None = None) -> dict[str, Any]:
    """``info`` as the JSON object documented in docs/CLI.md.

    ``log_kept`` False: the log was removed (``run`` without ``--log-dir``), so
    ``log_path`` is null.  ``now``: the time a running job's duration runs to.
    """
    status, command, limits, usage = info.status, info.command, info.limits, info.usage
    return {
        "id": str(info.id),
        "owner_id": str(info.owner_id),
        "command": {
            "name": command.name,
            "args": list(command.args),
            "env": None if command.env is None else dict(command.env),
            "cwd": command.cwd,
        },
        "pid": info.pid,
        "status": {
            "state": status.state.value,
            "exit_code": status.exit_code,
            "signal": status.signal,
            "stop_type": None if status.stop_type is None else status.stop_type.value,
            "oom_killed": status.oom_killed,
        },
        "log_path": str(info.log_path) if log_kept else None,
        "started_at": _iso(info.started_at),
        "ended_at": _iso(info.ended_at),
        "duration_seconds": round(_duration(info, now), 6),
        "limits": {
            "cpu": limits.cpu,
            "memory": limits.memory,
            "io_read_bps": limits.io_read_bps,
            "io_write_bps": limits.io_write_bps,
            "io_path": limits.io_path,
            "pids": limits.pids,
        },
        "usage": {
            "cpu_seconds": usage.cpu_seconds,
            "memory_peak": usage.memory_peak,
            "cpu_throttled": usage.cpu_throttled,
            "oom_kills": usage.oom_kills,
            "pids_limit_hits": usage.pids_limit_hits,
        },
        "run_as": None
        if info.run_as is None
        else {"uid": info.run_as.uid, "gid": info.run_as.gid, "groups": list(info.run_as.groups)},
    }


def print_json(data: Any, file: TextIO | None, *, one_line: bool = False) -> None:
    """``data`` as JSON, indented, or on ``one_line``; nothing if ``file`` is None (Python
    started with that stream closed)."""
    if file is None:
        return
    text = json.dumps(data, separators=(",", ":")) if one_line else json.dumps(data, indent=2)
    file.write(text + "\n")
    file.flush()


# -- the job's own bytes ---------------------------------------------------------------------

STDOUT = 1


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, as it is, even if someone made it non-blocking."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            # Whoever shares our stdout set it non-blocking (a terminal, a pipe).
            import select

            select.select([], [fd], [])
            continue
        view = view[written:]


# -- for people ----------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``0.93ms``, ``12.5ms``, ``4.52s``, ``3m04s``, ``2h05m``, ``3d04h``."""
    if seconds < 1:
        return f"{seconds * 1000:.3g}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _local_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def status_text(status: Status) -> str:
    """A status in a few words: ``running``, ``exited 3``, ``stopped (TERM)``,
    ``signaled SIGSEGV``, ``signaled SIGKILL (OOM)``."""
    if status.state is State.EXITED:
        return f"exited {_exit_text(status)}"
    if status.state is State.STOPPED and status.stop_type is not None:
        return f"stopped ({status.stop_type.name})"
    if status.state is State.SIGNALED:
        return f"signaled {_exit_text(status)}" + (" (OOM)" if status.oom_killed else "")
    return str(status.state.value)


def _exit_text(status: Status) -> str:
    if status.exit_code is not None:
        return str(status.exit_code)
    if status.signal is not None:
        return _signal_name(status.signal)
    return "-"


def _state_style(status: Status) -> dict[str, Any]:
    if status.state is State.RUNNING:
        return {"fg": "cyan"}
    if status.state is State.EXITED and status.exit_code == 0:
        return {"fg": "green"}
    if status.state is State.STOPPED:
        return {"fg": "yellow"}
    return {"fg": "red"}


class _Cell:
    def __init__(self, text: str, **style: Any) -> None:
        self.text = text
        self.style = style

    def render(self, colour: bool) -> str:
        return click.style(self.text, **self.style) if colour and self.style else self.text


def _aligned(rows: Sequence[Sequence[_Cell]], colour: bool) -> str:
    widths = [max(len(row[i].text) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        parts = [
            cell.render(colour) + " " * (widths[i] - len(cell.text)) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {
    0x09: "\\t",
    0x0A: "\\n",
    0x0D: "\\r",
}


def _command_text(info: JobInfo) -> str:
    # On one line, and never an escape sequence the terminal would act on: the command
    # is whatever its owner typed.
    return shlex.join(info.command.argv).translate(_CONTROL)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _common(info: JobInfo, now: float | None) -> dict[str, _Cell]:
    status, usage = info.status, info.usage
    return {
        "state": _Cell(status.state.value, **_state_style(status)),
        "exit": _Cell(_exit_text(status), **({"fg": "red"} if status.signal else {})),
        "stop": _Cell(status.stop_type.name if status.stop_type else "-"),
        "oom": _Cell("yes", fg="red", bold=True) if status.oom_killed else _Cell("-"),
        "started": _Cell(_local_time(info.started_at)),
        "duration": _Cell(format_duration(_duration(info, now))),
        "cpu": _Cell("-" if usage.cpu_seconds is None else format_duration(usage.cpu_seconds)),
        "memory": _Cell("-" if usage.memory_peak is None else format_size(usage.memory_peak)),
    }


COMMAND_WIDTH = 40


def jobs_table(
    infos: Iterable[JobInfo], *, colour: bool, owners: bool = False, now: float | None = None
) -> str:
    """One line per job under a header: id, (with ``owners``: owner id,) command, state,
    exit code or signal, stop type, OOM, start time (local), duration, CPU time, peak
    memory."""
    header = [
        "ID",
        *(["OWNER"] if owners else []),
        "COMMAND",
        "STATE",
        "EXIT",
        "STOP",
        "OOM",
        "STARTED",
        "DURATION",
        "CPU",
        "MEMORY",
    ]
    rows = [[_Cell(h) for h in header]]
    for info in infos:
        cells = _common(info, now)
        command = _shorten(_command_text(info), COMMAND_WIDTH)
        owner = [_Cell(str(info.owner_id))] if owners else []
        rows.append([_Cell(str(info.id)), *owner, _Cell(command), *cells.values()])
    return _aligned(rows, colour)


def _limits_text(info: JobInfo) -> str:
    limits = info.limits
    parts = []
    if limits.cpu is not None:
        parts.append(f"cpu {limits.cpu:g}")
    if limits.memory is not None:
        parts.append(f"memory {format_size(limits.memory)}")
    if limits.io_read_bps is not None:
        parts.append(f"io-read {format_size(limits.io_read_bps)}/s")
    if limits.io_write_bps is not None:
        parts.append(f"io-write {format_size(limits.io_write_bps)}/s")
    if (limits.io_read_bps or limits.io_write_bps) and limits.io_path:
        parts.append(f"io-path {limits.io_path}")
    if limits.pids is not None:
        parts.append(f"pids {limits.pids}")
    return ", ".join(parts) or "none"


def _run_as_text(info: JobInfo) -> str:
    run_as = info.run_as
    if run_as is None:
        return "-"  # the worker's own user
    groups = ",".join(str(g) for g in run_as.groups) or "none"
    return f"uid {run_as.uid}, gid {run_as.gid}, groups {groups}"


def job_details(
    info: JobInfo, *, colour: bool, log_kept: bool = True, now: float | None = None
) -> str:
    """One job, one field a line, nothing shortened."""
    cells = _common(info, now)
    status = info.status
    exit_label = "signal" if status.signal is not None else "exit code"
    fields = [
        ("id", _Cell(str(info.id))),
        ("owner", _Cell(str(info.owner_id))),
        ("command", _Cell(_command_text(info))),
        ("state", cells["state"]),
        (exit_label, cells["exit"]),
        ("stop type", cells["stop"]),
        ("oom killed", _Cell("yes", fg="red", bold=True) if status.oom_killed else _Cell("no")),
        ("pid", _Cell(str(info.pid))),
        ("started", cells["started"]),
        ("ended", _Cell("-" if info.ended_at is None else _local_time(info.ended_at))),
        ("duration", cells["duration"]),
        ("cpu time", cells["cpu"]),
        ("memory peak", cells["memory"]),
        ("limits", _Cell(_limits_text(info))),
        ("runs as", _Cell(_run_as_text(info))),
        ("log", _Cell(str(info.log_path) if log_kept else "(removed)")),
    ]
    return _aligned([[_Cell(name + ":"), cell] for name, cell in fields], colour)


def oom_message(info: JobInfo) -> str:
    memory = info.limits.memory
    limit = f" (memory limit {format_size(memory)})" if memory is not None else ""
    return f"the job was killed by the kernel's OOM killer{limit}"
