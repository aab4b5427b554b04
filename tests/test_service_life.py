"""The server's life: configuration, certificates, where it listens, and shutdown on a
signal (in a process of its own)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jobworker import Command, Limits, ServiceUnavailable, Status, StopType
from jobworker.client import Client
from jobworker.server import ConfigError, OwnerConfig, ServerConfig, load_config, make_certs

from servicekit import ServerThread, pids_alive, run, server_config, server_process


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- shutdown ----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_job_ends_streams_and_removes_the_socket(
    tmp_path: Path, sig: signal.Signals
) -> None:
    config = tmp_path / "server.toml"
    config.write_text('socket = "run/s.sock"\nstate_dir = "state"\ngrace = 1\n')
    with server_process(config) as (proc, addresses):
        assert addresses == [f"unix:{tmp_path / 'run/s.sock'}"]

        async def main() -> None:
            async with Client(addresses[0]) as c:
                plain = await c.start(Command("sleep", ["100"]))
                # Ignores SIGTERM, so it takes the SIGKILL after the grace; and has a child.
                stubborn = await c.start(
                    Command("sh", ["-c", "trap '' TERM; sleep 100 & echo $!; wait"])
                )
                chatty = await c.start(
                    Command("sh", ["-c", "while :; do echo line; sleep 0.01; done"])
                )
                followed = bytearray()

                async def follow() -> None:
                    async for chunk in c.follow(chatty):
                        followed.extend(chunk)

                follower = asyncio.ensure_future(follow())
                first = b""
                async for chunk in c.stream(stubborn):
                    first += chunk
                    if first.endswith(b"\n"):
                        break
                pids = [(await c.query(j)).pid for j in (plain, stubborn, chatty)]
                pids.append(int(first))
                while len(followed) < 50:
                    await asyncio.sleep(0.01)

                proc.send_signal(sig)
                await follower  # the stream ended, normally, with every byte
                assert await asyncio.to_thread(proc.wait, 30) == 0
                assert pids_alive(pids) == []
                log = tmp_path / "state" / "logs" / f"sh_{pids[2]}.log"
                assert bytes(followed) == log.read_bytes()
                with pytest.raises(ServiceUnavailable):
                    await c.list()

        run(main())
        assert not (tmp_path / "run" / "s.sock").exists()


def test_calls_during_shutdown_are_unavailable(tmp_path: Path) -> None:
    with ServerThread(server_config(tmp_path, grace=1)) as server:

        async def main() -> None:
            async with Client(server.unix) as c:
                # Ignores SIGTERM: shutdown waits out the grace for it.
                job = await c.start(Command("sh", ["-c", "trap '' TERM; sleep 100"]))
                server.begin_stop()
                for _ in range(500):
                    try:
                        await c.query(job)
                    except ServiceUnavailable as e:
                        assert "shutting down" in str(e)
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("never UNAVAILABLE")
                # No new local connections: the socket is gone.
                assert not Path(server.unix[len("unix:") :]).exists()

        run(main())


# -- where it listens ----------------------------------------------------------------------


def test_local_socket_is_private(tmp_path: Path) -> None:
    with ServerThread(server_config(tmp_path)) as server:
        path = Path(server.unix[len("unix:") :])
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
        assert mode(tmp_path / "state") == 0o700
        assert mode(tmp_path / "state" / "logs") == 0o700


def test_one_server_per_socket_and_stale_sockets_replaced(tmp_path: Path) -> None:
    config = server_config(tmp_path)
    with (
        ServerThread(config),
        pytest.raises(ConfigError, match="another server is listening"),
        ServerThread(config),
    ):
        pass
    # A socket left by a dead server: nobody accepts on it.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(config.socket_path))
    stale.close()
    with ServerThread(config) as server:

        async def main() -> None:
            async with Client(server.unix) as c:
                assert await c.list() == []

        run(main())


def test_refuses_directories_that_are_not_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with (
        pytest.raises(ConfigError, match="must be 0700"),
        ServerThread(server_config(tmp_path, log_dir=shared)),
    ):
        pass


def test_tcp_without_mutual_tls_does_not_exist() -> None:
    with pytest.raises(ConfigError, match="needs mutual TLS"):
        ServerConfig(listen="127.0.0.1:0")
    with pytest.raises(ConfigError, match="needs mutual TLS"):
        ServerConfig(listen="127.0.0.1:0", tls_cert=Path("c"), tls_key=Path("k"))


# -- configuration -----------------------------------------------------------------------


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "server.toml"
    path.parent.mkdir()
    path.write_text(
        """
listen = "[::1]:7443"
tls_cert = "server.pem"
tls_key = "/abs/server.key"
client_ca = "ca.pem"
state_dir = "/var/lib/jw"
admins = ["root", "ops"]
max_running_jobs = 5
grace = 2.5

[default_limits]
memory = 268435456
pids = 100

[owners.alice]
uid = 1001
gid = 1001
groups = [10]

