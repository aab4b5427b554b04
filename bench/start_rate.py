"""Start rate: 300 ``/bin/true`` through ``Worker.start`` back to back, all awaited by one
asyncio loop through ``AsyncWorker.wait``; the worker without cgroups, with its default
containment (a cgroup per job) and with limits, against a ``subprocess.Popen`` loop that
sends each child's stdout and stderr to a fresh file.

Every method puts its files in one directory on the same file system, and the rounds are
interleaved (the order rotates), medians reported.  Logs are only deleted at the end: on
ext4 without a journal every file deleted makes the next creations slower for minutes
(see ``_common.file_create_us``, printed before and after).

Also measured in the same run:

- **first start**: a worker is created while a dead worker's cgroups (a job with a live
  process) wait to be cleaned up, and its first ``start`` is timed against the median of
  the next ones (``FIRST_STARTS``), each awaited before the next;
- **breakdown**: one more round of the worker with and without containment, with the
  resource control's operations timed (which thread ran them, how long), and the
  kernel's own cost of each operation measured directly (``kernel_costs``), so what
  containment costs a job can be set against its floor;
- ``--levers``: the same workload with each of the start path's levers taken away (for
  the record of what each one pays; private hooks, not an API).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import functools
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import _common as c

from jobworker import AsyncWorker, Command, LimitError, Limits, ResourceControl, Worker, _spawn
from jobworker import _process as process_module
from jobworker._rescontrol import CgroupV1, CgroupV2, _base, _v1

N = 300
FIRST_STARTS = 20
BREAKDOWN_ROUNDS = 3
TARGET_NONE = 0.7
TARGET_CGROUP = 0.6
TARGET_FIRST = 2.0
TRUE = "/bin/true"


# ---------------------------------------------------------------------------------------
# The methods.  Each returns (start loop seconds, start + wait seconds).


def run_worker(w: Worker, n: int, limits: Limits | None) -> tuple[float, float]:
    owner = uuid.uuid4()
    cmd = Command(TRUE)
    aw = AsyncWorker(w)

    async def main() -> tuple[float, float, list[Any]]:
        t0 = time.perf_counter()
        jobs = [w.start(cmd, owner, limits=limits) for _ in range(n)]
        t_start = time.perf_counter() - t0
        infos = await asyncio.gather(*(aw.wait(j, owner) for j in jobs))
        return t_start, time.perf_counter() - t0, infos

    t_start, t_all, infos = asyncio.run(main())
    for info in infos:
        assert info.status.exit_code == 0, info.status
    return t_start, t_all


def _wait_all(procs: list[subprocess.Popen[bytes]], t0: float) -> tuple[float, float]:
    t_start = time.perf_counter() - t0
    for p in procs:
        p.wait()
    t_all = time.perf_counter() - t0
    assert all(p.returncode == 0 for p in procs)
    return t_start, t_all


def run_popen(n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    return _wait_all([subprocess.Popen([TRUE]) for _ in range(n)], t0)


def run_popen_file(n: int, directory: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    procs = []
    for _ in range(n):
        fd = os.open(
            directory / f"true_{uuid.uuid4().hex}.log",
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
            0o600,
        )
        procs.append(subprocess.Popen([TRUE], stdout=fd, stderr=fd))
        os.close(fd)
    return _wait_all(procs, t0)


def usable_limits(rc: ResourceControl) -> tuple[Limits | None, str]:
    """The fullest of the limit sets this control accepts, and a description of it."""
    candidates = [
        (Limits(memory=256 * c.MiB, pids=100, cpu=1.0), "memory=256M pids=100 cpu=1.0"),
        (Limits(memory=256 * c.MiB, pids=100), "memory=256M pids=100"),
        (Limits(pids=100), "pids=100"),
        (Limits(memory=256 * c.MiB), "memory=256M"),
    ]
    refused = []
    for limits, desc in candidates:
        try:
            rc.validate(limits)
        except LimitError as e:
            refused.append(f"{desc}: {e}")
            continue
        return limits, desc
    return None, "; ".join(refused)


# ---------------------------------------------------------------------------------------
# A dead worker's cgroups, and the first start after a worker is made.


def _bases(rc: ResourceControl) -> list[str]:
    if isinstance(rc, CgroupV1):
        return [h.base for h in (rc.unified, rc.hierarchies.get("memory")) if h]
    assert isinstance(rc, CgroupV2)
    return [rc.worker_cgroup]


@contextlib.contextmanager
def dead_worker(rc: ResourceControl | None) -> Iterator[None]:
    """A parent cgroup named after a worker that is gone, holding a job with a live
    process (``sleep``), as a crashed worker leaves them; whatever the next worker did
    not clean up is undone afterwards."""
    if rc is None:
        yield
        return
    stale = [
        os.path.join(b, f"jobworker-99999999-{uuid.uuid4().int % 10**9}-0") for b in _bases(rc)
    ]
    job = f"job-{uuid.uuid4().hex}"
    sleeper = subprocess.Popen(["sleep", "1000"])
    try:
        for d in stale:
            os.makedirs(os.path.join(d, job))
            Path(d, job, "cgroup.procs").write_text(str(sleeper.pid))
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        for d in stale:
            for sub in (os.path.join(d, job), d):
                _rmdir_retry(sub)


def first_start(log_dir: Path, stale_rc: ResourceControl | None) -> tuple[float, float]:
    """(first start, median of the next FIRST_STARTS) seconds of a new default worker."""
    owner = uuid.uuid4()
    cmd = Command(TRUE)
    with dead_worker(stale_rc), Worker(log_dir) as w:
        t0 = time.perf_counter()
        job = w.start(cmd, owner)
        first = time.perf_counter() - t0
        w.wait(job, owner)
        times = []
        for _ in range(FIRST_STARTS):
            t0 = time.perf_counter()
            job = w.start(cmd, owner)
            times.append(time.perf_counter() - t0)
            w.wait(job, owner)
    return first, c.median(times)


# ---------------------------------------------------------------------------------------
# The breakdown: the resource control's operations, timed where they run.


class Timings:
    """Seconds and calls per operation, and the threads that ran it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()
        self.threads: dict[str, set[str]] = collections.defaultdict(set)

    def wrap(self, op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                with self.lock:
                    self.seconds[op] += dt
                    self.calls[op] += 1
                    self.threads[op].add(_thread_role())

        return timed


def _thread_role() -> str:
    name = threading.current_thread().name
    if name == "jobworker-reactor":
        return "reactor"
    if name == "jobworker-cgroups":
        return "background"
    return "start path"


# (operation, class, method) timed by the breakdown.
OPERATIONS = [
    ("mkdir: a pool's batch", _base.CgroupBase, "fill_pool_once"),
    ("mkdir: one (pool empty)", _base.CgroupBase, "_make_job"),
    ("spawn (clone3 into the cgroup, or clone and joining)", process_module.Process, "spawn"),
    ("kill", None, "kill"),
    ("cgroup.events reads (waiting for empty)", None, "populated"),
    ("usage read", None, "_read_usage"),
    ("rmdir: a batch", _base.CgroupBase, "remove_groups"),
    ("rmdir: one (not a leaf, or busy)", _base.CgroupJobGroup, "remove"),
]
SPAWN = OPERATIONS[2][0]


def _group_classes() -> list[type]:
    from jobworker._rescontrol._v2 import V2JobGroup

    return [_v1.V1JobGroup, V2JobGroup]


@contextlib.contextmanager
def instrumented() -> Iterator[Timings]:
    """Time OPERATIONS while inside (the methods are wrapped, then put back)."""
    t = Timings()
    patched: list[tuple[type, str, Any]] = []
    for op, cls, method in OPERATIONS:
        for k in [cls] if cls is not None else _group_classes():
            original = k.__dict__.get(method)
            if original is None:
                continue
            if isinstance(original, classmethod):
                wrapped: Any = classmethod(t.wrap(op, original.__func__))
            else:
                wrapped = t.wrap(op, original)
            patched.append((k, method, original))
            setattr(k, method, wrapped)
    try:
        yield t
    finally:
        for k, method, original in reversed(patched):
            setattr(k, method, original)


# ---------------------------------------------------------------------------------------
# The kernel's own cost of each operation, measured directly.


def _per_op_us(fn: Callable[[], None], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return c.median(times) * 1e6


def _rmdir_retry(path: str) -> None:
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    os.rmdir(path)


def kernel_costs(rc: ResourceControl, n: int = 200) -> dict[str, float]:
    """Microseconds per cgroup operation, as plain system calls (median of ``n``), in the
    worker's own parent cgroups: what containment cannot cost less than."""
    out: dict[str, float] = {}
    lim, _ = usable_limits(rc)
    g = rc.create(uuid.uuid4(), lim or Limits())
    dirs: dict[str, str] = {}
    if isinstance(g, _v1.V1JobGroup):
        dirs = {("cgroup2" if r == "unified" else f"v1 {r}"): d for r, d in g.dirs.items()}
    elif g.cgroup2_dir is not None:
        dirs = {"cgroup2": g.cgroup2_dir}
    sleeper = subprocess.Popen(["sleep", "1000"])
    made: list[str] = []
    try:
        for where, d in dirs.items():
            parent = os.path.dirname(d)
            names = iter([os.path.join(parent, f"job-{uuid.uuid4().hex}") for _ in range(n)])
            made_here: list[str] = []

            def mk(names: Iterator[str] = names, made_here: list[str] = made_here) -> None:
                path = next(names)
                os.mkdir(path)
                made_here.append(path)

            out[f"mkdir ({where})"] = _per_op_us(mk, n)
            rm = iter(list(made_here))

            def rmdir(rm: Iterator[str] = rm) -> None:
                os.rmdir(next(rm))

            out[f"rmdir ({where})"] = _per_op_us(rmdir, n)
            a, b = (os.path.join(parent, f"job-{uuid.uuid4().hex}") for _ in range(2))
            for x in (a, b):
                os.mkdir(x)
                made.append(x)
            flip = iter([a, b] * n)

            def migrate(flip: Iterator[str] = flip) -> None:
                with open(os.path.join(next(flip), "cgroup.procs"), "w") as f:
                    f.write(str(sleeper.pid))

            out[f"migration, back to back ({where})"] = _per_op_us(migrate, n)

            # Sparse: the kernel's lock for migrations then waits for an RCU grace period.
            times = []
            for _ in range(10):
                time.sleep(0.02)
                t0 = time.perf_counter()
                migrate()
                times.append(time.perf_counter() - t0)
            out[f"migration, one every 20 ms ({where})"] = c.median(times) * 1e6
            if where == "cgroup2":
                out.update(_starts_us(parent, n // 4))
                events = os.path.join(d, "cgroup.events")
                out["cgroup.events read (cgroup2)"] = _per_op_us(partial(_read, events), n)
                cpu = os.path.join(d, "cpu.stat")
                out["cpu.stat read (cgroup2)"] = _per_op_us(partial(_read, cpu), n)
                kill = os.path.join(d, "cgroup.kill")
                if os.path.exists(kill):
                    out["cgroup.kill write, empty (cgroup2)"] = _per_op_us(
                        partial(_write, kill, b"1"), n
                    )
    finally:
        sleeper.kill()
        sleeper.wait()
        for x in made:
            _rmdir_retry(x)
        g.kill()
        g.remove()
    return out


STARTS = {
    "plain": "start of /bin/true, plain clone (no cgroup)",
    "born": "start of /bin/true, born in a fresh cgroup2 cgroup (clone3)",
    "write": "start of /bin/true, joining a fresh cgroup2 cgroup by a write (lock warm)",
}


def _starts_us(parent: str, n: int) -> dict[str, float]:
    """Median microseconds of ``_spawn.spawn`` of /bin/true (up to its exec, as a start):
    plain, born in a new cgroup of ``parent``, and joining one by writing cgroup.procs,
    in turn, back to back (so the migration lock stays warm); each reaped before the
    next, its log (on tmpfs: creating it is not what this measures) and cgroup removed
    untimed."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    logs = tempfile.mkdtemp(prefix="jobworker-bench-spawn-", dir=shm)
    d = os.open(logs, os.O_PATH | os.O_DIRECTORY)
    times: dict[str, list[float]] = {k: [] for k in STARTS}
    try:
        for i in range(len(STARTS) * n):
            way = list(STARTS)[i % len(STARTS)]
            cg = None if way == "plain" else os.path.join(parent, f"job-{uuid.uuid4().hex}")
            if cg is not None:
                os.mkdir(cg)
            _spawn.set_always_clone_into_cgroup(way == "born")
            _spawn.set_without_clone_into_cgroup(way == "write")
            r, w = os.pipe()
            procs = [os.path.join(cg, "cgroup.procs")] if cg is not None else []
            try:
                t0 = time.perf_counter()
                pid, pidfd, log_fd, name, stage, err = _spawn.spawn(
                    [TRUE], ["true"], [], None, w, procs, cg, d, "true", None, -1
                )
                times[way].append(time.perf_counter() - t0)
            finally:
                _spawn.set_always_clone_into_cgroup(False)
                _spawn.set_without_clone_into_cgroup(False)
                os.close(w)
            assert stage == _spawn.STAGE_OK, (stage, err)
            os.waitpid(pid, 0)
            for fd in (pidfd, log_fd, r):
                os.close(fd)
            os.unlink(name, dir_fd=d)
            if cg is not None:
                _rmdir_retry(cg)
    finally:
        os.close(d)
        os.rmdir(logs)
    return {STARTS[k]: c.median(v) * 1e6 for k, v in times.items()}


def _read(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while os.read(fd, 65536):
            pass
    finally:
        os.close(fd)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def lever_controls(
    rc: ResourceControl,
) -> dict[str, tuple[ResourceControl, Callable[[bool], None]]]:
    """Default containment with one lever taken away each (private hooks): name ->
    (control, hook called with True before each round and False after)."""

    def nothing(on: bool) -> None:
        pass

    def same_kind() -> ResourceControl:
        fresh, _ = c.detected_control()
        assert fresh is not None and type(fresh) is type(rc)
        return fresh

    out: dict[str, tuple[ResourceControl, Callable[[bool], None]]] = {}
    out["lever off: clone3 (joins cgroup2 by writing cgroup.procs)"] = (
        same_kind(),
        _spawn.set_without_clone_into_cgroup,
    )
    no_thread = same_kind()
    no_thread.start_housekeeping = lambda: None  # type: ignore[method-assign]
    out["lever off: background thread (mkdir, rmdir inline)"] = (no_thread, nothing)
    if isinstance(rc, CgroupV1) and rc.unified is not None and "memory" in rc.hierarchies:
        memory = same_kind()
        assert isinstance(memory, CgroupV1)
        roles = memory._roles_for

        def with_memory(checked: Any) -> list[str]:
            r = roles(checked)
            return r if "memory" in r else [r[0], "memory", *r[1:]]

        setattr(memory, "_roles_for", with_memory)  # noqa: B010 (a private hook)
        out["lever off: memory only for its limit (v1 memory always)"] = (memory, nothing)
    return out


def measure_rounds(
    methods: dict[str, Callable[[], tuple[float, float]]], rounds: int, n: int
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, list[tuple[float, float]]]]:
    """Interleaved rounds: (start, start+wait) seconds and (self, children) CPU seconds
    per job, per method."""
    runs: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    cpu: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    names = list(methods)
    for rnd in range(rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for m in order:
            t0 = os.times()
            t_start, t_all = methods[m]()
            t1 = os.times()
            runs[m].append((t_start, t_all))
            own = t1.user + t1.system - t0.user - t0.system
            kids = t1.children_user + t1.children_system - t0.children_user - t0.children_system
            cpu[m].append((own / n, kids / n))
            print(
                f"  round {rnd + 1}  {m:62} start {n / t_start:6.0f}/s  "
                f"start+wait {n / t_all:6.0f}/s",
                flush=True,
            )
    return runs, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--first-rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=N)
    ap.add_argument("--no-cgroup", action="store_true", help="skip the cgroup part")
    ap.add_argument("--levers", action="store_true", help="also each lever taken away")
    args = ap.parse_args()
    n = args.n
    noise = c.Noise()

    if args.no_cgroup:
        detected, why_not = None, "--no-cgroup given"
    else:
        detected, why_not = c.detected_control()
    kernel = kernel_costs(detected) if detected is not None else {}
    hooks: dict[str, Callable[[bool], None]] = {}
    notes: list[str] = []
    with c.temp_dir("start-rate") as tmp:
        # Every method's files go into this one directory: on ext4 a directory's new
        # inodes come from its own block group, and a group where thousands of inodes
        # were freed in the last minutes makes every creation scan past them.
        logs = tmp / "logs"
        logs.mkdir()
        workers: dict[str, Worker] = {}
        limits: dict[str, Limits | None] = {}
        try:
            workers["worker"] = Worker(logs, resource_control=c.none_control())
            limits["worker"] = None
            if detected is None:
                notes.append(f"cgroup part skipped: {why_not}")
            else:
                workers["worker+cgroup"] = Worker(logs, resource_control=detected)
                limits["worker+cgroup"] = None
                detected2, _ = c.detected_control()
                assert detected2 is not None
                lim, desc = usable_limits(detected2)
                if lim is None:
                    notes.append(f"no limits accepted: {desc}")
                    detected2.close()
                else:
                    name = f"worker+cgroup+limits ({desc})"
                    workers[name] = Worker(logs, resource_control=detected2)
                    limits[name] = lim
                if args.levers:
                    for name, (rc, hook) in lever_controls(detected).items():
                        workers[name] = Worker(logs, resource_control=rc)
                        limits[name] = None
                        hooks[name] = hook
            for note in notes:
                print(note)

            def with_hook(name: str, fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
                hook = hooks.get(name)
                if hook is None:
                    return fn()
                hook(True)
                try:
                    return fn()
                finally:
                    hook(False)

            methods: dict[str, Callable[[], tuple[float, float]]] = {
                "popen": partial(run_popen, n),
                "popen+file": partial(run_popen_file, n, logs),
            }
            for name, w in workers.items():
                methods[name] = partial(with_hook, name, partial(run_worker, w, n, limits[name]))
            create_us = [c.file_create_us(logs)]
            print(f"creating a file in the log directory: {create_us[0]:.0f} us")
            for fn in methods.values():  # warm-up, not measured
                fn()
            runs, cpu = measure_rounds(methods, args.rounds, n)
            create_us.append(c.file_create_us(logs))
            # The breakdown: BREAKDOWN_ROUNDS more of each, interleaved, timed inside.
            timings: dict[str, list[Timings]] = {}
            for _ in range(BREAKDOWN_ROUNDS):
                for m in ("worker", "worker+cgroup"):
                    if m in workers:
                        with instrumented() as t:
                            run_worker(workers[m], n, None)
                        timings.setdefault(m, []).append(t)
        finally:
            for w in workers.values():
                w.close()
        stale_rc = detected if detected is not None and os.geteuid() == 0 else None
        firsts = [first_start(logs, stale_rc) for _ in range(args.first_rounds)]
        c.check_no_children("start_rate")
    other_load = noise.foreign_cores()
    report(args, n, runs, cpu, create_us, timings, kernel, firsts, stale_rc, notes, other_load)


def report(
    args: argparse.Namespace,
    n: int,
    runs: dict[str, list[tuple[float, float]]],
    cpu: dict[str, list[tuple[float, float]]],
    create_us: list[float],
    timings: dict[str, list[Timings]],
    kernel: dict[str, float],
    firsts: list[tuple[float, float]],
    stale_rc: ResourceControl | None,
    notes: list[str],
    other_load: float,
) -> None:
    med_start = {m: c.median([r[0] for r in v]) for m, v in runs.items()}
    med_all = {m: c.median([r[1] for r in v]) for m, v in runs.items()}
    rate_start = {m: n / t for m, t in med_start.items()}
    rate_all = {m: n / t for m, t in med_all.items()}
    cpu_self = {m: c.median([x[0] for x in v]) for m, v in cpu.items()}
    cpu_kids = {m: c.median([x[1] for x in v]) for m, v in cpu.items()}
    base = "popen+file"

    print(
        f"\n{n} x {TRUE}, awaited with AsyncWorker.wait, per second (median of "
        f"{args.rounds}); creating a file took {create_us[0]:.0f} us before the run, "
        f"{create_us[1]:.0f} us after; other processes' load {other_load:.2f} cores"
    )
    c.print_table(
        ["method", "start/s", "start+wait/s", f"vs {base}", "cpu us/job: self", "children"],
        [
            [
                m,
                f"{rate_start[m]:.0f}",
                f"{rate_all[m]:.0f}",
                "-" if m == base else f"{rate_all[m] / rate_all[base]:.2f}",
                f"{cpu_self[m] * 1e6:.0f}",
                f"{cpu_kids[m] * 1e6:.0f}",
            ]
            for m in runs
        ],
    )

    per_job_cost = (
        (med_all["worker+cgroup"] - med_all["worker"]) / n if "worker+cgroup" in med_all else 0.0
    )
    breakdown: list[dict[str, Any]] = []
    cpu_cost = cpu_self.get("worker+cgroup", 0.0) - cpu_self["worker"]
    if "worker+cgroup" in timings:
        tcs, tns = timings["worker+cgroup"], timings["worker"]
        timed = 0.0
        for op, _, _ in OPERATIONS:
            secs = c.median([t.seconds.get(op, 0.0) for t in tcs])
            if op == SPAWN:  # what containment adds to a spawn
                secs -= c.median([t.seconds.get(op, 0.0) for t in tns])
            timed += secs
            breakdown.append(
                {
                    "operation": "spawn: what containment adds" if op == SPAWN else op,
                    "us_per_job": secs / n * 1e6,
                    "calls_per_job": c.median([t.calls.get(op, 0) for t in tcs]) / n,
                    "thread": ", ".join(sorted(set().union(*(t.threads[op] for t in tcs)))) or "-",
                }
            )
        breakdown.append(
            {
                "operation": "everything else (the CPU cost less the above)",
                "us_per_job": (cpu_cost - timed / n) * 1e6,
                "calls_per_job": None,
                "thread": "-",
            }
        )
        print(
            f"\ndefault containment costs {per_job_cost * 1e6:.0f} us of wall time and "
            f"{cpu_cost * 1e6:.0f} us of this process's CPU per job; its operations, timed in "
            f"{BREAKDOWN_ROUNDS} more rounds (median us per job, waits for the GIL and the CPU "
            "included), and where they ran:"
        )
        c.print_table(
            ["operation", "us/job", "calls/job", "thread"],
            [
                [
                    b["operation"],
                    f"{b['us_per_job']:.1f}",
                    "-" if b["calls_per_job"] is None else f"{b['calls_per_job']:.2f}",
                    b["thread"],
                ]
                for b in breakdown
            ],
        )
    if kernel:
        print("\nthe kernel's own cost of each operation, as plain system calls (median, us)")
        c.print_table(["operation", "us"], [[k, f"{v:.1f}"] for k, v in kernel.items()])
    floor_ops = (
        "mkdir (cgroup2)",
        "rmdir (cgroup2)",
        "cgroup.events read (cgroup2)",
        "cpu.stat read (cgroup2)",
    )
    floor = sum(kernel.get(k, 0.0) for k in floor_ops)
    # A start into a fresh cgroup, the cheaper way (the worker picks by how close starts
    # come: see _spawn.c's clone_into), over a plain one.
    ways = [kernel[STARTS[w]] for w in ("born", "write") if STARTS[w] in kernel]
    if ways and STARTS["plain"] in kernel:
        floor += max(0.0, min(ways) - kernel[STARTS["plain"]])
    first = c.median([f for f, _ in firsts])
    then = c.median([m for _, m in firsts])
    dead = " (a dead worker's job to clean up)" if stale_rc is not None else ""
    print(
        f"\nfirst start of a new worker{dead}: {first * 1e6:.0f} us (median of {len(firsts)}),"
        f" then {then * 1e6:.0f} us (median of {FIRST_STARTS} each): {first / then:.2f}x"
    )

    summary: list[c.Summary] = []
    for m in runs:
        if m in ("popen", base):
            continue
        target = {"worker": TARGET_NONE, "worker+cgroup": TARGET_CGROUP}.get(m)
        r = rate_all[m] / rate_all[base]
        note = f"start loop only: {rate_start[m]:.0f}/s vs {rate_start[base]:.0f}/s"
        if m == "worker":
            note += f"; bare popen {rate_all['popen']:.0f}/s; a file create {create_us[0]:.0f} us"
        elif m == "worker+cgroup":
            note += (
                f"; {per_job_cost * 1e6:.0f} us/job more than without cgroups; the kernel's "
                f"part {floor:.0f} us (a start into a new cgroup, mkdir, rmdir, two reads)"
            )
        summary.append(
            c.Summary(
                benchmark="start_rate",
                metric=f"{n} x true, start+wait/s: {m}",
                worker=f"{rate_all[m]:.0f}/s",
                baseline=f"{rate_all[base]:.0f}/s ({base})",
                ratio=r,
                target="-" if target is None else f">= {target}",
                met=None if target is None else r >= target,
                note=note,
            )
        )
    summary.append(
        c.Summary(
            benchmark="start_rate",
            metric=f"first start of a new worker{dead}",
            worker=f"{first * 1e6:.0f} us",
            baseline=f"{then * 1e6:.0f} us (median start)",
            ratio=None,
            target=f"<= {TARGET_FIRST}x",
            met=first / then <= TARGET_FIRST,
            note=f"{first / then:.2f}x",
        )
    )
    for note in notes:
        summary.append(
            c.Summary(
                benchmark="start_rate",
                metric="start+wait/s with a cgroup per job",
                worker="skipped",
                baseline="-",
                ratio=None,
                target=f">= {TARGET_CGROUP}",
                met=None,
                note=note,
            )
        )
    results: dict[str, Any] = {
        "n": n,
        "rounds": args.rounds,
        "runs_s": {m: [list(r) for r in v] for m, v in runs.items()},
        "start_per_s": rate_start,
        "start_and_wait_per_s": rate_all,
        "cpu_self_us_per_job": {m: v * 1e6 for m, v in cpu_self.items()},
        "cpu_children_us_per_job": {m: v * 1e6 for m, v in cpu_kids.items()},
        "notes": notes,
        "file_create_us_before_after": create_us,
        "containment_us_per_job": per_job_cost * 1e6,
        "containment_cpu_us_per_job": cpu_cost * 1e6,
        "breakdown": breakdown,
        "kernel_us": kernel,
        "kernel_floor_us": floor,
        "first_start_s": firsts,
        "other_cpu_load_cores": other_load,
        "true": str(Path(TRUE).resolve()),
    }
    c.write_results("start_rate", results, summary)


if __name__ == "__main__":
    main()
