"""Capture throughput: 256 MiB through stdout+stderr into a log, worker vs baselines.

Two workloads, both alternating their write()s between fd 1 and fd 2:

- lines:  100-byte lines, each its own write() (2.7 million writes);
- chunks: 64 KiB writes.

The writer is a C program compiled at run time.  Each measurement is the time from the
start of the job until it has ended with every byte in its log (the log size is checked
to be exactly 256 MiB afterwards).  The CPU time of this process (which includes the
worker's reactor thread) and of the writer is reported too: a capture that makes the
writer's write() calls dearer shows up in the latter.  Methods, interleaved round by
round:

- worker+reader: ``Worker.start`` then a ``stream`` reader consumes the log to EOF (EOF
  comes only once the job has ended and every byte is in the log);
- worker (end):  ``Worker.start`` then wait for the job's end without reading;
- redirect:      ``Popen(stdout=f, stderr=f)``, the kernel writes the file directly;
- py-copy:       ``Popen(stdout=PIPE, stderr=STDOUT)`` and an os.read/os.write loop;
- supervisord:   supervisord 4.x (if installed) with redirect_stderr and no log rotation,
                 started over its XML-RPC socket (what ``supervisorctl start`` sends);
- c-pipe (WAKE): the same copy out of a pipe in C (``copier.c``, as ``diag_capture.py``
                 runs it), woken by fasync signals (what the worker does) or by epoll.

The targets compare each workload with the baselines that set its bar: 100-byte writes
with the best of the blocking copy loop and supervisord (>= 0.95); 64 KiB writes with
the C pipe copy, the ceiling of any capture through a pipe on this machine (>= 0.9; the
redirect, which needs no pipe, is shown in the note).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import _common as c
from diag_capture import compile_copier

from jobworker import Command, Worker

TOTAL = 256 * c.MiB
WORKLOADS = {"lines": 100, "chunks": 64 * 1024}
# Per workload: the target and the baselines it is measured against (the fastest of them).
TARGETS = {"lines": 0.95, "chunks": 0.9}
BAR = {
    "lines": ("py-copy", "supervisord"),
    "chunks": ("c-pipe (fasync)", "c-pipe (epoll)"),
}
C_WAYS = {"c-pipe (fasync)": "fasync", "c-pipe (epoll)": "epoll"}


# ---------------------------------------------------------------------------------------
# The methods.  Each returns the elapsed seconds and leaves no file or process behind.


def check_log(path: Path, total: int) -> None:
    size = os.stat(path).st_size
    if size != total:
        raise AssertionError(f"{path}: {size} bytes, expected {total}")


def run_worker(w: Worker, argv: list[str], total: int, *, read: bool) -> float:
    owner = uuid.uuid4()
    t0 = time.perf_counter()
    job = w.start(Command(argv[0], argv[1:]), owner)
    if read:
        n = 0
        with w.stream(job, owner) as r:
            while chunk := r.read(c.MiB):
                n += len(chunk)
        if n != total:
            raise AssertionError(f"reader got {n} bytes, expected {total}")
    else:
        c.wait_ended(w, job, owner)
    elapsed = time.perf_counter() - t0
    info = w.query(job, owner)
    if info.status.exit_code != 0:
        raise AssertionError(f"writer ended {info.status}")
    check_log(info.log_path, total)
    os.unlink(info.log_path)
    return elapsed


def _finish(p: subprocess.Popen[bytes], t0: float, out: Path, total: int) -> float:
    """Wait for a baseline's writer; the time since ``t0``, once its log checks out."""
    rc = p.wait()
    elapsed = time.perf_counter() - t0
    assert rc == 0
    check_log(out, total)
    out.unlink()
    return elapsed


def run_redirect(argv: list[str], out: Path, total: int) -> float:
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=f)
    return _finish(p, t0, out, total)


def run_c_copy(copier: Path, wake: str, argv: list[str], out: Path, total: int) -> float:
    """The copier's own wall time: from its fork of the writer to the writer reaped,
    after EOF, with every byte in the file."""
    done = subprocess.run(
        [str(copier), wake, "rw", str(out), "--", *argv], check=True, capture_output=True
    )
    result = json.loads(done.stdout)
    check_log(out, total)
    out.unlink()
    if result["exit"] != 0:
        raise AssertionError(f"writer under the C copier: {result}")
    return float(result["wall_s"])


