"""The server's state database (uids allocated to owners, for good), and which user each
owner's jobs run as."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest

from jobworker import QuotaExceeded
from jobworker.server import ConfigError, OwnerConfig, ServerConfig, owner_id
from jobworker.server._auth import Caller
from jobworker.server._runas import Account, Accounts
from jobworker.server._store import SCHEMA_VERSION, Store, uid_in_use


def test_dynamic_uids_are_stable_and_distinct(tmp_path: Path) -> None:
    db = tmp_path / "jobworker.db"
    store = Store(db)
    try:
        alice = store.dynamic_uid("alice", 61184, 61190)
        bob = store.dynamic_uid("bob", 61184, 61190)
        assert alice != bob
        assert store.dynamic_uid("alice", 61184, 61190) == alice
    finally:
        store.close()
    # A restart finds the same uids.
    store = Store(db)
    try:
        assert store.dynamic_uid("bob", 61184, 61190) == bob
        assert store.dynamic_uid("alice", 61184, 61190) == alice
    finally:
        store.close()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    raw.close()


def test_uids_the_system_uses_are_skipped(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobworker.db")
    try:
        assert uid_in_use(0)  # root
        free = next(u for u in range(70000) if not uid_in_use(u))
        assert store.dynamic_uid("carol", 0, free) == free
        used = {100, 101}
        assert store.dynamic_uid("dave", 100, 105, in_use=used.__contains__) == 102
    finally:
        store.close()


def test_an_exhausted_range_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobworker.db")
    try:
        store.dynamic_uid("a", 61184, 61185, in_use=lambda u: False)
        store.dynamic_uid("b", 61184, 61185, in_use=lambda u: False)
        with pytest.raises(QuotaExceeded):
            store.dynamic_uid("c", 61184, 61185, in_use=lambda u: False)
    finally:
        store.close()


def test_two_servers_on_one_database_never_share_a_uid(tmp_path: Path) -> None:
    db = tmp_path / "jobworker.db"
    stores = [Store(db), Store(db)]
    got: dict[str, int] = {}

    def allocate(store: Store, names: list[str]) -> None:
        for name in names:
            got[name] = store.dynamic_uid(name, 61184, 61184 + 99, in_use=lambda u: False)

    names = [f"user{i}" for i in range(40)]
    threads = [
        threading.Thread(target=allocate, args=(stores[0], names[::2] + names[1::2])),
        threading.Thread(target=allocate, args=(stores[1], names[1::2] + names[::2])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert len(set(got.values())) == len(names)


def test_a_newer_schema_is_not_touched(tmp_path: Path) -> None:
    db = tmp_path / "jobworker.db"
    with sqlite3.connect(db) as raw:
        raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(RuntimeError, match="newer"):
        Store(db)


# -- which user an owner's jobs run as -----------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def caller(name: str, local: bool = False) -> Caller:
    return Caller(name, owner_id(name), admin=False, local=local)


@needs_root
def test_accounts_follow_the_configuration_then_the_range(tmp_path: Path) -> None:
    config = ServerConfig(
        owners={
            "alice": OwnerConfig(uid=1001, gid=1002, groups=(10,)),
            "ops": OwnerConfig(run_as="root"),
        },
        dynamic_uids=(61184, 61199),
    )
    store = Store(tmp_path / "jobworker.db")
    try:
        accounts = Accounts(config, store)
        accounts.check()
        assert accounts.for_caller(caller("alice")) == Account(1001, 1002, (10,), "/")
        assert accounts.for_caller(caller("ops")).uid is None  # as the server: root
        assert accounts.for_caller(caller("me", local=True)).uid is None
        bob = accounts.for_caller(caller("bob"))
        assert bob.uid is not None and 61184 <= bob.uid <= 61199
        assert (bob.gid, bob.groups, bob.home) == (bob.uid, (), "/")
        carol = accounts.for_caller(caller("carol"))
        assert carol.uid != bob.uid
    finally:
        store.close()
    store = Store(tmp_path / "jobworker.db")
    try:
        assert Accounts(config, store).for_caller(caller("bob")) == bob
    finally:
        store.close()


def check_as(uid: int, directory: Path) -> list[str]:
    """``Accounts.check()`` of a TCP config without and with ``allow_shared_user``, in a
    child process that has dropped to ``uid`` (Python itself lives under /root)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            results = []
            store = Store(directory / "jobworker.db")
            for shared in (False, True):
                config = ServerConfig(
                    listen="127.0.0.1:0",
                    tls_cert=directory / "c",
                    tls_key=directory / "k",
                    client_ca=directory / "ca",
                    allow_shared_user=shared,
                )
                try:
                    Accounts(config, store).check()
                    results.append("accepted")
                except ConfigError as e:
                    results.append(f"refused: {e}")
            os.write(write, "\n".join(results).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out.splitlines()


@needs_root
def test_a_server_that_is_not_root_refuses_tcp_owners_sharing_its_user() -> None:
    # Not under pytest's tmp_path: its parents are private to root.
    with tempfile.TemporaryDirectory(prefix="jobworker-test-") as name:
        d = Path(name)
        os.chown(d, 65534, 65534)
        refused, accepted = check_as(65534, d)
    assert refused.startswith("refused: this server is not root")
    assert accepted == "accepted"
