"""Retention through the service: the Purge RPC (admins only), forgotten jobs answer as
unknown ones, the ``[retention]`` table of the config."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker import (
    Command,
    JobNotFound,
    PermissionDenied,
    PurgedLog,
    Retention,
    Status,
)
from jobworker.server import ConfigError, load_config

from conftest import live_children
from servicekit import Pki, ServerThread, client, make_pki, run, server_config

# What the policy is about here: records and logs of ended jobs go at the first purge.
# (The timer would not come round during a test.)
AT_ONCE = Retention(max_age=0, max_total=None, forget_after=0, interval=3600)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(tmp_path: Path, pki: Pki) -> Iterator[ServerThread]:
    children = live_children()
    with ServerThread(server_config(tmp_path, pki, grace=2, retention=AT_ONCE)) as s:
        yield s
    assert live_children() == children


def test_purge_is_for_admins_only(server: ServerThread, pki: Pki) -> None:
    async def main() -> None:
        async with client(server, pki, "alice") as alice, client(server, pki, "admin") as admin:
            job = await alice.start(Command("echo", ["hi"]))
            info = await alice.wait(job)
            with pytest.raises(PermissionDenied, match="only admins"):
                await alice.purge()
            # Refused: nothing was removed, nothing forgotten.
            assert info.log_path.exists()
            assert (await alice.query(job)).status == Status.exited(0)
            result = await admin.purge()
            assert result.removed == (PurgedLog(job, info.log_path, 3, "age"),)
            assert result.freed == 3
            assert result.forgotten == (job,)
            assert not info.log_path.exists()

    run(main())


def test_the_local_socket_caller_may_purge(server: ServerThread) -> None:
    async def main() -> None:
        async with client(server) as local:
            job = await local.start(Command("echo", ["hi"]))
            await local.wait(job)
            result = await local.purge()
            assert [p.job_id for p in result.removed] == [job]
            assert await local.purge() == type(result)()  # nothing left to do

    run(main())


def test_forgotten_jobs_answer_like_unknown_ones(server: ServerThread, pki: Pki) -> None:
    async def main() -> None:
        async with client(server, pki, "alice") as alice, client(server, pki, "admin") as admin:
            old = await alice.start(Command("true"))
            await alice.wait(old)
            assert (await admin.purge()).forgotten == (old,)
            recent = await alice.start(Command("true"))
            await alice.wait(recent)
            never = uuid.uuid4()
            for c in (alice, admin):
                for job in (old, never):
                    for op in (c.query(job), c.wait(job, timeout=5), c.stop(job, grace=0)):
                        with pytest.raises(JobNotFound) as e:
                            await op
                        assert str(e.value) == f"no such job: {job}"
                    with pytest.raises(JobNotFound) as e:
                        async for _ in c.stream(job):
                            pass
                    assert str(e.value) == f"no such job: {job}"
            assert [i.id for i in await alice.list()] == [recent]
            assert [i.id for i in await admin.list(all_owners=True)] == [recent]

    run(main())


def test_a_purge_is_logged(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jobworker")

    async def main() -> Path:
        async with client(server) as local:
            job = await local.start(Command("echo", ["hi"]))
            path = (await local.wait(job)).log_path
            await local.purge()
            return path

    path = run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "purge (request): removed 1 logs (1 by age), freed 3 bytes" in m and path.name in m
        for m in messages
    ), messages
    assert any('"rpc": "Purge"' in m and '"code": "OK"' in m for m in messages)


# -- configuration -------------------------------------------------------------------------


def test_the_retention_table(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        """
[retention]
max_age = 3600
max_total = "none"
max_log_size = 1048576
forget_after = 7200
interval = 30
"""
    )
    assert load_config(path).retention == Retention(
        max_age=3600, max_total=None, max_log_size=1 << 20, forget_after=7200, interval=30
    )
    path.write_text('[retention]\nmax_total = "auto"\nmax_age = "none"\n')
    assert load_config(path).retention == Retention(max_age=None)
    assert load_config(None).retention == Retention()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[retention]\nmax_size = 1", "unknown key in retention: max_size"),
        ("[retention]\nmax_age = -1", "max_age must be a number of seconds"),
        ("[retention]\nmax_total = '1G'", "max_total must be a number of bytes"),
        ("[retention]\ninterval = 'none'", "interval"),
        ("retention = 5", "retention must be a table"),
    ],
)
def test_a_bad_retention_table_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_the_readmes_retention_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [example] = [b.split("```", 1)[0] for b in readme.split("```toml\n")[1:] if "[retention]" in b]
    path = tmp_path / "server.toml"
    path.write_text(example)
    assert load_config(path).retention == Retention(
        max_age=7 * 86400, max_total=10 << 30, max_log_size=None, forget_after=86400
    )
