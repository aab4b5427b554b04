"""Shared helpers of the benchmarks: the C writer, /proc/self probes, timing, output.

Every benchmark measures its baselines in the same run as the worker, interleaved, and
reports medians.  Nothing here imports anything outside the standard library and
``jobworker``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jobworker import NoCgroups, ResourceControl, Worker, detect

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MiB = 1 << 20

# ---------------------------------------------------------------------------------------
# The writer: a C program, so that the writer is never the bottleneck Python would be.

WRITER_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            _exit(3);
        }
        p += w;
        n -= (size_t)w;
    }
}

/* writer bytes TOTAL CHUNK NFDS NEWLINES
 *   TOTAL bytes in writes of CHUNK bytes (one write() each), alternating between fd 1
 *   and fd 2 if NFDS is 2; the content has a newline every 100 bytes if NEWLINES is 1.
 * writer ticks COUNT INTERVAL_US
 *   COUNT lines "<CLOCK_MONOTONIC ns> <i>\n", one every INTERVAL_US (absolute deadlines).
 */
int main(int argc, char **argv) {
    if (argc == 6 && strcmp(argv[1], "bytes") == 0) {
        long long total = atoll(argv[2]);
        size_t chunk = (size_t)atoll(argv[3]);
        int alternate = atoi(argv[4]) == 2;
        int newlines = atoi(argv[5]) == 1;
        char *buf = malloc(chunk);
        if (buf == NULL || chunk == 0) return 2;
        for (size_t i = 0; i < chunk; i++)
            buf[i] = (newlines && i % 100 == 99) ? '\n' : (char)('a' + i % 26);
        int fd = 1;
        while (total > 0) {
            size_t n = (long long)chunk < total ? chunk : (size_t)total;
            write_all(fd, buf, n);
            total -= (long long)n;
            if (alternate) fd = 3 - fd;
        }
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "ticks") == 0) {
        long count = atol(argv[2]);
        long interval_ns = atol(argv[3]) * 1000L;
        struct timespec next, now;
        char line[64];
        clock_gettime(CLOCK_MONOTONIC, &next);
        for (long i = 0; i < count; i++) {
            next.tv_nsec += interval_ns;
            while (next.tv_nsec >= 1000000000L) {
                next.tv_nsec -= 1000000000L;
                next.tv_sec += 1;
            }
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {
            }
            clock_gettime(CLOCK_MONOTONIC, &now);
            long long ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
            int len = snprintf(line, sizeof line, "%lld %ld\n", ns, i);
            write_all(1, line, (size_t)len);
        }
        return 0;
    }
    fprintf(stderr, "usage: writer bytes TOTAL CHUNK NFDS NEWLINES | ticks COUNT US\n");
    return 2;
}
"""