def run_py_copy(argv: list[str], out: Path, total: int) -> float:
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert p.stdout is not None
    src = p.stdout.fileno()
    dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        while data := os.read(src, 65536):
            os.write(dst, data)
    finally:
        os.close(dst)
        p.stdout.close()
    return _finish(p, t0, out, total)


# ---------------------------------------------------------------------------------------
# supervisord, driven over its unix socket.


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self._path)
        self.sock = s


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(self._path)


class Supervisord:
    """supervisord -n in the background with one program per workload."""

    def __init__(self, exe: Path, directory: Path, programs: dict[str, list[str]]) -> None:
        self.dir = directory
        self.sock = directory / "supervisor.sock"
        conf = [
            "[unix_http_server]",
            f"file={self.sock}",
            "[supervisord]",
            f"logfile={directory / 'supervisord.log'}",
            f"pidfile={directory / 'supervisord.pid'}",
            f"childlogdir={directory}",
            "loglevel=warn",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{self.sock}",
        ]
        for name, argv in programs.items():
            conf += [
                f"[program:{name}]",
                f"command={' '.join(argv)}",
                "autostart=false",
                "autorestart=false",
                "startsecs=0",
                "startretries=0",
                "redirect_stderr=true",
                f"stdout_logfile={self.log(name)}",
                "stdout_logfile_maxbytes=0",
                "stdout_logfile_backups=0",
            ]
        self.conf = directory / "supervisord.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc = subprocess.Popen(
            [str(exe), "-n", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.rpc = cast(
            Any,
            xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(str(self.sock))),
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.rpc.supervisor.getState()["statename"] == "RUNNING":
                    break
            except (OSError, xmlrpc.client.Error):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("supervisord did not come up")
            time.sleep(0.02)

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def run(self, name: str, total: int) -> float:
        """Start ``name``; seconds until it has exited and its log holds ``total`` bytes."""
        log = self.log(name)
        with contextlib.suppress(FileNotFoundError):
            log.unlink()  # supervisord opens the log anew (append mode) at each spawn
        t0 = time.perf_counter()
        self.rpc.supervisor.startProcess(name, False)
        deadline = t0 + 300
        while True:
            try:
                if os.stat(log).st_size >= total:
                    break
            except FileNotFoundError:
                pass
            if time.perf_counter() > deadline:
                raise TimeoutError("supervisord program did not finish")
            time.sleep(0.002)
        while True:
            info = self.rpc.supervisor.getProcessInfo(name)
            if info["statename"] in ("EXITED", "FATAL", "BACKOFF", "STOPPED"):
                break
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        assert info["statename"] == "EXITED" and info["exitstatus"] == 0, info
        check_log(log, total)
        log.unlink()
        return elapsed

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                self.rpc.supervisor.shutdown()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # by its pid: only the supervisord we started
                self.proc.wait()


def find_supervisord() -> Path | None:
    for d in (Path(sys.executable).parent, *map(Path, os.get_exec_path())):
        exe = d / "supervisord"
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    found = shutil.which("supervisord")
    return Path(found) if found else None


# ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=TOTAL // c.MiB, help="bytes per run, in MiB")
    ap.add_argument("--no-supervisord", action="store_true")
    args = ap.parse_args()
    total = args.mib * c.MiB

    with c.temp_dir("capture") as tmp:
        writer = c.compile_writer(tmp)
        copier = compile_copier(tmp)
        logs = tmp / "logs"
        logs.mkdir()
        argvs = {
            name: c.bytes_argv(writer, total, chunk, nfds=2) for name, chunk in WORKLOADS.items()
        }
        sup: Supervisord | None = None
        sup_note = ""
        exe = None if args.no_supervisord else find_supervisord()
        if exe is None:
            sup_note = "supervisord not installed (pip install supervisor)"
        else:
            supdir = tmp / "supervisord"
            supdir.mkdir()
            try:
                sup = Supervisord(exe, supdir, argvs)
            except (RuntimeError, OSError) as e:
                sup_note = f"supervisord unusable: {e}"
        if sup_note:
            print(f"skipping the supervisord baseline: {sup_note}")

        w = Worker(logs, resource_control=c.none_control())
        times: dict[str, dict[str, list[float]]] = {}
        # CPU seconds per run: this process (incl. the reactor thread) and the writer
        # (a reaped child; supervisord's program is not ours, so it has none).
        cpu: dict[str, dict[str, list[tuple[float, float]]]] = {}
        try:
            for workload, argv in argvs.items():
                methods: dict[str, Callable[[], float]] = {
                    "worker+reader": partial(run_worker, w, argv, total, read=True),
                    "worker (end)": partial(run_worker, w, argv, total, read=False),
                    "redirect": partial(run_redirect, argv, tmp / "redirect.log", total),
                    "py-copy": partial(run_py_copy, argv, tmp / "copy.log", total),
                }
                if sup is not None:
                    methods["supervisord"] = partial(sup.run, workload, total)
                for name, wake in C_WAYS.items():
                    methods[name] = partial(run_c_copy, copier, wake, argv, tmp / "c.log", total)
                times[workload] = {m: [] for m in methods}
                cpu[workload] = {m: [] for m in methods}
                names = list(methods)
                for rnd in range(args.rounds):
                    # Rotate the order each round so no method always runs first or last.
                    order = names[rnd % len(names) :] + names[: rnd % len(names)]
                    for m in order:
                        cpu0, ch0 = c.cpu_seconds(), c.children_cpu_seconds()
                        t = methods[m]()
                        own, child = c.cpu_seconds() - cpu0, c.children_cpu_seconds() - ch0
                        times[workload][m].append(t)
                        cpu[workload][m].append((own, child))
                        print(
                            f"  {workload:6} round {rnd + 1}  {m:14} {t:7.3f} s  "
                            f"cpu: self {own:5.2f} s  writer {child:5.2f} s",
                            flush=True,
                        )
        finally:
            w.close()
            if sup is not None:
                sup.close()
        c.check_no_children("capture")

    results: dict[str, Any] = {"total_bytes": total, "rounds": args.rounds, "workloads": {}}
    summary: list[c.Summary] = []
    for workload, per_method in times.items():
        med = {m: c.median(ts) for m, ts in per_method.items()}
        bar = {m: med[m] for m in BAR[workload] if m in med}
        best = min(bar, key=lambda m: bar[m])
        target = TARGETS[workload]
        print(
            f"\n{workload}: {total // c.MiB} MiB as {WORKLOADS[workload]}-byte writes, "
            f"alternating stdout/stderr (median of {args.rounds})"
        )
        own_cpu = {m: c.median([x[0] for x in v]) for m, v in cpu[workload].items()}
        writer_cpu = {m: c.median([x[1] for x in v]) for m, v in cpu[workload].items()}
        rows: list[list[object]] = []
        for m, t in med.items():
            ratio = bar[best] / t if m.startswith("worker") else None
            apart = m == "supervisord" or m in C_WAYS  # its CPU is not told apart
            rows.append(
                [
                    m,
                    f"{t:.3f}",
                    f"{total / t / 1e6:.0f}",
                    " ".join(f"{x:.3f}" for x in per_method[m]),
                    "-" if apart else f"{own_cpu[m]:.2f}",
                    "-" if apart else f"{writer_cpu[m]:.2f}",
                    c.ratio_str(ratio),
                ]
            )
        c.print_table(
            [
                "method",
                "median s",
                "MB/s",
                "runs (s)",
                "cpu self s",
                "cpu writer s",
                f"{best}/worker",
            ],
            rows,
        )
        results["workloads"][workload] = {
            "write_size": WORKLOADS[workload],
            "runs_s": per_method,
            "median_s": med,
            "cpu_self_s": own_cpu,
            "cpu_writer_s": {m: v for m, v in writer_cpu.items() if m != "supervisord"},
            "mb_per_s": {m: total / t / 1e6 for m, t in med.items()},
            "bar": best,
            "ratio_worker_reader": bar[best] / med["worker+reader"],
            "ratio_worker_end": bar[best] / med["worker (end)"],
        }
        others = [m for m in med if not m.startswith("worker") and m != best]
        for m in ("worker+reader", "worker (end)"):
            r = bar[best] / med[m]
            summary.append(
                c.Summary(
                    benchmark="capture",
                    metric=f"{workload}: {m} time, {total / med[m] / 1e6:.0f} MB/s",
                    worker=f"{med[m]:.3f} s",
                    baseline=f"{bar[best]:.3f} s ({best})",
                    ratio=r,
                    target=f">= {target}",
                    met=r >= target,
                    note=", ".join(f"{o} {med[o]:.3f} s" for o in others),
                )
            )
    if sup_note:
        results["supervisord"] = sup_note
    c.write_results("capture", results, summary)


if __name__ == "__main__":
    main()
