"""The service end to end: a real server (on a Unix socket and on 127.0.0.1 over mutual
TLS) and real clients."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import pwd
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status as Code
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

from jobworker import (
    Command,
    CommandNotFound,
    InvalidArgument,
    InvalidCommand,
    JobNotFound,
    JobNotRunning,
    LimitError,
    Limits,
    PermissionDenied,
    QuotaExceeded,
    State,
    Status,
    StopType,
    Unauthenticated,
    _codes,
)
from jobworker.client import Client
from jobworker.server import owner_id
from jobworker.v1 import jobworker_grpc
from jobworker.v1 import jobworker_pb2 as pb

from conftest import live_children
from servicekit import (
    CuttingProxy,
    Pki,
    ServerThread,
    client,
    make_pki,
    raw_channel,
    run,
    server_config,
    wait_for,
)

# A job that writes 40 numbered lines, one every 5 ms, then a last line.  (Not Python:
# jobs of TCP owners run as users of their own, who may not read this interpreter.)
CHATTY = Command(
    "sh",
    [
        "-c",
        "x=$(printf '%300s' | tr ' ' x); i=0;"
        " while [ $i -lt 40 ]; do echo $i $x; i=$((i+1)); sleep 0.005; done; echo end",
    ],
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(tmp_path: Path, pki: Pki) -> Iterator[ServerThread]:
    children = live_children()
    with ServerThread(server_config(tmp_path, pki, grace=2)) as s:
        yield s
    assert live_children() == children


def expected_chatty() -> bytes:
    return b"".join(f"{i} {'x' * 300}\n".encode() for i in range(40)) + b"end\n"


# -- the operations --------------------------------------------------------------------


def test_local_socket_start_stream_wait(server: ServerThread) -> None:
    async def main() -> None:
        async with client(server) as c:
            job = await c.start(CHATTY)
            data = b"".join([chunk async for chunk in c.stream(job)])
            info = await c.wait(job)
            assert data == expected_chatty()
            assert info.status == Status.exited(0)
            assert info.log_path.read_bytes() == data
            # The local caller is the server's own user, an admin.
            assert info.owner_id == owner_id(pwd.getpwuid(os.geteuid()).pw_name)
            assert [i.id for i in await c.list()] == [job]

    run(main())


def test_mtls_start_stop_query_list(server: ServerThread, pki: Pki) -> None:
    async def main() -> None:
        async with client(server, pki, "alice") as c:
            job = await c.start(
                Command("sh", ["-c", "echo $GREETING; sleep 100"], env={"GREETING": "hi"})
            )
            async for chunk in c.stream(job):
                assert chunk == b"hi\n"  # the job is under way
                break
            info = await c.query(job)
            assert info.owner_id == owner_id("alice")
            assert info.status == Status.running()
            assert info.command.env is not None and info.command.env["GREETING"] == "hi"
            info = await c.stop(job, grace=5)
            assert info.status == Status.stopped(StopType.TERM)
            assert b"".join([x async for x in c.stream(job)]) == b"hi\n"
            with pytest.raises(JobNotRunning):
                await c.stop(job)
            assert [i.id for i in await c.list()] == [job]

    run(main())


def test_jobs_get_a_minimal_environment(server: ServerThread) -> None:
    os.environ["JOBWORKER_TEST_SECRET"] = "s3cret"
    try:

        async def main() -> bytes:
            async with client(server) as c:
                job = await c.start(Command("env", env={"EXTRA": "1", "LANG": None}))
                return b"".join([x async for x in c.stream(job)])

        lines = sorted(run(main()).decode().splitlines())
    finally:
        del os.environ["JOBWORKER_TEST_SECRET"]
    names = [line.split("=", 1)[0] for line in lines]
    assert names == ["EXTRA", "HOME", "PATH"]


def test_start_errors_come_back_as_library_errors(server: ServerThread, pki: Pki) -> None:
    async def main() -> None:
        async with client(server, pki, "alice") as c:
            with pytest.raises(CommandNotFound) as e:
                await c.start(Command("no-such-command-xyz"))
            assert e.value.errno == 2
            with pytest.raises(InvalidCommand):
                await c.start(Command(""))
            with pytest.raises(LimitError):
                await c.start(Command("true"), Limits(memory=1))
            with pytest.raises(JobNotFound):
                await c.query(uuid.uuid4())
            assert await c.list() == []

    run(main())


def test_every_error_of_the_table_round_trips() -> None:
    job = uuid.uuid4()
    samples: list[Exception] = [
        InvalidCommand("x"),
        LimitError("x"),
        InvalidArgument("x"),
        JobNotFound(job),
        CommandNotFound(2, "no"),
        JobNotRunning(job),
        QuotaExceeded("x"),
        Unauthenticated("x"),
        PermissionDenied("x"),
    ]
    for error in samples:
        mapped = _codes.status_of(error)
        assert mapped is not None
        code, message, metadata = mapped
        back = _codes.error_from_status(code, message, metadata, job)
        assert type(back) is type(error)
        assert str(back) == str(error)
    assert _codes.status_of(RuntimeError("bug")) is None


# -- ownership -------------------------------------------------------------------------


def test_other_owners_jobs_do_not_exist(server: ServerThread, pki: Pki) -> None:
    async def main() -> None:
        alice = client(server, pki, "alice")
        bob = client(server, pki, "bob")
        admin = client(server, pki, "admin")
        async with alice, bob, admin:
            job = await alice.start(Command("sleep", ["100"]))
            unknown = uuid.uuid4()
            for j in (job, unknown):
                for op in (bob.query(j), bob.wait(j, timeout=5), bob.stop(j, grace=0)):
                    with pytest.raises(JobNotFound) as e:
                        await op
                    assert str(e.value) == f"no such job: {j}"
                with pytest.raises(JobNotFound) as e:
                    async for _ in bob.stream(j):
                        pass
                assert str(e.value) == f"no such job: {j}"
            assert await bob.list() == []
            with pytest.raises(PermissionDenied):
                await bob.list(all_owners=True)
            # Nothing of that touched the job.
            assert (await alice.query(job)).status == Status.running()
            # The admin sees and stops every job, but lists only its own unless asked.
            assert await admin.list() == []
            assert [i.id for i in await admin.list(all_owners=True)] == [job]
            assert (await admin.query(job)).owner_id == owner_id("alice")
            info = await admin.stop(job, grace=0)
            assert info.status == Status.stopped(StopType.KILL)
            with pytest.raises(JobNotFound):
                await admin.query(unknown)

    run(main())


# -- streams ---------------------------------------------------------------------------


def test_fifty_concurrent_streams_get_identical_bytes(server: ServerThread, pki: Pki) -> None:
    async def main() -> None:
        clients = [client(server, pki, "alice") for _ in range(5)]
        try:
            job = await clients[0].start(CHATTY)

            async def read(c: Client) -> bytes:
                return b"".join([x async for x in c.stream(job)])

            results = await asyncio.gather(*(read(clients[i % 5]) for i in range(50)))
        finally:
            for c in clients:
                await c.aclose()
        assert all(r == expected_chatty() for r in results)

    run(main())


def test_stream_messages_carry_offsets_and_at_most_64_kib(server: ServerThread) -> None:
    async def main() -> list[tuple[int, int]]:
        async with raw_channel(server.unix) as channel:
            stub = jobworker_grpc.JobWorkerStub(channel)
            reply = await stub.Start(
                pb.StartRequest(
                    command=pb.Command(name="head", args=["-c", "1000000", "/dev/zero"])
                )
            )
            async with stub.StreamOutput.open() as st:
                await st.send_message(
                    pb.StreamOutputRequest(job_id=reply.job_id, offset=10), end=True
                )
                return [(m.offset, len(m.data)) async for m in st]

    messages = run(main())
    assert messages[0][0] == 10
    assert all(size <= 65536 for _, size in messages)
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(messages))
    assert messages[-1][0] + messages[-1][1] == 1000000


def test_stream_resumes_from_an_offset(server: ServerThread, pki: Pki) -> None:
    async def main() -> None:
        async with client(server, pki, "alice") as c:
            job = await c.start(CHATTY)
            first = b""
            async for chunk in c.stream(job):
                first += chunk
                if len(first) > 1000:
                    break  # the cut
            rest = b"".join([x async for x in c.stream(job, offset=len(first))])
            assert first + rest == expected_chatty()

    run(main())


def test_a_stream_that_does_not_follow_ends_at_what_the_log_holds(
    server: ServerThread, tmp_path: Path
) -> None:
    # The job writes a line, then waits for a file the test makes only at the end.
    go = tmp_path / "go"
    waiting = Command(
        "sh", ["-c", f"echo first; while [ ! -e {go} ]; do sleep 0.01; done; echo second"]
    )

    async def main() -> None:
        async with client(server) as c:
            job = await c.start(waiting)
            async for chunk in c.stream(job):
                assert chunk == b"first\n"  # in the log now
                break
            # Ends although the job runs on, with what its log held; from an offset too.
            assert [x async for x in c.stream(job, follow=False)] == [b"first\n"]
            assert [x async for x in c.stream(job, 2, follow=False)] == [b"rst\n"]
            assert [x async for x in c.stream(job, 6, follow=False)] == []
            assert (await c.query(job)).status.state is State.RUNNING
            go.touch()
            await c.wait(job)
            # An ended job's: all of it.
            assert b"".join([x async for x in c.stream(job, follow=False)]) == b"first\nsecond\n"

    run(main())


def test_follow_survives_cut_connections(server: ServerThread, pki: Pki) -> None:
    # Messages are up to 64 KiB: each connection carries a few before it is cut.
    lines = 150_000
    expected = b"".join(b"%06d\n" % i for i in range(lines))

    async def main() -> tuple[bytes, int]:
        proxy = CuttingProxy(server.tcp, cut_after=200_000)
        async with proxy as address, Client(address, tls=pki.tls("alice")) as c:
            job = await c.start(Command("seq", ["-f", "%06g", "0", str(lines - 1)]))
            await c.wait(job)
            data = b"".join([x async for x in c.follow(job, retries=3, delay=0.01)])
        return data, proxy.cuts

    data, cuts = run(main())
    assert data == expected
    assert cuts >= 3


def test_cancelled_stream_releases_reader_and_task(server: ServerThread) -> None:
    async def main() -> None:
        async with client(server) as c:
            job = await c.start(Command("sh", ["-c", "while :; do echo tick; sleep 0.01; done"]))
            await c.query(job)  # connected
            tasks, fds = server.tasks(), len(os.listdir("/proc/self/fd"))
            for _ in range(3):
                got = 0
                async for chunk in c.stream(job):
                    got += len(chunk)
                    if got > 20:
                        break  # the client cancels: RST_STREAM
            assert await asyncio.to_thread(
                wait_for,
                lambda: (server.tasks(), len(os.listdir("/proc/self/fd"))) == (tasks, fds),
            ), (server.tasks(), tasks, len(os.listdir("/proc/self/fd")), fds)
            await c.stop(job, grace=0)

    run(main())


# -- limits of the service ---------------------------------------------------------------


def test_quota_of_running_jobs_per_owner(tmp_path: Path, pki: Pki) -> None:
    with ServerThread(server_config(tmp_path, pki, max_running_jobs=3)) as server:

        async def main() -> None:
            async with client(server, pki, "alice") as alice, client(server, pki, "bob") as bob:
                results = await asyncio.gather(
                    *(alice.start(Command("sleep", ["100"])) for _ in range(8)),
                    return_exceptions=True,
                )
                jobs = [r for r in results if isinstance(r, uuid.UUID)]
                assert len(jobs) == 3
                assert all(isinstance(r, QuotaExceeded) for r in results if r not in jobs)
                assert len(await alice.list()) == 3
                # Another owner has a quota of its own.
                other = await bob.start(Command("sleep", ["100"]))
                await alice.stop(jobs[0], grace=0)
                jobs.append(await alice.start(Command("sleep", ["100"])))
                with pytest.raises(QuotaExceeded):
                    await alice.start(Command("sleep", ["100"]))
                for j in jobs[1:]:
                    await alice.stop(j, grace=0)
                await bob.stop(other, grace=0)

        run(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="limits need cgroups (root)")
def test_default_limits_apply_to_every_job(tmp_path: Path) -> None:
    config = server_config(tmp_path, default_limits=Limits(pids=64, memory=256 << 20))
    with ServerThread(config) as server:

        async def main() -> None:
            async with client(server) as c:
                job = await c.start(Command("true"), Limits(memory=128 << 20))
                info = await c.wait(job)
                assert (info.limits.pids, info.limits.memory) == (64, 128 << 20)

        run(main())


def test_malformed_requests_are_invalid_and_change_nothing(server: ServerThread) -> None:
    log_dir = server.config.log_path

    async def main() -> None:
        async with raw_channel(server.unix) as channel:
            stub = jobworker_grpc.JobWorkerStub(channel)
            bad_starts = [
                pb.Command(name=""),
                pb.Command(name="echo", args=["a\0b"]),
                pb.Command(name="ec\0ho"),
                pb.Command(name="echo", env={"A": "b\0c"}),
                pb.Command(name="echo", env={"A=B": "c"}),
                pb.Command(name="echo", args=["x"] * 100_000),
                pb.Command(name="echo", args=["y" * 4000] * 300),
            ]
            requests: list[tuple[object, object]] = [
                (stub.Start, pb.StartRequest(command=c)) for c in bad_starts
            ]
            for limits in (
                pb.Limits(memory_bytes=2**64 - 1),
                pb.Limits(cpu=1e300),
                pb.Limits(cpu=float("nan")),
                pb.Limits(cpu=-1),
                pb.Limits(pids=0),
                pb.Limits(io_read_bps=1),
            ):
                requests.append(
                    (stub.Start, pb.StartRequest(command=pb.Command(name="true"), limits=limits))
                )
            for bad_id in ("", "not-a-uuid", "1" * 10_000):
                requests += [
                    (stub.Query, pb.QueryRequest(job_id=bad_id)),
                    (stub.Stop, pb.StopRequest(job_id=bad_id)),
                    (stub.Wait, pb.WaitRequest(job_id=bad_id)),
                ]
            job = str(uuid.uuid4())
            requests += [
                (stub.Stop, pb.StopRequest(job_id=job, grace_seconds=-1)),
                (stub.Stop, pb.StopRequest(job_id=job, grace_seconds=float("nan"))),
            ]
            for method, request in requests:
                with pytest.raises(GRPCError) as e:
                    await method(request)  # type: ignore[operator]
                assert e.value.status is Code.INVALID_ARGUMENT, (request, e.value)
            with pytest.raises(GRPCError) as e:
                async with stub.StreamOutput.open() as st:
                    await st.send_message(pb.StreamOutputRequest(job_id="nope"), end=True)
                    await st.recv_message()
            assert e.value.status is Code.INVALID_ARGUMENT
            # A request larger than the limit is refused before it is read whole.
            with pytest.raises(GRPCError) as e:
                await stub.Start(
                    pb.StartRequest(command=pb.Command(name="x", args=["z" * (5 << 20)]))
                )
            assert e.value.status is Code.INVALID_ARGUMENT
            assert (await stub.List(pb.ListRequest())).jobs == []

    run(main())
    assert os.listdir(log_dir) == []


# -- health, reflection, logging ---------------------------------------------------------


def test_health_and_reflection_answer_over_mtls(server: ServerThread, pki: Pki) -> None:
    async def main() -> None:
        async with raw_channel(server.tcp, pki.tls("bob")) as channel:
            health = HealthStub(channel)
            for name in ("", "jobworker.v1.JobWorker"):
                reply = await health.Check(HealthCheckRequest(service=name))
                assert reply.status == HealthCheckResponse.SERVING
            reflection = ServerReflectionStub(channel)
            async with reflection.ServerReflectionInfo.open() as st:
                await st.send_message(ServerReflectionRequest(list_services=""))
                listed = await st.recv_message()
                await st.send_message(
                    ServerReflectionRequest(file_containing_symbol="jobworker.v1.JobWorker"),
                    end=True,
                )
                described = await st.recv_message()
            assert listed is not None and described is not None
            names = {s.name for s in listed.list_services_response.service}
            assert {"jobworker.v1.JobWorker", "grpc.health.v1.Health"} <= names
            assert described.file_descriptor_response.file_descriptor_proto

    run(main())


def test_one_structured_log_line_per_rpc(
    server: ServerThread, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobworker.server")

    async def main() -> uuid.UUID:
        async with client(server, pki, "bob") as c:
            job = await c.start(Command("true"))
            await c.wait(job)
            with pytest.raises(JobNotFound):
                await c.query(uuid.uuid4())
            return job

    job = run(main())
    lines = [json.loads(r.getMessage()) for r in caplog.records if '"rpc"' in r.getMessage()]
    assert [(x["rpc"], x["owner"], x["code"]) for x in lines] == [
        ("Start", "bob", "OK"),
        ("Wait", "bob", "OK"),
        ("Query", "bob", "NOT_FOUND"),
    ]
    assert lines[0]["job"] == lines[1]["job"] == str(job)
    assert all(isinstance(x["ms"], float) for x in lines)


# -- isolation below the API ---------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="running jobs as other users needs root")
def test_the_kernel_keeps_owners_apart(server: ServerThread, pki: Pki) -> None:
    async def main() -> None:
        async with client(server, pki, "alice") as alice, client(server, pki, "bob") as bob:
            victim = await alice.start(Command("sleep", ["100"]))
            info = await alice.query(victim)
            attack = await bob.start(
                Command(
                    "sh",
                    [
                        "-c",
                        f"cat {info.log_path} && echo READ;"
                        f" kill -9 {info.pid} && echo KILLED; id -u",
                    ],
                )
            )
            out = b"".join([x async for x in bob.stream(attack)]).decode()
            assert "READ" not in out and "KILLED" not in out, out
            assert "Permission denied" in out and "Operation not permitted" in out, out
            assert int(out.split()[-1]) != 0  # bob's job is not root
            assert (await alice.query(victim)).status == Status.running()
            await alice.stop(victim, grace=0)

    run(main())


def test_job_info_crosses_the_wire_whole() -> None:
    import dataclasses
    from pathlib import Path as P

    from jobworker import JobInfo, RunAs, Usage, _wire

    info = JobInfo(
        id=uuid.uuid4(),
        command=Command("env", ["-0", "x y"], env={"A": "1", "B": None}, cwd="/srv"),
        pid=4242,
        owner_id=owner_id("alice"),
        status=Status.signaled(9, oom_killed=True),
        log_path=P("/var/lib/jobworker/logs/env_4242.log"),
        started_at=1795996557.968577,
        ended_at=1795996558.172052,
        limits=Limits(cpu=0.5, memory=1 << 28, io_read_bps=1000, io_path="/", pids=7),
        usage=Usage(cpu_seconds=0.25, memory_peak=1 << 20, oom_kills=1, pids_limit_hits=0),
        run_as=RunAs(61184, 61184, (5, 6)),
    )
    back = _wire.info_from_pb(_wire.info_to_pb(info))
    assert back.started_at == pytest.approx(info.started_at, abs=1e-6)
    assert back.ended_at == pytest.approx(info.ended_at, abs=1e-6)
    assert dataclasses.replace(back, started_at=info.started_at, ended_at=info.ended_at) == info
    for status in (Status.running(), Status.exited(3), Status.stopped(StopType.KILL)):
        running = dataclasses.replace(info, status=status, ended_at=None, run_as=None)
        assert (
            dataclasses.replace(
                _wire.info_from_pb(_wire.info_to_pb(running)), started_at=info.started_at
            )
            == running
        )