def compile_writer(directory: Path) -> Path:
    """Compile the C writer into ``directory`` with gcc -O2; return its path."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit("benchmarks need gcc (or cc) to build the C writer")
    src = directory / "writer.c"
    exe = directory / "writer"
    src.write_text(WRITER_C)
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    return exe


def bytes_argv(
    writer: Path, total: int, chunk: int, nfds: int = 2, newlines: bool = True
) -> list[str]:
    return [str(writer), "bytes", str(total), str(chunk), str(nfds), "1" if newlines else "0"]


def ticks_argv(writer: Path, count: int, interval_us: int) -> list[str]:
    return [str(writer), "ticks", str(count), str(interval_us)]


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A scratch directory on the same filesystem as /tmp (removed afterwards)."""
    d = Path(tempfile.mkdtemp(prefix=f"jobworker-bench-{prefix}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# This process, as /proc/self sees it.


def proc_status() -> dict[str, str]:
    out: dict[str, str] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _kib(field: str) -> int:
    return int(proc_status()[field].split()[0])


def rss_bytes() -> int:
    """VmRSS of this process."""
    return _kib("VmRSS") * 1024


def hwm_bytes() -> int:
    """VmHWM (peak RSS) of this process."""
    return _kib("VmHWM") * 1024


def reset_hwm() -> None:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def os_threads() -> int:
    """Threads of this process as the kernel counts them."""
    return int(proc_status()["Threads"])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads)."""
    t = os.times()
    return t.user + t.system


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's reaped children."""
    t = os.times()
    return t.children_user + t.children_system


def _busy_seconds() -> float:
    """CPU time the whole machine spent busy (not idle, not iowait), in seconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Noise:
    """How much CPU *other* processes used while a benchmark ran, in cores.

    Machine busy time (/proc/stat) minus this process's and its reaped children's CPU
    time (kernel threads doing writeback for us count as "other" too).
    """

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = _busy_seconds()
        self.own0 = _own_seconds()

    def foreign_cores(self) -> float:
        wall = time.monotonic() - self.t0
        other = (_busy_seconds() - self.busy0) - (_own_seconds() - self.own0)
        return max(0.0, other / wall) if wall > 0 else 0.0


def foreign_load(interval: float = 0.5) -> float:
    """Cores' worth of CPU other processes use right now (sampled over ``interval``)."""
    n = Noise()
    time.sleep(interval)
    return n.foreign_cores()


def file_create_us(directory: Path, n: int = 30) -> float:
    """Median microseconds to create a file in ``directory`` (as the worker creates logs).

    Worth printing next to start rates: on ext4 *without a journal*, the inode allocator
    skips every inode freed in the last minutes (``recently_deleted``), so creating a file
    shortly after thousands were deleted can cost 100 times the usual.  The probe files
    are O_TMPFILE (never named) so the probe itself frees only ``n`` inodes.
    """
    dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    times: list[float] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            except OSError:
                name = f".probe-{uuid.uuid4().hex}"
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
                os.unlink(name, dir_fd=dfd)
            times.append(time.perf_counter() - t0)
            os.close(fd)
    finally:
        os.close(dfd)
    return median(times) * 1e6


def child_pids() -> list[int]:
    """Pids whose parent is this process, zombies included."""
    me = os.getpid()
    kids: list[int] = []
    for task in os.listdir(f"/proc/{me}/task"):
        try:
            with open(f"/proc/{me}/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass
    return kids


def check_no_children(where: str) -> list[int]:
    """Report (and return) children left behind; a benchmark must leave none."""
    kids = child_pids()
    if kids:
        print(f"WARNING: {where}: {len(kids)} child processes left: {kids[:10]}", file=sys.stderr)
    return kids


def reap_all(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """Kill (by pid, only ours) and reap whatever is still running of ``procs``."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout)


# ---------------------------------------------------------------------------------------
# Resource controls.


def none_control() -> ResourceControl:
    """No cgroups: the core alone, containment by process group."""
    return NoCgroups("benchmark")


def detected_control() -> tuple[ResourceControl | None, str]:
    """(the control ``detect()`` picks, "") or (None, why cgroups cannot be used)."""
    rc = detect()
    if isinstance(rc, NoCgroups):
        return None, f"detect() found no usable cgroups: {rc.reason}"
    return rc, ""


# ---------------------------------------------------------------------------------------
# Waiting on a job without reading its output.


def wait_ended(worker: Worker, job_id: uuid.UUID, owner: uuid.UUID, timeout: float = 300) -> None:
    """Block until the job has ended (every byte in its log), without reading it."""
    worker.wait(job_id, owner, timeout)


# ---------------------------------------------------------------------------------------
# Numbers and output.


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def fmt_bytes(n: float) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n >= MiB:
        return f"{sign}{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{sign}{n / 1024:.0f} KiB"
    return f"{sign}{n:.0f} B"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


@dataclass
class Summary:
    """One line of the summary table run_all.py prints."""

    benchmark: str
    metric: str
    worker: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    note: str = ""


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['nproc']} x {m['cpu']}, {m['mem_gib']} GiB, Linux {m['kernel']}, Python {m['python']}"
    )


def write_results(name: str, results: dict[str, Any], summary: Sequence[Summary]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    data = {
        "benchmark": name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "results": results,
        "summary": [asdict(s) for s in summary],
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"\nresults written to {path.relative_to(BENCH_DIR.parent)}")
    return path


def ratio_str(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"
