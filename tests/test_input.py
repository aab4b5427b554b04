"""Input: what users naturally pass is accepted; anything else is refused with one of
the library's own errors, leaving nothing behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from jobworker import (
    AsyncWorker,
    Command,
    InvalidArgument,
    InvalidCommand,
    JobNotFound,
    JobworkerError,
    LimitError,
    Limits,
    State,
    Status,
    StopType,
    Worker,
)

from conftest import live_children

Op = Callable[[Worker, uuid.UUID, uuid.UUID], object]


def start(command: Callable[[], Command], limits: object = None) -> Op:
    # The Command is made inside the test: a bad one raises as it is made.
    return lambda w, owner, job: w.start(command(), owner, limits=limits)  # type: ignore[arg-type]


BAD: list[tuple[str, Op, type[JobworkerError]]] = [
    ("args given as one string", start(lambda: Command("echo", "hello")), InvalidCommand),
    ("args given as bytes", start(lambda: Command("echo", b"hello")), InvalidCommand),  # type: ignore[arg-type]
    ("an argument not a string", start(lambda: Command("echo", [1])), InvalidCommand),  # type: ignore[list-item]
    ("args not iterable", start(lambda: Command("echo", 3)), InvalidCommand),  # type: ignore[arg-type]
    ("a name not a string", start(lambda: Command(None)), InvalidCommand),  # type: ignore[arg-type]
    ("a cwd not a path", start(lambda: Command("true", cwd=3)), InvalidCommand),  # type: ignore[arg-type]
    ("a cwd as bytes", start(lambda: Command("true", cwd=b"/tmp")), InvalidCommand),  # type: ignore[arg-type]
    ("an env value not a string", start(lambda: Command("true", env={"A": 1})), InvalidCommand),  # type: ignore[dict-item]
    ("an env name not a string", start(lambda: Command("true", env={1: "a"})), InvalidCommand),  # type: ignore[dict-item]
    ("env not a mapping", start(lambda: Command("true", env=["A=1"])), InvalidCommand),  # type: ignore[arg-type]
    ("a lone surrogate in an argument", start(lambda: Command("echo", ["\ud800"])), InvalidCommand),
    ("a lone surrogate in the name", start(lambda: Command("ech\ud800")), InvalidCommand),
    ("a lone surrogate in cwd", start(lambda: Command("true", cwd="/\ud800")), InvalidCommand),
    (
        "a lone surrogate in env",
        start(lambda: Command("true", env={"A": "\udfff"})),
        InvalidCommand,
    ),
    ("a command not a Command", lambda w, o, j: w.start("echo hi", o), InvalidCommand),  # type: ignore[arg-type]
    (
        "a cpu limit beyond any float",
        start(lambda: Command("true"), Limits(cpu=10**400)),
        LimitError,
    ),
    (
        "a cpu limit of minus a googol",
        start(lambda: Command("true"), Limits(cpu=-(10**400))),
        LimitError,
    ),
    ("limits as a dict", start(lambda: Command("true"), {"cpu": 1.0}), LimitError),
    ("limits as the dict type", start(lambda: Command("true"), dict), LimitError),
    (
        "an io_path not a path",
        start(lambda: Command("true"), Limits(io_read_bps=1, io_path=0)),  # type: ignore[arg-type]
        LimitError,
    ),
    ("grace=True", lambda w, o, j: w.stop(j, o, grace=True), InvalidArgument),
    ("grace as a string", lambda w, o, j: w.stop(j, o, grace="5"), InvalidArgument),  # type: ignore[arg-type]
    ("a negative grace", lambda w, o, j: w.stop(j, o, grace=-(10**400)), InvalidArgument),
    ("a NaN grace", lambda w, o, j: w.stop(j, o, grace=float("nan")), InvalidArgument),
    ("a job id as a string", lambda w, o, j: w.query(str(j), o), InvalidArgument),  # type: ignore[arg-type]
    ("a job id as a list", lambda w, o, j: w.query([j], o), InvalidArgument),  # type: ignore[arg-type]
    ("a job id as None", lambda w, o, j: w.stream(None, o), InvalidArgument),  # type: ignore[arg-type]
    ("an owner id as a string", lambda w, o, j: w.start(Command("true"), str(o)), InvalidArgument),  # type: ignore[arg-type]
    ("an owner id as an int", lambda w, o, j: w.start(Command("true"), o.int), InvalidArgument),  # type: ignore[arg-type]
    ("an owner id as a string, in query", lambda w, o, j: w.query(j, str(o)), InvalidArgument),  # type: ignore[arg-type]
    ("an owner id as a string, in list", lambda w, o, j: w.list(str(o)), InvalidArgument),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("what", "op", "error"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_a_library_error_and_leaves_nothing(
    worker: Worker,
    owner: uuid.UUID,
    log_dir: Path,
    what: str,
    op: Op,
    error: type[JobworkerError],
) -> None:
    job = worker.start(Command("sleep", ["1000"]), owner)
    log = worker.query(job, owner).log_path
    with pytest.raises(error):
        op(worker, owner, job)
    assert [i.id for i in worker.list(owner)] == [job]
    assert list(log_dir.iterdir()) == [log]
    assert worker.query(job, owner).status.state is State.RUNNING
    worker.stop(job, owner, grace=0)
    assert live_children() == []


def test_bad_ids_are_refused_by_the_async_face_too(worker: Worker, owner: uuid.UUID) -> None:
    async def main() -> None:
        aw = AsyncWorker(worker)
        job = await aw.start(Command("true"), owner)
        with pytest.raises(InvalidArgument):
            await aw.wait(str(job), owner)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await aw.stop(job, owner, grace=True)
        with pytest.raises(InvalidArgument):
            aw.stream(job, str(owner))  # type: ignore[arg-type]
        await aw.wait(job, owner)

    asyncio.run(main())


def test_a_bad_grace_for_the_worker_is_refused(log_dir: Path) -> None:
    for grace in (True, -1, float("nan"), "10"):
        with pytest.raises(InvalidArgument, match="grace"):
            Worker(log_dir, grace=grace)  # type: ignore[arg-type]


def test_what_users_naturally_pass_is_accepted(
    worker: Worker, owner: uuid.UUID, tmp_path: Path
) -> None:
    # Paths for the name, the arguments and cwd; any iterable of arguments.
    args: list[str | Path] = ["-c", 'pwd; echo "$1"', "sh", tmp_path]
    command = Command(Path("/bin/sh"), (a for a in args))
    command = Command(command.name, command.args, cwd=tmp_path)
    assert command.name == "/bin/sh" and command.cwd == str(tmp_path)
    assert command == Command(
        "/bin/sh", ["-c", 'pwd; echo "$1"', "sh", str(tmp_path)], cwd=str(tmp_path)
    )
    job = worker.start(command, owner)
    with worker.stream(job, owner) as r:
        assert r.read() == f"{tmp_path}\n{tmp_path}\n".encode()
    # Undecodable bytes (from os.listdir, sys.argv) come as U+DC80-U+DCFF: they pass.
    job = worker.start(Command("printf", ["%s", "caf\udce9"]), owner)
    with worker.stream(job, owner) as r:
        assert r.read() == b"caf\xe9"
    # A grace beyond any float is no grace limit at all: SIGTERM, never SIGKILL.
    job = worker.start(Command("sleep", ["1000"]), owner)
    worker.stop(job, owner, grace=10**400)
    assert worker.query(job, owner).status == Status.stopped(StopType.TERM)


def test_another_owners_job_and_a_forgotten_job_look_unknown(
    worker: Worker, owner: uuid.UUID
) -> None:
    job = worker.start(Command("true"), owner)
    worker.wait(job, owner)
    missing = uuid.uuid4()
    with pytest.raises(JobNotFound) as nobodys:
        worker.query(missing, owner)
    worker.jobs.forget([job])
    with pytest.raises(JobNotFound) as forgotten:
        worker.query(job, owner)
    assert str(forgotten.value) == str(nobodys.value).replace(str(missing), str(job))
    assert worker.list(owner) == []