[owners.ops]
run_as = "root"
"""
    )
    config = load_config(path)
    assert config.listen == "[::1]:7443"
    assert config.tls_cert == path.parent / "server.pem"
    assert config.tls_key == Path("/abs/server.key")
    assert config.log_path == Path("/var/lib/jw/logs")
    assert config.admins == ("root", "ops")
    assert (config.max_running_jobs, config.grace) == (5, 2.5)
    assert config.default_limits == Limits(memory=256 << 20, pids=100)
    assert config.owners == {
        "alice": OwnerConfig(uid=1001, gid=1001, groups=(10,)),
        "ops": OwnerConfig(run_as="root"),
    }
    assert load_config(None) == ServerConfig()


@pytest.mark.parametrize(
    "text, message",
    [
        ("lisen = '127.0.0.1:1'", "unknown key in the configuration: lisen"),
        ("listen = 'nowhere'", "HOST:PORT"),
        ("max_running_jobs = 0", "max_running_jobs"),
        ("grace = -1", "grace"),
        ("[default_limits]\nmemroy = 1", "unknown key in default_limits: memroy"),
        ("[owners.bob]\nuid = 5", "set uid and gid"),
        ("[owners.bob]\nrun_as = 'admin'", "run_as can only be"),
        ("not toml [", "server.toml"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(path)


# -- certificates --------------------------------------------------------------------------


def test_make_certs(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    d = tmp_path / "certs"
    written = make_certs(d, users=["alice"], server_names=["jobs.example", "10.1.2.3"])
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"{n}.{e}" for n in ("ca", "server", "admin", "alice") for e in ("pem", "key")
    )
    assert mode(d) == 0o700
    assert all(mode(p) == 0o600 for p in d.glob("*.key"))
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    alice = x509.load_pem_x509_certificate((d / "alice.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(map(str, san.get_values_for_type(x509.DNSName))) == {"localhost", "jobs.example"}
    assert set(map(str, san.get_values_for_type(x509.IPAddress))) == {
        "127.0.0.1",
        "::1",
        "10.1.2.3",
    }
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    eku = alice.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert isinstance(alice.public_key(), ec.EllipticCurvePublicKey)
    assert alice.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    alice.verify_directly_issued_by(ca)

    # Again: nothing is overwritten; a new user gets a certificate of the same CA.
    before = {p: p.read_bytes() for p in d.iterdir()}
    assert make_certs(d, users=["alice"]) == []
    assert [p.name for p in make_certs(d, users=["bob"])] == ["bob.pem", "bob.key"]
    assert {p: p.read_bytes() for p in before} == before
    bob = x509.load_pem_x509_certificate((d / "bob.pem").read_bytes())
    bob.verify_directly_issued_by(ca)


def test_make_certs_never_writes_through_a_symlink(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    make_certs(d)
    target = tmp_path / "elsewhere"
    (d / "carol.key").symlink_to(target)  # dangling: "does not exist" to a naive check
    with pytest.raises(FileExistsError):
        make_certs(d, users=["carol"])
    assert not target.exists()
    assert not (d / "carol.pem").exists()


@pytest.mark.parametrize("name", ["", "../x", "ca", "server", "a b", ".hidden"])
def test_make_certs_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="cannot be used"):
        make_certs(tmp_path / "certs", users=[name])
    assert not (tmp_path / "certs").exists()


def test_stopped_status_reaches_the_client(tmp_path: Path) -> None:
    with ServerThread(server_config(tmp_path)) as server:

        async def main() -> None:
            async with Client(server.unix) as c:
                job = await c.start(Command("sleep", ["100"]))
                info = await c.stop(job, grace=0)
                assert info.status == Status.stopped(StopType.KILL)

        run(main())


def test_tcp_connections_send_small_frames_at_once() -> None:
    # With Nagle's algorithm on, each reply waits for the client's delayed ACK (40 ms).
    from jobworker.server._app import _tcp_listener

    listener = _tcp_listener("127.0.0.1:0")
    with listener, socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.proto == socket.IPPROTO_TCP  # what asyncio looks for
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert client


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_a_stalled_client_costs_the_server_a_bounded_amount(tmp_path: Path) -> None:
    size = 96 << 20
    config = tmp_path / "server.toml"
    config.write_text('socket = "run/s.sock"\nstate_dir = "state"\n')
    with server_process(config) as (proc, addresses):

        async def main() -> None:
            async with Client(addresses[0]) as stalled, Client(addresses[0]) as other:
                job = await stalled.start(Command("head", ["-c", str(size), "/dev/zero"]))
                await stalled.wait(job)  # all 96 MiB are there to be sent
                before = rss(proc.pid)
                async for chunk in stalled.stream(job):
                    assert chunk
                    # Stalled: the server may only fill the flow-control windows and
                    # socket buffers, not read the log ahead into memory.
                    await asyncio.sleep(1.0)
                    grown = rss(proc.pid) - before
                    assert grown < 16 << 20, grown
                    # Meanwhile another client gets the whole log.
                    got = 0
                    async for data in other.stream(job):
                        got += len(data)
                    assert got == size
                    break

        run(main())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_the_client_comes_without_the_worker_machinery() -> None:
    # A command against the service must start fast: the client and the local socket's
    # address, but not the worker (its reactor, resource control) nor the server.
    code = (
        "import sys\n"
        "from jobworker.client import Client\n"
        "Client()\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "jobworker.client" in loaded
    assert not loaded & {
        "jobworker._worker",
        "jobworker._reactor",
        "jobworker._rescontrol",
        "jobworker.server._app",
        "grpclib.server",
        "cryptography",
    }
